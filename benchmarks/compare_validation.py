"""Is a candidate's difference from the reference larger than the seed moves either? Two sets of
``generalisation.py`` results over the same validation cases, the reference's and the candidate's, each at one or
more seeds (the n-th file of each side drawn with the same seed), compared case by case.

Per case, each side's Dice and HD95 are averaged over its seeds, and the difference is candidate minus reference.
The summary gives:
- the mean difference of Dice and of HD95, with a paired bootstrap 95 % interval over the cases (10000 resamples,
  seeded), and how many cases gain or lose more than ``--tolerance``;
- a two-sided sign test of the gains against the losses (``scipy.stats.binomtest``; ties within the tolerance left
  out) and the largest loss;
- with two or more reference seeds, the noise floor: how far the reference itself moves between its first two seeds
  (mean and largest per-case difference of Dice). No decision is taken here: a rule written before the runs says
  which of these numbers decides.

    python benchmarks/compare_validation.py --reference benchmarks/results/validation_quality_17_epyc.json \\
        benchmarks/results/validation_seed1_17.json --candidate benchmarks/results/validation_jitter_17_rolled.json \\
        benchmarks/results/validation_jitter_17_rolled_seed1.json --output benchmarks/results/compare_jitter_17.json

Prints one table and writes ``--output`` (default ``benchmarks/results/compare_validation.json``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from _report import ROOT, environment, fmt, write_json
from scipy.stats import binomtest

RESAMPLES = 10_000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, nargs="+", required=True, help="generalisation.py JSONs, a seed each")
    parser.add_argument("--candidate", type=Path, nargs="+", required=True, help="the same seeds, in the same order")
    parser.add_argument("--tolerance", type=float, default=0.001, help="a Dice change within it is a tie")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "compare_validation.json")
    args = parser.parse_args(argv)
    if len(args.reference) != len(args.candidate):
        parser.error(
            f"--reference has {len(args.reference)} file(s) and --candidate {len(args.candidate)}: give one file per "
            "seed on each side, in the same seed order"
        )
    if not (np.isfinite(args.tolerance) and args.tolerance >= 0):
        parser.error(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    for path in [*args.reference, *args.candidate]:
        if not path.is_file():
            parser.error(f"{path}: no such results file")
    return args


def medwidit_rows(path: Path) -> dict[str, dict]:
    """{case: {"dice", "hd95_mm"}} of a generalisation.py JSON's scored medwidit rows."""
    try:
        rows = json.loads(path.read_text())["rows"]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a generalisation.py results file (no 'rows'): {e}") from e
    scored = {r["case"]: r for r in rows if r.get("tool") == "medwidit" and "dice" in r}
    if not scored:
        raise SystemExit(f"{path}: no scored medwidit row")
    return {case: {"dice": float(r["dice"]), "hd95_mm": float(r["hd95_mm"])} for case, r in scored.items()}


def paired_cases(reference: list[dict], candidate: list[dict], names: list[str]) -> list[str]:
    """The cases every file scored; a case missing from some files is refused by name (the sides must match)."""
    cases = set(reference[0])
    for rows, name in zip([*reference, *candidate], names, strict=True):
        if set(rows) != cases:
            missing, extra = sorted(cases - set(rows)), sorted(set(rows) - cases)
            raise SystemExit(f"{name}: its cases differ from {names[0]}'s (missing {missing}, extra {extra})")
    return sorted(cases)


