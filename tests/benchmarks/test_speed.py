"""benchmarks/speed.py in its quick mode (a tiny model on a 24^3 ball): every run is timed in its own process with
positive CPU and wall seconds, medwidit's mask is scored, the curve covers every setting and its knee is the cheapest
within tolerance of the best Dice."""

import json
import subprocess
import sys

import pytest
from benchmark_scripts import BENCHMARKS, load_benchmark

speed = load_benchmark("speed")


def test_compare_quick(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable,
        str(BENCHMARKS / "speed.py"),
        "--quick",
        "--reference",
        str(BENCHMARKS.parent),
        "--same-flags",
        "--steps 1 --samples 1",
    ]
    proc = subprocess.run([*command, "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    runs = record["runs"]
    assert set(runs) == {
        "medwidit", "medwidit_reference", "medwidit_same_flags", "medwidit_reference_same_flags",
        "startup_help", "startup_import", "basicunet_forward",
    }  # fmt: skip
    for name, (run,) in runs.items():
        assert "error" not in run, (name, run)
        assert run["cpu_seconds"] > 0 and run["wall_seconds"] > 0, name
    assert 0 <= runs["medwidit"][0]["dice"] <= 1
    assert runs["basicunet_forward"][0]["reported"]["grid"] == [32, 32, 32]  # 24^3 padded to a multiple of 16
    assert record["ratios"]["reference_over_medwidit_cpu"] > 0
    assert record["ratios"]["reference_over_medwidit_same_flags_wall"] > 0
    assert "| medwidit |" in record["markdown"]
    assert isinstance(record["environment"]["cpu_bf16_matmul"], bool)  # whether "auto" ran bf16 on this CPU
    assert record["environment"]["cpu_model"]  # which processor: CPU timings differ between them


def test_curve_quick_and_its_knee(tmp_path):
    args = speed.parse_args(["--section", "curve", "--quick", "--steps", "1", "2", "--samples", "1", "2"])
    record = speed.curve(args, tmp_path)
    assert len(record["rows"]) == 2 * 2 * 2 and len(record["means"]) == 8
    assert all(r["cpu_seconds"] > 0 and 0 <= r["dice"] <= 1 for r in record["rows"])
    best = max(m["dice"] for m in record["means"])
    within = [m for m in record["means"] if m["dice"] >= best - args.tolerance]
    assert record["knee"] == min(within, key=lambda m: m["cpu_seconds"])


def test_curve_records_the_predicted_dice_and_case_options_are_checked(tmp_path, capsys):
    args = speed.parse_args(["--section", "curve", "--quick", "--steps", "1", "--samples", "1"])
    row = speed.curve(args, tmp_path)["rows"][0]
    assert 0 <= row["predicted_dice"] <= 1 and row["predicted_error"] == abs(row["predicted_dice"] - row["dice"])
    for bad, said in ((["--base", "a", "a.nii.gz", "b.nii.gz"], "--section curve"),
                      (["--section", "curve", "--variants", "noise"], "give --base too")):  # fmt: skip
        with pytest.raises(SystemExit):
            speed.parse_args(bad)
        assert said in capsys.readouterr().err


def test_curve_covers_shared_steps_below_the_step_count(tmp_path):
    args = speed.parse_args(
        [
            "--section",
            "curve",
            "--quick",
            "--samplers",
            "ddim",
            "--steps",
            "1",
            "2",
            "--samples",
            "2",
            "--shared-steps",
            "0",
            "1",
        ]
    )
    record = speed.curve(args, tmp_path)
    settings = [(m["steps"], m["shared_steps"]) for m in record["means"]]
    assert settings == [(1, 0), (2, 0), (2, 1)]  # shared 1 with 1 step is not a setting


def test_a_failing_run_is_recorded_not_raised(tmp_path):
    run = speed.timed([sys.executable, "-c", "import sys; sys.exit('no such tool')"], {})
    assert run["error"] == "no such tool" and run["cpu_seconds"] >= 0


def test_relative_tool_paths_are_made_absolute_for_runs_from_a_temporary_folder(tmp_path, monkeypatch):
    """Regression: `--peers-python .cache/peers-venv/bin/python` was run from the temporary folder, and deepbet's
    first round raised FileNotFoundError there."""
    venv_python = tmp_path / "peers" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)  # a venv's interpreter is a link: it must stay one, not be resolved
    monkeypatch.chdir(tmp_path)
    args = speed.parse_args(["--peers-python", "peers/bin/python", "--reference", "checkout"])
    assert args.peers_python == str(venv_python)
    assert args.reference == str(tmp_path / "checkout")
    assert speed.parse_args([]).peers_python is None
    assert speed.parse_args(["--peers-python", "python3"]).peers_python == "python3"  # a command on PATH stays one


@pytest.mark.parametrize("bad", [["--section", "nope"]])
def test_bad_section_is_a_usage_error(bad):
    with pytest.raises(SystemExit):
        speed.parse_args(bad)


def test_ratios_are_of_the_medians_over_rounds_and_of_the_fastest_runs_without_failed_ones():
    def run(cpu, wall=1.0, **extra):
        return {"cpu_seconds": cpu, "wall_seconds": wall, **extra}

    runs = {
        "medwidit": [run(10.0), run(30.0), run(20.0)],
        "medwidit_float32": [run(26.0), run(24.0), run(40.0)],
        "deepbet": [run(5.0), run(1.0, error="crashed"), run(10.0)],
        "startup_help": [run(0.1)],
    }
    ratios = speed.ratios(runs)
    assert ratios["medwidit_over_deepbet_cpu"] == pytest.approx(20.0 / 7.5)  # a failed run is no time
    assert ratios["medwidit_over_deepbet_cpu_best"] == pytest.approx(10.0 / 5.0)
    assert ratios["float32_over_medwidit_cpu"] == pytest.approx(26.0 / 20.0)
    assert not any(key.startswith("reference") for key in ratios)  # no reference was timed


def test_quick_without_an_output_is_refused_before_it_runs():
    """``--quick`` without ``--output`` (the docstring's own example) replaced the recorded speed.json the READMEs
    cite with a random tiny model's timings."""
    with pytest.raises(SystemExit, match="--quick times a random tiny model: give --output"):
        speed.main(["--quick"])
