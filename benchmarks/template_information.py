"""How much a scan tells of the registered template inside its structure (``atlas.template_information``), on real
heads and on images that are not heads: the evidence for the atlas prior's ``warn_information``.

The atlas prior registers its template onto any image, and its core then writes the template's brain into it: a
uniform ball of head size got a predicted Dice of 0.93 and no warning (from a review). Inside a real head's brain the
template's grey and white matter, ventricles and CSF line up with the scan's, whatever its contrast; inside a ball
nothing does. The script registers the bundle's template as ``Predictor.segment`` does and prints, per case, the
mutual information (nats) and, where ``--dice-from`` names a ``generalisation.py`` run of the same cases, the default's
true Dice there.

Without ``--threshold`` it chooses one by the rule written before the first validation run (2026-12-07): the
geometric mean of the highest value of the synthetic non-heads and the lowest value of the validation cases the
default segments right (Dice >= 0.9), adopted only where the first lies below the second. Cases the default gets
wrong may fall below it: the warning is right there too. With ``--threshold`` it reports which cases fall below a
chosen value (the held-out scans, after the choice).

    python benchmarks/template_information.py --base mni152_2mm IMAGE LABEL --base robex IMAGE LABEL ... \\
        --dice-from benchmarks/results/validation_quality_48_095.json
    python benchmarks/template_information.py --no-synthetic --base colin27_2mm IMAGE LABEL --threshold T --output ...
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, write_json
from generalisation import VARIANTS, build_cases
from scipy.ndimage import gaussian_filter

from medwidit.inference import atlas
from medwidit.inference.options import resolve_bundle

RIGHT = 0.9  # a validation case the default segments right


def synthetic_cases(folder: Path, seed: int = 0) -> list[dict]:
    """Seeded images that are not heads, on a 2 mm grid of MNI152's size (91 x 109 x 91), as NIfTI files: the kinds
    of input a brain-extraction run should refuse to trust (a ball, a shelled blob like a head's layers, a textured
    ellipsoid, a limb-like cylinder, a QA phantom, noise)."""
    rng = np.random.default_rng(seed)
    shape, spacing = (91, 109, 91), 2.0
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -np.array(shape) * spacing / 2
    grid = np.stack(np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij")) * spacing  # mm from centre
    radius = np.sqrt((grid**2).sum(0))
    ellipsoid = np.sqrt(((grid / np.array([75.0, 90.0, 70.0])[:, None, None, None]) ** 2).sum(0))  # < 1 inside

    def noisy(image: np.ndarray) -> np.ndarray:
        return (image + rng.normal(0.0, 10.0, shape)).astype(np.float32)

    texture = gaussian_filter(rng.normal(0.0, 1.0, shape), 4.0)
    images = {
        "ball_85mm": noisy(100.0 * (radius < 85)),
        "ball_70mm": noisy(100.0 * (radius < 70)),
        "shelled_blob": noisy(np.select([ellipsoid < 0.8, ellipsoid < 0.9, ellipsoid < 1.0], [100.0, 20.0, 160.0])),
        "textured_ellipsoid": noisy((ellipsoid < 1.0) * (100.0 + 200.0 * texture)),
        "cylinder_limb": noisy(
            np.where(np.hypot(grid[0], grid[1]) < 15, 30.0, 120.0) * (np.hypot(grid[0], grid[1]) < 60)
        ),
        "qa_phantom": noisy(
            100.0 * (radius < 80)
            + sum(
                80.0 * (np.sqrt(((grid - np.array(c)[:, None, None, None]) ** 2).sum(0)) < 15)
                for c in ((30, 0, 0), (-30, 0, 0), (0, 30, 20))
            )
        ),  # fmt: skip
        "noise": np.abs(rng.normal(50.0, 30.0, shape)).astype(np.float32),
    }
    cases = []
    for name, image in images.items():
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(path))
        cases.append({"name": name, "image": path, "kind": "synthetic non-head"})
    return cases


def information(path: Path, spec: dict) -> tuple[float, float]:
    """(template_information of the scan at ``path``, CPU seconds of its registration and measure)."""
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    start = time.process_time()
    fit = atlas.fit_atlas(data[..., 0] if data.ndim == 4 else data, image.affine, spec)
    return fit.information, time.process_time() - start


def choose(rows: list[dict]) -> dict:
    """The rule in the module's docstring -> {"threshold" or None, its inputs}."""
    negatives = [r["information"] for r in rows if r["kind"] == "synthetic non-head"]
    right = [r["information"] for r in rows if r["kind"] == "validation" and (r.get("dice") or 0) >= RIGHT]
    if not negatives or not right:
        return {"threshold": None, "why": "needs synthetic non-heads and validation cases with their Dice"}
    high, low = max(negatives), min(right)
    if not high < low:
        return {"threshold": None, "highest_non_head": high, "lowest_right_head": low, "why": "no separation"}
    return {"threshold": math.sqrt(max(high, 1e-6) * low), "highest_non_head": high, "lowest_right_head": low}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", nargs=3, action="append", default=[], metavar=("NAME", "IMAGE", "LABEL"))
    parser.add_argument("--variants", nargs="*", default=[v for v in VARIANTS if v != "fov_zero"])
    parser.add_argument("--kind", default="validation", help="what the --base cases are: validation or held-out")
    parser.add_argument("--no-synthetic", action="store_true", help="leave out the synthetic non-heads")
    parser.add_argument("--dice-from", type=Path, default=None, help="a generalisation.py JSON of the same cases")
    parser.add_argument("--threshold", type=float, default=None, help="report against this value; no choice")
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "template_information.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    spec = atlas.bundle_atlas_prior(args.bundle or resolve_bundle())
    if spec is None:
        raise SystemExit(f"{args.bundle}: the bundle has no atlas_prior")
    dice = {}
    if args.dice_from is not None:
        dice = {
            r["case"]: r.get("dice") for r in json.loads(args.dice_from.read_text())["rows"] if r["tool"] == "medwidit"
        }
    started = environment(torch.device("cpu"), __file__)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        bases = {name: (Path(image), Path(label)) for name, image, label in args.base}
        cases = [{**c, "kind": args.kind} for c in build_cases(Path(folder), bases, None, args.variants)]
        cases += [] if args.no_synthetic else synthetic_cases(Path(folder))
        for case in cases:
            value, seconds = information(case["image"], spec)
            row = {"case": case["name"], "kind": case["kind"], "information": value, "cpu_seconds": round(seconds, 2)}
            if case["name"] in dice:
                row["dice"] = dice[case["name"]]
            rows.append(row)
            shown = "—" if row.get("dice") is None else f"{row['dice']:.3f}"
            print(f"{row['case']:24s} {row['kind']:20s} {value:7.3f} nats  Dice {shown}", flush=True)
    decision = {"threshold": args.threshold, "given": True} if args.threshold is not None else choose(rows)
    threshold = decision["threshold"]
    if threshold is not None:
        for row in rows:
            row["below"] = row["information"] < threshold
    record = {
        "command": shlex.join(
            ["python", "benchmarks/template_information.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "environment": started,
        "rule": __doc__.split("\n\n")[2],
        "decision": decision,
        "rows": rows,
    }
    write_json(record, args.output)
    print(json.dumps(decision))
    return record


if __name__ == "__main__":
    main()
