"""The widest float a device holds: float64 for exact sums and schedule arithmetic, float32 on Apple's MPS."""

from __future__ import annotations

import torch

__all__ = ["wide_float"]


def wide_float(device: torch.device | str | None) -> torch.dtype:
    """float64, or float32 on MPS, which has no float64 (a float64 tensor there is a TypeError); ``None`` is the CPU."""
    return torch.float32 if device is not None and torch.device(device).type == "mps" else torch.float64
