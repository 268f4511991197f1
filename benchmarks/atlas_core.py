"""The atlas prior's core and margin, scored on a finished ``generalisation.py --keep`` run without sampling again:
each case's written mask, restricted to within ``margin_mm`` of the registered template's brain and joined with the
template's brain deeper than ``core_mm`` (its core), against the truth.

For every case of ``--results`` (a ``generalisation.py`` JSON whose rows name their masks; the ``--keep`` folder holds
``<case>_image.nii.gz`` and ``<case>_truth.nii.gz``) the bundle's template is registered to the case's image as
``Predictor.segment`` registers it (``atlas.atlas_mask``), and for every (core, margin) of the grid the mask becomes
``(mask within margin of the template's brain) | core_of(template, core)``, after which the bundle's label
post-processing runs (the largest component, holes filled), as it does after sampling. Dice with the truth (on the
truth's grid), beside the written mask's own and the registered template's alone. The predictor fills the core on
the model's 2 mm grid before the post-processing; this script on the input grid after it, so a pipeline run confirms
what it chooses.

``--template-truth PREFIX,...`` names the cases whose truth is the template's own mask (MNI152 and the heads painted
from its labels): there the template scores 1 and the core looks better than it can be, so the rule scores the
others and only guards these. The rule, written before the grid below the shipped margin was scored
(``RULE``): the largest mean Dice on the other cases, no case of them losing more than ``--max-loss`` against its
written mask, the template-truth cases' mean not lower; among the candidates within ``--tie`` of the best mean, the
largest core, then the largest margin (the weakest prior that does as well).

    python benchmarks/atlas_core.py --results RUN.json --keep RUN_KEEP --template-truth mni152,painted

Writes ``benchmarks/results/validation_atlas_core.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, fmt, publish  # benchmarks/ is on sys.path when a script runs
from nibabel.processing import resample_from_to
from registration import bundle_prior

import medwidit.inference.atlas as atlas
from medwidit.inference.localize import foreground_region
from medwidit.inference.options import read_inference_config
from medwidit.inference.postprocess import apply_label_postprocessing

RULE = (
    "the largest mean Dice over the cases whose truth is not the template's own mask, no one of them losing more than "
    "max_loss against its written mask, the template-truth cases' mean not below theirs; among the candidates within "
    "tie of that best mean, the largest core_mm, then the largest margin_mm"
)


def score_case(mask, template, affine, truth_of, cores, margins, postprocessing) -> dict:
    """Dice with the truth of the written ``mask``, of the registered ``template`` alone and of every (core,
    margin) candidate (``c<core>m<margin>``), each bool on the case's grid; ``truth_of(array)`` scores an array on
    the truth's grid."""
    row = {"own": truth_of(mask), "template": truth_of(template), "candidates": {}}
    for margin in margins:
        near = mask & foreground_region(template.astype(np.uint8), affine, margin)
        for core in cores:
            joined = (near | atlas.core_of(template, affine, core)).astype(np.int64)
            written = apply_label_postprocessing(joined, postprocessing) > 0
            row["candidates"][f"c{core:g}m{margin:g}"] = truth_of(written)
    return row


