"""The GPU path in one run -> ``benchmarks/results/gpu.json``. Each section catches its own failure and records the
error (one run reports everything it can); the JSON is rewritten after every section, so a killed run keeps what
finished.

- ``environment``: versions, the card, the bf16 peak used for MFU (data sheet, else a measured matmul);
- ``sdpa_kernels``: the window attention's own q/k/v (the shipped bundle's net on inference windows, WiDiT-B/4 at
  128^3), the kernel SDPA picks by default (profiler op names) and, forced one by one with
  ``torch.nn.attention.sdpa_kernel``, which of flash / efficient / cudnn / math run and how fast;
- ``bf16_agreement``: the shipped bundle on the shipped example in float32 and bf16 autocast, same seed: Dice between
  the label maps, max and mean probability difference;
- ``ct_volume``: seconds and peak memory of ``Predictor.segment`` (sample_ensemble) on a random 512x512x300 volume at
  the model's spacing (the network sees the whole grid), with the default steps and samples;
- ``throughput``: WiDiT-B/4 at 128^3, forward + backward in bf16: steps/s, FLOPs (``FlopCounterMode``), TFLOP/s, MFU,
  the top kernels; the same with rotary positions, compiled, and both;
- ``ddp``: a one-process DDP training smoke run of the segmenter (``torch.multiprocessing``; nccl, or gloo on CPU);
- ``compile``: the bundle net's forward on a batch of inference windows, eager vs ``torch.compile``.

Every compile starts from a fresh dynamo with static shapes, and the report says whether a graph still had a symbolic
size (``dynamic_shapes``).

    python benchmarks/gpu.py                        # CUDA: every section, under 8 minutes -> results/gpu.json
    python benchmarks/gpu.py --device cpu --quick   # tiny sizes, seconds -> results/gpu_cpu_quick.json

Offline without monai or nibabel: ``pip download --no-deps monai nibabel -d wheels`` where there is a network, carry
``wheels/`` over, ``pip install --no-index --no-deps wheels/*.whl`` there.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

MISSING = [name for name in ("torch", "numpy", "monai", "nibabel") if importlib.util.find_spec(name) is None]
if MISSING:  # say so before anything imports them
    print(
        f"benchmarks/gpu.py cannot run: {', '.join(MISSING)} not installed (medwidit needs torch, numpy, monai, "
        "nibabel). Install them (pip install -e . in the checkout, or offline: pip install --no-index --no-deps "
        "wheels/*.whl with monai and nibabel wheels carried in; see this file's docstring) and rerun.",
        file=sys.stderr,
    )
    sys.exit(2)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))
try:
    from medwidit.diffusion import DiffusionSegmenter, load_segmenter
    from medwidit.inference import Predictor
    from medwidit.inference.demo import SHIPPED_BUNDLE
    from medwidit.nets import WiDiT, widit_preset
    from medwidit.utils import atomic_write
except ImportError as e:
    print(f"benchmarks/gpu.py cannot import medwidit from {ROOT}: {e}", file=sys.stderr)
    sys.exit(2)

EXAMPLE = ROOT / "medwidit" / "data" / "examples" / "colin27_head_2mm_image.nii.gz"
# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched against torch's device name
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
KERNELS = {
    "flash": "_scaled_dot_product_flash_attention",
    "efficient": "_scaled_dot_product_efficient_attention",
    "cudnn": "_scaled_dot_product_cudnn_attention",
    "math": "_scaled_dot_product_attention_math",
}
SIZES = {  # full: the figures the issue asks for; quick: the same code on tiny sizes, seconds on a CPU
    "full": {
        "tp_net": {},
        "tp_size": 128,
        "tp_iters": 10,
        "ct_shape": (512, 512, 300),
        "ct_steps": None,
        "ct_samples": None,
        "ct_sw_batch_size": 32,  # a GPU user's setting: the CLI's default of 4 windows per call leaves an H200 idle
        "agree_steps": 10,
        "agree_samples": 4,
        "ddp_steps": 3,
        "windows": 4,
        "edge": 64,
    },
    "quick": {
        "tp_net": {"hidden_size": 64, "depth": 2, "num_heads": 2},
        "tp_size": 32,
        "tp_iters": 2,
        "ct_shape": (48, 48, 32),
        "ct_steps": None,  # the bundle's defaults here too, so that the quick test covers how they are read
        "ct_samples": None,
        "ct_sw_batch_size": 4,
        "agree_steps": 1,
        "agree_samples": 1,
        "ddp_steps": 2,
        "windows": 2,  # a shape other than throughput's, as in full mode: the compile section then sees a new shape
        "edge": 16,
    },
}


class Context:
    """What every section needs: the device, the sizes, the clock and the autocast dtype."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.quick = args.quick
        self.sizes = SIZES["quick" if args.quick else "full"]
        # the network checks run float32 on a CPU except where bf16 is the subject; ct_volume samples with the
        # predictor's default precision, as the CLI does (bf16 on a CPU with bf16 matmul hardware)
        self.amp = torch.bfloat16 if self.cuda else None
        self.peak_tflops = args.peak_tflops
        self.compile_backend = args.compile_backend or ("inductor" if self.cuda else "aot_eager")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self, dtype=None):
        dtype = dtype or self.amp
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def timed(self, fn, iters: int, warmup: int = 1) -> float:
        """Median seconds of ``fn()`` over ``iters`` runs after ``warmup``."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if os.path.exists("/proc/self/clear_refs"):
            with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM, the peak resident set size
                f.write("5")

    def peak_mb(self, host: bool = False) -> float:
        """Peak memory since :meth:`reset_peak`: allocated on the GPU, or the process' resident set (``host``)."""
        if self.cuda and not host:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def _bundle_net(ctx: Context) -> WiDiT:
    """The shipped bundle's network (trained weights), in eval mode on the device."""
    segmenter, _ = load_segmenter(SHIPPED_BUNDLE / "models" / "model.pt")
    return segmenter.net.to(ctx.device).eval()


