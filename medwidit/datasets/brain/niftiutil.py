"""Small NIfTI helpers for building data: atomic writes, shared grids, content hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medwidit.utils import atomic_write

from .atlas import resample_nearest

__all__ = ["atomic_save", "atomic_write_text", "nifti_like", "content_hash", "stored_array", "on_grid"]


def atomic_save(image: nib.Nifti1Image, path: Path) -> None:
    """Save a NIfTI under a temporary name in the target folder, then `os.replace` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: nib.save(image, tmp))


def atomic_write_text(text: str, path: Path) -> None:
    """Write text under a temporary name in the target folder, then `os.replace` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def nifti_like(array: np.ndarray, reference: nib.Nifti1Image, affine: np.ndarray | None = None) -> nib.Nifti1Image:
    """A NIfTI of `array` on the reference's grid (or `affine`) with the reference's sform/qform codes."""
    affine = reference.affine if affine is None else affine
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=int(reference.header["sform_code"]) or 1)
    image.set_qform(affine, code=int(reference.header["qform_code"]) or 1)
    return image


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a NIfTI's dtype, shape, affine and voxel values (independent of gzip bytes)."""
    image = nib.load(path)
    data = np.ascontiguousarray(np.asanyarray(image.dataobj))
    digest = hashlib.sha256()
    digest.update(f"{data.dtype.str}{data.shape}".encode())
    digest.update(np.round(image.affine, 6).astype(np.float64).tobytes())
    digest.update(data.tobytes())
    return digest.hexdigest()


def stored_array(image: nib.Nifti1Image) -> np.ndarray:
    """Voxel values in their stored integer type when unscaled (keeps files small), else float32."""
    # an image held in memory (e.g. nibabel's squeeze_image) has a plain array, never scaled
    slope, inter = getattr(image.dataobj, "slope", None), getattr(image.dataobj, "inter", None)
    if slope in (1, None) and inter in (0, None) and np.issubdtype(image.get_data_dtype(), np.integer):
        return np.asarray(image.dataobj)
    return image.get_fdata(dtype=np.float32)


def on_grid(values: nib.Nifti1Image, reference: nib.Nifti1Image) -> np.ndarray:
    """values' voxels on the reference grid (nearest neighbour through the affines)."""
    data = np.asarray(values.dataobj)
    if data.shape == reference.shape and np.allclose(values.affine, reference.affine, atol=1e-4):
        return data
    return resample_nearest(data, values.affine, reference.shape, reference.affine)
