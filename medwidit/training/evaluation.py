"""Dice per class of label maps, in memory and between files, written to JSON (the bundle's ``evaluate.json``).

Empty ground truth is scored, not skipped: MONAI ``DiceMetric(ignore_empty=False)`` gives 1 when the prediction of
an absent class is empty too and 0 when it is not, so every case counts for every class and no mean is a NaN.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.transforms import LoadImage

from medwidit.utils import atomic_write

__all__ = ["dice_per_class", "evaluate_files"]

logger = logging.getLogger(__name__)


def dice_per_class(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer label maps (B, 1, *S) -> Dice (B, K) per class, background included (empty truth handled above)."""
    if prediction.shape != label.shape or prediction.ndim < 3 or prediction.shape[1] != 1:
        raise ValueError(
            f"prediction and label must both be (B, 1, *spatial), got {tuple(prediction.shape)} and "
            f"{tuple(label.shape)}."
        )
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False, num_classes=num_classes)
    return metric(y_pred=prediction, y=label).float()


def _load(path: str | os.PathLike) -> tuple[torch.Tensor, np.ndarray]:
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))  # (1, *S) MetaTensor
    return image.as_tensor().round().long(), np.asarray(image.affine, dtype=np.float64)


def evaluate_files(
    predictions: Sequence[str | os.PathLike],
    labels: Sequence[str | os.PathLike],
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    output_file: str | os.PathLike | None = None,
    atol: float = 1e-3,
) -> dict:
    """Dice per class between predicted and ground-truth label files, case by case, on the label's own grid.

    A prediction must have its label's shape and affine (within ``atol``: predictions are written with the input's
    geometry). Returns ``{"num_cases", "class_names", "mean": {name: dice}, "mean_foreground", "cases": [...]}``
    and writes it as JSON to ``output_file`` (atomically) when given.
    """
    if len(predictions) != len(labels) or not labels:
        raise ValueError(
            f"need as many predictions as labels (at least one), got {len(predictions)} and {len(labels)}."
        )
    names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for num_classes={num_classes}.")
    cases, scores = [], []
    for pred_path, label_path in zip(predictions, labels, strict=True):
        prediction, pred_affine = _load(pred_path)
        label, label_affine = _load(label_path)
        if prediction.shape != label.shape or not np.allclose(pred_affine, label_affine, atol=atol):
            raise ValueError(
                f"prediction {pred_path} (shape {tuple(prediction.shape)}) is not on the grid of label {label_path} "
                f"(shape {tuple(label.shape)}); predictions must keep the input's geometry."
            )
        dice = dice_per_class(prediction[None], label[None], num_classes)[0]  # (K,)
        scores.append(dice)
        cases.append({"prediction": str(pred_path), "label": str(label_path), "dice": _named(dice, names)})
    mean = torch.stack(scores).mean(dim=0)
    report = {
        "num_cases": len(cases),
        "class_names": names,
        "mean": _named(mean, names),
        "mean_foreground": float(mean[1:].mean()),
        "cases": cases,
    }
    if output_file is not None:
        _write_json(report, Path(output_file))
        logger.info("wrote Dice of %d cases to %s (mean foreground %.4f)", len(cases), output_file, mean[1:].mean())
    return report


def _named(values: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values.tolist(), strict=True)}


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))
