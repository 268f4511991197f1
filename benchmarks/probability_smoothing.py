"""Does smoothing the ensemble's class probabilities before the argmax take the brain's edge off the patch grid
without losing Dice or HD95? Scored on the cases of a ``generalisation.py --keep DIR`` run over validation cases
(never Colin27), sampling each case once per sigma with the same seed: the members are the same draw, so the
settings differ only by the smoothing (paired).

For each sigma (voxels of the model's grid; 0 is the bundle as shipped) the bundle's predictor runs with
``probability_smoothing`` sigma (``medwidit.inference.postprocess.smooth_probability``: MONAI ``GaussianSmooth`` of the
mean class probabilities on the model's grid, renormalised) and everything else as in ``inference.json``. Dice and
HD95 on the truth's grid as ``generalisation.py`` scores them; the fraction of the mask's boundary faces on the
network's patch grid (``boundary.grid_face_fraction``) where the case's grid is the model's working grid (else the
patch grid has no fixed phase on the input's voxels); CPU seconds of the whole case, and of the smoothing alone on a
tensor of the case's model grid (median of 3).

    python benchmarks/probability_smoothing.py runs/val17.json runs/val17 --sigmas 0 1 1.5 2

Writes ``benchmarks/results/validation_probability_smoothing.json`` (a file there that records a ``decision`` is kept:
the result goes beside it) and prints one table, a row per sigma: the mean Dice over
the cases, the cases it made better and worse than sigma 0 (by more than 0.001), the largest loss, the mean HD95 and
the mean fraction of faces on the grid.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import generalisation  # benchmarks/ is on sys.path when a script runs
import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, fmt, write_json
from boundary import grid_face_fraction
from monai.utils import ensure_tuple_rep

from medwidit.inference import Predictor
from medwidit.inference.postprocess import smooth_probability
from medwidit.nets.contract import network_size_multiple


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a generalisation.py --keep run's JSON")
    parser.add_argument("kept", type=Path, help="its --keep folder (each case's image and truth)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0], help="voxels of the model")
    parser.add_argument("--bundle", default=None, help="bundle folder or name (default: the shipped bundle)")
    parser.add_argument("--seed", type=int, default=0, help="the ensemble's seed, as medwidit segment --seed")
    parser.add_argument("--cases", nargs="+", default=None, help="these cases of the run (default: all)")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "validation_probability_smoothing.json"
    )
    args = parser.parse_args(argv)
    if not args.results.is_file() or not args.kept.is_dir():
        parser.error(f"{args.results} must be a generalisation.py JSON and {args.kept} its --keep folder")
    if not all(np.isfinite(s) and s >= 0 for s in args.sigmas):
        parser.error(f"--sigmas must be finite and >= 0 voxels, got {args.sigmas}")
    args.sigmas = sorted(set([0.0, *args.sigmas]))  # sigma 0, the shipped setting, is every comparison's reference
    return args


def case_files(run: dict, kept: Path, case: str) -> tuple[Path, Path]:
    """The case's image and truth in the --keep folder (a base scan's from the run's ``bases``)."""
    image, truth = (kept / f"{case}_{name}.nii.gz" for name in ("image", "truth"))
    base = run.get("bases", {}).get(case)
    if base is not None:
        image, truth = (p if p.exists() else Path(b) for p, b in zip((image, truth), base[:2], strict=True))
    if not image.exists() or not truth.exists():
        raise SystemExit(f"{kept}: no {image.name} or no truth for {case}: is it the run's --keep folder?")
    return image, truth


