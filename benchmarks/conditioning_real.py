"""Embed vs concat conditioning, spacing conditioning with vs without, and the contrast-remap recipe vs the shipped
weights, on real anatomy: the brain bundle trained by its own ``training`` command once per option (one after the
other on this machine), each scored on validation scans with ``generalisation.py``. Colin27, the held-out test scan,
is never looked at.

Pairs (overrides of ``bundles/brain_widit_segmentation/configs/train.json``):
    conditioning   embed (train.json as it is: the shipped recipe)  vs  concat (``--net#conditioning concat``)
                   scored on the real MNI152 2 mm template and its acquisition variants (thick slices along each
                   axis, contrast re-mapping, noise, bias, cropped field of view)
    spacing        both trained with half their crops re-acquired with thick slices (``--thickness_prob 0.5``);
                   without vs with ``--spacing_conditioning``; scored on the MNI152 template and two images painted
                   from the head label map (``validation_cases.py``), each as it is and thick along each axis
    contrast       the shipped weights  vs  a retrain with real crops under another sequence's contrast
                   (``--contrast_prob 0.3``: ``medwidit.data.synth.RandContrastRemapd``) and thick slices
                   (``--thickness_prob 0.5``) for 3400 steps (the CPU budget); scored on all three validation scans
                   and all 7 acquisition variants of each
    weight_sets    the shipped weights (4 samples)  vs  the shipped bundle with the contrast pair's retrain as a
                   second set of weights (``extra_weights``), 2 samples from each: the same network calls; the
                   contrast pair's scans and cases

What the scans measure: the MNI152 2 mm file is the training anatomy at another resolution (the data list's
validation file) and the painted images come from that anatomy's label map, so the cases test acquisition and contrast,
not a new person. One training run per option: a difference of about 0.01 Dice is within run-to-run spread.

Every trained option is sampled with the shipped ``inference.json`` (steps, post-processing) and its one set of
weights at 4 samples, as the bundle sampled before 0.4.0. ``--shipped-embed`` takes the shipped weights for ``embed``
instead of training them again (the same recipe, trained by an earlier version of the code); a variant without
overrides (None) is always the shipped ``models/model.pt`` alone at 4 samples (``SHIPPED_ALONE``). A model already
trained in ``--work``, and its scores, are reused, so an interrupted run goes on where it stopped. Writes
benchmarks/results/conditioning_real.json (the pairs not run this time are kept from the file) and prints a table.

    python benchmarks/conditioning_real.py --work /tmp/conditioning_real   # 4 x ~12 min training, 4 x ~5 min scoring
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):  # the package from a checkout; validation_cases and _report
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import validation_cases  # noqa: E402
from _report import environment, fmt, write_json  # noqa: E402

BUNDLE = ROOT / "bundles" / "brain_widit_segmentation"
RESULTS = ROOT / "benchmarks" / "results" / "conditioning_real.json"
THICK = ["thick_x", "thick_y", "thick_z"]
PAIRS = {
    "conditioning": {
        "variants": {"embed": {}, "concat": {"net#conditioning": "concat"}},
        "bases": ["mni152_2mm"],
        "cases": ["mni152_2mm", *THICK, "contrast", "noise", "bias", "fov"],
    },
    "spacing": {
        "variants": {
            "without_spacing": {"thickness_prob": 0.5, "spacing_conditioning": False},
            "with_spacing": {"thickness_prob": 0.5, "spacing_conditioning": True},
        },
        "bases": ["mni152_2mm", "painted_0", "painted_1"],
        "cases": ["mni152_2mm", "painted_0", "painted_1", *THICK],
    },
    "contrast": {
        "variants": {
            "shipped": None,
            "remap": {
                "thickness_prob": 0.5,
                "contrast_prob": 0.3,
                "max_steps": 3400,
                "epochs": 100000,
                "val_interval": 680,
            },
        },
        "bases": ["mni152_2mm", "painted_0", "painted_1"],
        "cases": ["mni152_2mm", "painted_0", "painted_1", *THICK, "contrast", "noise", "bias", "fov"],
    },
    "weight_sets": {
        "variants": {
            "shipped": None,
            "shipped_and_remap": {"weights_of": ["remap"], "inference": {"weight_sets": 2, "num_samples": 2}},
        },
        "bases": ["mni152_2mm", "painted_0", "painted_1"],
        "cases": ["mni152_2mm", "painted_0", "painted_1", *THICK, "contrast", "noise", "bias", "fov"],
    },
}


# a variant None: the shipped models/model.pt alone at 4 samples (the bundle's default until 0.4.0, which every pair
# measured; since 0.4.0 the bundle samples 2 from each of its two sets of weights)
SHIPPED_ALONE = {"weights_of": [], "inference": {"weight_sets": 1, "num_samples": 4}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the trained bundles and the scans")
    parser.add_argument("--pairs", default="conditioning,spacing", help=f"comma-separated, from {list(PAIRS)}")
    parser.add_argument("--shipped-embed", action="store_true", help="score the shipped weights as 'embed'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = sorted(set(args.pairs) - set(PAIRS))
    if unknown:
        parser.error(f"--pairs: unknown {unknown}; choose from {list(PAIRS)}.")
    return args


def train(name: str, overrides: dict, work: Path) -> Path:
    """The bundle's own training command into ``work/name`` (its exported bundle files land in ``models/``)."""
    out = work / name
    if (out / "models" / "model.pt").is_file():
        print(f"{name}: reusing {out}", flush=True)
        return _with_inference_config(out)
    command = [sys.executable, "-m", "monai.bundle", "run", "training"]
    command += ["--config_file", str(BUNDLE / "configs" / "train.json"), "--output_dir", str(out)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: training, log {out / 'train.log'}", flush=True)
    start = time.perf_counter()
    with open(out / "train.log", "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    (out / "training_seconds.json").write_text(json.dumps({"wall_seconds": round(time.perf_counter() - start, 1)}))
    return _with_inference_config(out)


def with_extra_weights(name: str, spec: dict, work: Path) -> Path:
    """The shipped bundle in ``work/name`` with the weights trained for the variants ``spec["weights_of"]`` (by the
    contrast pair's overrides, reused where trained) as its only ``extra_weights`` (self-contained checkpoints,
    ``models/model_<variant>.pt``) and ``spec["inference"]`` over its ``inference.json``."""
    from medwidit.diffusion import load_segmenter, save_segmenter

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(BUNDLE, out, ignore=shutil.ignore_patterns("eval", "runs"))
    inference = {**json.loads((out / "configs" / "inference.json").read_text()), "extra_weights": []}
    for variant in spec["weights_of"]:
        trained = train(variant, PAIRS["contrast"]["variants"][variant], work) / "models" / "model.pt"
        segmenter, config = load_segmenter(trained)
        kept = {k: v for k, v in config.items() if k not in ("network", "segmenter", "net")}  # save_segmenter's own
        save_segmenter(segmenter, out / "models" / f"model_{variant}.pt", extra_config=kept)
        inference["extra_weights"] = [*inference["extra_weights"], f"models/model_{variant}.pt"]
    (out / "configs" / "inference.json").write_text(json.dumps({**inference, **spec["inference"]}, indent=4) + "\n")
    return out


def _with_inference_config(out: Path) -> Path:
    """The shipped ``inference.json`` beside the trained weights, with their one set of weights (``SHIPPED_ALONE``):
    every option is sampled and post-processed as the shipped model.pt alone is (steps, 4 samples, overlap, largest
    component and hole filling)."""
    (out / "configs").mkdir(exist_ok=True)
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    inference.update(SHIPPED_ALONE["inference"], extra_weights=[])
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=4) + "\n")
    return out


