"""Speed: medwidit's default CLI beside MONAI's BasicUNet and deepbet, in CPU seconds per volume and Dice (issue 12).

    python benchmarks/speed.py --peers-python /work/peers-venv/bin/python --reference /tmp/medwidit-1ccc17a
    python benchmarks/speed.py --section curve         # Dice vs CPU seconds over steps x samples x sampler
    python benchmarks/speed.py --section curve --samplers ddim --steps 10 --samples 4 --shared-steps 0 5 7 9
    python benchmarks/speed.py --section curve --steps 2 3 5 10 --samples 2 \
        --base mni152_2mm VAL/mni152_2mm_image.nii.gz VAL/mni152_2mm_label.nii.gz --variants mni152_2mm contrast
    python benchmarks/speed.py --quick --output /tmp/speed.json   # tiny model and volume: seconds (the test)

``compare`` runs each tool in its own process on the shipped example and reads that process's CPU seconds
(user + system, ``RUSAGE_CHILDREN``) and wall seconds, ``--repeats`` rounds in which every timed tool runs once (the
ratios are of the medians; ``_best`` of the fastest runs): medwidit's ``segment`` with its defaults and the shipped
bundle, the same with ``--precision float32`` (what the default's CPU bf16 autocast gains), ``--reference``: another
checkout, e.g. a ``git worktree`` of the issue's baseline, with its own defaults, and deepbet; once each:
``--same-flags`` (both checkouts again with the same flags, which isolates what is not the defaults), one
forward of MONAI's ``BasicUNet`` on the grid medwidit samples (padded to a multiple of 16),
``python -m medwidit segment --help`` and ``import medwidit.inference`` (start-up). deepbet runs through
``benchmarks/tools/run_tool.py`` in the peers' environment. Dice of each mask against the example's reference, on
its grid. ``curve`` measures Dice against CPU seconds (``time.process_time`` of ``Predictor.segment``, one
process, model loaded once) on validation cases that are not the example: MNI152 (1 mm, from the brain-data cache,
``MEDWIDIT_CACHE``) with its brain label, clean, with 3 mm slices and with Rician noise; the knee is the cheapest
setting whose mean Dice is within ``--tolerance`` of the best. ``--base NAME IMAGE LABEL`` (repeatable; VAL is
``validation_cases.py``'s folder) replaces MNI152 1 mm with those scans and ``--variants`` of them
(generalisation.py's); every row also records the case's own predicted Dice (``quality["min_predicted_dice"]``) and
its error against the true Dice. Writes ``benchmarks/results/speed.json`` (compare) or
``speed_curve.json`` (curve) and prints a table; timings compared as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import environment, fmt, publish  # benchmarks/ is on sys.path when a script runs
from generalisation import build_cases, score, variant

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "medwidit" / "data" / "examples" / "colin27_head_2mm_image.nii.gz"
TRUTH = ROOT / "medwidit" / "data" / "examples" / "colin27_head_2mm_label.nii.gz"
BUNDLE = ROOT / "bundles" / "brain_widit_segmentation"
RUNNER = ROOT / "benchmarks" / "tools" / "run_tool.py"
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("dice", "cpu_seconds", "predicted_error")
SETTING = ("sampler", "steps", "samples", "shared_steps")
BASICUNET = """
import json, sys, time, torch
from monai.networks.nets import BasicUNet
shape = [int(s) for s in sys.argv[1:4]]
net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=tuple(int(f) for f in sys.argv[4:10])).eval()
x = torch.randn(1, 1, *shape)
start = time.process_time()
with torch.no_grad():
    net(x)
