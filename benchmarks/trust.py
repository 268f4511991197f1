"""Does the uncertainty know when it is wrong? The per-case Dice estimate and the decomposed entropy maps of the
shipped model, checked against known truth over cases whose true Dice spans a range.

Cases: the shipped Colin27 2 mm example, and 1 mm Colin27 (held out from training) and MNI152 (the training anatomy)
from the brain cache, clean and under graded acquisition shifts (one family at a time, strength 1..3):

    thick     thick slices along the superior axis, 3 / 6 / 10 mm (``medwidit.data.synth`` slice profile)
    fov       the field of view ends inside the head: the top 20 / 35 / 50 % of the superior axis is air
    contrast  the bright end of the intensity curve folded back at 80 / 60 / 40 % of the 99.5th percentile (tissue
              order changes, which histogram equalisation cannot undo)
    noise     Rician noise, sigma 5 / 10 / 20 % of the 99.5th percentile
    bias      a multiplicative coil field (MONAI RandBiasField), coefficient 0.3 / 0.6 / 0.9

Every case is sampled once, as ``Predictor.segment(augment=V, weight_sets=W)`` does (``sample_ensemble`` with W sets
of weights, each with V test-time views of S members): the shipped weights, then the bundle's ``extra_weights`` (or
``--extra-weights``). The ensembles compared, "WxV", are subsets of those members (the first weights' first view
alone is exactly the plain run, seed for seed), so their cost ratio is W x V. A bundle with a ``localization`` pass
(``--no-localize``: without it) runs it first with every set of weights and the same seed, as ``Predictor.segment``
does, and every subset's members are restricted to its region (so a one-set subset is cut by both sets' coarse
pass and decision, where ``segment(weight_sets=1)`` would use its own); each ensemble also records ``scale_dice``, the
coarse pass's brain against its own, scored as one more per-case estimate. Reported per ensemble: mean true Dice,
Spearman and mean absolute error between predicted (``trust.estimated_dice``; also ``trust.expected_dice``) and true
Dice of the brain, which cases a ``--warn-dice`` threshold flags (alone, and with the bundle's expected brain volume
as the warning line has it), voxel AUROC of each map (total, aleatoric, epistemic entropy) for wrong voxels inside
the head (and, with the localization pass, of its ``_disagreement`` map and of the total entropy in bits plus it),
and ECE inside the head (``medwidit.inference.metrics``). Where the bundle has a ``quality_calibration``, each
ensemble also records ``calibrated_dice`` (the predictor's estimate of the same report) and the summary scores it
with the whole warning line at the bundle's ``warn_dice``. A case where no brain is found at all scores a
predicted Dice of 0, as the CLI warns about it (``trust.estimated_dice`` alone gives 1: all members agree on nothing).

    python benchmarks/trust.py                      # the shipped bundle's 2 sets x 3 views at its CLI steps, ~40 min
    python benchmarks/trust.py --quick --output /tmp/trust.json   # seconds: 2 mm example only, cropped, 1 step
    python benchmarks/trust.py --rescore benchmarks/results/trust_default.json \\
        --output benchmarks/results/trust_default.json  # no sampling

Writes ``benchmarks/results/trust.json`` and, beside it, ``trust_reliability.png`` and ``trust_dice.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import ROOT, best_threshold, environment, fmt, publish  # benchmarks/ is on sys.path when a script runs
from monai.data import MetaTensor
from monai.transforms import Compose, RandBiasField
from scipy import ndimage, stats

from medwidit.data.synth import thick_slices
from medwidit.data.transforms import preprocessing_transforms
from medwidit.datasets.brain import sources
from medwidit.inference import Predictor, sample_ensemble, summarize_ensemble
from medwidit.inference.atlas import atlas_warning, network_voxels, template_dice
from medwidit.inference.io import geometry_from_affine
from medwidit.inference.localize import (
    decode_regions,
    encode_regions,
    error_score,
    foreground_region,
    kept_warning,
    outside_to_background,
    scale_disagreement,
)
from medwidit.inference.metrics import auroc, dice_per_class, expected_calibration_error
from medwidit.inference.postprocess import apply_label_postprocessing
from medwidit.inference.predictor import uncertainty_maps
from medwidit.inference.trust import (
    augmentation_views,
    check_view_options,
    decompose_entropy,
    estimated_dice,
    expected_dice,
    outside_expected,
)
from medwidit.utils.files import sha256_file

DEFAULT_BUNDLE = ROOT / "bundles" / "brain_widit_segmentation"
EXAMPLE = ROOT / "medwidit" / "data" / "examples" / "colin27_head_2mm_image.nii.gz"
RESULTS = ROOT / "benchmarks" / "results" / "trust.json"
FAMILIES = ("thick", "fov", "contrast", "noise", "bias")
STRENGTHS = {
    "thick": (3.0, 6.0, 10.0),
    "fov": (0.2, 0.35, 0.5),
    "contrast": (0.8, 0.6, 0.4),
    "noise": (0.05, 0.1, 0.2),
    "bias": (0.3, 0.6, 0.9),
}
MAPS = ("total", "aleatoric", "epistemic", "disagreement", "total_and_disagreement", "error_score")
# disagreement: the written _disagreement map (the localization pass against the ensemble); total_and_disagreement:
# the total entropy in bits plus it (<case>_error_score in 0.7.2-0.8.0); error_score: that plus the nearness to the
# written labels' surface (<case>_error_score since; localize.error_score)
WRITTEN_MAPS = ("total_and_disagreement", "error_score")  # also scored against the written labels' errors


def fold_bright_end(x: np.ndarray, turn: float) -> np.ndarray:
    """Intensities above ``turn`` folded back below it (``2 turn - x``, at least 0): tissue brighter than the turn
    turns darker, a contrast between T1 and an inversion (trust.py's contrast family, generalisation.py's folds)."""
    return np.where(x > turn, np.clip(2 * turn - x, 0, None), x)


def acquisition_shift(image: np.ndarray, label: np.ndarray, family: str, level: int, seed: int):
    """(image, label) (*S) arrays -> the shifted copy at strength ``level`` (1..3) of ``family`` (see the module)."""
    if family not in STRENGTHS:
        raise ValueError(f"unknown shift family {family!r}; choose from {FAMILIES}.")
    x = image.astype(np.float32) / max(float(np.percentile(image, 99.5)), 1e-6)
    y = label.copy()
    strength = STRENGTHS[family][level - 1]
    if family == "thick":
        x = np.asarray(thick_slices(torch.from_numpy(x)[None], axis=2, thickness=strength)[0])
    elif family == "fov":
        cut = int(round(strength * x.shape[2]))
        x[..., x.shape[2] - cut :], y[..., y.shape[2] - cut :] = 0.0, 0
    elif family == "contrast":
        x = fold_bright_end(x, strength)
    elif family == "noise":
        g = np.random.default_rng(seed)
        x = np.sqrt((x + strength * g.standard_normal(x.shape)) ** 2 + (strength * g.standard_normal(x.shape)) ** 2)
    else:  # bias
        field = RandBiasField(coeff_range=(strength, strength), prob=1.0)
        field.set_random_state(seed)
        x = np.asarray(field(torch.from_numpy(x)[None]))[0]
    return x.astype(np.float32), y


def head_mask(image: np.ndarray) -> np.ndarray:
    """Voxels inside the head of a clean scan: above 5 % of its 99.5th percentile, holes filled."""
    mask = image > 0.05 * float(np.percentile(image, 99.5))
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))


def _view_options(text: str) -> dict:
    """``--view-options``: a JSON object of ``augment_views`` keys, else an argparse error naming the flag."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}); expected e.g. '{{\"flip_axes\": [0]}}'") from e
    try:
        return check_view_options(spec, 3)  # argparse names the flag, this the key
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--dataset-dir", type=Path, default=None, help="the brain cache (default: medwidit's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the bundle's inference.json, as the CLI)")
    parser.add_argument("--samples", type=int, help="members per view and set of weights (default: the bundle's)")
    parser.add_argument("--shared-steps", type=int, help="steps each view's members share (default: the bundle's)")
    parser.add_argument("--views", type=int, default=3, help="test-time views (the first is the identity)")
    parser.add_argument(
        "--view-options",
        type=_view_options,
        default=None,
        help="the views' augment_views as JSON, e.g. '{\"flip_axes\": [0]}' ({}: any flip or gamma; default: bundle's)",
    )
    parser.add_argument(
        "--extra-weights", nargs="*", type=Path, default=None, help="further checkpoints (default: the bundle's)"
    )
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument(
        "--mni-shifts", nargs="*", default=["contrast2", "bias2"], help="shifts of MNI152 too (family + strength)"
    )
    parser.add_argument("--warn-dice", type=float, default=0.9, help="flag threshold scored here")
    parser.add_argument(
        "--bias-correction",
        choices=("n4", "none"),
        help="replace the bundle's (Predictor.from_bundle(bias_correction=)); the bundle's \"retry\" is not run here: "
        "each case is sampled once without N4, and the config records bias_retry_not_run",
    )
    parser.add_argument(
        "--no-localize", action="store_true", help="skip the bundle's localization pass (medwidit segment's flag)"
    )
    parser.add_argument(
        "--no-atlas-prior", action="store_true", help="skip the bundle's atlas prior (medwidit segment's flag)"
    )
    parser.add_argument("--quick", action="store_true", help="seconds: the 2 mm example, cropped, 1 step")
    parser.add_argument(
        "--rescore",
        type=Path,
        help="a recorded trust.json: its summary, table and figures computed again from its cases, no sampling",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def load_cases(args) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, image, label, affine) of every case: clean templates, then their shifted copies."""
    example = nib.load(EXAMPLE)
    label_path = EXAMPLE.with_name(EXAMPLE.name.replace("_image", "_label"))
    templates = [("colin27_2mm", np.asarray(example.dataobj, np.float32), np.asarray(nib.load(label_path).dataobj),
                  example.affine, [])]  # fmt: skip
    if args.quick:  # a 48^3 block around the centre, with two families at the top strength
        image, label = templates[0][1], templates[0][2]
        centre = [s // 2 for s in image.shape]
        block = tuple(slice(c - 24, c + 24) for c in centre)
        templates = [("colin27_2mm_crop", image[block], label[block], example.affine, [("fov", 3), ("contrast", 3)])]
    else:
        base = Path(args.dataset_dir or sources.default_cache_dir()) / "brain"
        colin = [(f, level) for f in args.families for level in (1, 2, 3)]
        mni = [(s[:-1], int(s[-1])) for s in args.mni_shifts]
        for name, shifts in (("colin27_1mm", colin), ("mni152nlin6asym_1mm", mni)):
            image = nib.load(base / f"{name}_image.nii.gz")
            label = np.asarray(nib.load(base / f"{name}_label.nii.gz").dataobj)
            templates.append((name, np.asarray(image.dataobj, np.float32), label, image.affine, shifts))
    cases = []
    for name, image, label, affine, shifts in templates:
        head = head_mask(image)  # the clean scan's head: a shift changes the image, not where the head is
        cases.append((name, image, label.astype(np.int64), affine, head))
        for i, (family, level) in enumerate(shifts):
            shifted, truth = acquisition_shift(image, label.astype(np.int64), family, level, seed=i)
            cases.append((f"{name}/{family}{level}", shifted, truth, affine, head))
    return cases


def evaluate(predictor: Predictor, case, args) -> dict:
    """Sample one case with every set of weights and view, then score each ensemble "WxV" (the first W weights'
    first V views) for W in {1, all} and V in {1, all}."""
    name, image, truth, affine, head = case
    start = time.process_time()
    options = {"steps": args.steps, "num_samples": args.samples, "shared_steps": args.shared_steps}
    inputs = {"image": MetaTensor(torch.from_numpy(image)[None], affine=torch.as_tensor(affine))}
    # the bundle's localization pass, as Predictor.segment runs it with every view (same seed; views x samples members
    # per set, no views): one region for every ensemble scored, so a 1-view row's region is the V-view run's, not what
    # segment(augment=1) would draw (result files written before this line used the 1-view pass's)
    coarse = None
    if predictor.localization is not None:
        coarse = predictor.localization_pass(image, affine=affine, generator=torch.Generator().manual_seed(0),
                                             weight_sets=len(predictor.segmenters), augment=args.views,
                                             **options)  # fmt: skip
    region = (
        None if coarse is None else foreground_region(coarse.label_map, affine, predictor.localization["margin_mm"])
    )
    # the bundle's atlas prior, as Predictor.segment cuts with it (after the localization's region); like the region,
    # one decision for every ensemble scored: a 1x1 row is cut where the whole run's members were
    fit, failed = predictor.register_prior(image, affine, name)
    prior, core, guard = (None, None, None) if fit is None else (fit.region, fit.core, fit.guard)
    bits = encode_regions(image.shape, region, prior, core, guard)  # resampled with the image as one label
    if bits is not None:
        inputs["region"] = MetaTensor(torch.from_numpy(bits[None]), affine=torch.as_tensor(affine))
    label = None if bits is None else "region"
    pre = Compose(preprocessing_transforms(predictor.preprocessing, label_key=label, load=False))
    data = pre(inputs)
    within = prior_within = core_within = guard_within = None
    if bits is not None:
        within, prior_within, core_within, guard_within = decode_regions(
            data["region"].as_tensor()[None], region=region is not None, prior=prior is not None,
            core=core is not None, guard=guard is not None,
        )  # fmt: skip
    condition = data["image"].as_tensor()[None]  # (1, 1, *S')
    views = augmentation_views(args.views, predictor.spatial_dims, **predictor.view_options)
    run = sample_ensemble(
        predictor.segmenters, condition, **options, roi_size=predictor.roi_size,
        sw_batch_size=predictor.sw_batch_size, max_whole_voxels=predictor.max_whole_voxels,
        generator=torch.Generator().manual_seed(0), wrap_model_fn=predictor.wrap_model_fn, return_members=True,
        views=views, region=within, region_min_kept=0.0 if coarse is None else predictor.localization["min_kept"],
        prior=prior_within, prior_min_kept=0.0 if prior is None else predictor.atlas_prior["min_kept"],
        core=core_within, core_label=1 if prior is None else predictor.atlas_prior["core_label"],
        prior_guard=guard_within,
    )  # fmt: skip
    sampling = time.process_time() - start
    truth_t, head_t = torch.from_numpy(truth), torch.from_numpy(head)
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    spacing = geometry_from_affine(affine, truth.shape).spacing  # mm per array axis, as the CLI's geometry has it
    bounds = predictor.expected_volume_ml.get("1")  # the bundle's expected brain volume (inference.json)
    out = {"case": name, "sampling_cpu_seconds": sampling, "ensembles": {}}
    if coarse is not None:
        out["localization"] = {**predictor.localization, "kept": float(run["region_kept"][0]),
                               "applied": bool(run["region_applied"][0])}  # fmt: skip
    if prior is not None or failed:
        out["atlas_prior"] = predictor.atlas_entry(
            None if failed else float(run["prior_kept"][0]),
            not failed and bool(run["prior_applied"][0]),
            filled=float(run["core_filled"][0]) if "core_filled" in run else None,
            guard_kept=float(run["prior_guard_kept"][0]) if "prior_guard_kept" in run else None,
            network_voxels=None if fit is None else network_voxels(fit),
            information=None if fit is None else fit.information,
        )
    coarse_probability = coarse_labels = None
    if coarse is not None:  # cut where the members were: the disagreement and scale_dice compare like with like
        cut = bool(out.get("atlas_prior", {}).get("applied"))
        coarse_probability = (
            outside_to_background(coarse.probability, prior, core, predictor.atlas_prior["core_label"])
            if cut else coarse.probability
        )  # fmt: skip
        coarse_labels = np.where(prior, coarse.label_map, 0) if cut else np.asarray(coarse.label_map)
        if cut and core is not None:
            coarse_labels = np.where(core, predictor.atlas_prior["core_label"], coarse_labels)
        coarse_labels = torch.from_numpy(coarse_labels)
    weights = len(predictor.segmenters)
    for w, v in [(w, v) for w in sorted({1, weights}) for v in sorted({1, args.views})]:
        groups = [wi * args.views + vi for wi in range(w) for vi in range(v)]  # group-major, as sampled
        members = torch.cat([run["members"][g * args.samples : (g + 1) * args.samples] for g in groups])
        summary = summarize_ensemble(members)
        split = decompose_entropy(members, groups=len(groups))
        mean = predictor.smooth(summary["mean_probability"][0])  # probability_smoothing, as the predictor writes it
        probability, entropy = predictor.invert(data, pre, mean)
        maps = uncertainty_maps(data, pre, entropy[0], split["epistemic"][0])
        scored = dict(maps)  # the quality report's maps, and for the AUROC the localization pass's disagreement
        labels = torch.from_numpy(probability.argmax(0))
        written = apply_label_postprocessing(probability.argmax(0), predictor.label_postprocessing)
        if coarse is not None:
            scored["disagreement"] = scale_disagreement(probability, coarse_probability)
            scored["total_and_disagreement"] = error_score(entropy[0], scored["disagreement"], predictor.num_classes)
            # <case>_error_score, as the CLI writes it (its surface term: the written labels')
            scored["error_score"] = error_score(
                entropy[0], scored["disagreement"], predictor.num_classes, written, spacing=spacing
            )
        localized = out.get("localization") or {}
        atlas = out.get("atlas_prior")  # with this ensemble's written labels' agreement with the template
        if fit is not None:
            atlas = predictor.atlas_entry(
                atlas["kept"],
                atlas["applied"],
                template_dice(written, fit.mask),
                atlas.get("core_filled"),
                atlas.get("guard_kept"),
                network_voxels=atlas.get("network_voxels"),  # the fit's, as counted for the case above
                information=fit.information,
            )
        quality = predictor.case_quality(
            written, affine, estimated_dice(members)[0].tolist(), maps, views=v, num_samples=args.samples,
            weight_sets=w, kept=localized.get("kept"), applied=localized.get("applied"), image=image[None],
            atlas=atlas,
        )  # the predictor's report, as the CLI writes it  # fmt: skip
        calibrated = quality["predicted_dice"]["1"]
        wrong = (labels != truth_t)[head_t]
        written_wrong = torch.from_numpy(np.asarray(written) != truth)[head_t]  # what the written map is about
        dice = dice_per_class(labels[None, None], truth_t[None, None], predictor.num_classes)[0]
        volume = float(labels.eq(1).sum()) * voxel_ml  # the argmax's, before the label post-processing
        out["ensembles"][f"{w}x{v}"] = {
            "true_dice": float(dice[1]),
            "predicted_dice": float(estimated_dice(members)[0, 1]) if labels.any() else 0.0,  # see the module
            "expected_dice": float(expected_dice(members)[0, 1]) if labels.any() else 0.0,
            # the bundle's quality_calibration of the report (None without one), what the warning line reads
            "calibrated_dice": None if predictor.quality_calibration is None else float(calibrated),
            # what the estimate was made of: the image's boundary share and the calibration's features (brain)
            "boundary_overlap": quality["boundary_overlap"].get("1"),
            "template_dice": (atlas or {}).get("template_dice"),  # the labels' Dice with the registered template
            "calibration_features": (quality.get("calibration") or {}).get("features", {}).get("1"),
            # the coarse pass's brain against this ensemble's: where the two grids disagree, one of them is wrong
            "scale_dice": None
            if coarse_labels is None
            else float(dice_per_class(labels[None, None], coarse_labels[None, None], predictor.num_classes)[0, 1]),
            "empty": not bool(labels.any()),
            "volume_ml": volume,
            "volume_flag": outside_expected(volume, bounds),
            "wrong_in_head": float(wrong.float().mean()),
            "auroc": {k: auroc(torch.from_numpy(np.asarray(m))[head_t], wrong) for k, m in scored.items()},
            # the written error score against the written (post-processed) labels' errors, as a user meets both
            "auroc_written": {
                k: auroc(torch.from_numpy(np.asarray(scored[k]))[head_t], written_wrong)
                for k in WRITTEN_MAPS
                if k in scored
            },
            "ece": expected_calibration_error(torch.from_numpy(probability)[:, head_t], truth_t[head_t])["ece"],
            "reliability": _reliability(torch.from_numpy(probability)[:, head_t], truth_t[head_t]),
        }
    if fit is not None:  # the whole ensemble's (the loop's last), as the CLI's report gives it
        out["atlas_prior"] = atlas
    out["cpu_seconds"] = time.process_time() - start
    scores = [f"{v} true {e['true_dice']:.3f} predicted {e['predicted_dice']:.3f}/{e['expected_dice']:.3f}" for v, e in
              out["ensembles"].items()]  # fmt: skip
    print(f"{name} ({out['cpu_seconds']:.0f} s CPU): " + ", ".join(scores), flush=True)
    return out


def _reliability(probability: torch.Tensor, truth: torch.Tensor, bins: int = 10) -> list[list[float]]:
    """Top-label [count, sum of confidence, sum of correct] per equal-width confidence bin (pooled across cases)."""
    confidence, prediction = probability.max(dim=0)
    index = (confidence * bins).long().clamp(max=bins - 1)
    correct = (prediction == truth).double()
    return [
        [float((index == b).sum()), float(confidence[index == b].double().sum()), float(correct[index == b].sum())]
        for b in range(bins)
    ]


def summarise(cases: list[dict], warn_dice: float, line_dice: float | None = None) -> dict:
    """Per ensemble "WxV": mean true Dice, Spearman, MAE, flags, mean AUROC per map and mean ECE over the cases;
    ``line_dice``: the bundle's ``warn_dice``, the threshold its warning line puts on the calibrated estimate
    (default ``warn_dice``)."""
    out = {}
    for key in cases[0]["ensembles"]:
        rows = [c["ensembles"][key] for c in cases]
        true, pred = np.array([r["true_dice"] for r in rows]), np.array([r["predicted_dice"] for r in rows])
        low = true < warn_dice
        volume = np.array([bool(r.get("volume_flag", False)) for r in rows])
        kept = np.array([_kept_flag(c) for c in cases])  # the localization's share, as the CLI's warning line reads it
        w, v = (int(n) for n in key.split("x"))
        out[key] = {
            "weight_sets": w,
            "views": v,
            "cost_ratio": w * v,
            "cases": len(rows),
            "mean_true_dice": float(true.mean()),
            "worst_true_dice": float(true.min()),
            "spearman": float(stats.spearmanr(pred, true).statistic) if len(rows) > 2 else float("nan"),
            "mae": float(np.abs(pred - true).mean()),
            "bias": float((pred - true).mean()),
            "true_dice_range": [float(true.min()), float(true.max())],
            "cases_below_warn": int(low.sum()),
            "flagged_of_those": int((pred[low] < warn_dice).sum()),
            "false_flags": int((pred[~low] < warn_dice).sum()),
            # the warning line's rule: a predicted Dice below the threshold or a volume outside the expected range
            "with_volume": {
                "flagged_of_those": int(((pred < warn_dice) | volume)[low].sum()),
                "false_flags": int(((pred < warn_dice) | volume)[~low].sum()),
                "volume_flags": int(volume.sum()),
                "best_warn_threshold": best_threshold(pred, low, volume),
            },
            # the whole warning line: also a localization region that held less than warn_kept (or was not applied)
            "with_volume_and_kept": {
                "flagged_of_those": int(((pred < warn_dice) | volume | kept)[low].sum()),
                "false_flags": int(((pred < warn_dice) | volume | kept)[~low].sum()),
                "kept_flags": int(kept.sum()),
                "best_warn_threshold": best_threshold(pred, low, volume | kept),
            },
            "auroc_mean": {k: float(np.nanmean([r["auroc"].get(k, np.nan) for r in rows])) for k in MAPS},
            "auroc_written_mean": {
                k: float(np.nanmean([r["auroc_written"].get(k, np.nan) for r in rows])) for k in WRITTEN_MAPS
            },
            "best_warn_threshold": best_threshold(pred, low),
            "expected_dice": _estimate_scores(np.array([r["expected_dice"] for r in rows]), true, warn_dice),
            "scale_dice": None
            if any(r.get("scale_dice") is None for r in rows)
            else _estimate_scores(np.array([r["scale_dice"] for r in rows]), true, warn_dice),
            "calibrated_dice": None
            if any(r.get("calibrated_dice") is None for r in rows)
            else _estimate_scores(
                np.array([r["calibrated_dice"] for r in rows]), true, warn_dice, volume | kept, line_dice
            ),
            "ece_mean": float(np.mean([r["ece"] for r in rows])),
        }
    return out


def _kept_flag(case: dict) -> bool:
    """Whether the CLI's warning line names the case for its localization region (``localize.kept_warning``: not
    applied, or held less than ``warn_kept``) or its atlas prior (``atlas.atlas_warning``: not registered or not
    applied); False without either."""
    return kept_warning(case.get("localization")) is not None or atlas_warning(case.get("atlas_prior")) is not None


def _estimate_scores(
    pred: np.ndarray, true: np.ndarray, warn_dice: float, also: np.ndarray | None = None, line: float | None = None
) -> dict:
    """Spearman, MAE, bias and flags of another per-case estimate (``trust.expected_dice``) against true Dice;
    ``also`` (the volume and localization flags): the whole warning line's flags with this estimate below ``line``
    (default ``warn_dice``) as well."""
    low = true < warn_dice
    out = {
        "spearman": float(stats.spearmanr(pred, true).statistic) if len(true) > 2 else float("nan"),
        "mae": float(np.abs(pred - true).mean()),
        "bias": float((pred - true).mean()),
        "flagged_of_those": int((pred[low] < warn_dice).sum()),
        "false_flags": int((pred[~low] < warn_dice).sum()),
        "best_warn_threshold": best_threshold(pred, low),
    }
    if also is not None:
        line = warn_dice if line is None else line
        flags = (pred < line) | also
        out["with_volume_and_kept"] = {
            "warn_dice": line, "flagged_of_those": int(flags[low].sum()), "false_flags": int(flags[~low].sum()),
        }  # fmt: skip
    return out


def figures(cases: list[dict], summary: dict, output: Path) -> list[str]:
    """Reliability diagram (pooled head voxels) and predicted-vs-true Dice scatter, one curve per ensemble size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [output.with_name(output.stem + "_reliability.png"), output.with_name(output.stem + "_dice.png")]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for v in summary:
        bins = np.sum([c["ensembles"][v]["reliability"] for c in cases], axis=0)  # (bins, 3)
        keep = bins[:, 0] > 0
        ax.plot(bins[keep, 1] / bins[keep, 0], bins[keep, 2] / bins[keep, 0], "o-", label=f"{v} (weights x views)")
    ax.set(xlabel="confidence", ylabel="accuracy", title="reliability, voxels inside the head", xlim=(0, 1))
    ax.legend()
    fig.savefig(paths[0], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    keys = ("true_dice", "predicted_dice", "calibrated_dice")
    every = [c["ensembles"][v][k] for c in cases for v in summary for k in keys if c["ensembles"][v].get(k) is not None]
    low = min(every) - 0.02
    ax.plot([low, 1], [low, 1], "k:", lw=1)
    for v, s in summary.items():
        true = [c["ensembles"][v]["true_dice"] for c in cases]
        pred = [c["ensembles"][v]["predicted_dice"] for c in cases]
        ax.scatter(true, pred, s=14, label=f"{v}: rho {s['spearman']:.2f}, MAE {s['mae']:.3f}")
        if s.get("calibrated_dice"):
            c = s["calibrated_dice"]
            fitted = [c_["ensembles"][v]["calibrated_dice"] for c_ in cases]
            ax.scatter(
                true, fitted, s=18, marker="x", label=f"{v} calibrated: rho {c['spearman']:.2f}, MAE {c['mae']:.3f}"
            )
    ax.set(xlabel="true Dice (brain)", ylabel="predicted Dice", title="per-case Dice estimate")
    ax.legend(fontsize=7)
    fig.savefig(paths[1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [str(p) for p in paths]


def _plain(value):
    """A config value in JSON types (paths as strings)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value


def weights_sha256(bundle: Path, predictor: Predictor) -> list[str]:
    """The sha256 of every set of weights the predictor samples: the bundle's model.pt, then its extra weights."""
    return [sha256_file(f) for f in [bundle / "models" / "model.pt", *predictor.extra_weight_files]]


def resolve_sampling(args, predictor: Predictor) -> None:
    """Unset --steps, --samples and --shared-steps take the bundle's inference.json values, as ``medwidit segment``
    samples it (a default shared_steps fitted to the steps, as there)."""
    defaults = predictor.sampling_defaults
    args.steps = defaults["steps"] if args.steps is None else args.steps
    args.samples = defaults["num_samples"] if args.samples is None else args.samples
    args.shared_steps = predictor.resolve_shared_steps(args.shared_steps, args.steps)


def rescore(args) -> dict:
    """A recorded run scored again by this script's summary (new scores of the same members: the cases' per-ensemble
    entries are kept as sampled), written to ``--output`` with the commit that rescored it."""
    if not args.rescore.is_file():
        raise SystemExit(f"trust.py: --rescore {args.rescore}: no such file.")
    result = json.loads(args.rescore.read_text())
    cases = result["cases"]
    for case in cases:  # a run recorded before the cases held the localization's settings: the run's own config
        if case.get("localization"):
            case["localization"] = {**result["config"]["localization"], **case["localization"]}
    if any("volume_flag" not in e for c in cases for e in c["ensembles"].values()):
        raise SystemExit(f"{args.rescore}: its cases predate the volume record; run the benchmark again instead.")
    result["summary"] = summarise(cases, result["config"]["warn_dice"], result["config"].get("bundle_warn_dice"))
    result["rescored"] = {"from": str(args.rescore), "environment": environment(torch.device("cpu"), __file__)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result["figures"] = figures(cases, result["summary"], args.output)
    return publish(result, table(result["summary"]), args.output)


def table(summary: dict) -> str:
    """The markdown table of a summary, one row per ensemble."""
    rows = [
        "| weights x views (cost) | mean / worst Dice | Spearman | MAE | bias | flagged < warn | false flags | "
        "with the volume: flagged / false | AUROC total / alea. / epist. / disagreement / total + disagr. / error "
        "score | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {key} (x{s['cost_ratio']}) | {s['mean_true_dice']:.3f} / {s['worst_true_dice']:.3f} | "
        f"{s['spearman']:.3f} | {s['mae']:.3f} | {s['bias']:+.3f} | "
        f"{s['flagged_of_those']}/{s['cases_below_warn']} | {s['false_flags']} | "
        f"{s['with_volume']['flagged_of_those']}/{s['cases_below_warn']} / {s['with_volume']['false_flags']} | "
        + " / ".join(fmt(s["auroc_mean"][k]) for k in MAPS)
        + f" | {s['ece_mean']:.4f} |"
        for key, s in summary.items()
    ]
    calibrated = {key: s["calibrated_dice"] for key, s in summary.items() if s.get("calibrated_dice")}
    if calibrated:
        rows += [
            "",
            "| weights x views: calibrated estimate | Spearman | MAE | bias | flagged < warn | false flags | "
            "whole warning line at the bundle's warn_dice: flagged / false |",
            "|---|---|---|---|---|---|---|",
        ]
        rows += [
            f"| {key} | {c['spearman']:.3f} | {c['mae']:.3f} | {c['bias']:+.3f} | "
            f"{c['flagged_of_those']}/{summary[key]['cases_below_warn']} | {c['false_flags']} | "
            f"{c['with_volume_and_kept']['flagged_of_those']}/{summary[key]['cases_below_warn']} / "
            f"{c['with_volume_and_kept']['false_flags']} |"
            for key, c in calibrated.items()
        ]
    return "\n".join(rows)


def build_predictor(args: argparse.Namespace) -> Predictor:
    """The bundle's predictor as ``medwidit segment`` builds it with the same flags (``--extra-weights``,
    ``--bias-correction``, ``--view-options``, ``--no-localize``, ``--no-atlas-prior``)."""
    extra = {} if args.extra_weights is None else {"extra_checkpoints": args.extra_weights}
    sets = None if args.extra_weights is None else 1 + len(args.extra_weights)  # --extra-weights with none: 1 set
    if args.bias_correction is not None:
        extra["bias_correction"] = args.bias_correction
    if args.view_options is not None:
        extra["view_options"] = args.view_options
    if args.no_localize:
        extra["localization"] = None
    if args.no_atlas_prior:  # as medwidit segment --no-atlas-prior: a calibration that reads it goes with it
        extra["atlas_prior"] = None
    return Predictor.from_bundle(args.bundle, device="cpu", weight_sets=sets, **extra)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rescore is not None:
        return rescore(args)
    if args.quick:
        args.steps, args.samples, args.shared_steps, args.views = 1, 1, 0, 2
    predictor = build_predictor(args)
    args.view_options = predictor.view_options  # recorded as used
    resolve_sampling(args, predictor)
    args.localization = predictor.localization  # recorded as used
    args.quality_calibration = predictor.quality_calibration
    args.bundle_warn_dice = predictor.warn_dice  # the warning line's threshold on the calibrated estimate
    args.atlas_prior = predictor.atlas_prior  # recorded as used
    # each case is sampled once, as segment's first pass: a case the bundle would segment again with N4 (0.9.2's
    # bias_correction "retry") is one whose calibrated estimate is below bundle_warn_dice
    args.bias_retry_not_run = predictor.bias_retry
    if predictor.bias_retry:
        print("trust.py: the bundle's bias_correction retry is not run here (each case sampled once without N4)")
    start = time.process_time()
    cases = [evaluate(predictor, case, args) for case in load_cases(args)]
    summary = summarise(cases, args.warn_dice, args.bundle_warn_dice)
    result = {
        "config": {k: _plain(v) for k, v in vars(args).items()},
        "weights_sha256": [
            sha256_file(f) for f in [args.bundle / "models" / "model.pt", *predictor.extra_weight_files]
        ],
        "environment": environment(torch.device("cpu"), __file__),
        "cpu_seconds": time.process_time() - start,
        "summary": summary,
        "cases": cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result["figures"] = figures(cases, summary, args.output)
    return publish(result, table(summary), args.output)


if __name__ == "__main__":
    main()
