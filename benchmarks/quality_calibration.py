"""Fit the per-case Dice estimate (``medwidit.inference.calibration``) on validation cases, and choose its features.

Input: ``benchmarks/generalisation.py`` results whose medwidit rows carry the case's quality report
(``tools/run_tool.py`` records it) and a true Dice: the validation cases of the bundle docs (MNI152 2 mm, images
painted from held-out head label maps, ROBEX, two real heads scored against deepbet's masks, and their acquisition
variants). Never Colin27: it and the trust benchmark's shifted cases are the test.

The candidates: the product rule (``calibration.PRODUCT_RULE``, no parameter fitted: its error is its leave-one-out
error), and every subset of at most ``--max-features`` features that holds ``log_ensemble_dice``, fitted
(``calibration.fit_calibration``) and scored by leave-one-case-out: each case predicted by the model fitted on the
others. The candidate with the lowest leave-one-out mean absolute error (candidates within ``--tie`` of it: the one
whose leave-one-out estimates rank the cases best, Spearman) is fitted on all cases (``--features`` names one
subset, fitted and chosen whatever the product rule scores: a bundle's feature set refitted to new members);
``--write-bundle`` writes it into that bundle's ``configs/inference.json`` as ``quality_calibration``, with
``warn_dice``: the threshold on the held-out estimates at which the CLI's whole warning line (with the expected
volume and the localization's ``warn_kept``) flags every validation case below ``--low-dice`` with the fewest false
flags.

``--monotone`` holds each weight to its feature's sign (``calibration.FEATURE_SIGNS``: better evidence never lowers
the estimate); by default a weight takes either sign.

``--reference BUNDLE`` scores that bundle's own ``quality_calibration`` on the same reports (held out from them
where it was fitted on other outputs) beside the chosen fit's leave-one-out estimates, on all cases and on each
``--group NAME=BASE[,BASE...]`` (the cases named BASE or BASE_<variant>, as ``generalisation.py`` names them: a
family whose truth a feature shares by construction is then judged apart), and states whether the chosen fit beats it
everywhere: a lower MAE and a Spearman lower by at most ``--spearman-loss``. With ``--reference``,
``--write-bundle`` writes only a fit that beats it.

    python benchmarks/quality_calibration.py runs/validation.json --write-bundle bundles/brain_widit_segmentation

Writes ``benchmarks/results/quality_calibration.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
from _report import ROOT, best_threshold, fmt, write_json  # benchmarks/ is on sys.path when a script runs
from scipy import stats

from medwidit.inference.calibration import (
    FEATURES,
    PRODUCT_RULE,
    bundle_calibration,
    calibrated_dice,
    case_features,
    fit_calibration,
)
from medwidit.inference.files import warning_causes
from medwidit.utils import atomic_write

CLASS = "1"  # the foreground class scored by generalisation.py (brain)


def load_rows(paths: list[Path]) -> list[dict]:
    """The medwidit rows of the results at ``paths`` with a quality report: {case, true, features}."""
    rows = []
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            if row.get("tool") != "medwidit" or not row.get("quality") or row.get("dice") is None:
                continue
            if "volume_ml" not in row["quality"]:
                raise SystemExit(f"{path}: case {row['case']} has no whole quality report (rerun generalisation.py)")
            quality = row["quality"]
            other = bool(warning_causes(quality))  # the rest of the CLI's warning line
            no_dice = (quality.get("atlas_prior") or {}).get("template_dice") is None
            rows.append(
                {"case": row["case"], "true": float(row["dice"]), "features": case_features(quality, CLASS),
                 "other_flag": other, "no_template_dice": no_dice}
            )  # fmt: skip
    if len(rows) < 5:
        raise SystemExit(f"{len(rows)} validation case(s) with a quality report in {paths}: need at least 5.")
    without = [r["case"] for r in rows if r["no_template_dice"]]
    if without and len(without) < len(rows):  # log_atlas_dice 0 would read as perfect agreement for those
        raise SystemExit(f"{len(without)} of {len(rows)} validation cases have no atlas_prior.template_dice "
                         f"({', '.join(without[:5])}): the predictor would not calibrate them; rerun them or leave "
                         "them out")  # fmt: skip
    return rows


def scores(pred: np.ndarray, true: np.ndarray, warn: float) -> dict:
    return {
        "mae": float(np.abs(pred - true).mean()),
        "bias": float((pred - true).mean()),
        "spearman": float(stats.spearmanr(pred, true).statistic),
        "missed_below_warn": int(((true < warn) & (pred >= warn)).sum()),
        "false_flags": int(((true >= warn) & (pred < warn)).sum()),
    }


def leave_one_out(rows: list[dict], names: tuple[str, ...], monotone: bool = False) -> np.ndarray:
    """Each case's estimate from the model fitted on every other case."""
    out = []
    for i in range(len(rows)):
        rest = rows[:i] + rows[i + 1 :]
        model = fit_calibration([r["features"] for r in rest], [r["true"] for r in rest], names, monotone=monotone)
        out.append(calibrated_dice(rows[i]["features"], model))
    return np.array(out)


