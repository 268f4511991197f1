"""Tiny NIfTI datasets, decathlon data lists and tiny segmenters for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medwidit.diffusion import DiffusionSegmenter, to_probabilities
from medwidit.nets import WiDiT

PREPROCESSING_3D = {"orientation": "RAS", "spacing": None, "intensity": "zscore_nonzero", "num_modalities": 1,
                    "bias_correction": None, "air_threshold": None, "anti_aliasing": False}  # fmt: skip
PREPROCESSING_2D = {"orientation": "RA", "spacing": None, "intensity": "zscore_nonzero", "num_modalities": 1,
                    "bias_correction": None, "air_threshold": None, "anti_aliasing": False}  # fmt: skip


def nested_cubes(shape, num_classes: int, offset: int = 0) -> np.ndarray:
    """Concentric boxes: class k fills the box shrunk by 3k voxels per side from a box 4 voxels in (int16)."""
    label = np.zeros(shape, np.int16)
    for k in range(1, num_classes):
        m = 4 + 3 * (k - 1) + offset
        label[tuple(slice(m, s - m) for s in shape)] = k
    return label


def write_case(root: Path, name: str, shape, num_classes: int, rng, spacing: float = 1.0) -> dict:
    """Image = label + 1 + noise (zero outside a 2-voxel border, so that the foreground crop has work to do)."""
    label = nested_cubes(shape, num_classes, offset=int(rng.integers(0, 2)))
    image = (label + 1.0 + rng.normal(0, 0.2, shape)).astype(np.float32)
    border = tuple(slice(2, s - 2) for s in shape)
    mask = np.zeros(shape, bool)
    mask[border] = True
    image[~mask] = 0
    affine = np.diag([spacing, spacing, spacing, 1.0])  # NIfTI keeps a 4x4 affine for 2D images too
    nib.save(nib.Nifti1Image(image, affine), root / f"{name}_image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / f"{name}_label.nii.gz")
    return {"image": f"{name}_image.nii.gz", "label": f"{name}_label.nii.gz"}


def write_dataset(root: Path, *, num_train=2, num_val=1, shape=(24, 24, 24), num_classes=3, seed=0) -> Path:
    """Write cases under root and a data list ``datalist.json`` with relative paths; returns the list's path."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = [write_case(root, f"case{i}", shape, num_classes, rng) for i in range(num_train + num_val)]
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": cases[:num_train], "validation": cases[num_train:]}))
    return path


def tiny_segmenter(num_classes: int = 3, spatial_dim: int = 3, **options) -> DiffusionSegmenter:
    net = WiDiT(
        spatial_dim=spatial_dim,
        patch_size=4,
        in_channels=num_classes,
        out_channels=num_classes,
        cond_channels=1,
        hidden_size=32,
        depth=1,
        num_heads=2,
        window_size=4,
        learn_sigma=False,
    )
    return DiffusionSegmenter(net, num_classes=num_classes, **options)


def whole_volume_sampler(steps: int = 1, num_samples: int = 1):
    """A validation sampler that runs the network on the whole volume (the bundle injects the sliding-window one):
    the mean probability's argmax, and its entropy as the uncertainty."""

    def sample(segmenter, image, generator):
        samples = segmenter.sample(image, steps=steps, num_samples=num_samples, generator=generator)
        p = to_probabilities(samples, dim=2).mean(0)  # (B, K, *S)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(1, keepdim=True)
        return {"labels": p.argmax(1, keepdim=True), "mean_probability": p, "entropy": entropy}

    return sample
