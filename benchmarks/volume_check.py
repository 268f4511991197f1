"""Does a bundle's expected class volume flag the cases its ensemble is confidently wrong on? Scored on
``generalisation.py`` runs already recorded: each row holds the predicted class volume (``volume_ml``, from the
written label map) and the true Dice, so the check costs no sampling.

A case is flagged when its brain volume lies outside the bundle's ``expected_volume_ml`` (``configs/inference.json``;
``medwidit.inference.trust.check_expected_volumes``). The shipped range, 900-2200 mL, was fixed from the reference
brain masks alone (1225 mL for ROBEX's head to 1838 mL for MNI152's, the six masks of the brain task: MNI152,
Colin27, ITK's head, ROBEX's head, and deepbet's masks of S1 and MRHead), about a quarter wider on each side, before
any row below was read against it. The table counts, per recorded run, the cases whose true Dice is below
``--below`` and how many of them the range flags, and the flags on cases above it (false flags).

    python benchmarks/volume_check.py benchmarks/results/validation_shipped.json \\
        benchmarks/results/generalisation_real_heads.json ...
    python benchmarks/volume_check.py --quick --output /tmp/volume.json     # the rows of two invented cases

Writes ``benchmarks/results/volume_check.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import environment, publish  # noqa: E402

from medwidit.inference.options import resolve_bundle  # noqa: E402
from medwidit.inference.trust import bundle_expected_volumes, outside_expected  # noqa: E402

QUICK_ROWS = [
    {"case": "whole_head", "tool": "medwidit", "dice": 0.57, "volume_ml": 2938.0},
    {"case": "good", "tool": "medwidit", "dice": 0.96, "volume_ml": 1500.0},
]


def score(rows: list[dict], bounds: list[float], below: float) -> dict:
    """The medwidit rows of one run -> counts and the per-case verdicts."""
    cases = []
    for row in rows:
        if row.get("tool") != "medwidit" or row.get("dice") is None or row.get("volume_ml") is None:
            continue
        flagged = outside_expected(row["volume_ml"], bounds)
        cases.append({"case": row["case"], "dice": row["dice"], "volume_ml": row["volume_ml"], "flagged": flagged})
    low = [c for c in cases if c["dice"] < below]
    return {
        "cases": len(cases),
        "below": len(low),
        "flagged_of_those": sum(c["flagged"] for c in low),
        "false_flags": sum(c["flagged"] for c in cases if c["dice"] >= below),
        "rows": cases,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="generalisation.py result files")
    parser.add_argument("--bundle", default=None, help="the bundle whose expected_volume_ml is checked (shipped)")
    parser.add_argument("--below", type=float, default=0.9, help="true Dice under which a case should be flagged")
    parser.add_argument("--quick", action="store_true", help="two invented rows instead of recorded runs")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "volume_check.json")
    args = parser.parse_args(argv)
    if not args.quick and not args.runs:
        parser.error("give generalisation.py result files, or --quick")
    bundle = resolve_bundle(args.bundle)
    expected = bundle_expected_volumes(bundle)
    if "1" not in expected:
        parser.error(f"{bundle}: configs/inference.json declares no expected_volume_ml for class 1")
    bounds = expected["1"]
    runs = {"quick": QUICK_ROWS} if args.quick else {}
    for path in args.runs:
        try:
            runs[path.stem] = json.loads(path.read_text())["rows"]
        except (OSError, ValueError, KeyError) as e:
            parser.error(f"{path}: not a generalisation.py result with 'rows' ({e})")
    results = {name: score(rows, bounds, args.below) for name, rows in runs.items()}
    lines = [
        f"| run | cases | true Dice < {args.below} | flagged of those | false flags |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['cases']} | {r['below']} | {r['flagged_of_those']} | {r['false_flags']} |")
    total = {k: sum(r[k] for r in results.values()) for k in ("cases", "below", "flagged_of_those", "false_flags")}
    lines.append(
        f"| all | {total['cases']} | {total['below']} | {total['flagged_of_those']} | {total['false_flags']} |"
    )
    result = {
        "benchmark": "the bundle's expected brain volume as a per-case flag, on recorded generalisation runs",
        "bundle": str(bundle),
        "expected_volume_ml": bounds,
        "below": args.below,
        "runs": [str(path) for path in args.runs],
        "results": results,
        "total": total,
        "environment": environment(torch.device("cpu"), __file__),
    }
    return publish(result, "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
