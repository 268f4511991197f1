"""The brain's probability threshold: Dice and volume error of a bundle's default ensemble when the foreground is
``probability > t`` instead of the argmax (t = 0.5 for two classes), the bundle's label post-processing applied after.

One sampling per case (``Predictor.from_bundle(...).segment``, the bundle's defaults, seed 0), every threshold read
from the same mean probability, so the rows differ only by t. Meant for validation scans: the rule that would change
the default is written before the run (bundle docs).

    python benchmarks/threshold.py --case robex IMAGE LABEL --case s1 IMAGE LABEL ... [--bundle DIR]
    python benchmarks/threshold.py --quick --output /tmp/threshold.json    # a random tiny model on a ball phantom

Writes ``benchmarks/results/validation_threshold.json`` (or ``--output``; ``--quick`` needs one, so that a random
model's numbers never replace the recorded ones). Each row also holds ``argmax_dice``, the Dice of the predictor's
own label map, which t = 0.5 reproduces for a two-class model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import environment, fmt, publish  # noqa: E402
from speed import quick_case  # noqa: E402

from medwidit.inference import Predictor  # noqa: E402
from medwidit.inference.postprocess import apply_label_postprocessing  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def score(probability: np.ndarray, truth: np.ndarray, thresholds, steps, voxel_ml: float) -> dict:
    """Foreground probability (*S) and true mask (*S) -> {t: {"dice", "volume_error_ml"}} after ``steps``."""
    rows = {}
    for t in thresholds:
        mask = apply_label_postprocessing((probability > t).astype(np.int64), steps) > 0
        total = mask.sum() + truth.sum()
        dice = 2 * float((mask & truth).sum()) / total if total else 1.0
        rows[str(t)] = {"dice": round(dice, 4), "volume_error_ml": round(float(mask.sum() - truth.sum()) * voxel_ml, 1)}
    return rows


def score_cases(predictor: Predictor, cases, options: dict, thresholds, parser) -> dict:
    """Sample each (name, image, label) once -> {name: score rows, "argmax_dice", "cpu_seconds"}."""
    rows = {}
    for name, image, label in cases:
        start = time.process_time()
        segmentation = predictor.segment(image, **options)
        truth_image = nib.load(label)
        truth = np.asarray(truth_image.dataobj) > 0
        if truth.shape != segmentation.label_map.shape:
            parser.error(f"{label}: shape {truth.shape} is not the image's grid {segmentation.label_map.shape}")
        voxel_ml = float(np.prod(truth_image.header.get_zooms()[:3])) / 1000
        steps = predictor.label_postprocessing
        rows[name] = score(segmentation.probability[1], truth, thresholds, steps, voxel_ml)
        argmax = segmentation.label_map > 0  # the predictor's own answer, post-processed as it writes it
        rows[name]["argmax_dice"] = round(2 * float((argmax & truth).sum()) / float(argmax.sum() + truth.sum()), 4)
        rows[name]["cpu_seconds"] = round(time.process_time() - start, 1)
    return rows


def quick_predictor() -> Predictor:
    """A one-block WiDiT with seeded random weights (an untrained one outputs zero: every threshold would agree) and
    2 mm histogram preprocessing, built in this process."""
    from medwidit.diffusion import DiffusionSegmenter
    from medwidit.nets import WiDiT

    net = WiDiT(spatial_dim=3, in_channels=2, cond_channels=1, hidden_size=32, depth=1, num_heads=2, window_size=4,
                learn_sigma=False)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    preprocessing = {"intensity": "histogram", "spacing": [2.0, 2.0, 2.0]}
    return Predictor(DiffusionSegmenter(net, num_classes=2), preprocessing=preprocessing, roi_size=16, device="cpu")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs=3, action="append", default=[], metavar=("NAME", "IMAGE", "LABEL"))
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the shipped one)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--quick", action="store_true", help="a random tiny model on a ball phantom (CI)")
    parser.add_argument("--output", type=Path, default=None, help="default: results/validation_threshold.json")
    args = parser.parse_args(argv)
    if not args.quick and not args.case:
        parser.error("give --case NAME IMAGE LABEL (one or more), or --quick")
    if args.quick and args.output is None:
        parser.error("--quick scores a random model: give --output (it must not replace the recorded results)")
    output = args.output or HERE / "results" / "validation_threshold.json"
    if any(not 0 < t < 1 for t in args.thresholds):
        parser.error(f"--thresholds must lie in (0, 1), got {args.thresholds}")
    with tempfile.TemporaryDirectory() as scratch:  # --quick's ball phantom lives only for the run
        if args.quick:
            predictor = quick_predictor()
            image, truth, _ = quick_case(Path(scratch))  # speed.py's 24^3 ball at 2 mm and its mask
            cases, options = [("quick", image, truth)], {"steps": 2, "num_samples": 2}
        else:
            predictor = Predictor.from_bundle(args.bundle, device="cpu")
            cases, options = [tuple(c) for c in args.case], {}
        if predictor.num_classes != 2:
            parser.error(f"--bundle: a brain threshold needs a two-class model, got {predictor.num_classes} classes")
        rows = score_cases(predictor, cases, options, args.thresholds, parser)
    means = {str(t): float(np.mean([rows[n][str(t)]["dice"] for n in rows])) for t in args.thresholds}
    header = "| case | " + " | ".join(f"t = {t}" for t in args.thresholds) + " |"
    lines = [header, "|---" * (len(args.thresholds) + 1) + "|"]
    for name, row in rows.items():
        cells = [f"{fmt(row[str(t)]['dice'])} ({row[str(t)]['volume_error_ml']:+.0f})" for t in args.thresholds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| mean Dice | " + " | ".join(fmt(means[str(t)], 4) for t in args.thresholds) + " |")
    result = {
        "command": "python benchmarks/threshold.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(torch.device("cpu"), __file__),
        "bundle": None if args.quick else str(args.bundle or "shipped"),
        "thresholds": args.thresholds,
        "cases": rows,
        "mean_dice": means,
    }
    return publish(result, "Dice (volume error, mL) per brain threshold\n\n" + "\n".join(lines), output)


if __name__ == "__main__":
    main()
