"""Score the depth of ``trust.boundary_overlap``'s shells and the knee of the calibration's ``log_boundary`` on
validation cases, by the leave-one-case-out error of the per-case Dice estimate.

Input: ``generalisation.py --keep DIR`` runs over validation cases (never Colin27), each as its JSON (the medwidit
rows' quality reports and true Dice) and DIR (each case's image and medwidit's mask). No sampling: the overlap is
computed here from the kept files at each ``--depths`` (mm), with its CPU seconds beside the case's segmentation's,
the feature at each ``--knees``, and each pair is scored by the leave-one-out MAE and Spearman of
``quality_calibration.py``'s chosen features (``--features``) with ``log_boundary`` added, beside the same features
without it.

    python benchmarks/boundary_overlap.py runs/val48.json runs/val48 [runs/more.json runs/more ...] \
        --depths 2 3 4 --knees 0.7 0.75 0.8 0.85

Writes ``benchmarks/results/boundary_overlap.json`` and prints one table.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, fmt, write_json  # benchmarks/ is on sys.path when a script runs
from quality_calibration import CLASS, leave_one_out, scores

from medwidit.inference.calibration import FEATURES, case_features
from medwidit.inference.trust import boundary_overlap

DEFAULT_FEATURES = ("log_ensemble_dice", "log_kept", "volume_outside")  # 0.6.1's calibration


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="JSON DIR",
        help="generalisation.py --keep runs: each JSON, then its folder",
    )
    parser.add_argument("--depths", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    parser.add_argument("--knees", type=float, nargs="+", default=[0.7, 0.75, 0.8, 0.85])
    parser.add_argument("--features", nargs="+", default=list(DEFAULT_FEATURES))
    parser.add_argument("--low-dice", type=float, default=0.9)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "boundary_overlap.json")
    args = parser.parse_args(argv)
    if len(args.runs) % 2:
        parser.error(f"runs: pairs of a generalisation.py JSON and its --keep folder, got {len(args.runs)} paths")
    args.runs = list(zip(args.runs[::2], args.runs[1::2], strict=True))
    for results, kept in args.runs:
        if not results.is_file() or not kept.is_dir():
            parser.error(f"runs: {results} must be a generalisation.py JSON and {kept} its --keep folder")
    if any(not 0.0 < k < 1.0 for k in args.knees) or len(set(args.knees)) < len(args.knees):
        parser.error(f"--knees: distinct shares in (0, 1), got {args.knees}")
    if any(not (math.isfinite(d) and d > 0) for d in args.depths) or len(set(args.depths)) < len(args.depths):
        parser.error(f"--depths: distinct positive numbers of mm, got {args.depths}")
    known = [f for f in FEATURES if f != "log_boundary"]
    if unknown := [f for f in args.features if f not in known]:
        parser.error(f"--features: {unknown} not among {', '.join(known)} (log_boundary is added here)")
    if "log_ensemble_dice" not in args.features or len(set(args.features)) < len(args.features):
        parser.error(f"--features: distinct names that hold log_ensemble_dice, got {args.features}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = environment(torch.device("cpu"), __file__)
    rows, seen = [], {}
    runs = [(results, kept, row) for results, kept in args.runs for row in json.loads(results.read_text())["rows"]]
    for results, kept, row in runs:
        if row.get("tool") != "medwidit" or row.get("dice") is None or not row.get("quality"):
            continue
        if row["case"] in seen:  # its twin would stay in every leave-one-out fit of it
            raise SystemExit(f"case {row['case']} is in {seen[row['case']]} and in {results}: one of each case.")
        seen[row["case"]] = results
        image_path = kept / f"{row['case']}_image.nii.gz"
        mask_path = kept / f"{row['case']}_medwidit_mask.nii.gz"
        if not image_path.is_file() or not mask_path.is_file():
            raise SystemExit(f"{kept}: no {image_path.name} or {mask_path.name}; was it {results.name}'s --keep?")
        image = nib.load(str(image_path))
        data = np.asarray(image.dataobj, dtype=np.float32)[None]
        mask = np.asarray(nib.load(str(mask_path)).dataobj) == int(CLASS)
        overlaps, seconds = {}, {}  # keyed by the depth as JSON writes it
        for d in args.depths:
            started_cpu = time.process_time()
            overlaps[str(d)] = boundary_overlap(data, mask, image.affine, depth_mm=d)
            seconds[str(d)] = time.process_time() - started_cpu  # what the feature adds to a case's segmentation
        rows.append(
            {"case": row["case"], "run": str(results), "true": float(row["dice"]), "quality": row["quality"],
             "overlap": overlaps, "cpu_seconds": seconds, "shape": list(mask.shape),
             "segment_cpu_seconds": row.get("cpu_seconds"),
             # the mask's voxels at the image's minimum: a zero-filled region taken in (trust_boundary.json's failure)
             "mask_voxels_at_floor": int((mask & (data[0] <= np.nanmin(data[0]))).sum()),
             "mask_voxels": int(mask.sum())}
        )  # fmt: skip
    if len(rows) < 5:
        named = ", ".join(str(results) for results, _ in args.runs)
        raise SystemExit(f"{len(rows)} medwidit case(s) with a quality report in {named}: need at least 5.")
    true = np.array([r["true"] for r in rows])
    names = tuple(args.features)
    candidates = []
    for depth in [None, *args.depths]:
        for knee in [None] if depth is None else args.knees:
            cases = []
            for r in rows:
                quality = {
                    **r["quality"],
                    "boundary_overlap": {} if depth is None else {CLASS: r["overlap"][str(depth)]},
                }
                features = case_features(quality, CLASS, **({} if knee is None else {"boundary_knee": knee}))
                cases.append({"features": features, "true": r["true"]})
            used = names if depth is None else (*names, "log_boundary")
            held_out = leave_one_out(cases, used)
            above = true > 0.85
            candidates.append(
                {"depth_mm": depth, "knee": knee, "features": list(used),
                 "leave_one_out": scores(held_out, true, args.low_dice),
                 "mae_above_0.85": float(np.abs(held_out - true)[above].mean()) if above.any() else None}
            )  # fmt: skip
    lines = ["| depth (mm) | knee | LOO MAE | LOO Spearman | MAE, cases above 0.85 |", "|---|---|---|---|---|"]
    for c in candidates:
        s = c["leave_one_out"]
        lines.append(f"| {c['depth_mm'] or 'without'} | {c['knee'] or '—'} | {fmt(s['mae'])} | {fmt(s['spearman'])} "
                     f"| {fmt(c['mae_above_0.85'])} |")  # fmt: skip
    result = {
        "command": shlex.join(["python", "benchmarks/boundary_overlap.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": started,
        "cases": [{k: v for k, v in r.items() if k != "quality"} for r in rows],
        "candidates": candidates,
        "markdown": "\n".join(lines),
    }
    print(result["markdown"])
    print(f"wrote {write_json(result, args.output)}")
    return result


if __name__ == "__main__":
    main()
