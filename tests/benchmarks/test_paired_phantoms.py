"""benchmarks/paired_phantoms.py: the validation split's WiDiT cell against BasicUNet, phantom by phantom over runs;
a run without the per-phantom Dice or without BasicUNet is refused by name."""

import json

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

paired = load_benchmark("paired_phantoms")


def results_file(path, seed, widit_cases, unet_cases, cell="5x8", with_unet=True, test_start=None):
    steps, _, members = cell.partition("x")
    widit = {"steps": 100, "dice_per_case": {"10": [[0.0, 0.0]] * len(widit_cases), cell: widit_cases}}
    split = {"size": 32, "classes": 3, "object_scale": 2.0, "class_contrast": 0.8, "test": len(widit_cases)}
    results = {
        "settings": {"seed": seed, **split, **({} if test_start is None else {"test_start": test_start})},
        "selected_on_validation": {"head": "pixel-16-2-k5", "steps": int(steps), "samples": int(members or 1)},
        "heads": {"pixel-16-2-k5": widit},
    }
    if with_unet:
        results["basic_unet_dice_ce"] = {"steps": 90, "dice_per_case": unet_cases}
    path.write_text(json.dumps(results))
    return path


def test_differences_are_read_at_the_chosen_cell_per_run_and_pooled_over_phantoms(tmp_path, capsys):
    a = results_file(tmp_path / "a.json", 0, [[0.9, 0.8], [0.9, 0.9]], [[0.8, 0.9], [0.8, 0.9]])
    b = results_file(tmp_path / "b.json", 1, [[0.9, 0.9], [0.9, 0.9]], [[0.9, 0.8]] * 2, cell="2")
    out = tmp_path / "paired.json"
    result = paired.main([str(a), str(b), "--output", str(out)])
    runs, (first, second) = result["runs"], result["summary"]
    assert [r["cell"] for r in runs] == ["5x8", "2"]  # the chosen cells, not the "10" rows
    assert np.allclose(runs[0]["difference"], [0.1, -0.05]) and np.allclose(runs[1]["difference"], [0.0, 0.1])
    assert np.isclose(first["mean_over_runs"], 0.05) and np.isclose(second["mean_over_runs"], 0.025)
    assert first["phantoms"] == second["phantoms"] == 2  # each phantom once, its runs averaged
    assert np.isclose(first["paired_mean"], 0.05) and np.isclose(second["paired_mean"], 0.025)
    assert (first["widit_wins"], first["basic_unet_wins"]) == (2, 0)
    assert (second["widit_wins"], second["basic_unet_wins"]) == (1, 0)  # phantom 1: -0.1 then +0.1, a tie
    low, high = second["paired_mean_95"]
    assert low <= second["paired_mean"] <= high and low < high
    assert json.loads(out.read_text())["summary"][1]["widit_wins"] == 1
    assert "| 2 | 0.0250 | 2 |" in capsys.readouterr().out


def test_a_run_without_what_the_pairing_needs_is_refused_by_name(tmp_path):
    no_unet = results_file(tmp_path / "no_unet.json", 0, [[0.9, 0.9]], None, with_unet=False)
    with pytest.raises(SystemExit, match="no_unet.json: no BasicUNet in this run"):
        paired.main([str(no_unet), "--output", str(tmp_path / "o.json")])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**json.loads(no_unet.read_text()), "basic_unet_dice_ce": {"dice": [0.9, 0.9]}}))
    with pytest.raises(SystemExit, match="old.json: no per-phantom Dice"):
        paired.main([str(old), "--output", str(tmp_path / "o.json")])
    unequal = results_file(tmp_path / "unequal.json", 0, [[0.9, 0.9]], [[0.9, 0.9]] * 2)
    with pytest.raises(SystemExit, match=r"unequal.json: the WiDiT scored \(1, 2\) and BasicUNet \(2, 2\)"):
        paired.main([str(unequal), "--output", str(tmp_path / "o.json")])
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(SystemExit, match="text.json: not a learn_phantoms.py results file"):
        paired.main([str(tmp_path / "text.json"), "--output", str(tmp_path / "o.json")])


