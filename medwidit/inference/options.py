"""Runtime options of the predictor: device, autocast precision, progress bars, a bundle's plain inference settings."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from monai.utils import look_up_option

from .io import InputError

__all__ = ["BUNDLE_OPTIONS", "PRECISIONS", "autocast_dtype", "bundle_options", "progress_callback", "resolve_device"]

logger = logging.getLogger(__name__)

PRECISIONS = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BUNDLE_OPTIONS = ("roi_size", "sw_batch_size", "steps", "num_samples", "overlap")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available; use --device cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s).")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {str(device)!r}.")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The network's autocast dtype for ``precision`` on ``device``; None means plain float32."""
    precision = look_up_option(precision, PRECISIONS)
    if device.type != "cuda":
        if precision in ("bfloat16", "float16"):
            logger.warning("precision %s is only used on CUDA; running float32 on %s.", precision, device)
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return PRECISIONS[precision] if precision != "float32" else None


def progress_callback(progress, steps: int, description: str):
    """``progress``: False (none), True (a tqdm bar over the denoising steps) or a callable given each step's dict."""
    if callable(progress) or not progress:
        return progress or None
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=description, unit="step", leave=False)

    def update(info: dict) -> None:
        bar.update(1)
        if info.get("i") == steps - 1:
            bar.close()

    return update


def bundle_options(bundle_dir: str | os.PathLike) -> dict:
    """Plain (non-expression) ``roi_size``, ``sw_batch_size``, ``steps``, ``num_samples``, ``overlap`` from a bundle's
    ``configs/inference.json``, falling back to ``configs/train.json`` key by key."""
    found: dict = {}
    for name in ("inference.json", "train.json"):
        path = Path(bundle_dir) / "configs" / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: not readable JSON ({e}).") from e
        for key in BUNDLE_OPTIONS:
            value = config.get(key)
            if key not in found and value is not None and not (isinstance(value, str) and value[:1] in "$@%"):
                found[key] = value
    return found
