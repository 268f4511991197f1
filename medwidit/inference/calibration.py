"""A per-case Dice estimate fitted on validation cases with known truth.

The ensemble's own estimate (``trust.estimated_dice``: how well the answer agrees with each member) sees only what
the members disagree about. An ensemble that is wrong in the same way in every member (a scan unlike any the model
saw) scores near 1 all the same: on the shifted cases of ``benchmarks/trust.py`` it stayed between 0.95 and 0.99
while the true Dice fell to 0.57. What does move with the error is already in the case's quality report: how much of
the full-resolution foreground the coarse pass's region held (``localization.kept``: the two grids disagree where
one of them is wrong), how far a class volume lies outside the range the task expects, and the entropy over the
foreground (the epistemic part: where sets of weights disagree), and whether the image shows an edge where the
class ends (``boundary_overlap``: members that agree on a boundary no edge supports, an inverted contrast
segmented as a T1, leave the voxels just outside it looking like those just inside). A multiplicative model over
these,

    predicted Dice = clip(exp(intercept + sum_i weight_i * feature_i), 0, 1)

turns them into a Dice estimate. With intercept 0 and weights 1, 1, -1 on the first three features below
(``PRODUCT_RULE``) it is the product ``ensemble Dice x kept x exp(-volume outside)``: a share of the foreground the
two grids dispute, or a volume a factor e outside its range, scales the estimate down. ``fit_calibration`` fits the
weights to validation cases whose truth is known (``benchmarks/quality_calibration.py`` chooses between the product
rule and such fits by leave-one-case-out error; never on the test scans).

A bundle declares it in ``configs/inference.json``::

    "quality_calibration": {"intercept": 0.0, "weights": {"log_ensemble_dice": 1.0, "log_kept": 1.0,
                                                          "volume_outside": -1.0}}

The features (per foreground class k, from ``trust.quality_report``'s dict):

    log_ensemble_dice      log of the ensemble's own estimate of class k
    log_kept               log of the share of the full-resolution foreground that the localization's region held,
                           at least the pass's ``min_kept`` (below it nothing was cut: the share says the passes
                           disagree, not by how much); 0 without the pass (no evidence either way)
    volume_outside         log distance of the class volume outside ``expected_volume_ml``, at most log(1000)
                           (0 inside the range, or where the bundle declares none)
    epistemic_foreground   mean epistemic entropy over the predicted foreground, nats
    total_foreground       mean predictive entropy over the predicted foreground, nats
    log_boundary           log((1 - boundary_overlap) / (1 - BOUNDARY_KNEE)), at most 0: 0 while at most 80% of
                           the voxels within 3 mm outside the class look like those within 3 mm inside it (every
                           validation case above Dice 0.85 stayed below 0.70), falling as its boundary stops
                           separating anything; 0 without the report's ``boundary_overlap`` (no evidence). A
                           boundary no edge supports reads about 0.8 (``trust.boundary_overlap``), so the knee sits
                           at "no edge" and the feature cannot tell it from a weak edge (from a review). Not in
                           the shipped bundle's calibration: its fit lowered the validation error and raised the
                           trust cases' (``benchmarks/results/trust_boundary.json``)
    log_atlas_kept         log of the share of the members' foreground the atlas prior's region held
                           (``atlas_prior.kept``), at least its ``min_kept``; 0 without a prior or where the template
                           did not register (no evidence)
    log_atlas_dice         log of ``atlas_prior.template_dice``: the Dice of the written foreground with the
                           registered template's mask (``atlas.template_dice``; the foreground as a whole, so every
                           foreground class reads the same figure), an answer that shares none of the
                           network's failure modes (a contrast it never saw, a coil field that hides brain from every
                           member alike); 0 without a prior or where the template did not register, and a calibration
                           that weighs it is then not applied (:func:`missing_evidence`: 0 here would read as
                           perfect agreement)

The background class keeps the ensemble's own figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from medwidit.utils import is_finite_number

from .options import read_inference_config

FEATURES = (
    "log_ensemble_dice", "log_kept", "volume_outside", "epistemic_foreground", "total_foreground", "log_boundary",
    "log_atlas_kept", "log_atlas_dice",
)  # fmt: skip
# each feature's natural direction: +1 where a larger value is evidence of a better answer (agreement, share kept,
# boundary support), -1 where it is evidence of trouble (volume outside its range, entropy); fit_calibration's
# monotone fit holds every weight to it
FEATURE_SIGNS = {
    "log_ensemble_dice": 1, "log_kept": 1, "volume_outside": -1, "epistemic_foreground": -1, "total_foreground": -1,
    "log_boundary": 1, "log_atlas_kept": 1, "log_atlas_dice": 1,
}  # fmt: skip
PRODUCT_RULE = {"intercept": 0.0, "weights": {"log_ensemble_dice": 1.0, "log_kept": 1.0, "volume_outside": -1.0}}
# the warning threshold for the ensemble's own estimate (no calibration, or one skipped for missing evidence):
# benchmarks/trust.py, README
ENSEMBLE_WARN_DICE = 0.955
MIN_DICE = 1e-3  # log_ensemble_dice's floor: an ensemble estimate of 0 (members that never agree) stays finite
MAX_VOLUME_OUTSIDE = math.log(1e3)  # an empty class lies "infinitely" far below its range: capped at a factor 1000
# the boundary overlap above which a class's edge counts as unsupported; chosen with the shells' depth on the 48
# validation cases (benchmarks/boundary_overlap.py, results/boundary_overlap.json)
BOUNDARY_KNEE = 0.8

__all__ = [
    "ENSEMBLE_WARN_DICE",
    "FEATURES",
    "FEATURE_SIGNS",
    "PRODUCT_RULE",
    "apply_calibration",
    "bundle_calibration",
    "bundle_warn_dice",
    "calibrated_dice",
    "case_features",
    "check_calibration",
    "check_warn_dice",
    "fit_calibration",
    "missing_evidence",
]


def check_calibration(spec: Mapping | None, source: str = "quality_calibration") -> dict | None:
    """A bundle's or a caller's ``quality_calibration`` -> ``{"intercept": float, "weights": {feature: float}}`` or
    None (off: the ensemble's own estimate). A ValueError names ``source`` and what is wrong."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or set(spec) - {"intercept", "weights", "chosen_on"} or "weights" not in spec:
        raise ValueError(
            f"{source} must be null or a mapping with intercept and weights (and optionally chosen_on), got {spec!r}."
        )
    intercept, weights = spec.get("intercept", 0.0), spec["weights"]
    if not is_finite_number(intercept):
        raise ValueError(f"{source}: intercept must be a finite number, got {intercept!r}.")
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"{source}: weights must map features ({', '.join(FEATURES)}) to numbers, got {weights!r}.")
    unknown = sorted(set(weights) - set(FEATURES))
    if unknown:
        raise ValueError(f"{source}: unknown feature(s) {unknown}; known: {', '.join(FEATURES)}.")
    bad = {k: v for k, v in weights.items() if not is_finite_number(v)}
    if bad:
        raise ValueError(f"{source}: weights must be finite numbers, got {bad!r}.")
    out = {"intercept": float(intercept), "weights": {k: float(weights[k]) for k in FEATURES if k in weights}}
    return out | ({"chosen_on": str(spec["chosen_on"])} if "chosen_on" in spec else {})