def decide(rows: list[dict], template_truth: list[str], max_loss: float, tie: float) -> dict:
    """``RULE`` on scored rows -> the decision: every candidate's means and worst loss, and the chosen one (None where
    none meets the constraints)."""
    guarded = [r for r in rows if r["template_truth"]]
    scored = [r for r in rows if not r["template_truth"]]
    if not scored:
        raise SystemExit(f"every case is a template-truth case ({', '.join(template_truth)}): nothing to score")
    base_guard = float(np.mean([r["own"] for r in guarded])) if guarded else None
    table = {}
    for key in rows[0]["candidates"]:
        core, margin = (float(v) for v in key[1:].split("m"))
        mean = float(np.mean([r["candidates"][key] for r in scored]))
        worst = float(min(r["candidates"][key] - r["own"] for r in scored))
        guard = float(np.mean([r["candidates"][key] for r in guarded])) if guarded else None
        meets = worst >= -max_loss and (guard is None or guard >= base_guard)
        table[key] = {"core_mm": core, "margin_mm": margin, "mean_dice": mean, "worst_change": worst,
                      "template_truth_mean": guard, "meets": meets}  # fmt: skip
    meeting = {k: v for k, v in table.items() if v["meets"]}
    chosen = None
    if meeting:
        best = max(v["mean_dice"] for v in meeting.values())
        near = [k for k, v in meeting.items() if v["mean_dice"] >= best - tie]
        chosen = max(near, key=lambda k: (table[k]["core_mm"], table[k]["margin_mm"]))
    return {
        "rule": RULE, "max_loss": max_loss, "tie": tie, "template_truth": template_truth,
        "scored_cases": len(scored), "guarded_cases": len(guarded),
        "own_mean_dice": float(np.mean([r["own"] for r in scored])), "own_template_truth_mean": base_guard,
        "template_mean_dice": float(np.mean([r["template"] for r in scored])),
        "candidates": table, "chosen": chosen,
    }  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a generalisation.py JSON (one tool's rows)")
    parser.add_argument("--keep", type=Path, required=True, help="its --keep folder: <case>_image/_truth.nii.gz")
    parser.add_argument("--bundle", type=Path, default=None, help="whose atlas_prior and post-processing (shipped)")
    parser.add_argument("--cores", type=float, nargs="+", default=[0, 1, 2, 3, 4, 6])
    parser.add_argument("--margins", type=float, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--template-truth", default="", help="comma-separated case-name prefixes")
    parser.add_argument("--max-loss", type=float, default=0.005)
    parser.add_argument("--tie", type=float, default=0.002)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "validation_atlas_core.json")
    args = parser.parse_args(argv)
    if min(args.cores + args.margins) < 0:
        parser.error(f"--cores and --margins are mm >= 0, got {args.cores} and {args.margins}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    bundle, spec = bundle_prior(args.bundle)
    postprocessing = read_inference_config(bundle)[1].get("label_postprocessing")
    prefixes = [p for p in args.template_truth.split(",") if p]
    rows = []
    for entry in json.loads(args.results.read_text())["rows"]:
        case = entry["case"]
        paths = {k: args.keep / f"{case}_{k}.nii.gz" for k in ("image", "truth")}
        missing = [str(p) for p in [*paths.values(), Path(entry["mask"])] if not p.is_file()]
        if missing:
            raise SystemExit(f"{args.results}: case {case}: missing {', '.join(missing)}")
        image, truth_image = nib.load(paths["image"]), nib.load(paths["truth"])
        truth = np.asarray(truth_image.dataobj) > 0
        mask = np.asarray(nib.load(entry["mask"]).dataobj) > 0

        def truth_of(array, image=image, truth_image=truth_image, truth=truth) -> float:
            if array.shape != truth.shape or not np.allclose(image.affine, truth_image.affine, atol=1e-4):
                moved = resample_from_to(nib.Nifti1Image(array.astype(np.uint8), image.affine), truth_image, order=0)
                array = np.asarray(moved.dataobj) > 0
            return atlas.template_dice(array, truth)  # the Dice of two masks, 1 where both are empty

        start = time.process_time()
        template = atlas.atlas_mask(np.asarray(image.dataobj, dtype=np.float32), image.affine, spec)
        row = {"case": case, "template_truth": any(case.startswith(p) for p in prefixes)}
        row.update(score_case(mask, template, image.affine, truth_of, args.cores, args.margins, postprocessing))
        row["cpu_seconds"] = time.process_time() - start
        rows.append(row)
        print(f"{case}: own {fmt(row['own'])}, template {fmt(row['template'])}", flush=True)
    decision = decide(rows, prefixes, args.max_loss, args.tie)
    lines = ["| core mm | margin mm | mean Dice (scored cases) | worst change | template-truth mean | meets |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for c in decision["candidates"].values():
        lines.append(f"| {c['core_mm']:g} | {c['margin_mm']:g} | {fmt(c['mean_dice'], 4)} | "
                     f"{fmt(c['worst_change'], 4)} | {fmt(c['template_truth_mean'], 4)} | {c['meets']} |")  # fmt: skip
    lines.append(f"\nwritten masks: {fmt(decision['own_mean_dice'], 4)}; the template alone "
                 f"{fmt(decision['template_mean_dice'], 4)}; chosen: {decision['chosen']}")  # fmt: skip
    result = {
        "command": shlex.join(["python", "benchmarks/atlas_core.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment(torch.device("cpu"), __file__), "bundle": str(bundle), "results": str(args.results),
        "atlas_prior": {k: str(v) if isinstance(v, Path) else v for k, v in spec.items()},
        "rows": rows, "decision": decision,
    }  # fmt: skip
    return publish(result, "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