def score(name: str, bundle: Path, pair: dict, scans: Path, work: Path, threads: int) -> dict:
    output = work / f"{name}_scores.json"
    if not _scores_of(output, bundle):
        command = [sys.executable, str(ROOT / "benchmarks" / "generalisation.py"), "--no-colin27"]
        command += ["--tools", "medwidit"]
        command += ["--bundle", str(bundle), "--threads", str(threads), "--output", str(output)]
        for base in pair["bases"]:
            command += ["--base", base, str(scans / f"{base}_image.nii.gz"), str(scans / f"{base}_label.nii.gz")]
        command += ["--cases", *pair["cases"]]
        subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = json.loads(output.read_text())["rows"]
    failed = [f"{r['case']}: {r['error']}" for r in rows if "error" in r]
    if failed:
        raise SystemExit(f"{name}: medwidit failed on {failed}")
    return {r["case"]: {k: r[k] for k in ("dice", "hd95_mm", "volume_error_ml", "cpu_seconds")} for r in rows}


def _scores_of(output: Path, bundle: Path) -> bool:
    """Whether ``output`` holds this bundle's scores: the same folder, written after all its weights."""
    if not output.is_file():
        return False
    weights = max(f.stat().st_mtime for f in (bundle / "models").glob("*.pt"))  # model.pt and any extra weights
    same = json.loads(output.read_text()).get("bundle") == str(bundle)
    return same and output.stat().st_mtime > weights


