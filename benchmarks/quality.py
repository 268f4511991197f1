"""Segmentation quality on the held-out template: medwidit against MONAI BasicUNet and SwinUNETR trained on the same
data for the same wall-clock budget, Dice against DDIM steps and ensemble size, and uncertainty quality.

What is compared
  medwidit     the bundle's checkpoint (default ``bundles/brain_widit_segmentation/models/model.pt``), sampled with
               the bundle's inference steps and ensemble size, windows and whole-volume budget as ``medwidit
               segment`` runs them (``--max-whole-voxels`` overrides the Predictor's whole-volume budget).
  basic_unet   MONAI ``BasicUNet`` (default features), DiceCE loss.
  swin_unetr   MONAI ``SwinUNETR`` (``feature_size=--swin-feature-size``), DiceCE loss.
The baselines train on the bundle's own data module (``datamodule`` of ``configs/train.json``: the same data list
split, pre-transforms, foreground crop, 64^3 positive/negative crops and augmentation, seeded like the bundle's
training), each for ``--budget-seconds`` of wall clock (validations included), AdamW with a cosine decay over the
budget. Model selection: the best mean foreground Dice on the validation split, checked ``--val-every`` of the budget.
They predict with MONAI sliding windows (training crop, the bundle's inference overlap, Gaussian blending).

Held-out data: only the data list's ``test`` split is scored; the script stops if a test anatomy or file appears in
training or validation. Nothing here trains, selects or tunes on it.

Metrics, on the test label's own grid (every method's probabilities go through the same ``Invertd``):
- Dice per class and HD95 in mm (MONAI, voxel spacing aware);
- Dice against DDIM steps (one sample each, seeded alike) and against ensemble size: one ensemble of
  max(``--samples-list``) samples at the bundle's step count is drawn once, and its first n members ARE the n-sample
  ensemble (members draw their noise from per-member generators seeded in order, so a smaller ensemble with the same
  seed is exactly its prefix); its first member is also the steps sweep's point at that step count;
- uncertainty: AUROC of the voxel entropy for finding wrong voxels, expected calibration error (top-label, 15 bins;
  MONAI's class-wise ECE beside it) of the mean probability; over the whole volume, where right background
  dominates, and over the boundary band (voxels within ``--band-mm`` of the predicted or the true boundary);
- wall clock per volume (read, pre-transform, infer, invert to the input grid; metrics excluded), with ratios
  against BasicUNet in the same run. medwidit samples as the Predictor does (``sample_ensemble``, its autocast and
  its ``Invertd``, every member in one batch); an n-sample time is the ensemble's sampling time times n / size.

    python benchmarks/quality.py --budget-seconds 3600      # baselines for one hour each, then the evaluation
    python benchmarks/quality.py --quick                     # smoke run: 20 s budgets, 1-2 steps, 1-2 samples

The recipe, the baselines and the report's plumbing are the sibling modules ``_recipe``, ``_baselines`` and
``_report`` (``benchmarks/`` is on ``sys.path`` when a script runs; ``medwidit`` is the installed package).

Without ``--budget-seconds`` the budget is the bundle's recorded training time (``configs/metadata.json``:
``"training": {"wall_clock_seconds": ...}``). Writes ``benchmarks/results/quality.json`` (``--quick``: a file in the
temporary folder) with the configuration, versions, commit, timings, every number and a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _baselines import BASELINES, predict_baseline, train_baselines
from _recipe import TASKS, held_out_cases, load_predictor, load_recipe, training_budget
from _report import ROOT, environment, fmt, mean_over_cases, publish
from monai.transforms import Compose, LoadImage
from monai.utils import look_up_option, optional_import

from medwidit.data.transforms import preprocessing_transforms
from medwidit.inference import Predictor, resolve_device, sample_ensemble, summarize_ensemble
from medwidit.inference.metrics import boundary_band, segmentation_metrics, uncertainty_quality

DEFAULT_BUNDLE = ROOT / "bundles" / "brain_widit_segmentation"
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
ECE_BINS = 15


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="auto", help="auto (the bundle's data list), brain_extraction or tissue_classes")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle folder: training recipe and weights")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="medwidit checkpoint (default <bundle>/models/model.pt)"
    )
    p.add_argument("--budget-seconds", type=float, default=None, help="training wall clock per baseline")
    p.add_argument("--steps-list", default="1,2,5,10,25,50", help="DDIM step counts of the steps sweep")
    p.add_argument("--samples-list", default="1,3,5,10", help="ensemble sizes of the ensemble sweep")
    p.add_argument("--steps", type=int, default=None, help="medwidit steps (default: the bundle's inference steps)")
    p.add_argument("--samples", type=int, default=None, help="medwidit ensemble size of the main table (bundle's)")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the bundle's)")
    p.add_argument(
        "--max-whole-voxels",
        type=int,
        default=None,
        help="medwidit's whole-volume budget: the network runs on the whole volume when batch x voxels is at most "
        "this (default sliding.DEFAULT_WHOLE_VOXELS, the Predictor's); 0 forces stitched windows",
    )
    p.add_argument("--baselines", default=",".join(BASELINES), help="comma-separated: basic_unet, swin_unetr")
    p.add_argument("--swin-feature-size", type=int, default=12)
    p.add_argument("--val-every", type=float, default=0.25, help="validate every this fraction of the budget")
    p.add_argument("--band-mm", type=float, default=3.0, help="boundary band half-width in mm")
    p.add_argument("--seed", type=int, default=None, help="default: the bundle's training seed")
    p.add_argument("--cache", type=Path, default=None, help="data cache (default: medwidit.datasets.brain's)")
    p.add_argument("--out", type=Path, default=None, help=f"result JSON (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--num-workers", type=int, default=None, help="baselines' DataLoader workers (default: bundle's)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budget, steps 1-2, samples 1-2")
    args = p.parse_args(argv)
    if args.quick:
        args.budget_seconds = 20.0 if args.budget_seconds is None else args.budget_seconds
        args.steps_list, args.samples_list, args.val_every = "1,2", "1,2", 1.0
        args.steps, args.samples = args.steps or 2, args.samples or 2
        args.out = args.out or Path(tempfile.gettempdir()) / "medwidit_quality_quick.json"
    args.out = args.out or RESULTS
    args.steps_list, args.samples_list = (
        _ints(args.steps_list, "--steps-list"),
        _ints(args.samples_list, "--samples-list"),
    )
    args.baselines = [look_up_option(b.strip(), tuple(BASELINES)) for b in args.baselines.split(",") if b.strip()]
    args.task = look_up_option(args.task, ("auto", *TASKS))
    if not 0 < args.val_every <= 1:
        raise SystemExit(f"--val-every must be in (0, 1], got {args.val_every}.")
    if args.budget_seconds is not None and not args.budget_seconds > 0:
        raise SystemExit(f"--budget-seconds must be > 0, got {args.budget_seconds}.")
    return args


def _ints(text: str, name: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as e:
        raise SystemExit(f"{name} must be comma-separated integers, got {text!r}.") from e
    if not values or values[0] < 1:
        raise SystemExit(f"{name} must hold integers >= 1, got {text!r}.")
    return values


#######################################################################################################################
# medwidit: one seeded ensemble through the Predictor's sampling path, every member kept
#######################################################################################################################


def sample_medwidit(predictor: Predictor, image_path: str, pre: Compose, *, steps, num_samples, overlap, seed) -> dict:
    """Pre-transformed volume and per-member probabilities (S, K, *S') of one seeded ensemble, sampled by
    ``sample_ensemble`` with the Predictor's windows, whole-volume budget and autocast, and its sampling seconds."""
    start = time.perf_counter()
    data = pre({"image": image_path})
    condition = data["image"].as_tensor()[None].to(predictor.device)  # (1, C, *S')
    denoisers = []  # the SlidingWindowDenoiser that sample_ensemble builds, for its call counts

    def wrap(denoiser):
        denoisers.append(denoiser)
        return predictor.wrap_model_fn(denoiser)

    run = sample_ensemble(
        predictor.segmenter, condition, steps=steps, num_samples=num_samples, overlap=overlap,
        **predictor.window_options, generator=torch.Generator().manual_seed(seed), wrap_model_fn=wrap,
        return_members=True,
    )  # fmt: skip
    return {
        "data": data,
        "probabilities": run["members"][:, 0].cpu(),  # (S, K, *S')
        "seconds": time.perf_counter() - start,
        "network_calls": denoisers[0].num_calls,
        "windows": denoisers[0].num_windows,
    }


def medwidit_maps(run: dict, predictor: Predictor, pre: Compose, n: int) -> dict:
    """The first ``n`` members of a sampled ensemble (the n-member ensemble of the same seed) -> maps on the input
    grid through the Predictor's inversion, and seconds: the ensemble's times n / size, plus this inversion."""
    start = time.perf_counter()
    summary = summarize_ensemble(run["probabilities"][:n, None])  # (1, K, *S')
    mean = predictor.smooth(summary["mean_probability"][0])  # probability_smoothing, as the predictor writes it
    probability, entropy = predictor.invert(run["data"], pre, mean)
    seconds = run["seconds"] * n / len(run["probabilities"]) + time.perf_counter() - start
    return {"probability": probability, "entropy": entropy[0], "seconds": seconds}


#######################################################################################################################
# scoring
#######################################################################################################################


def score(maps: dict, truth: torch.Tensor, spacing, k: int, band_mm: float, uncertainty: bool = True) -> dict:
    """Dice/HD95 per class and, with ``uncertainty``, AUROC/ECE over the volume and the boundary band."""
    prediction = maps["probability"].argmax(0)
    out = segmentation_metrics(prediction, truth, num_classes=k, spacing=spacing)
    out["mean_fg_dice"] = float(np.mean(out["dice"][1:]))
    out["mean_fg_hd95"] = float(np.mean(out["hd95"][1:]))
    out["seconds_per_volume"] = maps["seconds"]
    if uncertainty:
        band = boundary_band([prediction, truth], width_mm=band_mm, spacing=spacing)
        out["uncertainty"] = uncertainty_quality(
            maps["probability"], maps["entropy"], truth, band=band, num_bins=ECE_BINS
        )
    return out


def evaluate_case(case: dict, methods: dict, predictor: Predictor, pre: Compose, config: dict, args) -> dict:
    """Every method and both sweeps on one held-out case."""
    truth_image = LoadImage(image_only=True, ensure_channel_first=True)(case["label"])  # (1, *S)
    truth, spacing = truth_image[0].as_tensor().round().long(), [float(s) for s in truth_image.pixdim]
    k, band = len(config["class_names"]), args.band_mm
    out = {"case": case["template"], "spacing_mm": spacing, "shape": list(truth.shape), "methods": {}}
    for name, (net, inferer) in methods.items():
        print(f"{case['template']}: {name}", flush=True)
        maps = predict_baseline(net, case["image"], pre, inferer, predictor)
        out["methods"][name] = score(maps, truth, spacing, k, band)
    steps, overlap = config["steps"], config["overlap"]
    size = max(args.samples_list + [config["samples"]])
    print(f"{case['template']}: medwidit, {size} samples x {steps} steps", flush=True)
    run = sample_medwidit(predictor, case["image"], pre, steps=steps, num_samples=size, overlap=overlap, seed=args.seed)
    out["medwidit_network_calls"] = {"calls": run["network_calls"], "windows": run["windows"], "samples": size}
    ensemble = {
        n: {"samples": n, "steps": steps, **score(medwidit_maps(run, predictor, pre, n), truth, spacing, k, band)}
        for n in sorted({*args.samples_list, config["samples"]})
    }
    out["methods"]["medwidit"] = {
        key: v for key, v in ensemble[config["samples"]].items() if key not in ("samples", "steps")
    }
    out["ensemble_sweep"] = [ensemble[n] for n in args.samples_list]
    out["steps_sweep"] = []
    for s in args.steps_list:
        if s == steps:
            maps, reused = medwidit_maps(run, predictor, pre, 1), True
        else:
            print(f"{case['template']}: medwidit, 1 sample x {s} steps", flush=True)
            one = sample_medwidit(
                predictor, case["image"], pre, steps=s, num_samples=1, overlap=overlap, seed=args.seed
            )
            maps, reused = medwidit_maps(one, predictor, pre, 1), False
        row = score(maps, truth, spacing, k, band, uncertainty=False)
        out["steps_sweep"].append({"steps": s, "samples": 1, "reused_from_ensemble": reused, **row})
    return out


#######################################################################################################################
# report
#######################################################################################################################


def markdown(result: dict) -> str:
    names, mean = result["class_names"], result["mean"]
    reference = mean["methods"].get("basic_unet", {}).get("seconds_per_volume")
    cfg = result["config"]
    head = "| method | " + " | ".join(f"Dice {n}" for n in names[1:]) + " | mean Dice | mean HD95 (mm) | s / volume |"
    lines = [head, "|" + " --- |" * (len(names) + 3)]
    for method, m in mean["methods"].items():
        label = f"medwidit ({cfg['steps']} steps, {cfg['samples']} samples)" if method == "medwidit" else method
        ratio = f" ({m['seconds_per_volume'] / reference:.1f}x)" if reference else ""
        lines.append(
            f"| {label} | "
            + " | ".join(fmt(d) for d in m["dice"][1:])
            + f" | {fmt(m['mean_fg_dice'])} | {fmt(m['mean_fg_hd95'], 1)} | {m['seconds_per_volume']:.0f}{ratio} |"
        )
    lines += [
        "",
        "| DDIM steps (1 sample) | " + " | ".join(str(r["steps"]) for r in mean["steps_sweep"]) + " |",
        "|" + " --- |" * (len(mean["steps_sweep"]) + 1),
        "| mean Dice | " + " | ".join(fmt(r["mean_fg_dice"]) for r in mean["steps_sweep"]) + " |",
        "| s / volume | " + " | ".join(f"{r['seconds_per_volume']:.0f}" for r in mean["steps_sweep"]) + " |",
        "",
    ]
    lines += [
        f"| ensemble ({cfg['steps']} steps) | mean Dice | AUROC volume | AUROC band | ECE volume | ECE band "
        "| s / volume |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(f"medwidit {r['samples']}", r) for r in mean["ensemble_sweep"]]
    rows += [(method, m) for method, m in mean["methods"].items() if method != "medwidit"]
    for label, r in rows:
        u = r["uncertainty"]
        lines.append(
            f"| {label} | {fmt(r['mean_fg_dice'])} | {fmt(u['volume']['auroc'])} | {fmt(u['band']['auroc'])} "
            f"| {fmt(u['volume']['ece'], 4)} | {fmt(u['band']['ece'], 4)} | {r['seconds_per_volume']:.0f} |"
        )
    budget = result["budget"]
    lines += [
        "",
        f"Held-out {result['task']} case(s): {', '.join(c['case'] for c in result['cases'])}; Dice and "
        f"HD95 (mm) on the label's own grid, background excluded from the means. Baselines trained "
        f"{budget['seconds']:.0f} s each ({budget['source']}); medwidit's recorded training: "
        f"{fmt(budget['medwidit_training_seconds'], 0)} s. AUROC: voxel entropy ranking wrong voxels; ECE: top-label, "
        f"{ECE_BINS} bins, of the (ensemble) mean probability; 'band': voxels within {cfg['band_mm']} mm of the "
        "predicted or true boundary, 'volume': every voxel (right background dominates). Ensemble rows are "
        "prefixes of one seeded ensemble. Times are wall clock on a shared machine "
        f"({result['environment']['device']}); ratios against BasicUNet in the same run.",
    ]
    return "\n".join(lines)


def run_config(args, recipe: dict, predictor: Predictor) -> dict:
    """The settings of this run: medwidit's sampling (the bundle's unless overridden), the baselines', the data's."""
    inference, dm = recipe["inference"], recipe["datamodule"]
    return {
        "steps": args.steps or int(inference.get("steps", 10)),
        # models/model.pt alone (this benchmark compares networks) at the bundle's member count: since bundle 0.4.0
        # num_samples is per set of weights, and the default's 2 x 2 sets is 4 members, as before
        "samples": args.samples or int(inference.get("num_samples", 5)) * int(inference.get("weight_sets", 1)),
        "overlap": args.overlap if args.overlap is not None else float(inference.get("overlap", 0.5)),
        "roi_size": list(predictor.roi_size),
        "sw_batch_size": predictor.sw_batch_size,
        "max_whole_voxels": predictor.max_whole_voxels,
        "band_mm": args.band_mm,
        "ece_bins": ECE_BINS,
        "steps_list": args.steps_list,
        "samples_list": args.samples_list,
        "seed": args.seed,
        "baselines": {name: {"lr": lr} for name, lr in BASELINES.items() if name in args.baselines},
        "swin_feature_size": args.swin_feature_size,
        "val_every": args.val_every,
        "preprocessing": predictor.preprocessing,
        "train_roi_size": dm.roi_size,
        "batch_size": dm.batch_size,
        "crops_per_volume": dm.num_crops,
        "num_workers": dm.num_workers,
        "class_names": recipe["class_names"],
        "quick": args.quick,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # a benchmark script, not library code
    started = time.perf_counter()
    device = resolve_device(args.device)
    env = environment(device, __file__)
    if "swin_unetr" in args.baselines and not optional_import("einops")[1]:
        raise SystemExit("SwinUNETR needs einops (pip install einops), or leave it out with --baselines basic_unet.")
    recipe = load_recipe(args)
    args.seed = recipe["seed"]
    cases = held_out_cases(recipe)
    budget, source, recorded = training_budget(args, recipe)
    predictor, checkpoint = load_predictor(args, recipe, device)
    dm = recipe["datamodule"]
    config = run_config(args, recipe, predictor)
    print(
        f"task {recipe['task']}: held out {[c['template'] for c in cases]}; budget {budget:.0f} s per baseline "
        f"({source}); checkpoint {checkpoint}",
        flush=True,
    )
    t = time.perf_counter()
    dm.setup("fit")  # cache the training and validation volumes once, outside the budgets
    data_setup = time.perf_counter() - t
    pre = Compose(preprocessing_transforms(predictor.preprocessing, image_key="image"))
    methods, training = train_baselines(args, recipe, predictor, config, budget, device)
    t = time.perf_counter()
    per_case = [evaluate_case(case, methods, predictor, pre, config, args) for case in cases]
    evaluation = time.perf_counter() - t
    result = {
        "benchmark": "quality on held-out data: medwidit vs MONAI baselines, steps, ensemble size, uncertainty",
        "task": recipe["task"],
        "data_list": str(recipe["data_list"]),
        "bundle": str(recipe["bundle"]),
        "bundle_data_list": recipe["bundle_data_list"],
        "class_names": recipe["class_names"],
        "checkpoint": {"path": str(checkpoint), "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()},
        "budget": {
            "seconds": budget,
            "source": source,
            "medwidit_training_seconds": recorded,
            "medwidit_training_record": recipe["metadata"].get("training"),
        },
        "config": config,
        "environment": {**env, "load_average_end": os.getloadavg()},
        "phase_seconds": {
            "data_setup": data_setup,
            **{f"training_{name}": t["seconds"] for name, t in training.items()},
            "evaluation": evaluation,
        },
        "training": training,
        "cases": per_case,
        "mean": mean_over_cases(per_case),
        "notes": [
            "Every method is scored on the test label's own grid after the same Invertd of its probabilities.",
            "medwidit ensemble sizes are prefixes of one seeded ensemble (identical to smaller ensembles with the "
            "same seed), sampled as one batch: an n-member time is the ensemble's sampling time times n / size; "
            "the steps sweep uses one sample per step count, its point at the ensemble's step count is that "
            "ensemble's first member.",
            "HD95 null: the class is absent from the truth (or inf in the table: missed by the prediction).",
        ],
    }
    result["wall_clock_seconds"] = time.perf_counter() - started
    return publish(result, markdown(result), args.out)


if __name__ == "__main__":
    main()