def _group(text: str) -> tuple[str, tuple[str, ...]]:
    name, _, prefixes = text.partition("=")
    if not name or not prefixes or not all(prefixes.split(",")):
        raise argparse.ArgumentTypeError(f"--group must be NAME=BASE[,BASE...], got {text!r}")
    return name, tuple(prefixes.split(","))


def against_reference(rows: list[dict], held_out: np.ndarray, args: argparse.Namespace) -> dict:
    """The reference bundle's calibration and the chosen fit's held-out estimates, scored on all cases and on each
    ``--group``; ``beats``: a lower MAE and a Spearman lower by at most ``--spearman-loss`` on every one."""
    reference = bundle_calibration(args.reference)
    if reference is None:
        raise SystemExit(f"--reference {args.reference}: its inference.json has no quality_calibration")
    theirs = np.array([calibrated_dice(r["features"], reference) for r in rows])
    true = np.array([r["true"] for r in rows])
    groups = {"all": np.ones(len(rows), bool)}
    for name, prefixes in args.group:
        groups[name] = np.array([r["case"] in prefixes or r["case"].startswith(tuple(f"{p}_" for p in prefixes))
                                 for r in rows])  # fmt: skip
        if groups[name].sum() < 3:
            raise SystemExit(f"--group {name}: {int(groups[name].sum())} case(s) of {list(prefixes)}")
    out = {"bundle": str(args.reference), "calibration": reference, "groups": {}}
    for name, keep in groups.items():
        ours, ref = scores(held_out[keep], true[keep], args.low_dice), scores(theirs[keep], true[keep], args.low_dice)
        # a reference whose estimates are all alike on the group (clipped at 1, say) ranks nothing: its Spearman is
        # NaN, and there is no ranking to lose against it
        ranks = math.isnan(ref["spearman"]) or ours["spearman"] >= ref["spearman"] - args.spearman_loss
        beats = ours["mae"] < ref["mae"] and ranks
        out["groups"][name] = {"cases": int(keep.sum()), "chosen": ours, "reference": ref, "beats": bool(beats)}
    out["beats"] = all(g["beats"] for g in out["groups"].values())
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="generalisation.py JSON(s) of validation cases")
    parser.add_argument("--max-features", type=int, default=3)
    parser.add_argument(
        "--features",
        nargs="+",
        choices=FEATURES,
        help="refit these features only (with log_ensemble_dice), no search (--max-features and --tie then unused): "
        "a bundle's feature set on new members",
    )
    parser.add_argument(
        "--monotone",
        action="store_true",
        help="hold each weight to its feature's sign (calibration.FEATURE_SIGNS): better evidence never lowers the "
        "estimate (default: either sign)",
    )
    parser.add_argument("--tie", type=float, default=0.005, help="leave-one-out MAEs this close rank by Spearman")
    parser.add_argument("--low-dice", type=float, default=0.9, help="true Dice below which a case should be flagged")
    parser.add_argument(
        "--write-bundle", type=Path, help="write the chosen calibration into this bundle's inference.json"
    )
    parser.add_argument("--reference", type=Path, help="a bundle whose quality_calibration the chosen fit must beat")
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        type=_group,
        metavar="NAME=BASE[,BASE...]",
        help="also score the cases named BASE or BASE_<variant> (repeatable)",
    )
    parser.add_argument("--spearman-loss", type=float, default=0.02, help="the Spearman the chosen fit may lose")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "quality_calibration.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    rows = load_rows(args.results)
    monotone = args.monotone
    true = np.array([r["true"] for r in rows])
    # a feature with one value in every row carries nothing, and its fit would only differ in rounding (log_boundary
    # in reports that predate boundary_overlap)
    varying = [f for f in FEATURES if len({r["features"][f] for r in rows}) > 1]
    others = [f for f in varying if f != "log_ensemble_dice"]
    subsets = [
        ("log_ensemble_dice", *extra) for n in range(args.max_features) for extra in itertools.combinations(others, n)
    ]
    if args.features:
        named = ("log_ensemble_dice", *(f for f in FEATURES if f in args.features and f != "log_ensemble_dice"))
        if any(f not in varying for f in named):
            raise SystemExit(f"--features {' '.join(args.features)}: {[f for f in named if f not in varying]} take one "
                             "value in every validation case (nothing to fit)")  # fmt: skip
        if len(rows) <= len(named) + 2:  # the leave-one-out loop below would skip it
            raise SystemExit(f"--features {' '.join(args.features)}: {len(rows)} validation cases cannot fit "
                             f"{len(named) + 1} parameters by leave-one-case-out (need more than "
                             f"{len(named) + 2})")  # fmt: skip
        subsets = [named]
    product = np.array([calibrated_dice(r["features"], PRODUCT_RULE) for r in rows])
    candidates = [{"features": "product rule", "leave_one_out": scores(product, true, args.low_dice)}]
    for names in subsets:
        if len(rows) <= len(names) + 2:  # leave-one-out needs more cases than parameters in every fold
            continue
        candidates.append(
            {
                "features": list(names),
                "leave_one_out": scores(leave_one_out(rows, names, monotone), true, args.low_dice),
            }
        )
    own = np.exp([r["features"]["log_ensemble_dice"] for r in rows])
    lowest = min(c["leave_one_out"]["mae"] for c in candidates)
    tied = [c for c in candidates if c["leave_one_out"]["mae"] <= lowest + args.tie]  # then the best ranking
    best = max(tied, key=lambda c: (c["leave_one_out"]["spearman"], -c["leave_one_out"]["mae"]))
    if args.features:  # refitted whatever the product rule scores: the table still shows it
        best = candidates[-1]
    if best["features"] == "product rule":
        model = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRODUCT_RULE.items()}
    else:
        model = fit_calibration([r["features"] for r in rows], true, best["features"], monotone=monotone)
    fitted = np.array([calibrated_dice(r["features"], model) for r in rows])
    if best["features"] == "product rule":
        held_out = fitted  # nothing fitted: every case is held out
    else:
        held_out = leave_one_out(rows, tuple(best["features"]), monotone)
    other = np.array([r["other_flag"] for r in rows])
    line = best_threshold(held_out, true < args.low_dice, other)  # the CLI's whole warning line
    threshold = {"warn_dice": line.pop("threshold"), **line}
    sources = ", ".join(str(p) for p in args.results)
    fit = " --monotone" if monotone else ""
    model["chosen_on"] = f"{len(rows)} validation cases ({sources}); benchmarks/quality_calibration.py{fit}"
    result = {
        "monotone": monotone,
        "cases": [{**r, "fitted": float(f)} for r, f in zip(rows, fitted, strict=True)],
        "ensemble_dice": scores(own, true, args.low_dice),
        "candidates": candidates,
        "chosen": {
            **best,
            "in_sample": scores(fitted, true, args.low_dice),
            "calibration": model,
            "warning_line": threshold,
        },  # fmt: skip
    }
    lines = ["| features | LOO MAE | LOO Spearman | LOO missed < warn | LOO false flags |", "|---|---|---|---|---|"]
    line = "| {} | {} | {} | {} | {} |"
    own_scores = result["ensemble_dice"]
    lines.append(line.format("the ensemble's own (no fit)", fmt(own_scores["mae"]), fmt(own_scores["spearman"]),
                             own_scores["missed_below_warn"], own_scores["false_flags"]))  # fmt: skip
    for c in sorted(candidates, key=lambda c: c["leave_one_out"]["mae"]):
        s = c["leave_one_out"]
        name = c["features"] if isinstance(c["features"], str) else "fitted: " + " + ".join(c["features"])
        lines.append(line.format(name, fmt(s["mae"]), fmt(s["spearman"]), s["missed_below_warn"],
                                 s["false_flags"]))  # fmt: skip
    table = "\n".join(lines) + f"\n\nchosen: {json.dumps(model)}\nwarning line: {json.dumps(threshold)}"
    if args.reference is not None:
        result["reference"] = against_reference(rows, held_out, args)
        table += "\n\n| cases | n | chosen MAE | reference MAE | chosen Spearman | reference Spearman | beats |\n"
        table += "|---|---|---|---|---|---|---|"
        for name, g in result["reference"]["groups"].items():
            ours, ref = g["chosen"], g["reference"]
            table += (f"\n| {name} | {g['cases']} | {fmt(ours['mae'])} | {fmt(ref['mae'])} | {fmt(ours['spearman'])} | "
                      f"{fmt(ref['spearman'])} | {g['beats']} |")  # fmt: skip
    result["markdown"] = table
    print(table)
    print(f"wrote {write_json(result, args.output)}")
    if args.write_bundle is not None and not result.get("reference", {}).get("beats", True):
        print(f"not written into {args.write_bundle}: the chosen fit does not beat --reference {args.reference}")
    elif args.write_bundle is not None:
        path = args.write_bundle / "configs" / "inference.json"
        config = json.loads(path.read_text())
        config["quality_calibration"] = model
        config["warn_dice"] = threshold["warn_dice"]
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(config, indent=4) + "\n"))
        print(f"wrote quality_calibration into {path}")
    return result


if __name__ == "__main__":
    main()
