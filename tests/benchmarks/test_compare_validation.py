"""benchmarks/compare_validation.py: case-by-case differences over seeds, a bootstrap interval that holds the mean
difference, the sign test, the reference's own seed-to-seed noise floor, and refusals that name the file."""

import json

import pytest
from benchmark_scripts import load_benchmark

compare = load_benchmark("compare_validation")


def _run(path, dice, hd=None):
    rows = [{"case": c, "tool": "medwidit", "dice": d, "hd95_mm": (hd or {}).get(c, 5.0)} for c, d in dice.items()]
    rows.append({"case": "a", "tool": "deepbet", "dice": 0.1, "hd95_mm": 99.0})  # other tools' rows are ignored
    path.write_text(json.dumps({"rows": rows}))
    return str(path)


def test_differences_are_averaged_over_seeds_and_tested_case_by_case(tmp_path):
    cases = {f"c{i}": 0.80 for i in range(10)}
    ref = [_run(tmp_path / "r0.json", cases), _run(tmp_path / "r1.json", {**cases, "c0": 0.84})]
    gained = {c: d + 0.02 for c, d in cases.items()} | {"c9": 0.70}  # 9 cases gain 0.02, one loses 0.10
    cand = [_run(tmp_path / "k0.json", gained, {"c9": 9.0}), _run(tmp_path / "k1.json", gained | {"c0": 0.86})]
    result = compare.main(["--reference", *ref, "--candidate", *cand, "--output", str(tmp_path / "out.json")])
    s = result["summary"]
    assert (s["cases"], s["seeds"], s["gains"], s["losses"]) == (10, 2, 9, 1)
    assert s["mean_dice_difference"] == pytest.approx((9 * 0.02 - 0.10) / 10)
    low, high = s["mean_dice_difference_95"]
    assert low <= s["mean_dice_difference"] <= high and low < 0  # the one large loss reaches below zero
    assert s["sign_test_p"] == pytest.approx(0.021484375)  # 9 of 10, two-sided
    assert s["largest_loss"] == pytest.approx(-0.10) and s["largest_loss_case"] == "c9"
    assert s["mean_hd95_difference_mm"] == pytest.approx(4.0 / 2 / 10)  # c9: +4 mm at one of two seeds
    assert (
        s["noise_floor"]["largest_abs_dice_difference"] == pytest.approx(0.04)
        and s["noise_floor"]["largest_case"] == "c0"
    )
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["gains"] == 9


def test_mismatched_sides_are_refused_by_name(tmp_path, capsys):
    one = _run(tmp_path / "one.json", {"a": 0.9, "b": 0.8})
    other = _run(tmp_path / "other.json", {"a": 0.9})
    with pytest.raises(SystemExit, match=r"other.json: its cases differ from .*one.json's \(missing \['b'\]"):
        compare.main(["--reference", one, "--candidate", other, "--output", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        compare.main(["--reference", one, one, "--candidate", one, "--output", str(tmp_path / "x.json")])
    assert "one file per seed on each side" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="bad.json: not a generalisation.py results file"):
        compare.main(["--reference", str(tmp_path / "bad.json"), "--candidate", one])
