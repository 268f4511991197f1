"""benchmarks/gpu.py in its CPU-sized mode: every section runs and reports finite numbers, the kernel section names
the kernels that ran, a failing section records its error without stopping the others, missing dependencies are
said in words."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
from benchmark_scripts import BENCHMARKS, load_benchmark

from medwidit.inference.options import resolve_bundle, sampling_defaults

SECTIONS = ("environment", "sdpa_kernels", "bf16_agreement", "ct_volume", "throughput", "ddp", "compile")


def _numbers(value, path="report"):
    """Every number in a JSON value, with where it sits."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    else:
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_quick_mode_reports_every_section_with_finite_numbers(quick_report):
    assert set(SECTIONS) <= set(quick_report)
    for name in SECTIONS:
        assert "error" not in quick_report[name], (name, quick_report[name])
    bad = [(path, value) for path, value in _numbers(quick_report) if not math.isfinite(value)]
    assert not bad
    assert 0 < quick_report["throughput"]["mfu"] and quick_report["throughput"]["tflop_per_step"] > 0
    assert quick_report["bf16_agreement"]["dice_foreground"][0] > 0.9  # bf16 barely moves the shipped model
    assert quick_report["ddp"]["backend"] == "gloo" and len(quick_report["ddp"]["losses"]) == 2
    assert quick_report["compile"]["max_abs_difference"] < 1e-4
    shipped = sampling_defaults(resolve_bundle())  # the CT volume is segmented at the CLI's defaults, and says which
    ct = quick_report["ct_volume"]
    assert (ct["steps"], ct["num_samples"], ct["weight_sets"]) == tuple(
        shipped[k] for k in ("steps", "num_samples", "weight_sets")
    )
    host = ct["top_functions"]  # where the host's seconds go (cProfile's self time), largest first
    assert host and all(f["name"] and f["calls"] >= 1 and f["cumulative_s"] >= f["self_s"] >= 0 for f in host)
    assert [f["self_s"] for f in host] == sorted((f["self_s"] for f in host), reverse=True)
    assert {"rope", "compiled", "compiled_rope"} <= set(quick_report["throughput"]["variants"])
    assert all(v["mfu"] > 0 for v in quick_report["throughput"]["variants"].values()), quick_report["throughput"]
    top = quick_report["throughput"]["top_kernels"]  # where the training step's time goes
    assert top and all(k["ms"] > 0 and k["calls"] >= 1 and k["name"] for k in top)
    assert [k["ms"] for k in top] == sorted((k["ms"] for k in top), reverse=True)


@pytest.mark.slow
def test_every_compile_is_static_also_after_other_compiles_at_other_shapes(quick_report):
    # The compile section's net runs at a shape other than throughput's, as in full mode. Without a fresh dynamo per
    # compile, that third compile of WiDiT.forward went to dynamic shapes: on the H200 it did not finish in four
    # minutes, on this CPU it took 101 s instead of 2.5 s, and the report did not say.
    assert [k for k in quick_report if k in SECTIONS] == list(SECTIONS)  # the targets (ct_volume) before compiles
    assert quick_report["compile"]["input"][0] != quick_report["throughput"]["batch"]
    assert quick_report["compile"]["dynamic_shapes"] is False
    variants = quick_report["throughput"]["variants"]
    assert variants["compiled"]["dynamic_shapes"] is False and variants["compiled_rope"]["dynamic_shapes"] is False


def test_sections_option_runs_only_those_and_rejects_unknown_names(tmp_path):
    out = tmp_path / "some.json"
    run = [sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run([*run, "--sections", "environment"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(json.loads(out.read_text())) & set(SECTIONS) == {"environment"}
    # a section alone gets the environment too: throughput's MFU divides by the peak it sets (it failed without it)
    proc = subprocess.run([*run, "--sections", "throughput"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report) & set(SECTIONS) == {"environment", "throughput"} and report["throughput"]["mfu"] > 0
    proc = subprocess.run([*run, "--sections", "environment,warp"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown ['warp']" in proc.stderr


@pytest.mark.slow
def test_kernel_section_says_what_ran(quick_report):
    calls = quick_report["sdpa_kernels"]["calls"]
    assert {call["model"].split(",")[0] for call in calls} >= {"bundle net", "WiDiT-B/4 at 32^3"}
    for call in calls:
        assert call["default"] in ("flash", "efficient", "cudnn", "math"), call
        assert call[call["default"]]["ran"] and call[call["default"]]["ms"] > 0  # forcing the default works too
        for backend in ("flash", "efficient", "cudnn", "math"):
            entry = call[backend]
            assert entry["ran"] == ("ms" in entry) != ("error" in entry), entry
        assert call["math"]["ran"]  # the reference kernel runs everywhere
    assert quick_report["sdpa_kernels"]["defaults"] == sorted({call["default"] for call in calls})


def test_a_failing_section_records_its_error_and_the_others_still_run(tmp_path, monkeypatch):
    gpu = load_benchmark("gpu")

    def broken(ctx):
        raise RuntimeError("CUDA out of memory (a stand-in)")

    monkeypatch.setattr(gpu, "SECTIONS", {"first": broken, "second": lambda ctx: {"value": 1.5}})
    report = gpu.run_sections(SimpleNamespace(cuda=False), tmp_path / "gpu.json", budget_s=60)
    assert report["first"]["error"] == "RuntimeError: CUDA out of memory (a stand-in)"
    assert report["second"]["value"] == 1.5
    assert json.loads((tmp_path / "gpu.json").read_text())["first"] == report["first"]
    report = gpu.run_sections(SimpleNamespace(cuda=False), tmp_path / "late.json", budget_s=-1)
    assert all("time budget" in report[name]["error"] for name in ("first", "second"))


def test_missing_dependencies_are_said_in_words():
    code = (
        "import sys, runpy; sys.modules['monai'] = None; sys.argv = ['gpu.py', '--device', 'cpu', '--quick']; "
        f"runpy.run_path({str(BENCHMARKS / 'gpu.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot run: monai not installed" in proc.stderr and "Traceback" not in proc.stderr
