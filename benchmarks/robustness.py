"""Robustness to acquisition shifts, measured without the held-out data: Dice (and HD95) of medwidit checkpoints on
the data list's *validation* cases and on seeded, synthetically shifted copies of them.

Why: only two whole-head anatomies exist in the package registries; one (Colin27) is the held-out test case, so it
cannot steer model design. A model trained on one template must survive what differs between scanners: an
arbitrary intensity curve, coil bias, noise, blur, head pose and size. Each shifted copy draws, with its own seed:

    pose      rotation up to 10 degrees per axis, scale 0.9-1.1, translation up to 5 voxels (label alike, nearest)
    contrast  a random monotone intensity curve (MONAI RandHistogramShift, 5-10 control points), then gamma 0.6-1.6
    bias      a multiplicative coil field (MONAI RandBiasField, coefficients 0.1-0.4)
    blur      Gaussian, sigma 0.4-1.0 voxel, half of the copies
    noise     Rician, sigma 1-6 % of the maximum (background becomes noise, not zero)
    gain      the whole image times 10^U(1, 4): MR intensities have no unit

The same shifts are in the training augmentation's families, so this measures how well a model learnt the
invariances it was shown, on an anatomy seen in training at another resolution; it is a model-selection tool, not a
substitute for the held-out test (``benchmarks/quality.py``).

    python benchmarks/robustness.py                                   # the shipped bundle's model
    python benchmarks/robustness.py --checkpoint a.pt --checkpoint b.pt --shifts 8 --steps 5

Writes ``benchmarks/results/robustness.json`` (``--output`` to change), with every per-case Dice and HD95 (MONAI's,
through ``medwidit.inference.metrics``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, publish  # benchmarks/ is on sys.path when a script runs
from monai.transforms import GaussianSmooth, RandAffined, RandBiasField, RandHistogramShift

from medwidit.datasets.brain import sources
from medwidit.inference import Predictor
from medwidit.inference.metrics import segmentation_metrics
from medwidit.training.data import load_data_list

DEFAULT_BUNDLE = ROOT / "bundles" / "brain_widit_segmentation"
RESULTS = ROOT / "benchmarks" / "results" / "robustness.json"


def shift(image: np.ndarray, label: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One seeded acquisition shift of (image, label), both (*S) arrays on the same grid (see the module text)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(image.astype(np.float32) / max(float(np.percentile(image, 99.5)), 1e-6))[None]
    y = torch.from_numpy(label.astype(np.float32))[None]
    pose = RandAffined(
        ["image", "label"],
        prob=1.0,
        rotate_range=[np.deg2rad(10)] * 3,
        scale_range=[0.1] * 3,
        translate_range=[5] * 3,
        mode=["bilinear", "nearest"],
        padding_mode="zeros",
    )
    pose.set_random_state(seed)
    moved = pose({"image": x, "label": y})
    x, y = moved["image"].as_tensor().clamp(min=0), moved["label"].as_tensor()
    curve = RandHistogramShift(num_control_points=(5, 10), prob=1.0)
    curve.set_random_state(seed)
    x = curve(x / x.max()).clamp(min=0) ** float(rng.uniform(0.6, 1.6))
    bias = RandBiasField(coeff_range=(0.1, 0.4), prob=1.0)
    bias.set_random_state(seed)
    x = torch.as_tensor(bias(x))
    if rng.random() < 0.5:
        x = GaussianSmooth(sigma=float(rng.uniform(0.4, 1.0)))(x)
    sigma = float(rng.uniform(0.01, 0.06)) * float(x.max())
    g = torch.Generator().manual_seed(seed)
    real, imaginary = x + sigma * torch.randn(x.shape, generator=g), sigma * torch.randn(x.shape, generator=g)
    x = torch.sqrt(real**2 + imaginary**2) * float(10 ** rng.uniform(1, 4))
    return np.asarray(x[0]), np.asarray(y[0]).astype(np.int64)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        help="a medwidit checkpoint (repeat to compare; default: the bundle's models/model.pt)",
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data-list", type=Path, default=sources.REPO_DATA_LISTS / "brain_extraction.json")
    parser.add_argument("--dataset-dir", type=Path, default=None, help="the data cache (default: medwidit's)")
    parser.add_argument("--shifts", type=int, default=8, help="shifted copies per validation case")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    base = args.dataset_dir or sources.default_cache_dir()
    cases = load_data_list(args.data_list, "validation", base_dir=base)
    checkpoints = args.checkpoint or [str(args.bundle / "models" / "model.pt")]
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": environment(torch.device("cpu"), __file__),
        "checkpoints": {},
    }
    rows = []
    for checkpoint in checkpoints:
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
        k = predictor.num_classes
        per_case = []
        for case in cases:
            image_file = nib.load(case["image"])
            image, label = np.asarray(image_file.dataobj, dtype=np.float32), np.asarray(nib.load(case["label"]).dataobj)
            spacing = nib.affines.voxel_sizes(image_file.affine)  # array axis order, as segmentation_metrics wants
            variants = [("clean", image, label)] + [(f"shift{s}", *shift(image, label, s)) for s in range(args.shifts)]
            for name, x, y in variants:
                start = time.perf_counter()
                seg = predictor.segment(x, affine=image_file.affine, steps=args.steps, num_samples=args.samples)
                scores = segmentation_metrics(np.asarray(seg.label_map), y, num_classes=k, spacing=spacing)
                dice, hd95 = scores["dice"][1:], scores["hd95"][1:]  # foreground classes
                per_case.append(
                    {
                        "case": Path(case["image"]).name,
                        "variant": name,
                        "dice": dice,
                        "hd95_mm": hd95,
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(
                    f"{Path(checkpoint).parent.name}/{Path(checkpoint).name} {name}: dice {np.mean(dice):.3f}",
                    flush=True,
                )
        clean = [np.mean(r["dice"]) for r in per_case if r["variant"] == "clean"]
        shifted = [np.mean(r["dice"]) for r in per_case if r["variant"] != "clean"]
        shifted_hd95 = [np.mean(r["hd95_mm"]) for r in per_case if r["variant"] != "clean"]
        summary = {
            "clean_mean_dice": float(np.mean(clean)),
            "shifted_mean_dice": float(np.mean(shifted)),
            "shifted_min_dice": float(np.min(shifted)),
            "shifted_std_dice": float(np.std(shifted)),
            "shifted_median_hd95_mm": float(np.median(shifted_hd95)),
        }
        result["checkpoints"][checkpoint] = {"summary": summary, "cases": per_case}
        rows.append((checkpoint, summary))
    table = [
        "| checkpoint | clean Dice | shifted Dice (mean ± sd) | worst shifted | shifted HD95 median (mm) |",
        "|---|---|---|---|---|",
    ]
    table += [
        f"| {c} | {s['clean_mean_dice']:.3f} | {s['shifted_mean_dice']:.3f} ± {s['shifted_std_dice']:.3f} | "
        f"{s['shifted_min_dice']:.3f} | {s['shifted_median_hd95_mm']:.1f} |"
        for c, s in rows
    ]
    return publish(result, "\n".join(table), args.output)


if __name__ == "__main__":
    main()
