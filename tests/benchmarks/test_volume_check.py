"""benchmarks/volume_check.py: the shipped range flags a whole head labelled brain and leaves a good case alone."""

import json

from benchmark_scripts import load_benchmark


def test_the_range_flags_the_whole_head_and_counts_it(tmp_path):
    volume = load_benchmark("volume_check")
    result = volume.main(["--quick", "--output", str(tmp_path / "v.json")])
    assert result["expected_volume_ml"] == [900.0, 2200.0]
    quick = result["results"]["quick"]
    assert (quick["below"], quick["flagged_of_those"], quick["false_flags"]) == (1, 1, 0)
    assert [c["flagged"] for c in quick["rows"]] == [True, False]
    assert json.loads((tmp_path / "v.json").read_text())["total"]["flagged_of_those"] == 1


def test_recorded_runs_are_read_and_other_tools_ignored(tmp_path):
    volume = load_benchmark("volume_check")
    run = tmp_path / "run.json"
    rows = [
        {"case": "a", "tool": "medwidit", "dice": 0.95, "volume_ml": 2500.0},  # a false flag
        {"case": "a", "tool": "deepbet", "dice": 0.5, "volume_ml": 100.0},
        {"case": "b", "tool": "medwidit", "dice": None, "volume_ml": None},  # a failed case: not scored
    ]
    run.write_text(json.dumps({"rows": rows}))
    result = volume.main([str(run), "--output", str(tmp_path / "v.json")])
    assert result["results"]["run"]["cases"] == 1 and result["results"]["run"]["false_flags"] == 1
