"""Which uncertainty map finds the wrong voxels? Voxel AUROC for wrong voxels inside the head of each map the
predictor gives, on validation scans only (never Colin27: trust.py's cases are the test).

Cases: MNI152 2 mm (clean, and generalisation.py's coil field and inverted contrast), ROBEX's head (the same three),
S1 (clean, coil field), MRHead and a head painted from a held-out label map; S1's and MRHead's truth is deepbet's
mask (the validation convention of the bundle docs). Each is segmented as ``medwidit segment`` does, with the shipped
bundle's defaults; the maps: the total entropy (``_uncertainty``), the epistemic part, the localization pass's
``_disagreement``, and the total entropy in bits plus the disagreement. Two more, not written by the CLI: the total
entropy smoothed by a Gaussian of ``SMOOTH_MM`` (a candidate: a voxel near an ambiguous boundary is itself doubtful),
and ``boundary_proximity``, minus the distance in mm to the predicted brain's surface (``metrics.boundary_distance``),
a reference that knows nothing but the label map's geometry: a map that ranks wrong voxels no better than it adds
nothing to the label map. ``error_score_surface_2mm`` / ``_4mm`` (candidates for 0.8.0, whose core's voxels have no
entropy): the error score plus ``exp(-d / L)``, d that distance, L 2 or 4 mm. ``wrong_near_surface``: the share of
the wrong voxels inside the head within ``NEAR_MM`` of that surface.

    python benchmarks/validation_maps.py --scans VAL --real REAL      # ~6 min of CPU

Writes ``benchmarks/results/validation_maps.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, fmt, publish  # benchmarks/ is on sys.path when a script runs
from generalisation import variant
from scipy import ndimage
from trust import head_mask

from medwidit.datasets.brain import sources
from medwidit.inference import Predictor
from medwidit.inference.localize import SURFACE_MM, error_score
from medwidit.inference.metrics import auroc, boundary_distance

BASES = {
    "mni152_2mm": ("scans", "mni152_2mm_image.nii.gz", "mni152_2mm_label.nii.gz"),
    "robex": ("cache", "robex_1.5mm_image.nii.gz", "robex_1.5mm_label.nii.gz"),
    "s1": ("real", "s1_image.nii.gz", "s1_deepbet.nii.gz"),
    "mrhead": ("real", "mrhead_image.nii.gz", "mrhead_deepbet.nii.gz"),
    "painted_1": ("scans", "painted_1_image.nii.gz", "painted_1_label.nii.gz"),
}
CASES = [("mni152_2mm", None), ("mni152_2mm", "bias"), ("mni152_2mm", "contrast"), ("robex", None), ("robex", "bias"),
         ("robex", "contrast"), ("s1", None), ("mrhead", None), ("painted_1", None), ("s1", "bias")]  # fmt: skip
MAPS = (
    "total",
    "epistemic",
    "disagreement",
    "total_and_disagreement",
    "total_smoothed",
    "boundary_proximity",
    "error_score_surface_2mm",
    "error_score_surface_4mm",
)
LENGTHS_MM = (2.0, SURFACE_MM)  # candidates (0.8.0): the error score plus exp(-d / L), d the distance to the surface
NEAR_MM = 4.0  # wrong_near_surface: the share of wrong voxels (in the head) within this of the predicted surface
SMOOTH_MM = 2.0  # total_smoothed's Gaussian sigma: the best of 1, 2, 4 and 8 mm, once on the 17 validation cases


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=Path, required=True, help="validation_cases.py's folder (MNI152, painted)")
    parser.add_argument("--real", type=Path, required=True, help="S1's and MRHead's images and deepbet's masks")
    parser.add_argument("--cache", type=Path, default=None, help="the brain cache, for ROBEX (default: medwidit's)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "validation_maps.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cache = args.cache or Path(sources.default_cache_dir()) / "brain"
    folders = {"scans": args.scans, "real": args.real, "cache": cache}
    predictor = Predictor.from_bundle(device="cpu")
    start, rows = time.process_time(), []
    for base, shift in CASES:
        where, image_name, truth_name = BASES[base]
        clean = nib.load(folders[where] / image_name)
        image = clean if shift is None else variant(shift, clean)
        truth = np.asarray(nib.load(folders[where] / truth_name).dataobj) > 0
        result = predictor.segment(np.asarray(image.dataobj, np.float32), affine=image.affine)
        head = torch.from_numpy(head_mask(np.asarray(clean.dataobj, np.float32)))  # the clean scan's head
        wrong = torch.from_numpy((result.label_map > 0) != truth)[head]
        maps = {"total": result.entropy, "epistemic": result.epistemic, "disagreement": result.disagreement}
        # <case>_error_score in 0.7.2-0.8.0; since, the CLI writes error_score_surface_4mm (localize.SURFACE_MM)
        maps["total_and_disagreement"] = error_score(result.entropy, result.disagreement, result.num_classes)
        found = result.label_map > 0
        spacing = [float(z) for z in image.header.get_zooms()[:3]]
        maps["total_smoothed"] = ndimage.gaussian_filter(result.entropy, [SMOOTH_MM / z for z in spacing])
        distance = boundary_distance([found], spacing=result.geometry.spacing).numpy()  # as the written map's
        maps["boundary_proximity"] = -distance
        for length in LENGTHS_MM:
            maps[f"error_score_surface_{length:g}mm"] = maps["total_and_disagreement"] + np.exp(-distance / length)
        scores = {k: auroc(torch.from_numpy(np.asarray(m, np.float32))[head], wrong) for k, m in maps.items()}
        dice = float(2 * (found & truth).sum() / (found.sum() + truth.sum()))
        near = -maps["boundary_proximity"][head.numpy()][wrong.numpy()] <= NEAR_MM  # wrong voxels near the surface
        row = {"case": base if shift is None else f"{base}_{shift}", "dice": dice, **scores,
               "wrong_near_surface": float(near.mean()) if near.size else float("nan")}  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    columns = (*MAPS, "wrong_near_surface")
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in ("dice", *columns)}
    lines = ["| case | Dice | " + " | ".join(columns) + " |", "|---" * (2 + len(columns)) + "|"]
    lines += [f"| {r['case']} | {fmt(r['dice'])} | " + " | ".join(fmt(r[k]) for k in columns) + " |" for r in rows]
    lines.append("| **mean** | " + fmt(mean["dice"]) + " | " + " | ".join(fmt(mean[k]) for k in columns) + " |")
    result = {"environment": environment(torch.device("cpu"), __file__), "cpu_seconds": time.process_time() - start,
              "cases": rows, "mean": mean}  # fmt: skip
    return publish(result, "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