def _widit_b4(ctx: Context, **overrides) -> WiDiT:
    """WiDiT-B/4 for two classes and one image channel (shrunk in quick mode)."""
    net = widit_preset(
        "WiDiT-B/4",
        spatial_dim=3,
        in_channels=2,
        cond_channels=1,
        learn_sigma=False,
        **{**ctx.sizes["tp_net"], **overrides},
    )
    return net.to(ctx.device)


def _net_inputs(ctx: Context, net: WiDiT, batch: int, size: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, net.in_channels, *(size,) * 3, generator=g).to(ctx.device)
    cond = torch.randn(batch, net.cond_channels, *(size,) * 3, generator=g).to(ctx.device)
    return x, torch.full((batch,), 500.0, device=ctx.device), cond


def _compile(ctx: Context, module: torch.nn.Module, record: dict) -> torch.nn.Module:
    """``torch.compile`` from a clean slate, with static shapes; ``record["dynamic_shapes"]`` says whether any graph
    it compiles still has a symbolic size. Without the reset, the third compile of ``WiDiT.forward`` in one process
    (throughput's two variants, then the compile section at another shape) went to dynamic shapes, and on the H200
    (2026-12-04) its symbolic compile did not finish in four minutes: the run was killed there."""
    import torch._dynamo

    torch._dynamo.reset()
    inner = torch._dynamo.lookup_backend(ctx.compile_backend)
    record["dynamic_shapes"] = False

    def backend(gm, example_inputs):
        symbolic = any(isinstance(v, torch.SymInt) for v in example_inputs) or any(
            isinstance(size, torch.SymInt) for v in example_inputs if isinstance(v, torch.Tensor) for size in v.shape
        )
        record["dynamic_shapes"] = record["dynamic_shapes"] or symbolic
        return inner(gm, example_inputs)

    return torch.compile(module, backend=backend, dynamic=False)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"


##################################################################################
#                                    Sections                                    #
##################################################################################


