"""The WiDiT cell each run's validation split chose, against BasicUNet, phantom by phantom, over one or more
``learn_phantoms.py`` runs (a training seed each).

Both models' test Dice per phantom comes from the runs' ``dice_per_case`` (kept since ``--unet-batch`` was added).
Per class the summary gives each run's mean difference (WiDiT minus BasicUNet) and the mean of those over the runs;
then, per test phantom, the difference averaged over the runs (the runs share one test split, so a phantom is one
unit however many seeds scored it: pooling its runs as separate pairs made most intervals about a quarter too
narrow), a bootstrap 95 % interval of their mean over the phantoms, and on how many phantoms each model is ahead. The
runs must share the split and every setting but the seed (a setting a run predates reads as its default). No
decision is taken here: a rule written before the runs says which number decides.

    python benchmarks/paired_phantoms.py SEED0.json SEED1.json --output benchmarks/results/learn_phantoms_paired.json

Prints one table and writes ``--output`` (default ``benchmarks/results/learn_phantoms_paired.json``).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import learn_phantoms
import numpy as np
import torch
from _report import ROOT, environment, fmt, write_json
from compare_validation import bootstrap_interval


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="learn_phantoms.py results files, one per seed")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "learn_phantoms_paired.json")
    args = parser.parse_args(argv)
    for path in args.runs:
        if not path.is_file():
            parser.error(f"{path}: no such results file")
    return args


def run_pairs(path: Path) -> dict:
    """One run's chosen WiDiT cell and both models' per-phantom test Dice (N, K-1); a file without them is refused
    by name."""
    try:
        results = json.loads(path.read_text())
        chosen = results["selected_on_validation"]
        key = f"{chosen['steps']}x{chosen['samples']}" if chosen["samples"] > 1 else str(chosen["steps"])
        widit = results["heads"][chosen["head"]]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a learn_phantoms.py results file with a validation choice: {e!r}") from e
    unet = results.get("basic_unet_dice_ce")
    if unet is None:
        raise SystemExit(f"{path}: no BasicUNet in this run (it ran with --no-unet)")
    if "dice_per_case" not in unet or key not in widit.get("dice_per_case", {}):
        raise SystemExit(f"{path}: no per-phantom Dice ('dice_per_case'); rerun it with this learn_phantoms.py")
    pairs = np.array(widit["dice_per_case"][key], dtype=float), np.array(unet["dice_per_case"], dtype=float)
    if pairs[0].shape != pairs[1].shape:
        raise SystemExit(f"{path}: the WiDiT scored {pairs[0].shape} and BasicUNet {pairs[1].shape} phantoms x classes")
    settings = results.get("settings", {})
    split = {k: settings.get(k) for k in ("size", "classes", "object_scale", "class_contrast", "test")}
    split["test_start"] = settings.get("test_start", 10**6)  # the only test split before --test-start
    # the runs' protocol; a setting added since a run was written had its default then (learn_phantoms' own rule)
    known = {**vars(learn_phantoms.parse_args([])), **settings}
    known["unet_batch"] = learn_phantoms.unet_batch(argparse.Namespace(**known))  # unset: the batch's value
    same = {k: v for k, v in known.items() if k not in ("seed", "out", "add_to", *split)}
    return {
        "split": split,
        "settings": same,
        "file": str(path),
        "seed": settings.get("seed"),
        "head": chosen["head"],
        "cell": key,
        "training_steps": {"widit": widit.get("steps"), "basic_unet": unet.get("steps")},
        "widit": pairs[0],
        "basic_unet": pairs[1],
    }


def compare(runs: list[dict]) -> dict:
    """Per class: each run's mean difference, their mean over runs, and per phantom (averaged over the runs) the
    paired statistics."""
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds) or len({Path(r["file"]).resolve() for r in runs}) != len(runs):
        raise SystemExit(f"each run must be another training seed, got seeds {seeds}: a run given twice counts twice")
    for run in runs[1:]:
        if run["split"] != runs[0]["split"]:
            raise SystemExit(
                f"{run['file']}: its test split {run['split']} is not {runs[0]['file']}'s {runs[0]['split']}"
            )
        differs = sorted(k for k in {*run["settings"], *runs[0]["settings"]}
                         if run["settings"].get(k) != runs[0]["settings"].get(k))  # fmt: skip
        if differs:
            raise SystemExit(f"{run['file']}: its settings differ from {runs[0]['file']}'s in {differs}")
    classes = runs[0]["widit"].shape[1]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from a phantom: NaN in every run
        per_phantom = np.nanmean(np.stack([r["widit"] - r["basic_unet"] for r in runs]), axis=0)  # (N, K-1)
    for c in range(classes):
        if not np.isfinite(per_phantom[:, c]).any():
            raise SystemExit(f"class {c + 1} is absent from every test phantom: no pair to compare")
    per_run = [
        {
            **{k: r[k] for k in ("file", "seed", "head", "cell", "training_steps")},
            "phantoms": len(r["widit"]),
            "widit_dice": np.nanmean(r["widit"], 0).tolist(),
            "basic_unet_dice": np.nanmean(r["basic_unet"], 0).tolist(),
            "difference": np.nanmean(r["widit"] - r["basic_unet"], 0).tolist(),
        }
        for r in runs
    ]
    summary = []
    for c in range(classes):
        d = per_phantom[:, c][np.isfinite(per_phantom[:, c])]
        summary.append(
            {
                "class": c + 1,
                "mean_over_runs": float(np.mean([run["difference"][c] for run in per_run])),
                "phantoms": len(d),
                "paired_mean": float(d.mean()),
                "paired_mean_95": bootstrap_interval(d),  # phantoms resampled, each its runs' mean difference
                "widit_wins": int((d > 0).sum()),  # phantoms on which the WiDiT is ahead over the runs
                "basic_unet_wins": int((d < 0).sum()),
            }
        )
    return {"runs": per_run, "summary": summary}


def table(result: dict) -> str:
    lines = ["| run | seed | WiDiT cell | phantoms | WiDiT | BasicUNet | difference |", "|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        cells = [" / ".join(fmt(v) for v in run[k]) for k in ("widit_dice", "basic_unet_dice", "difference")]
        lines.append(
            f"| {Path(run['file']).name} | {run['seed']} | {run['cell']} | {run['phantoms']} | {' | '.join(cells)} |"
        )
    lines += [
        "",
        "| class | mean over runs | phantoms | paired mean (95 % bootstrap) | phantoms ahead, WiDiT / BasicUNet |",
    ]
    lines.append("|---|---|---|---|---|")
    for s in result["summary"]:
        low, high = s["paired_mean_95"]
        lines.append(
            f"| {s['class']} | {fmt(s['mean_over_runs'], 4)} | {s['phantoms']} | {fmt(s['paired_mean'], 4)} "
            f"({fmt(low, 4)} .. {fmt(high, 4)}) | {s['widit_wins']} / {s['basic_unet_wins']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = {
        **compare([run_pairs(path) for path in args.runs]),
        "environment": environment(torch.device("cpu"), __file__),
    }
    print(table(result))
    print(f"wrote {write_json(result, args.output)}")
    return result


if __name__ == "__main__":
    main()
