"""Backbone speed and memory: relative bias vs rotary position, windowed vs global attention, at three volume sizes.

Time: for each size the four configurations are built in one process, warmed up once, then timed round-robin
(``--repeats`` rounds; a slow configuration stops after ``--budget`` seconds), so a busy neighbour on a shared
machine slows them alike. Throughput is voxel tokens per second of forward+backward, ``tokens = prod(size / patch)``
per sample, from the best step (median also recorded), in process CPU time on CPU (one thread by default, so a
neighbour's load does not inflate it) and in synchronised wall time on CUDA.

Memory: each (size, configuration) runs one step in a fresh subprocess. On CUDA the peak is
``torch.cuda.max_memory_allocated`` during the step minus what was allocated before it (parameters, inputs); on CPU
it is the process' peak resident set size (VmHWM in /proc/self/status) minus its resident size just before the
step: the extra memory one training step needs, allocator slack included.

Ratios are against the reference (relative bias, windowed attention) at the same size, measured in the same run.

    python benchmarks/backbone.py                      # CPU, sizes 16 24 32, about 2-4 minutes on 2 cores
    python benchmarks/backbone.py --device cuda --sizes 32 48 64 --window 8 --amp
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

CONFIGS = [  # (position, attention); the first is the reference
    ("relative", "window"),
    ("rope", "window"),
    ("relative", "global"),
    ("rope", "global"),
]
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))


def _proc_status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident of this process image; unlike ru_maxrss, not inherited from
    the parent across fork + exec) from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def build(spec: dict, position: str, attention: str):
    """The benchmarked model and a step closure (forward + backward on one random batch)."""
    import torch

    from medwidit.nets import WiDiT

    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])  # a benchmark script, not library code
    torch.manual_seed(0)
    model = WiDiT(
        spatial_dim=3,
        patch_size=spec["patch"],
        hidden_size=spec["hidden"],
        depth=spec["depth"],
        num_heads=spec["heads"],
        window_size=spec["window"],
        position=position,
        attention=attention,
    ).to(device)
    shape = (spec["batch"], 1, *(spec["size"],) * 3)
    x, image = torch.randn(shape, device=device), torch.randn(shape, device=device)
    t = torch.full((spec["batch"],), 500.0, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["amp"]):
            out = model(x, t, conditioned=image)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def memory_worker(spec: dict) -> dict:
    """Peak extra memory of one step, in this fresh process (see the module docstring for what is measured)."""
    import torch

    step = build(spec, spec["position"], spec["attention"])
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return {"peak_mem_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}
    before = _proc_status_mb("VmRSS")
    step()
    return {"peak_mem_mb": _proc_status_mb("VmHWM") - before}


def measure_memory(spec: dict, timeout: float) -> dict:
    return run_worker(__file__, spec, timeout)


def measure_time(spec: dict, repeats: int, budget: float) -> list[dict]:
    """Time all configurations round-robin, so a busy neighbour slows them alike; best and median of the steps.

    On CPU the clock is this process' CPU time (one intra-op thread by default), which a neighbour's load does not
    inflate the way it inflates wall time; on CUDA it is wall time after synchronising.
    """
    clock = time.process_time if spec["device"] == "cpu" else time.perf_counter
    steps, times, walls = [], [[] for _ in CONFIGS], [[] for _ in CONFIGS]
    for position, attention in CONFIGS:
        steps.append(build(spec, position, attention))
        steps[-1]()  # warm-up: lazy init, mask and index caches
    for _ in range(repeats):
        for i, step in enumerate(steps):
            if times[i] and sum(walls[i]) > budget:
                continue  # slow configuration: enough samples within its budget
            start, wall = clock(), time.perf_counter()
            step()
            times[i].append(clock() - start)
            walls[i].append(time.perf_counter() - wall)
    tokens = spec["batch"] * (spec["size"] // spec["patch"]) ** 3
    return [
        {
            "tokens": tokens,
            "steps": len(ts),
            "best_step_s": min(ts),
            "median_step_s": statistics.median(ts),
            "median_wall_s": statistics.median(ws),
            "tokens_per_s": tokens / min(ts),
        }
        for ts, ws in zip(times, walls, strict=True)
    ]


def table(rows: list[dict]) -> str:
    head = (
        f"{'size':>5} {'tokens':>7} {'position':>9} {'attention':>9} {'ms/step':>9} {'tokens/s':>10} "
        f"{'x ref':>6} {'peak MB':>8} {'x ref':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['size']:>5} {'':>7} {r['position']:>9} {r['attention']:>9}  {r['error']}")
            continue
        lines.append(
            f"{r['size']:>5} {r['tokens']:>7} {r['position']:>9} {r['attention']:>9} {1e3 * r['best_step_s']:>9.1f} "
            f"{r['tokens_per_s']:>10.0f} {r['throughput_ratio']:>6.2f} {r['peak_mem_mb']:>8.0f} "
            f"{r['memory_ratio']:>6.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs=3, default=None, help="cube edges in voxels (default by device)")
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--window", type=int, default=4, help="window edge in tokens")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (CPU); 1 is steadiest when shared"
    )
    parser.add_argument("--budget", type=float, default=15.0, help="timed seconds per configuration and size")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per memory subprocess")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "backbone.json")
    parser.add_argument(
        "--note",
        default="shared 2-core CPU machine; other engineers were running jobs, so "
        "absolute numbers are noisy - compare the ratios, measured in the same run",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))))
        return
    sizes = args.sizes or ([16, 24, 32] if args.device == "cpu" else [32, 48, 64])
    model = {k: getattr(args, k) for k in ("patch", "window", "hidden", "depth", "heads", "batch", "amp", "threads")}
    rows = []
    for size in sizes:
        spec = {**model, "device": args.device, "size": size}
        timings = measure_time(spec, args.repeats, args.budget)
        for (position, attention), timing in zip(CONFIGS, timings, strict=True):
            memory = measure_memory({**spec, "position": position, "attention": attention}, args.timeout)
            rows.append({"size": size, "position": position, "attention": attention, **timing, **memory})
            print(f"size {size} {position}/{attention}: {rows[-1]}", file=sys.stderr, flush=True)
        reference = rows[-len(CONFIGS)]
        for row in rows[-len(CONFIGS) :]:
            row["throughput_ratio"] = row["tokens_per_s"] / reference["tokens_per_s"]
            if "error" not in row and "error" not in reference:
                row["memory_ratio"] = row["peak_mem_mb"] / max(reference["peak_mem_mb"], 1e-9)
    print(table(rows))
    import torch
    from _report import (  # here, not at the top: the workers import this module and need none of it
        cpu_model,
        write_json,
    )

    result = {
        "benchmark": "backbone forward+backward, WiDiT 3D",
        "device": args.device,
        "host": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "model": model,
        "reference": "relative/window at the same size",
        "memory": "one forward+backward in a fresh process per configuration; CUDA: max_memory_allocated during the "
        "step minus allocated before it; CPU: peak RSS (VmHWM) minus RSS (VmRSS) just before the step",
        "throughput": "voxel tokens per second over forward+backward from the best timed step (median_step_s also "
        "given); clock: process CPU time on CPU (robust to a shared machine's load; median_wall_s also given), "
        "synchronised wall time on CUDA; configurations of one size timed round-robin after one warm-up step each",
        "note": args.note,
        "results": rows,
    }
    print(f"wrote {write_json(result, args.output)}")


if __name__ == "__main__":
    main()