print(json.dumps({"forward_cpu_seconds": time.process_time() - start, "grid": shape}))
"""


#######################################################################################################################
# compare: one process per tool
#######################################################################################################################


def timed(command: list[str], env: dict) -> dict:
    """Run ``command``; its CPU seconds (user + system of the child) and wall seconds, and its last stdout line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # cwd outside every checkout: `python -m` puts the cwd first on sys.path, ahead of PYTHONPATH's checkout
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"cpu_seconds": cpu, "wall_seconds": wall}
    if proc.returncode:
        out["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    lines = proc.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        out["reported"] = json.loads(lines[-1])
    return out


def medwidit_env(checkout: Path, threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": str(threads)}


def run_medwidit(checkout: Path, image: Path, model: list[str], extra: list[str], threads: int, folder: Path) -> dict:
    """``python -m medwidit segment`` of ``checkout`` with its defaults (plus ``extra``) -> timing, mask path."""
    out = Path(tempfile.mkdtemp(dir=folder))
    command = [sys.executable, "-m", "medwidit", "segment", "-i", str(image), "-o", str(out), "-q", *model, *extra]
    row = timed(command, medwidit_env(checkout, threads))
    row["mask"] = str(out / image.name)
    return row


def compare(args, folder: Path) -> dict:
    image, truth, model, extra, unet = EXAMPLE, TRUTH, ["--bundle", str(BUNDLE)], [], (32, 32, 64, 128, 256, 32)
    if args.quick:
        image, truth, model = quick_case(folder)
        extra, unet = ["--steps", "1", "--samples", "1", "--device", "cpu"], (4, 4, 8, 8, 16, 4)
    rows = {}
    if args.reference and not args.quick:  # the reference's own bundle: its weights' file layout may differ
        reference_model = ["--bundle", str(Path(args.reference) / BUNDLE.relative_to(ROOT))]
    else:
        reference_model = model
    peers_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for repeat in range(args.repeats):  # every timed tool runs once per round, so that all see the same load
        rows.setdefault("medwidit", []).append(run_medwidit(ROOT, image, model, extra, args.threads, folder))
        if not args.quick:  # the default's autocast (bf16 on a CPU with bf16 matmul hardware) against plain float32
            row = run_medwidit(ROOT, image, model, [*extra, "--precision", "float32"], args.threads, folder)
            rows.setdefault("medwidit_float32", []).append(row)
        if args.reference:
            ref = run_medwidit(Path(args.reference), image, reference_model, extra, args.threads, folder)
            rows.setdefault("medwidit_reference", []).append(ref)
        if args.peers_python:
            mask = folder / f"deepbet_mask_{repeat}.nii.gz"
            command = [args.peers_python, str(RUNNER), "deepbet", str(image), str(mask), "--threads", str(args.threads)]
            rows.setdefault("deepbet", []).append({**timed(command, peers_env), "mask": str(mask)})
    if args.same_flags:  # the encoding cache alone: both checkouts with the same explicit sampling flags
        flags = [*extra, *shlex.split(args.same_flags)]
        rows["medwidit_same_flags"] = [run_medwidit(ROOT, image, model, flags, args.threads, folder)]
        if args.reference:
            ref = run_medwidit(Path(args.reference), image, reference_model, flags, args.threads, folder)
            rows["medwidit_reference_same_flags"] = [ref]
    env = medwidit_env(ROOT, args.threads)
    rows["startup_help"] = [timed([sys.executable, "-m", "medwidit", "segment", "--help"], env)]
    rows["startup_import"] = [timed([sys.executable, "-c", "import medwidit.inference, medwidit.cli"], env)]
    grid = [-(-s // 16) * 16 for s in nib.load(str(image)).shape[:3]]
    rows["basicunet_forward"] = [timed([sys.executable, "-c", BASICUNET, *map(str, grid), *map(str, unet)], env)]
    for runs in rows.values():
        for run in runs:
            if "mask" in run and "error" not in run:
                run["dice"] = score(Path(run["mask"]), truth)["dice"]
            run.pop("mask", None)
    return {"image": str(image.relative_to(ROOT) if image.is_relative_to(ROOT) else image.name), "runs": rows}


def ratios(runs: dict) -> dict:
    """The issue's targets as ratios of CPU (and wall) seconds measured in this run: of the medians over the rounds
    (the figure to quote), and of the fastest runs (``_best``)."""
    done = {name: [r for r in found if "error" not in r] for name, found in runs.items()}  # a failed run is no time
    done = {name: found for name, found in done.items() if found}
    out = {}

    def add(key: str, numerator: str, denominator: str, unit: str = "cpu") -> None:
        if numerator in done and denominator in done:
            seconds = {name: [r[f"{unit}_seconds"] for r in done[name]] for name in (numerator, denominator)}
            out[key] = float(np.median(seconds[numerator]) / np.median(seconds[denominator]))
            out[f"{key}_best"] = min(seconds[numerator]) / min(seconds[denominator])

    add("medwidit_over_deepbet_cpu", "medwidit", "deepbet")
    add("float32_over_medwidit_cpu", "medwidit_float32", "medwidit")
    for suffix in ("", "_same_flags"):
        for unit in ("cpu", "wall"):
            add(f"reference_over_medwidit{suffix}_{unit}", f"medwidit_reference{suffix}", f"medwidit{suffix}", unit)
    return out


#######################################################################################################################
# curve: Dice vs CPU seconds
#######################################################################################################################


def validation_cases(folder: Path, quick: bool, bases: list | None = None, variants: list | None = None) -> list[dict]:
    """MNI152 1 mm with its brain label: clean, 3 mm slices along z, Rician noise (generalisation's variants); or
    ``bases`` [(name, image, label)] (e.g. ``validation_cases.py``'s scans) with ``variants`` of each."""
    if quick:
        image, truth, _ = quick_case(folder)
        return [{"name": "quick_ball", "image": image, "truth": truth}]
    if bases:
        return build_cases(folder, {name: (Path(i), Path(t)) for name, i, t in bases}, variants)
    from medwidit.datasets.brain import default_cache_dir

    cache = default_cache_dir()
    image = nib.load(str(cache / "head" / "mni152nlin6asym_1mm_image.nii.gz"))
    truth = cache / "brain" / "mni152nlin6asym_1mm_label.nii.gz"
    cases = []
    for name in ("clean", "thick_z", "noise"):
        path = folder / f"mni152_{name}.nii.gz"
        nib.save(image if name == "clean" else variant(name, image), str(path))
        cases.append({"name": f"mni152_{name}", "image": path, "truth": truth})
    return cases


def curve(args, folder: Path) -> dict:
    from medwidit.inference import Predictor

    torch.set_num_threads(args.threads)
    if args.quick:
        _, _, model = quick_case(folder)
        predictor = Predictor.from_checkpoint(model[1], device="cpu")
    else:
        predictor = Predictor.from_bundle(args.bundle, device="cpu")
    cases = validation_cases(folder, args.quick, args.base, args.variants)
    rows = []
    grid = itertools.product(cases, args.samplers, args.steps, args.samples, args.shared_steps)
    for case, sampler, steps, samples, shared in grid:
        if shared >= steps:
            continue
        start = time.process_time()
        result = predictor.segment(
            case["image"], steps=steps, num_samples=samples, sampler=sampler, shared_steps=shared
        )
        cpu = time.process_time() - start
        mask = folder / "mask.nii.gz"
        nib.save(result.labels, str(mask))
        row = {"case": case["name"], "sampler": sampler, "steps": steps, "samples": samples, "shared_steps": shared}
        row["weight_sets"] = len(predictor.select_weights(None))  # samples are per set of weights
        predicted = result.quality["min_predicted_dice"]  # the case's own estimate, the CLI's warning's number
        dice = score(mask, case["truth"])["dice"]
        rows.append({**row, "cpu_seconds": cpu, "dice": dice, "predicted_dice": predicted})
        rows[-1]["predicted_error"] = abs(predicted - dice)
        print(f"{case['name']:16s} {sampler:9s} steps {steps:2d} samples {samples} shared {shared}  CPU {cpu:6.1f} s  "
              f"Dice {dice:.4f}  predicted {predicted:.4f}", flush=True)  # fmt: skip
    settings = {}
    for row in rows:
        settings.setdefault(tuple(row[k] for k in SETTING), []).append(row)
    means = [
        {**dict(zip(SETTING, k, strict=True)), **{m: float(np.mean([r[m] for r in v])) for m in METRICS}}
        for k, v in settings.items()
    ]
    best = max(m["dice"] for m in means)
    knee = min((m for m in means if m["dice"] >= best - args.tolerance), key=lambda m: m["cpu_seconds"])
    return {
        "cases": [c["name"] for c in cases],
        "rows": rows,
        "means": means,
        "knee": knee,
        "tolerance": args.tolerance,
    }


#######################################################################################################################
# quick mode: a tiny model and volume
#######################################################################################################################


def quick_case(folder: Path) -> tuple[Path, Path, list[str]]:
    """A 24^3 ball at 2 mm, its mask, and a tiny random WiDiT checkpoint (made once per folder)."""
    image, truth, model = folder / "ball.nii.gz", folder / "ball_label.nii.gz", folder / "tiny.pt"
    if not model.exists():
        from medwidit.diffusion import DiffusionSegmenter, save_segmenter
        from medwidit.nets import WiDiT

        grid = np.stack(np.meshgrid(*(np.arange(24) - 11.5,) * 3, indexing="ij"))
        ball = np.sqrt((grid**2).sum(0)) < 8
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(np.where(ball, 100.0, 10.0).astype(np.float32), affine), str(image))
        nib.save(nib.Nifti1Image(ball.astype(np.uint8), affine), str(truth))
        net = WiDiT(spatial_dim=3, in_channels=2, cond_channels=1, hidden_size=16, depth=1, num_heads=2,
                    window_size=4, learn_sigma=False)  # fmt: skip
        extra = {"preprocessing": {"spacing": [2.0, 2.0, 2.0], "num_modalities": 1}, "roi_size": [16, 16, 16]}
        save_segmenter(DiffusionSegmenter(net, num_classes=2), model, extra_config=extra)
    return image, truth, ["--checkpoint", str(model)]


#######################################################################################################################
# main
#######################################################################################################################


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=("compare", "curve"), default="compare")
    parser.add_argument("--quick", action="store_true", help="tiny model and volume (seconds)")
    parser.add_argument("--peers-python", help="interpreter with deepbet (e.g. /work/peers-venv/bin/python)")
    parser.add_argument("--reference", help="another medwidit checkout to time beside this one (its own defaults)")
    parser.add_argument("--same-flags", help="also run both checkouts with these flags, e.g. '--steps 10 --samples 4'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds: each timed tool runs once per round (ratios of the medians)"
    )
    parser.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp_2m"])
    parser.add_argument("--steps", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--samples", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--shared-steps", type=int, nargs="+", default=[0], help="steps the ensemble shares before branching"
    )
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="curve: the bundle to sample (default: shipped)")
    parser.add_argument(
        "--base", nargs=3, action="append", metavar=("NAME", "IMAGE", "LABEL"),
        help="curve: a validation scan and its brain mask instead of MNI152 1 mm (repeat; validation_cases.py)",
    )  # fmt: skip
    parser.add_argument("--variants", nargs="+", help="curve with --base: which cases (base names or variants)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="knee: mean Dice within this of the best")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.section == "compare" and (args.base or args.variants or args.bundle != BUNDLE):
        parser.error("--bundle, --base and --variants choose the curve's model and cases: give --section curve")
    if args.variants and not args.base:
        parser.error("--variants picks among the --base scans and their variants: give --base too")
    if args.quick and args.section == "curve" and argv is None:
        args.steps, args.samples = [1, 2], [1, 2]
    # the tools run from a temporary folder (see `timed`): paths relative to the caller's folder would name nothing
    # there; absolute, not resolved, so that a venv's interpreter link stays the venv's. The reference is a folder;
    # an interpreter given as a bare command name (`python3`) is left to the PATH lookup.
    if args.reference:
        args.reference = os.path.abspath(args.reference)
    if args.peers_python and os.path.dirname(args.peers_python):
        args.peers_python = os.path.abspath(args.peers_python)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.quick and args.output is None:  # as threshold.py: it replaced the recorded speed.json the READMEs cite
        raise SystemExit("speed.py: --quick times a random tiny model: give --output (not the recorded results).")
    output = args.output or RESULTS / ("speed.json" if args.section == "compare" else "speed_curve.json")
    with tempfile.TemporaryDirectory() as folder:
        record = (compare if args.section == "compare" else curve)(args, Path(folder))
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/speed.py", *map(str, given)])
    record = {"command": command, "environment": environment(torch.device("cpu"), __file__), "threads": args.threads,
              **record}  # fmt: skip
    if args.section == "compare":
        record["ratios"] = ratios(record["runs"])
        lines = ["| run | CPU s | wall s | Dice |", "|---|---|---|---|"]
        for name, runs in record["runs"].items():
            for run in runs:
                cells = [fmt(run["cpu_seconds"], 1), fmt(run["wall_seconds"], 1), fmt(run.get("dice"), 4)]
                lines.append(f"| {name} | " + " | ".join(cells) + (f" | {run['error']}" if "error" in run else "|"))
        lines += [f"\n{key}: {value:.2f}" for key, value in record["ratios"].items()]
    else:
        lines = ["| sampler | steps | samples | shared steps | mean CPU s | mean Dice | estimate MAE |"]
        lines.append("|---|---|---|---|---|---|---|")
        lines += [
            f"| {' | '.join(str(m[k]) for k in SETTING)} | {fmt(m['cpu_seconds'], 1)} | {fmt(m['dice'], 4)} "
            f"| {fmt(m['predicted_error'], 3)} |"
            for m in record["means"]
        ]
        lines.append(f"\nknee (mean Dice within {args.tolerance} of the best, least CPU): {record['knee']}")
    return publish(record, "\n".join(lines), output)


if __name__ == "__main__":
    main()
