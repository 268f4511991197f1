"""The atlas prior's registration alone (no sampling): how well the bundle's template brain mask, registered to a head,
covers that head's true brain, clean and under ``trust.py``'s coil fields.

For every ``--base NAME IMAGE LABEL`` (validation heads; never Colin27 or the trust cases) and every coil-field
strength of ``trust.STRENGTHS["bias"]`` (MONAI's RandBiasField, coefficient 0.3 / 0.6 / 0.9; 0 is the clean head), the
template is registered as ``Predictor.segment`` registers it (``atlas.atlas_mask``), with the images' voxels ranked
(0.7.2) and, with ``--raw`` too, on their raw intensities (0.7.0-0.7.1's registration): Dice of the registered mask
with the true brain, its volume (mL) and the CPU seconds. A case SimpleITK cannot register is a row with no Dice.

    python benchmarks/registration.py --raw --base robex ROBEX_IMAGE ROBEX_LABEL --base s1 S1_IMAGE S1_MASK ...

Writes ``benchmarks/results/registration.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, fmt, publish  # benchmarks/ is on sys.path when a script runs
from nibabel.processing import resample_from_to
from trust import STRENGTHS, acquisition_shift

import medwidit.inference.atlas as atlas
from medwidit.inference.options import resolve_bundle


def register(image: np.ndarray, affine: np.ndarray, truth: np.ndarray, spec: dict, raw: bool) -> dict:
    """Dice with ``truth``, volume and CPU seconds of the template's mask registered to ``image``; ``raw``: on the
    intensities, not their ranks (``atlas.atlas_mask(ranked=False)``)."""
    start = time.process_time()
    try:
        mask = atlas.atlas_mask(image, affine, spec, ranked=not raw)
    except RuntimeError as e:  # SimpleITK's: the field of view too small to register
        return {"dice": None, "volume_ml": None, "cpu_seconds": time.process_time() - start, "error": str(e)[-200:]}
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    dice = atlas.template_dice(truth, mask)
    return {"dice": dice, "volume_ml": float(mask.sum()) * voxel_ml, "cpu_seconds": time.process_time() - start}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", nargs=3, action="append", required=True, metavar=("NAME", "IMAGE", "LABEL"))
    parser.add_argument(
        "--bundle", type=Path, default=None, help="the bundle whose atlas_prior registers (default: shipped)"
    )
    parser.add_argument("--raw", action="store_true", help="also register on raw intensities (0.7.1's registration)")
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "registration.json")
    return parser.parse_args(argv)


def bundle_prior(path: Path | None) -> tuple[Path, dict]:
    """The bundle at ``path`` (default: the shipped one) and its checked ``atlas_prior``; a bundle without one stops
    the script, naming it."""
    bundle = resolve_bundle(path)
    spec = atlas.bundle_atlas_prior(bundle)
    if spec is None:
        raise SystemExit(f"{bundle}: its inference.json declares no atlas_prior")
    return bundle, spec


def main(argv=None) -> dict:
    args = parse_args(argv)
    bundle, spec = bundle_prior(args.bundle)
    arms = ["ranks", "raw"] if args.raw else ["ranks"]
    rows = []
    for name, image_path, label_path in args.base:
        image = nib.load(image_path)
        label = nib.load(label_path)
        if label.shape != image.shape or not np.allclose(label.affine, image.affine, atol=1e-4):
            label = resample_from_to(label, image, order=0)  # a mask on another grid: onto the image's
        truth = np.asarray(label.dataobj) > 0
        values = np.asarray(image.dataobj, dtype=np.float32)
        for level in args.levels:
            shifted = values if level == 0 else acquisition_shift(values, truth.astype(np.int64), "bias", level, 0)[0]
            row = {"case": name, "coil_field": 0.0 if level == 0 else STRENGTHS["bias"][level - 1]}
            for arm in arms:
                row[arm] = register(shifted, image.affine, truth, spec, raw=arm == "raw")
            rows.append(row)
            print(f"{name} coil {row['coil_field']}: " + ", ".join(f"{a} {fmt(row[a]['dice'])}" for a in arms),
                  flush=True)  # fmt: skip
    lines = ["| case | coil field | " + " | ".join(f"{a}: Dice / mL / CPU-s" for a in arms) + " |",
             "|---|---|" + "---|" * len(arms)]  # fmt: skip
    for row in rows:
        cells = [
            f"{fmt(row[a]['dice'])} / {fmt(row[a]['volume_ml'], 0)} / {fmt(row[a]['cpu_seconds'], 1)}" for a in arms
        ]
        lines.append(f"| {row['case']} | {row['coil_field']} | " + " | ".join(cells) + " |")
    summary = {}
    for arm in arms:
        dice = [row[arm]["dice"] for row in rows]
        summary[arm] = {
            "mean_dice": float(np.mean([d if d is not None else 0.0 for d in dice])),
            "below_0.8": sum(d is None or d < 0.8 for d in dice),
            "cases": len(dice),
        }
        lines.append(f"\n{arm}: mean Dice {summary[arm]['mean_dice']:.3f}, {summary[arm]['below_0.8']} of "
                     f"{len(dice)} below 0.8 (or not registered)")  # fmt: skip
    result = {"environment": environment(torch.device("cpu"), __file__), "bundle": str(bundle), "rows": rows,
              "summary": summary}  # fmt: skip
    return publish(result, "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
