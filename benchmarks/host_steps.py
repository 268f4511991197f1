"""The host's steps of a large volume on this CPU, each beside the code it replaced or kept, on the same arrays (the
outputs must be equal voxel for voxel): the localization region beside scipy's exact distance transform in the
foreground's box; the air step's 3^3 median filter in torch beside scipy's; the shipped label post-processing
(MONAI's transforms) in the labels' bounding box beside the same over the whole grid. gpu.py's 512x512x300 volume
(2026-12-04, H200) spent about 74 of its 122 s in scipy on one host core: the head mask 49 s (its median 42 s),
MONAI's FillHoles 13 s, the distance transform 12 s (results/gpu_ct_profile.json).

    python benchmarks/host_steps.py [--shape 512 512 300] [--repeats 1]   -> table + results/host_steps.json

The region's foreground is a ball (what the shipped bundle's label post-processing leaves) and gpu.py's scattered
one (10 % of the voxels), at the shipped margin (6 mm) on 2 mm and 1 mm grids. The median's images are gpu.py's CT
volume (normal noise x 300) and a noisy ball. On a GPU the predictor runs the median in torch; on a CPU it keeps
scipy's, and the median rows say why.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _report import environment, fmt, write_json  # benchmarks/ is on sys.path when a script runs
from scipy import ndimage

from medwidit.data.transforms import torch_median_filter3
from medwidit.inference import localize
from medwidit.inference.postprocess import apply_label_postprocessing, run_label_steps

RESULTS = Path(__file__).resolve().parent / "results" / "host_steps.json"
# the shipped bundle's label post-processing (inference.json)
BRAIN_STEPS = [{"name": "keep_largest_component", "applied_labels": [1]}, {"name": "fill_holes", "applied_labels": [1]}]


def scipy_region(label_map: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
    """The localization region as it was before 2026-12-04: scipy's exact distance transform in the foreground's box
    (``foreground_region`` with no shifts allowed takes exactly that path): the reference."""
    allowed = localize.MAX_BALL_SHIFTS
    localize.MAX_BALL_SHIFTS = 0
    try:
        return localize.foreground_region(label_map, affine, margin_mm)
    finally:
        localize.MAX_BALL_SHIFTS = allowed


def ball(shape, fraction: float = 0.7) -> np.ndarray:
    """A centred ellipsoid filling ``fraction`` of each axis."""
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij", sparse=True)
    return sum(g**2 for g in grid) < fraction**2


def timed(fn, repeats: int):
    """(the result, the fastest of ``repeats`` runs in wall seconds: torch uses both cores, scipy one)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def run(shape, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    images = {
        "ct_noise": rng.normal(size=shape).astype(np.float32) * 300,
        "noisy_ball": np.where(ball(shape), 800.0, 0.0).astype(np.float32)
        + rng.rayleigh(40.0, shape).astype(np.float32),
    }
    rows = []
    for name, image in images.items():
        old, reference = timed(lambda image=image: ndimage.median_filter(image, size=3, mode="nearest"), repeats)
        new, seconds = timed(lambda image=image: torch_median_filter3(torch.from_numpy(image)).numpy(), repeats)
        rows.append(_row("median (torch)", name, seconds, reference, np.array_equal(new, old)))
    foregrounds = {"ball": ball(shape, 0.5), "scattered_10pct": rng.random(shape) < 0.1}
    for name, foreground in foregrounds.items():
        for spacing in (2.0, 1.0):
            sampling = [spacing] * len(shape)
            affine = np.diag([*sampling, 1.0])
            new, seconds = timed(lambda f=foreground, a=affine: localize.foreground_region(f, a, 6.0), repeats)
            old, reference = timed(lambda f=foreground, a=affine: scipy_region(f, a, 6.0), repeats)
            rows.append(_row("region (6 mm)", f"{name}, {spacing:g} mm", seconds, reference, np.array_equal(new, old)))
    for name, foreground in foregrounds.items():  # MONAI's steps in the labels' box vs over the whole grid
        labels = foreground.astype(np.int64)
        new, seconds = timed(lambda labels=labels: apply_label_postprocessing(labels, BRAIN_STEPS), repeats)
        old, reference = timed(lambda labels=labels: run_label_steps(labels.copy(), BRAIN_STEPS), repeats)
        rows.append(_row("post-processing", name, seconds, reference, np.array_equal(new, old)))
    return {"shape": list(shape), "repeats": repeats, "rows": rows}


def _row(step, case, seconds, reference, equal) -> dict:
    return {"step": step, "case": case, "seconds": seconds, "scipy_seconds": reference,
            "speedup": reference / seconds, "equal": bool(equal)}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = {"environment": environment(torch.device("cpu"), __file__), **run(tuple(args.shape), args.repeats)}
    print(f"{'step':<15} {'case':<24} {'scipy s':>9} {'this s':>9} {'speed-up':>9} equal")
    for r in report["rows"]:
        print(f"{r['step']:<15} {r['case']:<24} {fmt(r['scipy_seconds'], 2):>9} {fmt(r['seconds'], 2):>9} "
              f"{fmt(r['speedup'], 2):>9} {r['equal']}")  # fmt: skip
    print(f"wrote {write_json(report, args.output)}")
    return 0 if all(r["equal"] for r in report["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
