"""medwidit.data: synthetic phantoms, the pre-transforms shared by training and inference (``medwidit.data.transforms``)
and the shipped example (``medwidit.data.example.example_case``); real anatomy is built by ``medwidit.datasets``."""

from .phantoms import PhantomDataset, make_phantom

__all__ = ["PhantomDataset", "make_phantom"]
