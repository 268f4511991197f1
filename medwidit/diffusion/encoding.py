"""Label maps <-> diffusion space.

A label map with K classes (background included) becomes a K-channel one-hot in {-1, +1}: ``x0 = 2 * onehot - 1``.
Back from diffusion space, the inverse ``p = (x + 1) / 2`` is clamped to [0, 1] and renormalised over K, which is
exact for a clean sample and for the mean of clean samples (the per-class vote fraction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medwidit.utils import check_int

__all__ = ["class_index", "encode_labels", "to_probabilities", "to_labels"]


def _check_num_classes(num_classes: int) -> int:
    return check_int("num_classes", num_classes, low=2, hint=" (background counts as a class)")


def encode_labels(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer label map (B, 1, *S) -> one-hot in {-1, +1} (B, K, *S): ``x0 = 2 * onehot(labels) - 1``.

    Float label maps (as MONAI's loaders return) are accepted when every value is a whole number.
    """
    _check_num_classes(num_classes)
    labels = torch.as_tensor(labels)
    if labels.ndim < 3 or labels.shape[1] != 1:
        raise ValueError(f"labels must have shape (B, 1, *spatial), got {tuple(labels.shape)}.")
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError("labels must hold whole class indices, got non-integer values.")
    elif labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}.")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = torch.unique(labels[(labels < 0) | (labels >= num_classes)])[:8].tolist()
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (num_classes={num_classes}), found {bad}.")
    onehot = F.one_hot(labels[:, 0], num_classes).movedim(-1, 1)  # (B, K, *S)
    return onehot.to(dtype) * 2 - 1


def to_probabilities(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Diffusion space (…, K, *S) -> probabilities over K: ``p = clamp((x + 1) / 2, 0, 1) / sum_K``.

    ``dim`` is the class axis: 1 for (B, K, *S), 2 for an ensemble (S, B, K, *S). Where every class is clamped to 0
    the voxel gets the uniform distribution 1/K.
    """
    if x.ndim < 2:
        raise ValueError(f"x must have a class axis and spatial axes, got shape {tuple(x.shape)}.")
    p = ((x.float() + 1) / 2).clamp(0, 1)
    total = p.sum(dim=dim, keepdim=True)
    uniform = torch.full_like(p, 1.0 / x.shape[dim])
    return torch.where(total > 0, p / total.clamp_min(torch.finfo(p.dtype).tiny), uniform)


def class_index(scores: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """``scores.argmax(dim)`` (int64; ties go to the first maximum, as argmax): the indices of ``max``, because torch's
    CPU argmax over an axis that is not the last runs ~15x slower than ``max`` over a (K, *S) volume (measured, torch
    2.13: 1.26 vs 0.08 s for (4, 2, 96, 112, 96)), a second of every brain-extraction case."""
    return scores.max(dim=dim, keepdim=keepdim).indices


def to_labels(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Probabilities (…, K, *S) -> int64 argmax labels (…, 1, *S) over the class axis ``dim``."""
    if probabilities.ndim < 2:
        raise ValueError(f"probabilities must have a class axis, got shape {tuple(probabilities.shape)}.")
    return class_index(probabilities, dim, keepdim=True)
