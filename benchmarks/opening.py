"""Would a morphological opening after the label post-processing cut the false brain off real heads? Scored on the
masks of a ``generalisation.py --keep DIR`` run over validation cases (never Colin27), without sampling again.

Each case's brain mask (already the largest component with its holes filled, on the input's grid) is eroded by a
ball of ``r`` mm (Euclidean, the grid's voxel sizes), the eroded core's largest component kept, and the mask kept
within ``r + m`` mm of that core, holes filled again: ``m`` 0 is an opening that keeps one component; ``m`` > 0
gives back the mask's own boundary near the core and still cuts what hangs on by a bridge thinner than ``2 r``.
Dice and HD95 against the truth on the truth's grid, as ``generalisation.py`` scores them.

    python benchmarks/opening.py runs/val48.json runs/val48 --radii 2 3 4 6 8 --margins 0 2

Writes ``benchmarks/results/validation_opening.json`` and prints one table (the mean over the cases, the cases it
made better and worse, the largest loss, the mean HD95 over the cases where every setting has a finite one). The masks
and truths are read from the folder (a base scan's truth from the run's ``bases``); a case without them is refused.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import generalisation  # benchmarks/ is on sys.path when a script runs
import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, fmt, write_json
from monai.transforms import KeepLargestConnectedComponent
from scipy import ndimage


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a generalisation.py --keep run's JSON")
    parser.add_argument("kept", type=Path, help="its --keep folder")
    parser.add_argument("--radii", type=float, nargs="+", default=[2.0, 3.0, 4.0, 6.0, 8.0], help="r, mm")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 2.0], help="m, mm")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "validation_opening.json")
    args = parser.parse_args(argv)
    if not args.results.is_file() or not args.kept.is_dir():
        parser.error(f"{args.results} must be a generalisation.py JSON and {args.kept} its --keep folder")
    if not all(np.isfinite(r) and r > 0 for r in args.radii) or not all(
        np.isfinite(m) and m >= 0 for m in args.margins
    ):
        parser.error(
            f"--radii must be finite and > 0 mm, --margins finite and >= 0 mm, got {args.radii} and {args.margins}"
        )
    args.radii, args.margins = list(dict.fromkeys(args.radii)), list(dict.fromkeys(args.margins))
    return args


def open_mask(mask: np.ndarray, spacing: np.ndarray, radius: float, margin: float) -> np.ndarray:
    """The mask within ``radius + margin`` mm of the largest component of its erosion by a ball of ``radius`` mm,
    holes filled; the mask itself where the erosion leaves nothing."""
    padded = np.pad(mask, 1)  # the volume's faces are outside the mask: they erode it as air would
    core = (ndimage.distance_transform_edt(padded, sampling=spacing) > radius)[1:-1, 1:-1, 1:-1]
    if not core.any():
        return mask
    core = KeepLargestConnectedComponent(independent=False, connectivity=3)(torch.as_tensor(core[None]))[0].numpy()
    near = ndimage.distance_transform_edt(~core, sampling=spacing) <= radius + margin
    return ndimage.binary_fill_holes(mask & near)


def score(mask: np.ndarray, affine: np.ndarray, truth_image) -> dict:
    """Brain Dice and HD95 (mm) of ``mask`` (on the grid of ``affine``) on the truth's grid, as generalisation.py
    scores its masks."""
    scored = generalisation.score(nib.Nifti1Image(mask.astype(np.uint8), affine), truth_image)
    return {"dice": float(scored["dice"]), "hd95_mm": float(scored["hd95_mm"])}


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = json.loads(args.results.read_text())
    settings = [(r, m) for r in args.radii for m in args.margins]
    cases = []
    for row in run["rows"]:
        if row.get("tool") != "medwidit" or "dice" not in row:
            continue
        case = row["case"]
        mask_path, truth_path = (args.kept / f"{case}_{name}.nii.gz" for name in ("medwidit_mask", "truth"))
        if not truth_path.exists() and case in run.get("bases", {}):  # a base scan's truth is its own label file
            truth_path = Path(run["bases"][case][1])
        if not mask_path.exists() or not truth_path.exists():
            raise SystemExit(f"{args.kept}: no {mask_path.name} or no truth for {case}: is it {args.results}'s folder?")
        mask_image, truth_image = nib.load(str(mask_path)), nib.load(str(truth_path))
        mask = np.asarray(mask_image.dataobj) > 0
        spacing = np.linalg.norm(mask_image.affine[:3, :3], axis=0)

        record = {"case": case, "shipped": score(mask, mask_image.affine, truth_image)}
        for r, m in settings:
            record[f"r{r:g}_m{m:g}"] = score(open_mask(mask, spacing, r, m), mask_image.affine, truth_image)
        cases.append(record)
        print(case, fmt(record["shipped"]["dice"], 4), flush=True)
    if not cases:
        raise SystemExit(f"{args.results}: no scored medwidit row to open.")
    base = np.array([c["shipped"]["dice"] for c in cases])
    keys = ["shipped", *(f"r{r:g}_m{m:g}" for r, m in settings)]
    finite = np.all([[np.isfinite(c[k]["hd95_mm"]) for k in keys] for c in cases], axis=1)  # one case set for all
    summary = {}
    lines = ["| setting | mean Dice | better / worse | largest loss | mean HD95 (mm) |", "|---|---|---|---|---|"]
    for key in keys:
        dice = np.array([c[key]["dice"] for c in cases])
        hd = np.array([c[key]["hd95_mm"] for c in cases])
        delta = dice - base
        summary[key] = {
            "mean_dice": float(dice.mean()),
            "better": int((delta > 1e-4).sum()),
            "worse": int((delta < -1e-4).sum()),
            "largest_loss": float(min(delta.min(), 0.0)),
            "mean_hd95_mm": float(hd[finite].mean()),
            "hd95_cases": int(finite.sum()),
        }
        s = summary[key]
        lines.append(
            f"| {key} | {fmt(s['mean_dice'], 4)} | {s['better']} / {s['worse']} | {fmt(s['largest_loss'], 4)} | "
            f"{fmt(s['mean_hd95_mm'], 2)} |"
        )
    table = "\n".join(lines)
    print(table)
    result = {
        "purpose": "a morphological opening after the label post-processing, scored on kept validation masks",
        "command": "python benchmarks/opening.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "environment": environment(torch.device("cpu"), __file__),
        "source_run": str(args.results),
        "source_command": run.get("command"),
        "cases": cases,
        "summary": summary,
        "markdown": table,
    }
    write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
