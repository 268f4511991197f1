"""Whole ``medwidit segment`` on the shipped example from two checkouts of the code, alternating, in one run.

Each round runs the CLI with its defaults once from each checkout (``--old`` and ``--new``, each a ``LABEL=PATH`` of
a worktree holding that commit; the old first in odd rounds, the new first in even ones), one after the other alone
on the machine, under ``/usr/bin/time``: process CPU seconds (user + system), wall seconds and peak resident memory
per run; the medians of CPU and wall seconds over the rounds and their ratios new / old. It also reads the masks:
Dice against the example's reference label per checkout, the voxels where the two checkouts' masks differ, and
whether each checkout gave the same mask in every round.
Writes benchmarks/results/speed_ab.json unless ``--output`` says otherwise.

    git worktree add /tmp/old <commit> && git worktree add /tmp/new HEAD
    python benchmarks/segment_ab.py --old abc1234=/tmp/old --new def5678=/tmp/new --purpose "what changed" \
        --output benchmarks/results/speed_pixel_inplace.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "medwidit/data/examples/colin27_head_2mm_image.nii.gz"
REFERENCE = ROOT / "medwidit" / "data" / "examples" / "colin27_head_2mm_label.nii.gz"
COMMAND = "/usr/bin/time -f '%U %S %e %M' python -m medwidit segment -i {image} -o OUT --bundle {bundle} -q"


def checkout(value: str) -> tuple[str, Path]:
    """``LABEL=PATH`` -> (label, path), the path a checkout with the example and the bundle."""
    label, _, path = value.partition("=")
    folder = Path(path)
    if not label or not path or not (folder / EXAMPLE).is_file():
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH of a checkout holding {EXAMPLE}, got {value!r}")
    return label, folder.resolve()


def run_once(label: str, folder: Path, out: Path) -> dict:
    """One timed ``medwidit segment`` of the example from ``folder``'s code, writing into ``out``."""
    command = ["/usr/bin/time", "-f", "%U %S %e %M", sys.executable, "-m", "medwidit", "segment"]
    command += ["-i", EXAMPLE, "-o", str(out), "--bundle", "bundles/brain_widit_segmentation", "-q"]
    env = {**os.environ, "PYTHONPATH": str(folder)}
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{label}: medwidit segment exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    user, system, wall, peak_kb = done.stderr.strip().splitlines()[-1].split()
    return {
        "code": label,
        "cpu_seconds": round(float(user) + float(system), 2),
        "wall_seconds": float(wall),
        "peak_rss_mb": round(int(peak_kb) / 1024, 1),
    }


def dice(mask: np.ndarray, reference: np.ndarray) -> float | None:
    """Dice of two boolean masks; None where both are empty (undefined)."""
    total = int(mask.sum() + reference.sum())
    return round(float(2 * (mask & reference).sum() / total), 5) if total else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=checkout, required=True, help="LABEL=PATH of the reference checkout")
    parser.add_argument("--new", type=checkout, required=True, help="LABEL=PATH of the changed checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--purpose", required=True, help="what the two checkouts differ in, for the record")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "speed_ab.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.old[0] == args.new[0]:
        parser.error(f"--old and --new need different labels, got {args.old[0]!r} twice")
    reference = nib.load(REFERENCE).get_fdata() > 0
    rounds, masks = [], {args.old[0]: [], args.new[0]: []}
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(1, args.rounds + 1):
            for label, folder in (args.old, args.new) if number % 2 else (args.new, args.old):
                out = Path(scratch) / f"{label}_{number}"
                rounds.append({"round": number, **run_once(label, folder, out)})
                masks[label].append(nib.load(out / Path(EXAMPLE).name).get_fdata() > 0)
                shutil.rmtree(out)
                print(rounds[-1], flush=True)
    labels = [args.old[0], args.new[0]]
    medians = {
        label: {
            f"median_{kind}": statistics.median(r[kind] for r in rounds if r["code"] == label)
            for kind in ("cpu_seconds", "wall_seconds")
        }
        for label in labels
    }
    old, new = (medians[label] for label in labels)
    result = {
        "purpose": args.purpose,
        "command": COMMAND.format(image=EXAMPLE, bundle="bundles/brain_widit_segmentation")
        + " (from each checkout, PYTHONPATH set to it)",
        "rounds": rounds,
        **medians,
        "cpu_ratio_new_over_old": round(new["median_cpu_seconds"] / old["median_cpu_seconds"], 3),
        "wall_ratio_new_over_old": round(new["median_wall_seconds"] / old["median_wall_seconds"], 3),
        "dice_example": {
            **{label: dice(masks[label][0], reference) for label in labels},
            "voxels_differing": int((masks[labels[0]][0] != masks[labels[1]][0]).sum()),
            "reference_brain_voxels": int(reference.sum()),
            "each_commit_identical_across_rounds": all(
                all(np.array_equal(m, ms[0]) for m in ms) for ms in masks.values()
            ),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