def bundle_calibration(bundle_dir) -> dict | None:
    """The checked ``quality_calibration`` of a bundle's ``configs/inference.json`` (None where it has none)."""
    path, config = read_inference_config(bundle_dir)
    return check_calibration(config.get("quality_calibration"), source=f"{path}: quality_calibration")


def case_features(quality: Mapping, k: int | str, boundary_knee: float = BOUNDARY_KNEE) -> dict[str, float]:
    """Class ``k``'s features (``FEATURES``) from a case's quality report (``trust.quality_report``, with the
    predictor's ``localization`` entry where the pass ran; ``predicted_dice`` is the ensemble's own estimate unless
    ``ensemble_dice`` records it). ``boundary_knee``: ``log_boundary``'s knee (``benchmarks/boundary_overlap.py``
    compares others)."""
    if not is_finite_number(boundary_knee) or not 0.0 <= boundary_knee < 1.0:
        raise ValueError(f"boundary_knee must be a share in [0, 1), got {boundary_knee!r}.")
    key = str(k)
    own = quality.get("ensemble_dice") or quality["predicted_dice"]
    localized = quality.get("localization")
    kept = 1.0 if not localized else max(float(localized["kept"]), float(localized.get("min_kept", 0.0)))
    volume = float(quality["volume_ml"][key])
    bounds = (quality.get("expected_volume_ml") or {}).get(key)
    outside = 0.0
    if bounds is not None:
        low, high = bounds
        below = 0.0 if low <= 0 else math.log(low / volume) if volume > 0 else MAX_VOLUME_OUTSIDE  # a range from 0
        outside = min(MAX_VOLUME_OUTSIDE, max(0.0, below, math.log(max(volume, 1e-12) / high)))
    atlas = quality.get("atlas_prior") or {}
    atlas_kept = 1.0 if atlas.get("kept") is None else float(atlas["kept"])
    if not atlas.get("applied", True):  # nothing was cut: below min_kept the share tells no more (as log_kept's)
        atlas_kept = max(atlas_kept, float(atlas.get("min_kept", 0.0)))
    # where it was cut, the share of its region: since 0.8.0 the guard (guard_kept, within kept_margin_mm) decides
    # the cut, and the 2 mm region may hold less than min_kept (from a review: an applied 0.30 read as 0.5)
    atlas_dice = 1.0 if atlas.get("template_dice") is None else float(atlas["template_dice"])
    maps = quality.get("uncertainty", {})
    overlap = (quality.get("boundary_overlap") or {}).get(key)
    boundary = 0.0
    if overlap is not None:  # 0 up to the knee, then log of how much less of the outside differs than at the knee
        boundary = min(0.0, math.log(max(1.0 - float(overlap), MIN_DICE) / (1.0 - boundary_knee)))
    return {
        "log_ensemble_dice": math.log(max(float(own[key]), MIN_DICE)),
        "log_kept": math.log(max(kept, MIN_DICE)),
        "volume_outside": outside,
        "epistemic_foreground": float(maps.get("epistemic", {}).get("mean_foreground_nats", 0.0)),
        "total_foreground": float(maps.get("total", {}).get("mean_foreground_nats", 0.0)),
        "log_boundary": boundary,
        "log_atlas_kept": math.log(max(atlas_kept, MIN_DICE)),
        "log_atlas_dice": math.log(max(atlas_dice, MIN_DICE)),
    }


