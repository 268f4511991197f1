"""Cost of WiDiT's pixel head (PixelDiT pathway, ``head="pixel"``) as a ratio to the patch head, in one run.

For each model (default: the shipped bundle's network at its 64^3 training crop, and the phantom benchmark's network at
32^3) every head is built in one fresh process, warmed up once, then timed round-robin (``--repeats`` rounds), so a busy
neighbour slows them alike: one training step (forward + backward, batch ``--batch``) and one sampling call (DDIM
``--steps`` steps of one volume, no gradients, as the bundle validates). That is done in ``--processes`` processes and
their median counts (one process's memory layout alone moved a ratio by 10-15 percent on this VM). The clock is process
CPU time on one thread. ``--precision bfloat16`` samples under CPU bf16 autocast, as ``precision="auto"`` does on a CPU
with bf16 matmul hardware (training stays float32). Memory: each (model, head, kind) runs once in a fresh subprocess;
the extra peak resident memory over the resident memory just before it (VmHWM - VmRSS, as ``backbone.py``). Ratios are
against the patch head of the same model, measured in the same run. Writes benchmarks/results/head_cost.json.

    python benchmarks/head_cost.py            # about 10 CPU minutes
    python benchmarks/head_cost.py --models bundle --heads patch,pixel-4-1-r2 --repeats 5 --precision bfloat16 \
        --output benchmarks/results/head_cost_bf16.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _worker import run_worker  # benchmarks/ is on sys.path when a script runs
from backbone import _proc_status_mb
from learn_phantoms import (  # one parser of the head specs
    HEAD_GRAMMAR,
    input_channels,
    network_options,
    segmenter_options,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

MODELS = {  # name -> (WiDiT arguments, cube edge, classes)
    "bundle": (
        {
            "hidden_size": 64,
            "depth": 4,
            "num_heads": 4,
            "patch_size": 4,
            "window_size": 8,
            "embed": "conv",
            "position": "rope",
        },
        64,
        2,
    ),
    "phantoms": ({"hidden_size": 128, "depth": 2, "num_heads": 4, "patch_size": 4, "window_size": 4}, 32, 3),
}


def build(spec: dict):
    """(train_step, sample_call) closures for one model and head."""
    import torch

    from medwidit.diffusion import DiffusionSegmenter
    from medwidit.nets import WiDiT

    torch.set_num_threads(1)  # a benchmark script, not library code
    torch.manual_seed(0)
    options, size, classes = MODELS[spec["model"]]
    net = WiDiT(
        spatial_dim=3,
        in_channels=input_channels(spec["head"], classes),
        out_channels=classes,
        cond_channels=1,
        learn_sigma=False,
        **{**options, **network_options(spec["head"])},
    )
    segmenter = DiffusionSegmenter(net, num_classes=classes, **segmenter_options(spec["head"]))
    images = torch.randn(spec["batch"], 1, *(size,) * 3)
    labels = torch.randint(0, classes, (spec["batch"], 1, *(size,) * 3))
    generator = torch.Generator().manual_seed(0)

    def train_step() -> None:
        segmenter.loss(images, labels, generator=generator)["loss"].backward()
        segmenter.zero_grad(set_to_none=True)

    # sampling under the CPU autocast that precision="auto" picks on a CPU with bf16 matmul hardware (the network's
    # ops run in bf16, the scheduler's stay float32 as in the predictor); training stays float32, as the bundle's
    autocast = spec.get("precision", "float32") == "bfloat16"

    def sample() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            segmenter.sample(images[:1], steps=spec["steps"], generator=generator)

    return train_step, sample


def worker(spec: dict) -> dict:
    """A fresh process's measurement: the times of every head of a model, or one call's peak memory."""
    if spec.get("kind") == "time":
        return {"rows": measure_time(spec["specs"], spec["repeats"])}
    train_step, sample = build(spec)
    call = train_step if spec["kind"] == "train" else sample
    before = _proc_status_mb("VmRSS")
    call()
    return {"peak_mem_mb": _proc_status_mb("VmHWM") - before}


def measure_time(specs: list[dict], repeats: int) -> list[dict]:
    """CPU seconds per training step and per sampling call, round-robin over the heads; best and median."""
    calls = [build(spec) for spec in specs]
    times = [{"train": [], "sample": []} for _ in specs]
    for train_step, sample in calls:  # warm-up
        train_step()
        sample()
    for _ in range(repeats):
        for (train_step, sample), record in zip(calls, times, strict=True):
            for kind, call in (("train", train_step), ("sample", sample)):
                start = time.process_time()
                call()
                record[kind].append(time.process_time() - start)
    return [
        {
            f"{kind}_{stat}_s": round(fn(ts), 4)
            for kind, ts in record.items()
            for stat, fn in (("best", min), ("median", statistics.median))
        }
        for record in times
    ]


def time_in_process(specs: list[dict], args: argparse.Namespace) -> list[dict]:
    """:func:`measure_time` of every head of one model in a fresh process: their times (best and median)."""
    timeout = args.timeout * len(specs) * args.repeats
    result = run_worker(__file__, {"kind": "time", "specs": specs, "repeats": args.repeats}, timeout)
    if "error" in result:
        raise RuntimeError(f"timing {specs[0]['model']} failed: {result['error']}")
    return result["rows"]


def combine_processes(runs: list[list[dict]]) -> list[dict]:
    """Per head: the median over processes of each best and median time, and the time ratios to the patch head
    (the first), each taken within one process (round-robin, so alike conditions), then their median; the
    per-process ratios are kept."""
    rows = []
    for index in range(len(runs[0])):
        per_process = [run[index] for run in runs]
        row = {key: round(statistics.median(r[key] for r in per_process), 4) for key in per_process[0]}
        for kind in ("train", "sample"):
            ratios = [r[f"{kind}_best_s"] / run[0][f"{kind}_best_s"] for r, run in zip(per_process, runs, strict=True)]
            row[f"{kind}_time_ratio"] = round(statistics.median(ratios), 3)
            row[f"{kind}_time_ratio_per_process"] = [round(v, 3) for v in ratios]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundle,phantoms")
    parser.add_argument(
        "--heads",
        default="patch,pixel-4-1-r2,pixel-8-1,pixel-16-1,pixel-16-2",
        help=f"{HEAD_GRAMMAR}; patch first: the reference",
    )
    parser.add_argument("--batch", type=int, default=2, help="training batch (the bundle: 2 crops of one volume)")
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps per sampling call (the bundle's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="sampling under CPU bf16 autocast (the default CLI's on a CPU with bf16 hardware); training float32",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="fresh processes timing each model: the figures are the median of their bests (one process's memory "
        "layout can move a ratio by 10-15 percent on a VM)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds per memory subprocess, and per head and repeat of a timing process",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "head_cost.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    heads = args.heads.split(",")
    if args.processes < 1:
        raise ValueError(f"--processes must be at least 1, got {args.processes}.")
    if heads[0] != "patch":
        raise ValueError(f"--heads must start with the reference 'patch', got {args.heads!r}.")
    rows = []
    for model in args.models.split(","):
        specs = [
            {"model": model, "head": h, "batch": args.batch, "steps": args.steps, "precision": args.precision}
            for h in heads
        ]
        runs = [time_in_process(specs, args) for _ in range(args.processes)]
        for spec, timing in zip(specs, combine_processes(runs), strict=True):
            memory = {
                f"{kind}_peak_mem_mb": run_worker(__file__, {**spec, "kind": kind}, args.timeout).get("peak_mem_mb")
                for kind in ("train", "sample")
            }
            rows.append({"model": model, "head": spec["head"], **timing, **memory})
        reference = rows[-len(heads)]
        for row in rows[-len(heads) :]:
            for key in ("train_peak_mem_mb", "sample_peak_mem_mb"):  # the time ratios: combine_processes
                if row[key] is not None and reference[key]:
                    row[key.replace("_peak_mem_mb", "_memory") + "_ratio"] = round(row[key] / reference[key], 3)
            print(json.dumps(row), flush=True)
    import torch
    from _report import (  # here, not at the top: the workers import this module and need none of it
        cpu_model,
        write_json,
    )

    result = {
        "benchmark": "pixel head vs patch head: training step (forward+backward) and DDIM sampling, CPU",
        "models": {
            name: {"widit": MODELS[name][0], "size": MODELS[name][1], "classes": MODELS[name][2]}
            for name in args.models.split(",")
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
        "clock": "process CPU time, one thread, best of the round-robin repeats (median also given) in each of "
        "--processes fresh processes; the figures are the medians over processes",
        "memory": "fresh process per (model, head, kind): peak RSS (VmHWM) minus RSS just before the call",
        "host": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "results": rows,
    }
    print(f"wrote {write_json(result, args.output)}")


if __name__ == "__main__":
    main()
