"""benchmarks/template_information.py: the atlas prior's measure of how much a scan tells of the registered template,
on heads and on synthetic non-heads, and the rule that chose ``warn_information``."""

import json

import pytest
from benchmark_scripts import bundle_with_template, load_benchmark

script = load_benchmark("template_information")


def test_a_head_holds_more_than_every_synthetic_non_head_and_the_rule_puts_the_threshold_between(tmp_path):
    bundle = bundle_with_template(tmp_path)
    dice = tmp_path / "dice.json"
    rows = [
        {"case": "moved", "tool": "medwidit", "dice": 0.95},
        {"case": "moved_noise", "tool": "medwidit", "dice": 0.5},
    ]
    dice.write_text(json.dumps({"rows": rows}))
    case = ["moved", str(tmp_path / "case.nii.gz"), str(tmp_path / "case_brain.nii.gz")]
    out = script.main(["--bundle", str(bundle), "--base", *case, "--variants", "noise", "--dice-from", str(dice),
                       "--output", str(tmp_path / "t.json")])  # fmt: skip
    by = {r["case"]: r for r in out["rows"]}
    assert set(by) >= {"moved", "moved_noise", "ball_85mm", "shelled_blob", "noise"}
    assert by["moved"]["dice"] == 0.95 and "dice" not in by["ball_85mm"]
    non_heads = [r["information"] for r in out["rows"] if r["kind"] == "synthetic non-head"]
    decision = out["decision"]
    assert (
        decision["highest_non_head"] == max(non_heads) and decision["lowest_right_head"] == by["moved"]["information"]
    )
    assert max(non_heads) < decision["threshold"] < by["moved"]["information"]  # the geometric mean lies between
    assert not by["moved"]["below"] and all(r["below"] for r in out["rows"] if r["kind"] == "synthetic non-head")
    assert json.loads((tmp_path / "t.json").read_text())["decision"] == decision


def test_the_rule_takes_no_threshold_without_separation_and_a_given_one_is_reported_as_given():
    rows = [
        {"case": "a", "kind": "validation", "information": 0.1, "dice": 0.95},
        {"case": "b", "kind": "validation", "information": 0.01, "dice": 0.3},  # a wrong case may fall anywhere
        {"case": "ball", "kind": "synthetic non-head", "information": 0.2},
    ]
    assert script.choose(rows)["threshold"] is None and script.choose(rows)["why"] == "no separation"
    rows[2]["information"] = 0.025
    assert script.choose(rows)["threshold"] == pytest.approx((0.025 * 0.1) ** 0.5)
    assert script.choose(rows[2:])["threshold"] is None  # no validation head with its Dice
