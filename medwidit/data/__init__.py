"""medwidit.data: synthetic phantoms, real anatomy from package registries, the pre-transforms shared by training and
inference (``medwidit.data.transforms``) and the shipped example (``medwidit.data.sources.example_case``)."""

from .phantoms import PhantomDataset, make_phantom

__all__ = ["PhantomDataset", "make_phantom"]
