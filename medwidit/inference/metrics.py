"""Segmentation and uncertainty quality: Dice per class (the project's one Dice, also between files for the bundle's
``evaluate.json``), HD95, AUROC of an uncertainty map for finding wrong voxels, expected calibration error, and the
boundary band where those numbers mean something.

Dice and HD95 are MONAI's (``DiceMetric``, ``compute_hausdorff_distance`` with ``percentile=95`` and the voxel
spacing). torchmetrics gives an AUROC that scales to millions of voxels (``binary_auroc``, one sort, float32;
``monai.metrics.compute_roc_auc`` walks the sorted scores in a Python loop). The calibration bins are counted here, in
float64 (``_binned_ece``): MONAI's ``calibration_binning`` and ``CalibrationErrorMetric`` accumulate in float32, which
scored a calibrated 1 mm brain grid (7.2M voxels) 1.3e-3 instead of 1.3e-5 and stops counting a bin past 2^24
voxels; torchmetrics' ``multiclass_calibration_error`` puts a confidence of exactly 1 in a bin of its own.

Empty ground truth is scored, not skipped: ``DiceMetric(ignore_empty=False)`` gives 1 when the prediction of an
absent class is empty too and 0 when it is not, so every case counts for every class and no mean is a NaN.

Background dominates a whole-volume number: most voxels lie far from any edge, are right, and carry no uncertainty,
so AUROC and ECE look good there whatever the model does. ``boundary_band`` selects the voxels within a few mm of
either the predicted or the true boundary, where segmentations are actually wrong; report both.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance
from monai.networks.utils import one_hot
from monai.transforms import LoadImage
from monai.transforms.utils import distance_transform_edt
from torchmetrics.functional.classification import binary_auroc

from medwidit.diffusion.encoding import class_index
from medwidit.utils import atomic_write, check_bool, check_int, voxel_reorder

__all__ = [
    "auroc",
    "boundary_band",
    "boundary_distance",
    "check_report",
    "dice_per_class",
    "evaluate_files",
    "expected_calibration_error",
    "segmentation_metrics",
    "uncertainty_quality",
]

logger = logging.getLogger(__name__)


def _tensor(x, dtype=None) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return x if dtype is None else x.to(dtype)


def _spacing(spacing, spatial_dims: int) -> tuple[float, ...]:
    spacing = (1.0,) * spatial_dims if spacing is None else tuple(float(s) for s in np.atleast_1d(spacing))
    if len(spacing) == 1:
        spacing = spacing * spatial_dims
    if len(spacing) != spatial_dims or min(spacing) <= 0:
        raise ValueError(f"spacing must be one positive value or one per spatial axis ({spatial_dims}), got {spacing}.")
    return spacing


def auroc(score, target) -> float:
    """Area under the ROC curve of ``score`` for the binary ``target`` (any equal shapes), torchmetrics
    ``binary_auroc``: the Mann-Whitney U over ``n_pos * n_neg`` with ties counted as half. NaN when ``target`` has a
    single class (torchmetrics would return 0 with a warning)."""
    score, target = _tensor(score).flatten().double(), _tensor(target).flatten().bool()
    if score.shape != target.shape:
        raise ValueError(
            f"score and target must have the same number of elements, got {score.numel()} and {target.numel()}."
        )
    n_pos = int(target.sum())
    if n_pos == 0 or n_pos == target.numel():
        return float("nan")
    # onto [0, 1] (monotone, ties kept): torchmetrics takes other scores for logits and squashes them with a sigmoid
    span = score.max() - score.min()
    unit = (score - score.min()) / span if span > 0 else torch.zeros_like(score)
    return float(binary_auroc(unit, target.long(), validate_args=False))


def expected_calibration_error(probability, label, *, num_bins: int = 15) -> dict[str, float]:
    """ECE of class probabilities (K, N...) against integer labels (N...), equal-width bins on [0, 1]:

    - ``ece``: top-label ECE (Guo et al. 2017), ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` with confidence
      ``max_K p`` and accuracy ``argmax_K p == label``, bins ``[b, b + 1/n)`` with 1 in the last;
    - ``ece_classwise``: the same binning of each class's ``p_k`` against ``label == k`` (the "expected" reduction
      of MONAI's ``CalibrationErrorMetric``), averaged over the classes.
    """
    probability, label = _tensor(probability).float(), _tensor(label).long()
    if probability.ndim < 2 or tuple(probability.shape[1:]) != tuple(label.shape):
        raise ValueError(
            f"probability must be (K, *S) and label (*S), got {tuple(probability.shape)} and {tuple(label.shape)}."
        )
    check_int("num_bins", num_bins)
    if label.numel() == 0:
        return {"ece": float("nan"), "ece_classwise": float("nan")}
    k = probability.shape[0]
    probability = probability.reshape(k, -1).contiguous()  # (K, N)
    confidence, prediction = probability.max(dim=0)
    flat = label.flatten()
    ece = _binned_ece(confidence, prediction == flat, num_bins)
    classwise = [_binned_ece(probability[c], flat == c, num_bins) for c in range(k)]
    return {"ece": ece, "ece_classwise": float(np.mean(classwise))}


def _binned_ece(confidence: torch.Tensor, hit: torch.Tensor, num_bins: int) -> float:
    """``sum_b |B_b| / N * |mean hit - mean confidence|`` over equal-width bins ``[b, b + 1/n)`` (1 in the last),
    counted in float64 (see the module docstring for why not MONAI's bins): ``|sum_b p - sum_b hit| / N``."""
    p = confidence.double().flatten()
    index = (p * num_bins).long().clamp_(0, num_bins - 1)
    sum_p = torch.bincount(index, weights=p, minlength=num_bins)
    sum_hit = torch.bincount(index, weights=hit.double().flatten(), minlength=num_bins)
    return float((sum_p - sum_hit).abs().sum() / p.numel())


def _edges(label: torch.Tensor) -> torch.Tensor:
    """Voxels of an integer map (*S) with a face neighbour of another label, on both sides of every interface."""
    edges = torch.zeros_like(label, dtype=torch.bool)
    for axis in range(label.ndim):
        n = label.shape[axis]
        differs = label.narrow(axis, 1, n - 1) != label.narrow(axis, 0, n - 1)
        edges.narrow(axis, 1, n - 1).logical_or_(differs)
        edges.narrow(axis, 0, n - 1).logical_or_(differs)
    return edges


def boundary_distance(labels: Sequence, *, spacing=None) -> torch.Tensor:
    """Float32 (*S): each voxel's Euclidean distance in mm (with ``spacing``) to the nearest boundary voxel of any of
    the integer label maps (*S), e.g. ``[prediction, truth]``; inf everywhere where none has a boundary. A boundary
    voxel has a face neighbour of another label; the volume's own faces are not boundaries."""
    if not labels:
        raise ValueError("labels must hold at least one label map.")
    maps = [_tensor(m).long() for m in labels]
    if any(m.shape != maps[0].shape for m in maps):
        raise ValueError(f"label maps must share one shape, got {[tuple(m.shape) for m in maps]}.")
    edges = torch.zeros_like(maps[0], dtype=torch.bool)
    for m in maps:
        edges |= _edges(m)
    if not edges.any():
        return torch.full(edges.shape, float("inf"))
    sampling = list(_spacing(spacing, edges.ndim))
    distance = distance_transform_edt((~edges)[None].numpy().astype(np.uint8), sampling=sampling)[0]  # mm
    return torch.as_tensor(np.asarray(distance, dtype=np.float32))


def boundary_band(labels: Sequence, *, width_mm: float, spacing=None) -> torch.Tensor:
    """Bool mask (*S) of voxels within ``width_mm`` (Euclidean, in mm with ``spacing``) of a boundary of any of the
    integer label maps (*S) (:func:`boundary_distance`)."""
    if not width_mm >= 0:
        raise ValueError(f"width_mm must be >= 0, got {width_mm}.")
    return boundary_distance(labels, spacing=spacing) <= width_mm


def dice_per_class(prediction: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer label maps (B, 1, *S) -> Dice (B, K) per class, background included: MONAI ``DiceMetric`` with
    ``ignore_empty=False`` (see the module text)."""
    prediction, truth = _tensor(prediction), _tensor(truth)
    if prediction.shape != truth.shape or prediction.ndim < 3 or prediction.shape[1] != 1:
        raise ValueError(
            f"prediction and truth must both be (B, 1, *spatial), got {tuple(prediction.shape)} and "
            f"{tuple(truth.shape)}."
        )
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False, num_classes=num_classes)
    return metric(y_pred=prediction, y=truth).float()


def segmentation_metrics(prediction, truth, *, num_classes: int, spacing=None) -> dict[str, list[float]]:
    """Dice and HD95 (mm) per class of integer label maps (*S) -> ``{"dice": [K], "hd95": [K]}``.

    Dice: MONAI ``DiceMetric(ignore_empty=False)``, background included (1 when a class is absent from both). HD95:
    MONAI ``compute_hausdorff_distance(percentile=95, spacing=spacing)``, symmetric, for the foreground classes; NaN
    for the background (its boundary is the union of the others') and for a class absent from the truth, inf when
    the prediction misses a class that the truth has.
    """
    prediction, truth = _tensor(prediction).long(), _tensor(truth).long()
    if prediction.shape != truth.shape:
        raise ValueError(
            f"prediction and truth must have one shape, got {tuple(prediction.shape)} and {tuple(truth.shape)}."
        )
    for name, m in (("prediction", prediction), ("truth", truth)):
        if m.numel() and (m.min() < 0 or m.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}: {int(m.min())}..{int(m.max())}.")
    dice_k = dice_per_class(prediction[None, None], truth[None, None], num_classes)[0]  # (K,)
    pred_1h = one_hot(prediction[None, None], num_classes=num_classes, dim=1)
    truth_1h = one_hot(truth[None, None], num_classes=num_classes, dim=1)
    hd = torch.full((num_classes,), math.nan)
    spacing = _spacing(spacing, prediction.ndim)
    with warnings.catch_warnings():
        # MONAI 1.5-1.6's own compute_hausdorff_distance passes get_mask_edges its deprecated argument: the warning is
        # about MONAI's code, and it printed into every notebook that scored a case
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        for k in range(1, num_classes):  # MONAI warns on every empty class; absent classes are set here instead
            has_truth, has_pred = bool(truth_1h[0, k].any()), bool(pred_1h[0, k].any())
            if has_truth and not has_pred:
                hd[k] = math.inf
            elif has_truth:
                hd[k] = compute_hausdorff_distance(
                    pred_1h[:, k : k + 1],
                    truth_1h[:, k : k + 1],
                    include_background=True,
                    percentile=95,
                    spacing=list(spacing),
                )[0, 0]
    return {"dice": [float(v) for v in dice_k], "hd95": [float(v) for v in hd]}


def uncertainty_quality(probability, uncertainty, truth, *, band=None, num_bins: int = 15) -> dict[str, dict]:
    """How well a probability map (K, *S) and an uncertainty map (*S) (e.g. predictive entropy) describe the errors
    of ``argmax_K probability`` against ``truth`` (*S): ``{"volume": {...}, "band": {...}}`` (band only when a bool
    ``band`` mask is given), each with ``voxels``, ``error_rate``, ``auroc`` (uncertainty ranking wrong voxels above
    right ones), ``ece`` (top-label) and ``ece_classwise``."""
    probability, uncertainty, truth = _tensor(probability).float(), _tensor(uncertainty).float(), _tensor(truth).long()
    if tuple(probability.shape[1:]) != tuple(truth.shape) or uncertainty.shape != truth.shape:
        raise ValueError(
            f"probability (K, *S), uncertainty (*S) and truth (*S) must share *S, got {tuple(probability.shape)}, "
            f"{tuple(uncertainty.shape)} and {tuple(truth.shape)}."
        )
    wrong = class_index(probability, 0) != truth
    regions = {"volume": None}
    if band is not None:
        band = _tensor(band).bool()
        if band.shape != truth.shape:
            raise ValueError(f"band must have the shape of truth {tuple(truth.shape)}, got {tuple(band.shape)}.")
        regions["band"] = band
    out = {}
    for name, mask in regions.items():
        if mask is None:
            p, u, t, w = probability, uncertainty, truth, wrong
        else:
            p, u, t, w = probability[:, mask], uncertainty[mask], truth[mask], wrong[mask]
        out[name] = {
            "voxels": int(t.numel()),
            "error_rate": float(w.float().mean()) if t.numel() else float("nan"),
            "auroc": auroc(u, w),
            **expected_calibration_error(p, t, num_bins=num_bins),
        }
    return out


#######################################################################################################################
# files: the bundle's evaluate.json
#######################################################################################################################


def _load(path: str | os.PathLike) -> tuple[torch.Tensor, np.ndarray]:
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))  # (1, *S) MetaTensor
    return image.as_tensor().round().long(), np.asarray(image.affine, dtype=np.float64)


def check_report(output_file: str | os.PathLike | None, overwrite) -> bool:
    """``overwrite`` as a bool (a bundle's command line gives "false"); a FileExistsError naming ``output_file`` if it
    exists and may not be replaced: :func:`evaluate_files` calls it, and the bundle's evaluate.json at its start, so
    that a second evaluation into one report is refused before it samples."""
    overwrite = check_bool("overwrite", overwrite)
    if output_file is not None and not overwrite and Path(output_file).exists():
        raise _report_exists(output_file)
    return overwrite


def _report_exists(path: str | os.PathLike) -> FileExistsError:
    return FileExistsError(
        f"{path}: already exists; pass overwrite (the bundle: --overwrite true, or another --metrics_file) to "
        "replace it."
    )


def evaluate_files(
    predictions: Sequence[str | os.PathLike],
    labels: Sequence[str | os.PathLike],
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    output_file: str | os.PathLike | None = None,
    atol: float = 1e-3,
    overwrite: bool = False,
) -> dict:
    """Dice per class between predicted and ground-truth label files, case by case, on the label's own grid.

    A prediction must have its label's shape and affine (within ``atol``: predictions are written with the input's
    geometry), or be the label's grid with the voxels in another order (``utils.voxel_reorder``: a label stored LAS
    beside an RAS image), which is scored voxel by voxel at the same points. Returns ``{"num_cases", "class_names",
    "mean": {name: dice}, "mean_foreground", "cases": [...]}`` and writes it as JSON to ``output_file``
    (atomically) when given; an existing ``output_file`` is a FileExistsError naming it, before anything is scored,
    unless ``overwrite``.
    """
    overwrite = check_report(output_file, overwrite)
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
        for path, values in ((pred_path, prediction), (label_path, label)):  # MONAI's Dice drops them without a word
            if values.numel() and (values.min() < 0 or values.max() >= num_classes):
                raise ValueError(
                    f"{path}: holds label {int(values.max() if values.max() >= num_classes else values.min())}, "
                    f"outside the class indices 0..{num_classes - 1} (num_classes={num_classes}); a 0/255 mask "
                    "needs its 255 mapped to 1."
                )
        if prediction.shape != label.shape or not np.allclose(pred_affine, label_affine, atol=atol):
            reorder = voxel_reorder(prediction.shape[1:], pred_affine, label.shape[1:], label_affine, atol)
            if reorder is None:
                raise ValueError(
                    f"prediction {pred_path} (shape {tuple(prediction.shape)}) is not on the grid of label "
                    f"{label_path} (shape {tuple(label.shape)}); predictions must keep the input's geometry."
                )
            # the label's lattice in another voxel order (LAS against RAS): its voxels in the prediction's order
            axes, flips = reorder
            label = label.permute(0, *(a + 1 for a in axes)).flip([f + 1 for f in flips])
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
        path = Path(output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)), overwrite=overwrite)
        except FileExistsError:  # written by another run meanwhile
            raise _report_exists(path) from None
        logger.info("wrote Dice of %d cases to %s (mean foreground %.4f)", len(cases), output_file, mean[1:].mean())
    return report


def _named(values: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values.tolist(), strict=True)}