def environment(ctx: Context) -> dict:
    """Versions, the card and the bf16 peak that MFU is measured against."""
    info = {"torch": torch.__version__, "device": str(ctx.device), "quick": ctx.quick}
    if ctx.cuda:
        name = torch.cuda.get_device_name(ctx.device)
        info.update(
            name=name,
            cuda=torch.version.cuda,
            capability=list(torch.cuda.get_device_capability(ctx.device)),
            memory_gb=torch.cuda.get_device_properties(ctx.device).total_memory / 2**30,
            bf16_supported=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
        )
        sheet = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    else:
        info.update(name="cpu", threads=torch.get_num_threads())
        sheet = None
    if ctx.peak_tflops:
        info.update(peak_tflops=ctx.peak_tflops, peak_source="--peak-tflops")
    elif sheet:
        info.update(peak_tflops=sheet, peak_source="bf16 dense data-sheet peak")
    else:  # no data sheet: the best this device does on one large matmul
        n, dtype = (8192, torch.bfloat16) if ctx.cuda else (512 if ctx.quick else 2048, torch.float32)
        a = torch.randn(n, n, device=ctx.device, dtype=dtype)
        seconds = ctx.timed(lambda: a @ a, iters=3)
        info.update(peak_tflops=2 * n**3 / seconds / 1e12, peak_source=f"measured {dtype} matmul {n}^3")
    ctx.peak_tflops = info["peak_tflops"]
    return info


def _capture_sdpa(ctx: Context, net: WiDiT, batch: int, size: int) -> list[tuple]:
    """The distinct (q, k, v, mask) the window attention hands SDPA in one forward (clones of the first of each)."""
    seen, original = {}, torch.nn.functional.scaled_dot_product_attention

    def capture(q, k, v, attn_mask=None, **kwargs):
        mask = "none" if attn_mask is None else ("bool" if attn_mask.dtype == torch.bool else "float")
        key = (tuple(q.shape), str(q.dtype), mask, None if attn_mask is None else tuple(attn_mask.shape))
        seen.setdefault(key, (q.clone(), k.clone(), v.clone(), None if attn_mask is None else attn_mask.clone()))
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    x, t, cond = _net_inputs(ctx, net, batch, size)
    torch.nn.functional.scaled_dot_product_attention = capture
    try:
        with torch.no_grad(), ctx.autocast():
            net(x, t, conditioned=cond)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    return [(key, tensors) for key, tensors in seen.items()]


def _default_kernel(q, k, v, mask) -> str:
    """The SDPA implementation torch dispatches to, read from the profiler's aten op names."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    names = {event.name for event in prof.events()}
    found = [kernel for kernel, op in KERNELS.items() if any(op in name for name in names)]
    return found[0] if found else f"unknown ({sorted(n for n in names if 'attention' in n)})"


def _forced(ctx: Context, q, k, v, mask) -> dict:
    """Each SDPA backend forced alone with ``sdpa_kernel``: ``{"ran": True, "ms"}`` or ``{"ran": False, "error"}``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    attend = functools.partial(torch.nn.functional.scaled_dot_product_attention, q, k, v, attn_mask=mask)
    results = {}
    for name, backend in backends.items():
        try:
            with sdpa_kernel([backend]):
                results[name] = {"ran": True, "ms": 1e3 * ctx.timed(attend, iters=3)}
        except RuntimeError as e:  # "No available kernel": this backend does not take these inputs
            results[name] = {"ran": False, "error": _error(e)}
    return results


def sdpa_kernels(ctx: Context) -> dict:
    """Which kernels run on the window attention's own q/k/v, by default and forced one by one."""
    size = ctx.sizes["tp_size"]
    models = {
        "bundle net, inference windows": (_bundle_net(ctx), ctx.sizes["windows"], ctx.sizes["edge"]),
        f"WiDiT-B/4 at {size}^3": (_widit_b4(ctx), 1, size),
    }
    calls = []
    for label, (net, batch, edge) in models.items():
        for (shape, dtype, mask_kind, mask_shape), (q, k, v, mask) in _capture_sdpa(ctx, net, batch, edge):
            calls.append(
                {
                    "model": label,
                    "q_shape": list(shape),
                    "dtype": dtype,
                    "mask": mask_kind,
                    "mask_shape": mask_shape and list(mask_shape),
                    "default": _default_kernel(q, k, v, mask),
                    **_forced(ctx, q, k, v, mask),
                }
            )
    return {"calls": calls, "defaults": sorted({c["default"] for c in calls})}


