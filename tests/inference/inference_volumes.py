"""Helpers for the inference tests: oblique (rotated, flipped, anisotropic) images on disk, a random tiny
segmenter, and oracle networks whose segmentation is known."""

import json

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn


def oblique_affine(spatial_dims: int = 3) -> np.ndarray:
    """A RAS affine that rotates 30 degrees about two axes, flips one axis and has anisotropic spacing."""
    a, b = np.deg2rad(30.0), np.deg2rad(-20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-1.0, 1.0, 1.0]) @ np.diag([0.7, 1.3, 2.9])
    affine[:3, 3] = [12.5, -40.25, 3.0]
    if spatial_dims == 2:
        affine[:3, :3] = np.diag([-0.7, 1.3, 1.0])
    return affine


def save_nifti(path, data, affine=None):
    image = nib.Nifti1Image(np.asarray(data), oblique_affine(min(np.ndim(data), 3)) if affine is None else affine)
    image.header.set_qform(image.affine, code=1)
    nib.save(image, str(path))
    return path


def save_itk(path, data):
    """``data`` in (i, j, k) order, written with an oblique LPS geometry through SimpleITK."""
    import SimpleITK as sitk

    data = np.asarray(data)
    image = sitk.GetImageFromArray(data.transpose(tuple(range(data.ndim))[::-1]))
    n = data.ndim
    affine = oblique_affine(n)
    direction = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(direction, axis=0)
    image.SetSpacing(tuple(spacing[:n]))
    image.SetOrigin(tuple((np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3])[:n]))
    image.SetDirection(tuple((direction / spacing)[:n, :n].ravel()))
    sitk.WriteImage(image, str(path))
    return path


def random_tiny_segmenter(modalities: int = 1, classes: int = 2, scale: float = 0.05, seed: int = 0):
    """A one-block WiDiT segmenter with seeded random weights everywhere (not the adaLN-Zero constant at init), so
    that maps vary in space and with the ensemble seed."""
    import torch

    from medwidit.diffusion import DiffusionSegmenter
    from medwidit.nets import WiDiT

    net = WiDiT(
        spatial_dim=3,
        in_channels=classes,
        cond_channels=modalities,
        hidden_size=32,
        depth=1,
        num_heads=2,
        window_size=4,
        learn_sigma=False,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))
    return DiffusionSegmenter(net, num_classes=classes)


class ThresholdOracle(nn.Module):
    """Predicts x0 = the encoding of (image > 0.5) exactly: the segmentation is known in the input space."""

    spatial_dim, cond_channels, size_multiple, alignment = 3, 1, (1, 1, 1), (1, 1, 1)  # the network contract

    def forward(self, x, t, conditioned=None):
        foreground = torch.tanh(50 * (conditioned - 0.5))
        return torch.cat([-foreground, foreground], dim=1)


class SpacingOracle(ThresholdOracle):
    """ThresholdOracle with spacing conditioning: records every spacing row it is given (issue 17)."""

    config = {"spacing_conditioning": True}

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, conditioned=None, spacing=None):
        self.seen.append(spacing.clone())
        return super().forward(x, t, conditioned)


def set_inference_key(bundle, key: str, value) -> None:
    """Set one key of a bundle copy's ``configs/inference.json``."""
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))


def run_cli_with_and_without(tmp_path, bundle, flag: str) -> None:
    """``medwidit segment`` of a small ramp with ``bundle`` (1 step, 1 sample, one set, the quality JSON written), into
    ``tmp_path / "a"`` as the bundle has it and ``tmp_path / "b"`` with ``flag``."""
    from medwidit.cli import main

    source = save_nifti(
        tmp_path / "scan.nii.gz", np.linspace(1, 2, 24**3, dtype=np.float32).reshape((24,) * 3), affine=np.eye(4) * 2
    )
    base = ["segment", "-i", str(source), "--bundle", str(bundle), "--steps", "1", "--samples", "1",
            "--weight-sets", "1", "--quiet", "--device", "cpu", "--save-quality", "--warn-dice", "0"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    assert main([*base, "-o", str(tmp_path / "b"), flag]) == 0
