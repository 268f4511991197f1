"""benchmarks/paired_phantoms.py: the validation split's WiDiT cell against BasicUNet, phantom by phantom over runs;
a run without the per-phantom Dice or without BasicUNet is refused by name."""

import json

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

paired = load_benchmark("paired_phantoms")


def results_file(path, seed, widit_cases, unet_cases, cell="5x8", with_unet=True):
    steps, _, members = cell.partition("x")
    widit = {"steps": 100, "dice_per_case": {"10": [[0.0, 0.0]] * len(widit_cases), cell: widit_cases}}
    results = {
        "settings": {"seed": seed},
        "selected_on_validation": {"head": "pixel-16-2-k5", "steps": int(steps), "samples": int(members or 1)},
        "heads": {"pixel-16-2-k5": widit},
    }
    if with_unet:
        results["basic_unet_dice_ce"] = {"steps": 90, "dice_per_case": unet_cases}
    path.write_text(json.dumps(results))
    return path


def test_differences_are_read_at_the_chosen_cell_per_run_and_pooled_over_phantoms(tmp_path, capsys):
    a = results_file(tmp_path / "a.json", 0, [[0.9, 0.8], [0.9, 0.9]], [[0.8, 0.9], [0.8, 0.9]])
    b = results_file(tmp_path / "b.json", 1, [[0.9, 0.9], [0.9, 0.9], [0.9, 0.9]], [[0.9, 0.8]] * 3, cell="2")
    out = tmp_path / "paired.json"
    result = paired.main([str(a), str(b), "--output", str(out)])
    runs, (first, second) = result["runs"], result["summary"]
    assert [r["cell"] for r in runs] == ["5x8", "2"]  # the chosen cells, not the "10" rows
    assert np.allclose(runs[0]["difference"], [0.1, -0.05]) and np.allclose(runs[1]["difference"], [0.0, 0.1])
    assert np.isclose(first["mean_over_runs"], 0.05) and np.isclose(second["mean_over_runs"], 0.025)
    assert first["pairs"] == second["pairs"] == 5
    assert np.isclose(first["paired_mean"], 0.04) and np.isclose(second["paired_mean"], (-0.1 + 0.3) / 5)
    assert (first["widit_wins"], first["basic_unet_wins"]) == (2, 0)
    assert (second["widit_wins"], second["basic_unet_wins"]) == (3, 1)
    low, high = second["paired_mean_95"]
    assert low <= second["paired_mean"] <= high and low < high
    assert json.loads(out.read_text())["summary"][1]["widit_wins"] == 3
    assert "| 2 | 0.0250 | 5 |" in capsys.readouterr().out


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