def bootstrap_interval(differences: np.ndarray, seed: int = 0) -> list[float]:
    """A paired bootstrap 95 % interval of the mean difference over the cases (percentiles of the resampled means)."""
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), size=(RESAMPLES, len(differences)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def compare(reference: list[dict], candidate: list[dict], cases: list[str], tolerance: float) -> dict:
    def mean_over_seeds(side, key):
        return np.array([np.mean([rows[c][key] for rows in side]) for c in cases])

    ref_dice, cand_dice = mean_over_seeds(reference, "dice"), mean_over_seeds(candidate, "dice")
    ref_hd, cand_hd = mean_over_seeds(reference, "hd95_mm"), mean_over_seeds(candidate, "hd95_mm")
    dice, hd = cand_dice - ref_dice, cand_hd - ref_hd
    gains, losses = int((dice > tolerance).sum()), int((dice < -tolerance).sum())
    finite = np.isfinite(hd)
    summary = {
        "cases": len(cases),
        "seeds": len(reference),
        "reference_mean_dice": float(ref_dice.mean()),
        "candidate_mean_dice": float(cand_dice.mean()),
        "mean_dice_difference": float(dice.mean()),
        "mean_dice_difference_95": bootstrap_interval(dice),
        "gains": gains,
        "losses": losses,
        "sign_test_p": float(binomtest(gains, gains + losses).pvalue) if gains + losses else 1.0,
        "largest_loss": float(min(dice.min(), 0.0)),
        "largest_loss_case": cases[int(dice.argmin())],
        "mean_hd95_difference_mm": float(hd[finite].mean()) if finite.any() else None,
        "mean_hd95_difference_95": bootstrap_interval(hd[finite]) if finite.any() else None,
        "hd95_cases": int(finite.sum()),
    }
    if len(reference) >= 2:  # the same ensemble at two seeds: what a difference of this size can be by the draw
        floor = np.array([reference[1][c]["dice"] - reference[0][c]["dice"] for c in cases])
        summary["noise_floor"] = {
            "mean_abs_dice_difference": float(np.abs(floor).mean()),
            "largest_abs_dice_difference": float(np.abs(floor).max()),
            "largest_case": cases[int(np.abs(floor).argmax())],
            "mean_dice_difference": float(floor.mean()),
        }
    per_case = [
        {"case": c, "reference_dice": float(r), "candidate_dice": float(k), "dice_difference": float(d),
         "hd95_difference_mm": float(h)}
        for c, r, k, d, h in zip(cases, ref_dice, cand_dice, dice, hd, strict=True)
    ]  # fmt: skip
    return {"summary": summary, "cases": per_case}


def table(summary: dict) -> str:
    low, high = summary["mean_dice_difference_95"]
    hd = summary["mean_hd95_difference_95"] or [None, None]
    lines = [
        "| cases x seeds | mean Dice: reference / candidate | difference (95 % bootstrap) | gains / losses (sign "
        "test p) | largest loss | HD95 difference, mm (95 %) | seed noise floor: mean / largest Dice change |",
        "|---|---|---|---|---|---|---|",
    ]
    floor = summary.get("noise_floor")
    noise = (
        "—"
        if floor is None
        else f"{fmt(floor['mean_abs_dice_difference'], 4)} / {fmt(floor['largest_abs_dice_difference'], 4)}"
    )
    lines.append(
        f"| {summary['cases']} x {summary['seeds']} | {fmt(summary['reference_mean_dice'], 4)} / "
        f"{fmt(summary['candidate_mean_dice'], 4)} | "
        f"{summary['mean_dice_difference']:+.4f} ({low:+.4f}, {high:+.4f}) | "
        f"{summary['gains']} / {summary['losses']} ({fmt(summary['sign_test_p'], 3)}) | "
        f"{fmt(summary['largest_loss'], 4)} ({summary['largest_loss_case']}) | "
        f"{fmt(summary['mean_hd95_difference_mm'], 2)} ({fmt(hd[0], 2)}, {fmt(hd[1], 2)}) | {noise} |"
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    reference = [medwidit_rows(p) for p in args.reference]
    candidate = [medwidit_rows(p) for p in args.candidate]
    cases = paired_cases(reference, candidate, [str(p) for p in [*args.reference, *args.candidate]])
    compared = compare(reference, candidate, cases, args.tolerance)
    markdown = table(compared["summary"])
    print(markdown)
    result = {
        "purpose": "a candidate against the reference on the same validation cases, case by case, over seeds",
        "command": shlex.join(["python", "benchmarks/compare_validation.py", *(argv or sys.argv[1:])]),
        "environment": environment(torch.device("cpu"), __file__),
        "reference": [str(p) for p in args.reference],
        "candidate": [str(p) for p in args.candidate],
        "tolerance": args.tolerance,
        **compared,
        "markdown": markdown,
    }
    print(f"wrote {write_json(result, args.output)}")
    return result


if __name__ == "__main__":
    main()
