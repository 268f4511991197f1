"""Seeded synthetic 2D/3D phantoms: blobs and tubes of several classes in noise, for tests and benchmarks.

The classes are not separable by intensity alone: every foreground class has the same mean intensity (jittered per
object), the background carries a smooth bias field, and the whole image gets a random gain and offset plus Gaussian
noise. What tells the classes apart is shape (odd classes are ellipsoids, even classes are thin tubes) and texture
(even classes are striped). ``make_phantom(shape, num_classes=K, seed=s)`` is a pure function of its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medwidit.utils import check_int, check_range, is_finite_number

__all__ = ["PhantomDataset", "make_phantom"]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ValueError(f"shape must have 2 or 3 axes, each >= 8, got {shape}.")
    return shape


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A random rotation matrix (ndim, ndim) (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    return q * np.sign(np.diag(r))


def _ellipsoid(rng: np.random.Generator, grid: np.ndarray, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Mask of a randomly rotated ellipsoid with radii ``scale`` x 12-25% of the smallest side."""
    radii = np.minimum(rng.uniform(0.12, 0.25, size=len(shape)) * scale, 0.45) * min(shape)
    center = np.array([rng.uniform(r, s - r) for r, s in zip(radii, shape, strict=True)])
    local = np.tensordot(_rotation(rng, len(shape)).T, grid - center.reshape((-1,) + (1,) * len(shape)), axes=1)
    return (((local / radii.reshape((-1,) + (1,) * len(shape))) ** 2).sum(0)) <= 1.0


def _tube(rng: np.random.Generator, grid: np.ndarray, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Mask of a straight tube (radius ``scale`` x 5-9% of the smallest side, >= 1.5 voxels) between random points."""
    radius = max(1.5, rng.uniform(0.05, 0.09) * scale * min(shape))
    ends = [np.array([rng.uniform(0.15 * s, 0.85 * s) for s in shape]) for _ in range(2)]
    axis = ends[1] - ends[0]
    rel = grid - ends[0].reshape((-1,) + (1,) * len(shape))
    along = np.clip(np.tensordot(axis, rel, axes=1) / max(float(axis @ axis), 1e-6), 0.0, 1.0)
    closest = along[None] * axis.reshape((-1,) + (1,) * len(shape))
    return ((rel - closest) ** 2).sum(0) <= radius**2


def _bias_field(rng: np.random.Generator, grid: np.ndarray, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """A smooth field: three random plane waves with wavelengths longer than the image."""
    field = np.zeros(shape)
    for _ in range(3):
        direction = _rotation(rng, len(shape))[0] / np.array(shape)
        field += np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * np.tensordot(direction, grid, axes=1) + rng.uniform(0, 6.3))
    return amplitude * field / 3


def make_phantom(
    shape: Sequence[int],
    *,
    num_classes: int = 3,
    seed: int,
    max_objects: int = 2,
    noise_std: float = 0.35,
    bias: float = 0.25,
    texture: float = 0.6,
    object_scale: float = 1.0,
    class_contrast: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A phantom -> (image (1, *S) float32, label (1, *S) int64) with classes 0..num_classes-1.

    Class c >= 1 paints 1..max_objects objects: ellipsoids for odd c, tubes for even c, striped with
    ``1 + texture sin(2 pi x / 4)`` across a random direction; later objects cover earlier ones (a class may end up
    hidden). Intensity: objects 1 +- 0.15, background 0, plus a smooth bias field of amplitude ``bias``, a random
    gain in [0.8, 1.2] and offset in [-0.2, 0.2], then Gaussian noise of ``noise_std``. ``object_scale`` multiplies
    the object sizes (ellipsoid radii 12-25% of the smallest side, tube radii 5-9%; radii stay below 45%).
    ``class_contrast`` > 0 moves class c's mean intensity to ``1 + class_contrast (c - 1)``: the classes then differ
    in mean but still overlap through texture, noise, bias, gain and offset.
    """
    shape = _check_shape(shape)
    check_int("num_classes", num_classes, low=2)
    check_int("max_objects", max_objects)  # 1.5 was taken
    seed = check_int("seed", seed, low=0)  # -1 failed in numpy's seeding, naming no argument
    if not object_scale > 0:
        raise ValueError(f"object_scale must be > 0, got {object_scale}.")
    for name, value in (("noise_std", noise_std), ("bias", bias), ("texture", texture)):
        check_range(name, value, 0.0, math.inf)  # NaN passed a "< 0" test and gave an all-NaN image
    if not is_finite_number(class_contrast):  # NaN made every object voxel NaN
        raise ValueError(f"class_contrast must be a finite number, got {class_contrast!r}.")
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) + 0.5 for s in shape], indexing="ij"))  # (d, *S)
    label = np.zeros(shape, dtype=np.int64)
    image = np.zeros(shape)
    for c in range(1, num_classes):
        for _ in range(int(rng.integers(1, max_objects + 1))):
            mask = (_ellipsoid if c % 2 else _tube)(rng, grid, shape, object_scale)
            value = 1.0 + class_contrast * (c - 1) + rng.uniform(-0.15, 0.15)
            if c % 2 == 0:
                direction = _rotation(rng, len(shape))[0]
                value = value * (1 + texture * np.sin(2 * np.pi * np.tensordot(direction, grid, axes=1) / 4.0))
            label[mask] = c
            image = np.where(mask, value, image)
    image = image + _bias_field(rng, grid, shape, bias)
    image = rng.uniform(0.8, 1.2) * image + rng.uniform(-0.2, 0.2) + rng.normal(0.0, noise_std, size=shape)
    return torch.from_numpy(image.astype(np.float32))[None], torch.from_numpy(label)[None]


class PhantomDataset(Dataset):
    """``length`` phantoms as MONAI-style dicts ``{"image": (1, *S), "label": (1, *S)}``; item i uses seed
    ``seed * 1_000_003 + i``, so two datasets with different seeds share no phantom."""

    def __init__(self, length: int, shape: Sequence[int], *, num_classes: int = 3, seed: int = 0, **phantom_args):
        self.length = check_int("length", length)
        self.shape = _check_shape(shape)
        self.num_classes = num_classes
        self.seed = check_int("seed", seed, low=0)  # -1 or 0.5 failed at the first item, naming no argument
        self.phantom_args = dict(phantom_args)
        make_phantom(self.shape, num_classes=num_classes, seed=0, **self.phantom_args)  # validates the options now

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a PhantomDataset of length {self.length}.")
        index = index % self.length
        image, label = make_phantom(
            self.shape, num_classes=self.num_classes, seed=self.seed * 1_000_003 + index, **self.phantom_args
        )
        return {"image": image, "label": label}