def compare(cases: dict[str, dict], bases: list[str]) -> dict:
    """Per variant: mean Dice and HD95, the mean on thick-slice cases and per base scan (a painted image that one
    option fails on does not hide the real template); the second variant minus the first."""
    names = list(cases)
    summary = {}
    for name, rows in cases.items():
        by_base = {
            b: float(np.mean([r["dice"] for c, r in rows.items() if c == b or c.startswith(f"{b}_")])) for b in bases
        }
        thick = [r["dice"] for case, r in rows.items() if any(case.endswith(t) for t in THICK)]
        hd95 = [r["hd95_mm"] for r in rows.values() if r["hd95_mm"] is not None and math.isfinite(r["hd95_mm"])]
        summary[name] = {
            "mean_dice": float(np.mean([r["dice"] for r in rows.values()])),
            "mean_hd95_mm": float(np.mean(hd95)) if hd95 else None,  # over the cases with a mask (empty: no HD95)
            "empty_masks": len(rows) - len(hd95),
            "thick_mean_dice": float(np.mean(thick)) if thick else None,
            "mean_dice_by_base": by_base,
        }
    first, second = (cases[n] for n in names)
    diffs = [second[c]["dice"] - first[c]["dice"] for c in first]
    summary[f"{names[1]}_minus_{names[0]}"] = {
        "mean_dice": float(np.mean(diffs)),
        "cases_better": int(sum(d > 0 for d in diffs)),
        "cases": len(diffs),
    }
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    scans = args.work / "scans"
    if not (scans / "painted_1_label.nii.gz").is_file():
        validation_cases.main(["--out", str(scans)])
    here = environment(torch.device("cpu"), __file__)
    record = {"environment": here, "work": str(args.work), "pairs": earlier_pairs(args.output, args.pairs)}
    for pair_name in args.pairs:
        pair = PAIRS[pair_name]
        variants = dict(pair["variants"])
        if pair_name == "conditioning" and args.shipped_embed:
            variants["embed"] = None  # the shipped weights are the embed recipe
        cases, bundles = {}, {}
        for name, overrides in variants.items():
            if overrides is None:  # models/model.pt alone, as the bundle sampled it before 0.4.0
                bundles[name] = with_extra_weights("shipped_alone", SHIPPED_ALONE, args.work)  # not a trained name
            elif "weights_of" in overrides:
                bundles[name] = with_extra_weights(name, overrides, args.work)
            else:
                bundles[name] = train(name, overrides, args.work)
            cases[name] = score(name, bundles[name], pair, scans, args.work, args.threads)
        record["pairs"][pair_name] = {
            "environment": here,
            "work": str(args.work),
            "overrides": variants,
            "bundles": {n: str(b) for n, b in bundles.items()},
            "training_wall_seconds": {n: _training_seconds(b) for n, b in bundles.items()},
            "cases": cases,
            "summary": compare(cases, pair["bases"]),
        }
        print_table(pair_name, cases)
    write_json(record, args.output)
    return record


def earlier_pairs(output: Path, running: list[str]) -> dict:
    """The pairs of an earlier record at ``output`` that this run does not redo, each with the environment and work
    folder it ran in (its own, or the earlier record's where the pair carries none)."""
    if not output.is_file():
        return {}
    earlier = json.loads(output.read_text())
    return {
        name: {"environment": earlier["environment"], "work": earlier["work"], **pair}
        for name, pair in earlier["pairs"].items()
        if name not in running
    }


def _training_seconds(bundle: Path) -> float | None:
    """The wall-clock seconds ``train`` measured (None for the shipped weights: their metadata has them)."""
    path = bundle / "training_seconds.json"
    return json.loads(path.read_text())["wall_seconds"] if path.is_file() else None


def print_table(pair_name: str, cases: dict[str, dict]) -> None:
    names = list(cases)
    print(f"\n{pair_name}: Dice (HD95 mm)")
    print(f"{'case':24s}" + "".join(f"{n:>22s}" for n in names))
    for case in cases[names[0]]:
        cells = "".join(f"{cases[n][case]['dice']:>14.3f} ({fmt(cases[n][case]['hd95_mm'], 1):>5s})" for n in names)
        print(f"{case:24s}{cells}")
    means = "".join(f"{np.mean([r['dice'] for r in cases[n].values()]):>22.3f}" for n in names)
    print(f"{'mean':24s}{means}", flush=True)


if __name__ == "__main__":
    main()
