"""Boundary quality of a segmentation model on the shipped example (Colin27, 2 mm; or ``--image``/``--label``): Dice,
HD95, surface Dice at 1 mm and at one voxel of the grid (MONAI ``compute_surface_dice``) and the fraction of predicted
boundary faces on the network's patch grid. On a 2 mm grid boundary voxels lie 0, 2, 2.8... mm apart, so the 1 mm
tolerance (issue 11's) counts only the boundary voxels the two masks share; the one-voxel tolerance counts a voxel
off as agreeing (``surface_dice_voxel``, added after the first rows of ``results/boundary.json``, from a review).
Sampling takes the bundle's ``inference.json`` settings (steps, samples, post-processing), as ``medwidit segment``
does, unless ``--steps``/``--samples`` say otherwise.

A boundary face lies between two face-neighbouring voxels of different labels; on axis a it sits at coordinate
``i + 1`` (between voxels i and i + 1) and is "on the grid" when ``(i + 1 - phase_a) % patch_a == 0``. The phase is the
one of the most faces on each axis, so a map that is not tied to any grid scores about ``1 / patch`` (0.25 for a
4-voxel patch; the reference mask is reported beside it) and a map made of whole patches scores 1. The example is
already at the preprocessing's 2 mm spacing, so the output grid is the network's grid up to a shift.

    python benchmarks/boundary.py                                   # the shipped bundle
    python benchmarks/boundary.py --bundle CANDIDATE_BUNDLE --name pixel
    python benchmarks/boundary.py --checkpoint run/model.pt --name pixel   # no post-processing, library defaults
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_surface_dice
from monai.networks.utils import one_hot

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from _report import write_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from medwidit.inference.metrics import segmentation_metrics  # noqa: E402
from medwidit.inference.options import sampling_defaults  # noqa: E402
from medwidit.inference.predictor import Predictor  # noqa: E402

EXAMPLE = ROOT / "medwidit" / "data" / "examples"
RESULTS = ROOT / "benchmarks" / "results" / "boundary.json"


def grid_face_fraction(labels: np.ndarray, patch: tuple[int, ...]) -> float:
    """Fraction of boundary faces of an integer map (*S) on a ``patch`` grid, at each axis' most frequent phase."""
    on_grid, total = 0, 0
    for axis, p in enumerate(patch):
        differs = np.diff(labels, axis=axis) != 0  # face between i and i + 1
        position = np.nonzero(differs)[axis] + 1  # the face's coordinate on this axis
        counts = np.bincount(position % p, minlength=p)
        on_grid, total = on_grid + int(counts.max()), total + int(counts.sum())
    return on_grid / max(total, 1)


def surface_dice(prediction: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float) -> float:
    """MONAI's normalised surface Dice of the foreground at ``tolerance_mm``."""
    pred = one_hot(torch.as_tensor(prediction)[None, None].long(), num_classes=2, dim=1)
    ref = one_hot(torch.as_tensor(truth)[None, None].long(), num_classes=2, dim=1)
    value = compute_surface_dice(
        pred, ref, class_thresholds=[tolerance_mm], include_background=False, spacing=list(spacing)
    )
    return float(value[0, 0])


def evaluate(predictor: Predictor, args) -> dict:
    image = nib.load(args.image)
    truth = np.asarray(nib.load(args.label).dataobj).astype(np.int64)
    truth = (truth > 0).astype(np.int64)
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(image.affine)[:3])  # the affine's, as generalisation.py
    working = predictor.preprocessing["spacing"]
    if working is not None and not np.allclose(spacing, working):  # faces are counted on the input's grid
        raise SystemExit(f"--image {args.image}: spacing {spacing} mm, not the model's grid {working}; the patch-grid "
                         "measure needs an image on the model's own grid.")  # fmt: skip
    start = time.process_time()
    result = predictor.segment(
        args.image, steps=args.steps, num_samples=args.samples, generator=torch.Generator().manual_seed(0)
    )
    seconds = time.process_time() - start
    prediction = result.label_map.numpy() if torch.is_tensor(result.label_map) else np.asarray(result.label_map)
    metrics = segmentation_metrics(prediction, truth, num_classes=2, spacing=spacing)
    patch = tuple(predictor.segmenter.net.config["patch_size"])
    return {
        "dice": round(metrics["dice"][1], 4),
        "hd95_mm": round(metrics["hd95"][1], 2),
        "surface_dice_1mm": round(surface_dice(prediction, truth, spacing, 1.0), 4),
        "surface_dice_voxel": round(surface_dice(prediction, truth, spacing, max(spacing)), 4),
        "surface_dice_voxel_mm": max(spacing),
        "grid_face_fraction": round(grid_face_fraction(prediction, patch), 4),
        "reference_grid_face_fraction": round(grid_face_fraction(truth, patch), 4),
        "chance_grid_face_fraction": round(1 / float(np.mean(patch)), 4),
        "patch_size": list(patch),
        "sampling_cpu_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "brain_widit_segmentation")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint instead of the bundle's weights")
    parser.add_argument("--name", default="shipped patch head")
    parser.add_argument("--image", type=Path, default=EXAMPLE / "colin27_head_2mm_image.nii.gz")
    parser.add_argument("--label", type=Path, default=EXAMPLE / "colin27_head_2mm_label.nii.gz", help="brain > 0")
    parser.add_argument("--steps", type=int, default=None, help="default: the bundle's inference.json")
    parser.add_argument("--samples", type=int, default=None, help="default: the bundle's inference.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # a script may set threads
    if args.checkpoint is not None:
        predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    else:
        # models/model.pt alone (the rows compare heads), at the member count of the bundle's default ensemble
        defaults = sampling_defaults(args.bundle)
        args.samples = args.samples or defaults["num_samples"] * defaults["weight_sets"]
        predictor = Predictor.from_bundle(args.bundle, device="cpu", weight_sets=1)
    args.steps, args.samples, overlap = predictor.resolve_sampling(args.steps, args.samples, None)
    record = evaluate(predictor, args)
    shared = predictor.resolve_shared_steps(None, args.steps)
    record.update(steps=args.steps, samples=args.samples, overlap=overlap, shared_steps=shared)
    record["post_processing"] = bool(predictor.label_postprocessing)
    print(args.name, json.dumps(record), flush=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"models": {}}
    case = "" if args.image == EXAMPLE / "colin27_head_2mm_image.nii.gz" else f" on {args.image.name}"
    results["models"][args.name + case] = record
    results["example"] = "Colin27 head, 2 mm (medwidit/data/examples), brain mask > 0 as the reference"
    write_json(results, args.out)


if __name__ == "__main__":
    main()