def bf16_agreement(ctx: Context) -> dict:
    """The shipped bundle on the shipped example in float32 and in bf16 autocast, same seed: how far they differ."""
    from monai.metrics import DiceMetric

    results = {}
    for precision in ("float32", "bfloat16"):
        # models/model.pt alone: agreement of one network's float32 and bf16 runs (agree_samples members)
        predictor = Predictor.from_bundle(SHIPPED_BUNDLE, device=str(ctx.device), precision=precision, weight_sets=1)
        start = time.perf_counter()
        results[precision] = predictor.segment(
            str(EXAMPLE), steps=ctx.sizes["agree_steps"], num_samples=ctx.sizes["agree_samples"]
        )
        results[precision + "_seconds"] = time.perf_counter() - start
    fp32, bf16 = results["float32"], results["bfloat16"]
    k = fp32.num_classes
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False, num_classes=k)
    per_class = dice(y_pred=torch.as_tensor(bf16.label_map)[None, None], y=torch.as_tensor(fp32.label_map)[None, None])
    difference = np.abs(fp32.probability - bf16.probability)
    return {
        "steps": ctx.sizes["agree_steps"],
        "num_samples": ctx.sizes["agree_samples"],
        "grid": list(fp32.label_map.shape),
        "dice_foreground": per_class[0].tolist(),
        "max_prob_difference": float(difference.max()),
        "mean_prob_difference": float(difference.mean()),
        "labels_differing_fraction": float((fp32.label_map != bf16.label_map).mean()),
        "float32_seconds": results["float32_seconds"],
        "bfloat16_seconds": results["bfloat16_seconds"],
    }


def throughput(ctx: Context) -> dict:
    """WiDiT-B/4 forward + backward in bf16 autocast: steps/s, FLOPs (FlopCounterMode), TFLOP/s and MFU, with the
    relative-position bias (the preset's default) eager; then the same step with rotary positions (no float mask,
    nothing to differentiate in the mask) and with ``torch.compile``, to show where the time goes."""
    from torch.utils.flop_counter import FlopCounterMode

    size = ctx.sizes["tp_size"]
    net = _widit_b4(ctx)
    x, t, cond = _net_inputs(ctx, net, 1, size)

    def train_step(model):
        def step():
            with ctx.autocast():
                out = model(x, t, conditioned=cond)
            out.float().square().mean().backward()

        return step

    step = train_step(net)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    ctx.reset_peak()
    seconds = ctx.timed(step, iters=ctx.sizes["tp_iters"])
    report = {
        "model": "WiDiT-B/4" + (" (quick: shrunk)" if ctx.sizes["tp_net"] else ""),
        "size": size,
        "batch": 1,
        "dtype": str(ctx.amp or torch.float32),
        "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "seconds_per_step": seconds,
        "steps_per_s": 1 / seconds,
        "voxels_per_s": size**3 / seconds,
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        "peak_tflops": ctx.peak_tflops,
        "mfu": flops / seconds / 1e12 / ctx.peak_tflops,
        "peak_memory_mb": ctx.peak_mb(),
        "top_kernels": _top_kernels(ctx, step),
        "variants": {},
    }
    variants = {
        "rope": lambda record: train_step(_widit_b4(ctx, position="rope")),
        "compiled": lambda record: train_step(_compile(ctx, net, record)),
        "compiled_rope": lambda record: train_step(_compile(ctx, _widit_b4(ctx, position="rope"), record)),
    }
    for name, make in variants.items():
        try:
            start, record = time.perf_counter(), {}
            variant_step = make(record)
            variant_step()  # compiles, for "compiled"
            setup = time.perf_counter() - start
            seconds = ctx.timed(variant_step, iters=ctx.sizes["tp_iters"])
            report["variants"][name] = {
                "seconds_per_step": seconds,
                "mfu": flops / seconds / 1e12 / ctx.peak_tflops,
                "setup_seconds": setup,
                **record,
                "top_kernels": _top_kernels(ctx, variant_step, top=8),
            }
        except Exception as e:  # a variant that fails must not hide the eager figures
            report["variants"][name] = {"error": _error(e)}
    return report


def _top_kernels(ctx: Context, fn, top: int = 12) -> list[dict]:
    """Where one call of ``fn`` spends its time: the ``top`` ops (CUDA kernels on a GPU) by self time, in ms."""
    activities = [torch.profiler.ProfilerActivity.CUDA if ctx.cuda else torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        ctx.sync()
    attribute = "self_device_time_total" if ctx.cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attribute, 0.0), reverse=True)
    return [
        {"name": e.key[:120], "ms": getattr(e, attribute, 0.0) / 1e3, "calls": e.count}
        for e in events[:top]
        if getattr(e, attribute, 0.0) > 0
    ]