def smoothing_seconds(predictor: Predictor, image, sigma: float) -> float:
    """CPU seconds of ``smooth_probability`` on a (K, *S') tensor of the case's model grid (median of 3)."""
    zooms = np.array(image.header.get_zooms()[:3], dtype=float)
    working = predictor.preprocessing["spacing"] or zooms
    grid = [max(1, round(n * z / w)) for n, z, w in zip(image.shape[:3], zooms, working, strict=True)]
    probability = torch.rand(predictor.num_classes, *grid)
    times = []
    for _ in range(3):
        start = time.process_time()
        smooth_probability(probability, sigma)
        times.append(time.process_time() - start)
    return float(np.median(times))


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = json.loads(args.results.read_text())
    names = [r["case"] for r in run["rows"] if r.get("tool") == "medwidit" and "dice" in r]
    if args.cases is not None:
        missing = sorted(set(args.cases) - set(names))
        if missing:
            raise SystemExit(f"{args.results}: no scored medwidit row for {missing}")
        names = [n for n in names if n in args.cases]
    if not names:
        raise SystemExit(f"{args.results}: no scored medwidit row to segment again.")
    predictors = {s: Predictor.from_bundle(args.bundle, probability_smoothing=s) for s in args.sigmas}
    patch = ensure_tuple_rep(network_size_multiple(predictors[0.0].segmenter.net), 3)
    working = predictors[0.0].preprocessing["spacing"]
    cases = []
    for name in names:
        image_path, truth_path = case_files(run, args.kept, name)
        image, truth = nib.load(str(image_path)), nib.load(str(truth_path))
        on_model_grid = working is not None and np.allclose(image.header.get_zooms()[:3], working)
        record = {"case": name, "on_model_grid": bool(on_model_grid)}
        for sigma, predictor in predictors.items():
            start = time.process_time()
            result = predictor.segment(str(image_path), generator=torch.Generator().manual_seed(args.seed))
            seconds = time.process_time() - start
            mask = (np.asarray(result.label_map) > 0).astype(np.uint8)
            scored = generalisation.score(nib.Nifti1Image(mask, image.affine), truth)
            record[f"sigma{sigma:g}"] = {
                "dice": float(scored["dice"]),
                "hd95_mm": float(scored["hd95_mm"]),
                "grid_faces": grid_face_fraction(mask.astype(np.int64), patch) if on_model_grid else None,
                "cpu_s": seconds,
                "smoothing_cpu_s": smoothing_seconds(predictor, image, sigma) if sigma else 0.0,
            }
        cases.append(record)
        print(name, *(fmt(record[f"sigma{s:g}"]["dice"], 4) for s in args.sigmas), flush=True)
    summary, table = summarise(cases, args.sigmas)
    print(table)
    result = {
        "purpose": "the mean class probabilities smoothed before the argmax (probability_smoothing), on kept "
        "validation cases, the same draw for every sigma",
        "command": shlex.join(["python", "benchmarks/probability_smoothing.py", *(argv or sys.argv[1:])]),
        "environment": environment(torch.device("cpu"), __file__),
        "source_run": str(args.results),
        "source_command": run.get("command"),
        "seed": args.seed,
        "cases": cases,
        "summary": summary,
        "markdown": table,
    }
    write_json(result, args.output)
    return result


def summarise(cases: list[dict], sigmas) -> tuple[dict, str]:
    base = np.array([c["sigma0"]["dice"] for c in cases])
    keys = [f"sigma{s:g}" for s in sigmas]
    finite = np.all([[np.isfinite(c[k]["hd95_mm"]) for k in keys] for c in cases], axis=1)  # one case set for all
    summary = {}
    lines = [
        "| sigma (voxels) | mean Dice | better / worse | largest loss | mean HD95 (mm) | faces on the patch grid "
        "| smoothing / case CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        dice = np.array([c[key]["dice"] for c in cases])
        delta = dice - base
        faces = [c[key]["grid_faces"] for c in cases if c[key]["grid_faces"] is not None]
        share = [c[key]["smoothing_cpu_s"] / c[key]["cpu_s"] for c in cases]
        summary[key] = {
            "mean_dice": float(dice.mean()),
            "better": int((delta > 1e-3).sum()),
            "worse": int((delta < -1e-3).sum()),
            "largest_loss": float(min(delta.min(), 0.0)),
            "mean_hd95_mm": float(np.mean([c[key]["hd95_mm"] for c, f in zip(cases, finite, strict=True) if f]))
            if finite.any()
            else None,
            "hd95_cases": int(finite.sum()),
            "mean_grid_faces": float(np.mean(faces)) if faces else None,
            "grid_face_cases": len(faces),
            "max_smoothing_share_of_case_cpu": float(max(share)),
        }
        s = summary[key]
        lines.append(
            f"| {key.removeprefix('sigma')} | {fmt(s['mean_dice'], 4)} | {s['better']} / {s['worse']} | "
            f"{fmt(s['largest_loss'], 4)} | {fmt(s['mean_hd95_mm'], 2)} | {fmt(s['mean_grid_faces'], 3)} "
            f"({s['grid_face_cases']} cases) | {fmt(100 * s['max_smoothing_share_of_case_cpu'], 2)} % at most |"
        )
    return summary, "\n".join(lines)


if __name__ == "__main__":
    main()