def calibrated_dice(features: Mapping[str, float], calibration: Mapping) -> float:
    """``exp(intercept + sum(weight * feature))`` clipped to [0, 1]; 0 where a feature is not finite (a case whose
    report cannot be read is one to check, never one to trust)."""
    value = calibration["intercept"] + sum(w * features[name] for name, w in calibration["weights"].items())
    return float(min(1.0, math.exp(min(value, 0.0)))) if math.isfinite(value) else 0.0


def missing_evidence(quality: Mapping, calibration: Mapping) -> list[str]:
    """The features ``calibration`` weighs that ``quality`` holds no evidence for, where reading them as 0 would pass
    for perfect evidence: ``log_atlas_dice`` without the atlas prior's ``template_dice`` (the prior off, or the
    template not registered). A calibration made mostly of it (the brain bundle's, 0.7.1) would otherwise predict a
    Dice near 1 for any case."""
    atlas = quality.get("atlas_prior") or {}
    return [name for name in calibration["weights"] if name == "log_atlas_dice" and atlas.get("template_dice") is None]


def case_warn_dice(quality: Mapping | None, warn_dice: float | None) -> float | None:
    """The threshold a case's predicted Dice is judged by, given the predictor's ``warn_dice`` (chosen for its
    calibrated estimate): ``ENSEMBLE_WARN_DICE`` where the report's calibration was skipped (:func:`apply_calibration`:
    the ensemble's own estimate, which stays near 1, at the calibration's threshold would never warn); None: none."""
    skipped = ((quality or {}).get("calibration") or {}).get("skipped")
    return ENSEMBLE_WARN_DICE if warn_dice is not None and skipped else warn_dice