def compile_speedup(ctx: Context) -> dict:
    """The bundle net's forward on a batch of inference windows: eager vs ``torch.compile``."""
    import torch._dynamo

    net = _bundle_net(ctx)
    x, t, cond = _net_inputs(ctx, net, ctx.sizes["windows"], ctx.sizes["edge"])
    record = {}
    compiled = _compile(ctx, net, record)
    torch._dynamo.utils.counters.clear()

    def run(model):
        with torch.no_grad(), ctx.autocast():
            return model(x, t, conditioned=cond)

    start = time.perf_counter()
    out_compiled = run(compiled)
    ctx.sync()
    compile_seconds = time.perf_counter() - start
    eager_s, compiled_s = ctx.timed(lambda: run(net), iters=5), ctx.timed(lambda: run(compiled), iters=5)
    return {
        "backend": ctx.compile_backend,
        "input": list(x.shape),
        "compile_seconds": compile_seconds,
        "eager_ms": 1e3 * eager_s,
        "compiled_ms": 1e3 * compiled_s,
        "speedup": eager_s / compiled_s,
        "max_abs_difference": float((run(net).float() - out_compiled.float()).abs().max()),
        "graph_breaks": int(sum(torch._dynamo.utils.counters["graph_break"].values())),
        **record,
    }


def _ddp_worker(rank: int, spec: dict) -> None:
    """One DDP rank: a few AdamW steps of a small segmenter on random crops; writes its losses to ``spec["out"]``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(spec["backend"], init_method=f"tcp://127.0.0.1:{spec['port']}", rank=rank, world_size=1)
    try:
        device = torch.device(spec["device"])
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)
        torch.manual_seed(0)
        net = WiDiT(
            spatial_dim=3,
            patch_size=4,
            in_channels=2,
            cond_channels=1,
            hidden_size=64,
            depth=2,
            num_heads=4,
            window_size=4,
            learn_sigma=False,
        )
        model = DistributedDataParallel(
            DiffusionSegmenter(net, num_classes=2).to(device),
            device_ids=[device.index or 0] if device.type == "cuda" else None,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses, start = [], time.perf_counter()
        for _ in range(spec["steps"]):
            image = torch.randn(2, 1, 32, 32, 32, device=device)
            label = (image > 0).long()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(image, label)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        result = {"losses": losses, "seconds": time.perf_counter() - start, "world_size": dist.get_world_size()}
        Path(spec["out"]).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


DDP_TIMEOUT_S = 180


def ddp(ctx: Context) -> dict:
    """A one-process DDP training smoke run through ``torch.multiprocessing`` (a child process, as torchrun's)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "backend": "nccl" if ctx.cuda else "gloo",
            "port": port,
            "device": str(ctx.device),
            "steps": ctx.sizes["ddp_steps"],
            "out": os.path.join(tmp, "ddp.json"),
        }
        # a fresh interpreter (spawn): a fork of this threaded process deadlocked in the child on CPU
        workers = mp.start_processes(_ddp_worker, args=(spec,), nprocs=1, join=False, start_method="spawn")
        deadline = time.monotonic() + DDP_TIMEOUT_S
        while not workers.join(timeout=5):
            if time.monotonic() > deadline:
                for process in workers.processes:
                    process.kill()
                raise TimeoutError(f"the DDP worker did not finish within {DDP_TIMEOUT_S} s")
        result = json.loads(Path(spec["out"]).read_text())
    if not all(math.isfinite(v) for v in result["losses"]):
        raise RuntimeError(f"DDP losses are not finite: {result['losses']}")
    return {"backend": spec["backend"], **result}


