"""Whole-volume inference speed and memory: the network on the whole volume vs stitched sliding windows at several
overlaps, at three volume sizes, with the number of network evaluations.

Each (size, mode) runs in a fresh subprocess that builds a small untrained WiDiT segmenter (seeded; speed does not
depend on training), draws one sample of ``--steps`` DDIM steps of a random (1, 1, N, N, N) image through
``DiffusionSegmenter.sample(model_fn=SlidingWindowDenoiser(...))`` -- the code path of ``medwidit segment`` -- and
reports:

- seconds per volume and per step: process CPU time with one torch thread by default (a neighbour's load on a
  shared machine does not inflate it the way it inflates wall time; wall time is recorded too);
- peak memory: the process' peak resident set size during sampling (VmHWM) minus its resident size just before
  (model and image already built); on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before;
- network calls, window evaluations per step, and voxel evaluations per step (windows x roi voxels, or the volume).

Ratios are against the whole-volume run of the same size in the same run. Configurations that would evaluate more
than ``--max-windows`` windows per step are skipped and listed as such.

    python benchmarks/inference.py                         # CPU: 64, 128, 192 voxels, about 4-5 minutes
    python benchmarks/inference.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

from _worker import run_worker  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(spec: dict) -> dict:
    """One (size, mode) measurement in this fresh process."""
    import torch

    from medwidit.diffusion import DiffusionSegmenter
    from medwidit.inference import SlidingWindowDenoiser
    from medwidit.nets import WiDiT

    torch.set_num_threads(spec["threads"])  # a benchmark script, not library code
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    net = WiDiT(
        spatial_dim=3,
        in_channels=2,
        cond_channels=1,
        hidden_size=spec["hidden"],
        depth=spec["depth"],
        num_heads=spec["heads"],
        window_size=spec["window"],
        patch_size=spec["patch"],
        learn_sigma=False,
    )
    segmenter = DiffusionSegmenter(net.to(device), num_classes=2).eval()
    image = torch.randn(1, 1, *(spec["size"],) * 3, device=device)
    whole = spec["overlap"] is None
    denoiser = SlidingWindowDenoiser(
        net,
        spec["roi"],
        overlap=spec["overlap"] or 0.5,
        sw_batch_size=spec["sw_batch"],
        max_whole_voxels=10**12 if whole else 0,
    )
    with torch.no_grad():  # warm-up on a small input: lazy initialisation, not the measured volume's caches
        net(image.new_zeros(1, 2, 16, 16, 16), torch.zeros(1, device=device), conditioned=image[..., :16, :16, :16])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _proc_status_mb("VmRSS")
    cpu, wall = time.process_time(), time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["amp"]):
        segmenter.sample(image, steps=spec["steps"], generator=torch.Generator().manual_seed(0), model_fn=denoiser)
    if device.type == "cuda":
        torch.cuda.synchronize()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = _proc_status_mb("VmHWM") - before
    windows = denoiser.num_windows / spec["steps"]
    voxels = spec["size"] ** 3 if whole else math.prod((spec["roi"],) * 3)
    return {
        "seconds": wall if device.type == "cuda" else cpu,
        "wall_seconds": wall,
        "peak_mem_mb": peak,
        "network_calls": denoiser.num_calls,
        "windows_per_step": windows,
        "voxel_evals_per_step": windows * voxels,
    }


def planned_windows(size: int, roi: int, overlap: float, align: int) -> int:
    """Windows per step that SlidingWindowDenoiser will evaluate (its aligned steps), to skip hopeless runs early."""
    align = align if roi * (1 - overlap) >= align else 1
    step = max(align, int(roi * (1 - overlap)) // align * align)
    padded = roi + math.ceil(max(size - roi, 0) / align) * align
    return (1 + math.ceil((padded - roi) / step)) ** 3


def run(spec: dict, timeout: float) -> dict:
    return run_worker(__file__, spec, timeout)


def table(rows: list[dict]) -> str:
    head = (
        f"{'size':>5} {'mode':>14} {'steps':>5} {'s/volume':>9} {'s/step':>8} {'x whole':>7} {'peak MB':>8} "
        f"{'x whole':>7} {'windows':>7} {'voxel evals':>11} {'x whole':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mode = "whole" if r["overlap"] is None else f"sliding {r['overlap']:.2f}"
        if "error" in r or "skipped" in r:
            lines.append(f"{r['size']:>5} {mode:>14} {'':>5}  {r.get('error') or r['skipped']}")
            continue
        lines.append(
            f"{r['size']:>5} {mode:>14} {r['steps']:>5} {r['seconds']:>9.2f} {r['seconds'] / r['steps']:>8.2f} "
            f"{r['time_ratio']:>7.2f} {r['peak_mem_mb']:>8.0f} {r['memory_ratio']:>7.2f} "
            f"{r['windows_per_step']:>7.0f} {r['voxel_evals_per_step']:>11.3g} {r['evals_ratio']:>7.2f}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192])
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--roi", type=int, default=64, help="window edge in voxels (the bundle's training crop)")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps per volume")
    parser.add_argument("--large-steps", type=int, default=1, help="steps for sizes of 192 and more (CPU time)")
    parser.add_argument("--max-windows", type=int, default=400, help="skip configurations with more windows/step")
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--window", type=int, default=4, help="attention window edge in tokens")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--sw-batch", type=int, default=4)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 1 is steadiest when shared")
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds per configuration")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "inference.json")
    parser.add_argument(
        "--note",
        default="shared 2-core CPU machine with other jobs running: absolute numbers are "
        "noisy, compare the ratios (same run); CPU seconds of one thread",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    model = {
        k: getattr(args, k)
        for k in ("patch", "window", "hidden", "depth", "heads", "sw_batch", "amp", "threads", "roi", "device")
    }
    rows, start = [], time.perf_counter()
    for size in args.sizes:
        steps = args.large_steps if size >= 192 else args.steps
        reference = None
        for overlap in [None, *args.overlaps]:
            spec = {**model, "size": size, "steps": steps, "overlap": overlap}
            row = {"size": size, "overlap": overlap, "steps": steps}
            planned = None if overlap is None else planned_windows(size, args.roi, overlap, args.patch * args.window)
            if planned is not None and planned > args.max_windows:
                row["skipped"] = f"skipped: {planned} windows per step (> --max-windows {args.max_windows})"
            else:
                row.update(run(spec, args.timeout))
            if overlap is None and "error" not in row:
                reference = row
            if reference is not None and "seconds" in row:
                row["time_ratio"] = row["seconds"] / reference["seconds"]
                row["memory_ratio"] = row["peak_mem_mb"] / max(reference["peak_mem_mb"], 1e-9)
                row["evals_ratio"] = row["voxel_evals_per_step"] / reference["voxel_evals_per_step"]
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    result = {
        "benchmark": "inference: whole volume vs stitched sliding windows",
        "note": args.note,
        "model": model,
        "seconds_are": "wall time" if args.device == "cuda" else "process CPU time",
        "total_wall_seconds": time.perf_counter() - start,
        "torch": __import__("torch").__version__,
        "machine": platform.machine(),
        "rows": rows,
    }
    from _report import write_json  # here, not at the top: the workers import this module and need none of it

    written = write_json(result, args.output)
    print(table(rows))
    print(f"wrote {written} in {result['total_wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