def apply_calibration(quality: dict, calibration: Mapping | None) -> dict:
    """A quality report whose ``predicted_dice`` of every foreground class is the calibrated estimate (and
    ``min_predicted_dice`` with it); the ensemble's own figures move to ``ensemble_dice``, the calibration and
    each class's features to ``calibration``; the report unchanged where ``calibration`` is None. Where the report
    lacks evidence the calibration needs (:func:`missing_evidence`) the ensemble's own figures stay, and
    ``calibration`` says which: ``{"skipped": [features]}``."""
    if calibration is None:
        return quality
    own = dict(quality.get("ensemble_dice") or quality["predicted_dice"])  # applied twice: the same report
    missing = missing_evidence(quality, calibration)
    if missing:
        foreground = [v for k, v in own.items() if k != "0"]
        return {
            **quality,
            "predicted_dice": own,
            "min_predicted_dice": min(foreground) if foreground else own["0"],
            "calibration": {"skipped": missing},
        }
    features = {k: case_features({**quality, "ensemble_dice": own}, k) for k in own if k != "0"}
    predicted = {k: (calibrated_dice(features[k], calibration) if k in features else v) for k, v in own.items()}
    foreground = [v for k, v in predicted.items() if k != "0"]
    return {
        **quality,
        "predicted_dice": predicted,
        "min_predicted_dice": min(foreground) if foreground else predicted["0"],
        "ensemble_dice": own,
        "calibration": {**calibration, "features": features},
    }


def fit_calibration(
    features: Sequence[Mapping[str, float]],
    true_dice: Sequence[float],
    names: Sequence[str],
    f_scale: float = 0.05,
    monotone: bool = False,
) -> dict:
    """The intercept and the weights of ``names`` that fit ``true_dice`` (scipy's ``least_squares`` on the Dice
    residuals with a soft-L1 loss of scale ``f_scale``: a few scans that fail completely do not pull every other
    estimate down), started from ``PRODUCT_RULE`` -> a ``quality_calibration``. ``monotone``: each weight bounded to
    its feature's sign (``FEATURE_SIGNS``), so better evidence never lowers the estimate. Unbounded, two correlated
    features can take opposite weights (0.9.0's fit weighs the ensemble's own estimate at -0.49); the brain bundle's
    validation cases chose the unbounded fit all the same (``benchmarks/results/quality_calibration_monotone.json``)."""
    from scipy.optimize import least_squares

    unknown = sorted(set(names) - set(FEATURES))
    if unknown or not names:
        raise ValueError(f"names must be a non-empty subset of {', '.join(FEATURES)}, got {list(names)!r}.")
    if len(features) != len(true_dice):
        raise ValueError(f"features and true_dice must be one per case, got {len(features)} and {len(true_dice)}.")
    if len(features) <= len(names) + 1:
        raise ValueError(f"need more cases ({len(features)}) than parameters ({len(names) + 1}), one Dice each.")
    design = np.array([[1.0] + [float(f[n]) for n in names] for f in features])
    true = np.asarray(true_dice, dtype=np.float64)
    start = [0.0] + [PRODUCT_RULE["weights"].get(n, 0.0) for n in names]  # within the bounds below
    bounds = (-np.inf, np.inf)
    if monotone:
        bounds = ([-np.inf] + [0.0 if FEATURE_SIGNS[n] > 0 else -np.inf for n in names],
                  [np.inf] + [np.inf if FEATURE_SIGNS[n] > 0 else 0.0 for n in names])  # fmt: skip

    def residuals(theta: np.ndarray) -> np.ndarray:  # unclipped: smooth, and equal to the clipped where it is < 1
        return np.exp(design @ theta) - true

    tolerances = {"xtol": 1e-12, "ftol": 1e-12, "gtol": 1e-12}
    theta = least_squares(residuals, start, bounds=bounds, loss="soft_l1", f_scale=f_scale, **tolerances).x
    return {"intercept": float(theta[0]), "weights": {n: float(w) for n, w in zip(names, theta[1:], strict=True)}}


def check_warn_dice(value, source: str = "warn_dice") -> float | None:
    """A warning threshold on the predicted Dice: a number in (0, 1], or 0 or None (no warning line, as ``medwidit
    segment --warn-dice 0``); a ValueError names ``source``."""
    if value is None:
        return None
    if not is_finite_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{source} must be in [0, 1] or None, got {value!r}.")
    return float(value) or None


def bundle_warn_dice(bundle_dir, default: float | None) -> float | None:
    """The checked ``warn_dice`` of a bundle's ``configs/inference.json`` (``default`` where it has none)."""
    path, config = read_inference_config(bundle_dir)
    if "warn_dice" not in config:
        return default
    return check_warn_dice(config["warn_dice"], source=f"{path}: warn_dice")