def ct_volume(ctx: Context) -> dict:
    """Seconds and peak memory of ``Predictor.segment`` (sample_ensemble) on a random CT-sized volume, and where the
    host's seconds go (``top_functions``: cProfile's self time, empty under another profiler; on 2026-12-04 scipy on
    one host core took about 74 of 122 s, which only a second call of the lease showed)."""
    import cProfile

    predictor = Predictor.from_bundle(
        SHIPPED_BUNDLE, device=str(ctx.device), sw_batch_size=ctx.sizes["ct_sw_batch_size"]
    )
    # None: the bundle's inference.json values, as the CLI samples (Predictor.segment's own defaults are None)
    steps, samples, _ = predictor.resolve_sampling(ctx.sizes["ct_steps"], ctx.sizes["ct_samples"], None)
    shape = ctx.sizes["ct_shape"]
    spacing = predictor.preprocessing.get("spacing") or (1.0, 1.0, 1.0)
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 300  # HU-like spread
    ctx.reset_peak()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    try:
        profiler.enable()
    except ValueError:  # Python 3.12+: another profiler is active (gpu.py itself run under cProfile)
        profiler = None
    result = predictor.segment(volume, affine=np.diag([*spacing, 1.0]), steps=steps, num_samples=samples)
    ctx.sync()
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - start
    return {
        "shape": list(shape),
        "spacing": list(spacing),
        "steps": steps,
        "num_samples": samples,
        "weight_sets": len(predictor.select_weights(None)),  # the bundle's default: num_samples from each set
        "roi_size": predictor.roi_size,
        "sw_batch_size": predictor.sw_batch_size,
        "precision": str(predictor.autocast_dtype or torch.float32),
        "seconds": seconds,
        "peak_memory_mb": ctx.peak_mb(),
        "host_peak_mb": ctx.peak_mb(True),
        "foreground_fraction": float((result.label_map > 0).mean()),
        "top_functions": [] if profiler is None else _top_functions(profiler),
    }


def _top_functions(profiler, top: int = 12) -> list[dict]:
    """The ``top`` functions of a cProfile run by self time (a CUDA kernel's time shows where the host waits for it)."""
    import pstats

    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive calls, self s, cumulative s, ...)}
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [
        {"name": f"{Path(file).name}:{line}({name})", "self_s": own, "cumulative_s": total, "calls": calls}
        for (file, line, name), (_, calls, own, total, _) in rows
    ]


SECTIONS = {  # the two targets early: a lease can end before the last section (2026-12-04: in compile)
    "environment": environment,
    "sdpa_kernels": sdpa_kernels,
    "bf16_agreement": bf16_agreement,
    "ct_volume": ct_volume,
    "throughput": throughput,
    "ddp": ddp,
    "compile": compile_speedup,
}


##################################################################################
#                                      Run                                       #
##################################################################################


def run_sections(ctx: Context, out: Path, budget_s: float, names=None) -> dict:
    """The sections ``names`` (default all) in turn, each in its own try; the JSON is rewritten after each."""
    report = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    begin = time.perf_counter()
    for name in names or SECTIONS:
        section = SECTIONS[name]
        start = time.perf_counter()
        if start - begin > budget_s:
            report[name] = {"error": f"not run: the time budget of {budget_s:.0f} s (--budget-s) was spent"}
        else:
            try:
                report[name] = section(ctx)
            except Exception as e:  # one failing section must not hide the figures of the others
                traceback.print_exc()
                report[name] = {"error": _error(e)}
            finally:
                if ctx.cuda:
                    torch.cuda.empty_cache()
        report[name]["section_seconds"] = time.perf_counter() - start
        report["total_seconds"] = time.perf_counter() - begin
        print(f"[gpu.py] {name}: {json.dumps(report[name], default=str)[:400]}", flush=True)
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1, default=str) + "\n"))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script in seconds")
    parser.add_argument("--out", type=Path, help="JSON path (default results/gpu.json, gpu_<device>[_quick].json)")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak of the card for MFU (default: data sheet)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor on CUDA, aot_eager on CPU)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="sections not started by then are skipped")
    parser.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    args = parser.parse_args(argv)
    names = args.sections.split(",") if args.sections else list(SECTIONS)
    if unknown := sorted(set(names) - set(SECTIONS)):
        parser.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    if "environment" not in names:  # it sets the bf16 peak that MFU divides by (throughput failed without it)
        names.insert(0, "environment")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu --quick")
    name = "gpu" if args.device.startswith("cuda") and not args.quick else f"gpu_{args.device.split(':')[0]}"
    out = args.out or ROOT / "benchmarks" / "results" / f"{name}{'_quick' if args.quick else ''}.json"
    report = run_sections(Context(args), out, args.budget_s, names)
    failed = [name for name in names if "error" in report[name]]
    print(
        f"[gpu.py] wrote {out}; {len(names) - len(failed)}/{len(names)} sections ran"
        + (f", failed: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