def test_a_class_missing_from_a_phantom_leaves_that_pair_out_and_runs_on_other_splits_are_refused(tmp_path):
    """A class a phantom's label lacks (None in the JSON, NaN) is left out of that class's pairs; a class absent from
    every phantom, or runs scored on different test splits (an unset --test-start was 10^6), stop with a message."""
    cases = [[0.9, None], [0.8, 0.7]]
    a = results_file(tmp_path / "a.json", 0, cases, [[0.85, None], [0.9, 0.6]])
    b = results_file(tmp_path / "b.json", 1, cases, [[0.85, None], [0.9, 0.6]], test_start=10**6)
    result = paired.main([str(a), str(b), "--output", str(tmp_path / "o.json")])
    first, second = result["summary"]
    assert (first["phantoms"], second["phantoms"]) == (2, 1)
    assert np.isclose(first["paired_mean"], -0.025) and np.isclose(second["paired_mean"], 0.1)
    fresh = results_file(tmp_path / "fresh.json", 1, cases, [[0.85, None], [0.9, 0.6]], test_start=3 * 10**6)
    with pytest.raises(SystemExit, match="fresh.json: its test split .* is not .*a.json's"):
        paired.main([str(a), str(fresh), "--output", str(tmp_path / "o.json")])
    empty = results_file(tmp_path / "empty.json", 0, [[0.9, None]], [[0.9, None]])
    with pytest.raises(SystemExit, match="class 2 is absent from every test phantom"):
        paired.main([str(empty), "--output", str(tmp_path / "o.json")])


def test_a_phantom_is_one_unit_however_many_seeds_scored_it(tmp_path):
    """From a review: the runs share one test split, and each (run, phantom) pair was resampled as if independent, so
    two seeds made the interval about 1/sqrt(2) as wide: two copies of one run gave a narrower interval than the run
    alone. A phantom is resampled once, with its runs' mean difference."""
    rng = np.random.default_rng(0)
    widit, unet = rng.uniform(0.8, 1.0, (16, 2)).tolist(), rng.uniform(0.8, 1.0, (16, 2)).tolist()
    one = paired.main([str(results_file(tmp_path / "a.json", 0, widit, unet)), "--output", str(tmp_path / "1.json")])
    copy = results_file(tmp_path / "b.json", 1, widit, unet)
    two = paired.main([str(tmp_path / "a.json"), str(copy), "--output", str(tmp_path / "2.json")])
    for alone, both in zip(one["summary"], two["summary"], strict=True):
        assert both["paired_mean_95"] == alone["paired_mean_95"] and both["phantoms"] == alone["phantoms"] == 16


def test_runs_of_one_seed_or_of_other_settings_are_refused(tmp_path):
    cases = [[0.9, 0.9], [0.8, 0.7]]
    a = results_file(tmp_path / "a.json", 0, cases, cases)
    with pytest.raises(SystemExit, match=r"each run must be another training seed, got seeds \[0, 0\]"):
        paired.main([str(a), str(a), "--output", str(tmp_path / "o.json")])
    other = results_file(tmp_path / "other.json", 1, cases, cases)
    results = json.loads(other.read_text())
    results["settings"]["x0_seconds"] = 400.0
    other.write_text(json.dumps(results))
    with pytest.raises(SystemExit, match=r"other.json: its settings differ from .*a.json's in \['x0_seconds'\]"):
        paired.main([str(a), str(other), "--output", str(tmp_path / "o.json")])
    newer = results_file(tmp_path / "newer.json", 1, cases, cases)  # written after --unet-ema was added
    results = json.loads(newer.read_text())
    results["settings"]["unet_ema"] = False
    newer.write_text(json.dumps(results))
    paired.main([str(a), str(newer), "--output", str(tmp_path / "o.json")])  # an option a run predates: its default
