"""TensorBoard images of a validation volume: image, label, prediction and uncertainty (MONAI
``plot_2d_or_3d_image``: animated GIFs through the first spatial axis for 3D) plus colour overlays of the middle
slice (MONAI ``blend_images``)."""

from __future__ import annotations

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from monai.visualize import blend_images, plot_2d_or_3d_image

__all__ = ["log_validation_images", "middle_slice"]


def middle_slice(volume: torch.Tensor) -> torch.Tensor:
    """(C, *S) -> (C, H, W): the middle slice along the last spatial axis (axial for RAS volumes); 2D passes."""
    if volume.ndim == 3:
        return volume
    return volume[..., volume.shape[-1] // 2]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Min-max scale to [0, 1] (a constant array becomes zeros)."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else torch.zeros_like(x)


def log_validation_images(
    logger,
    step: int,
    image: torch.Tensor,
    label: torch.Tensor,
    prediction: torch.Tensor,
    uncertainty: torch.Tensor | None,
    *,
    num_classes: int,
    prefix: str = "val",
) -> list[str]:
    """Draw batch element 0 of image (B, C, *S), label and prediction (B, 1, *S) and uncertainty (B, 1, *S) or None.

    Writes nothing unless ``logger`` is a ``TensorBoardLogger``. Returns the tags given to MONAI / the writer (MONAI
    appends ``_HWD`` for 3D GIFs and ``_HW`` for 2D images).
    """
    if not isinstance(logger, TensorBoardLogger):
        return []
    writer = logger.experiment
    # labels are scaled by K - 1 so that a class keeps its colour whatever classes a volume happens to hold
    scale = float(max(num_classes - 1, 1))
    volumes = {
        "image": image[:1, :1].float(),
        "label": label[:1].float() / scale,
        "prediction": prediction[:1].float() / scale,
    }
    if uncertainty is not None:
        volumes["uncertainty"] = uncertainty[:1].float()
    tags = []
    for name, volume in volumes.items():
        plot_2d_or_3d_image(volume.detach().cpu(), step, writer, max_channels=1, tag=f"{prefix}/{name}")
        tags.append(f"{prefix}/{name}")
    base = _unit(middle_slice(volumes["image"][0].detach().cpu()))  # (1, H, W) in [0, 1]
    for name in ("label", "prediction", "uncertainty"):
        if name not in volumes:
            continue
        overlay = middle_slice(volumes[name][0].detach().cpu())  # (1, H, W)
        overlay = _unit(overlay) if name == "uncertainty" else overlay.clamp(0, 1)
        cmap = "hot" if name == "uncertainty" else "hsv"
        rgb = blend_images(base, overlay, alpha=0.5, cmap=cmap, rescale_arrays=False)  # (3, H, W)
        writer.add_image(f"{prefix}/overlay_{name}", torch.as_tensor(rgb).clamp(0, 1), step, dataformats="CHW")
        tags.append(f"{prefix}/overlay_{name}")
    return tags
