"""benchmarks/quality_calibration.py: the features are chosen by leave-one-case-out error on validation rows, and
the chosen model is written where the predictor reads it."""

import json
import math
import shutil

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

from medwidit.inference import Predictor
from medwidit.inference.calibration import FEATURE_SIGNS, check_calibration


def _rows(count=12):
    """generalisation.py medwidit rows whose true Dice is a multiplicative model of the ensemble's estimate and the
    localization's share, plus rows of other tools and one without a quality report (both skipped)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        own, kept = float(rng.uniform(0.93, 0.99)), float(rng.uniform(0.55, 1.0))
        quality = {
            "predicted_dice": {"0": 0.99, "1": own},
            "volume_ml": {"0": 5000.0, "1": float(rng.uniform(1000, 2000))},
            "expected_volume_ml": {"1": [900.0, 2200.0]},
            "unexpected_volumes": {},
            "empty_classes": [],
            "uncertainty": {
                "total": {"mean_foreground_nats": float(rng.uniform(0, 0.2))},
                "epistemic": {"mean_foreground_nats": float(rng.uniform(0, 0.05))},
            },  # fmt: skip
            "localization": {"kept": kept, "applied": True, "min_kept": 0.5, "warn_kept": 0.5},
        }
        true = 0.95 * own * kept**1.5  # not the product rule: a fit with the share wins
        rows.append({"case": f"case{i}", "tool": "medwidit", "dice": true, "quality": quality})
    rows.append({"case": "case0", "tool": "deepbet", "dice": 0.97})
    rows.append({"case": "old", "tool": "medwidit", "dice": 0.9})  # run before the report was recorded
    return rows


def test_the_true_features_win_by_leave_one_out_and_the_bundle_reads_the_written_model(tmp_path):
    from medwidit.inference.options import resolve_bundle

    script = load_benchmark("quality_calibration")
    results = tmp_path / "validation.json"
    results.write_text(json.dumps({"rows": _rows()}))
    bundle = tmp_path / "bundle"
    shutil.copytree(resolve_bundle(), bundle, ignore=shutil.ignore_patterns("eval", "runs"))
    out = script.main([str(results), "--output", str(tmp_path / "q.json"), "--write-bundle", str(bundle)])
    chosen = out["chosen"]
    assert "log_kept" in chosen["features"] and chosen["leave_one_out"]["mae"] < 1e-6
    assert chosen["calibration"]["intercept"] == pytest.approx(math.log(0.95), abs=1e-6)
    assert chosen["calibration"]["weights"]["log_kept"] == pytest.approx(1.5, abs=1e-6)
    assert len(out["cases"]) == 12  # the other tool's row and the row without a report are not validation cases
    without = [c for c in out["candidates"] if c["features"] == ["log_ensemble_dice"]][0]
    assert without["leave_one_out"]["mae"] > 0.01  # the ensemble's estimate alone cannot explain the truth
    assert not any("log_boundary" in c["features"] for c in out["candidates"][1:])  # 0 in every report: left out
    product = [c for c in out["candidates"] if c["features"] == "product rule"][0]
    assert product["leave_one_out"]["mae"] > 0.01  # nor the product rule, whose exponents differ
    written = json.loads((bundle / "configs" / "inference.json").read_text())["quality_calibration"]
    assert written == chosen["calibration"] and "validation.json" in written["chosen_on"]
    threshold = json.loads((bundle / "configs" / "inference.json").read_text())["warn_dice"]
    assert threshold == chosen["warning_line"]["warn_dice"] and chosen["warning_line"]["of"] == sum(
        c["true"] < 0.9 for c in out["cases"]
    )
    predictor = Predictor.from_bundle(bundle, device="cpu", weight_sets=1)
    assert predictor.quality_calibration == check_calibration(written) and predictor.warn_dice == threshold
    assert json.loads((tmp_path / "q.json").read_text())["chosen"]["calibration"] == written


def test_named_features_are_refitted_without_a_search(tmp_path):
    """``--features``: the one subset named (log_ensemble_dice always in it) against the product rule, so a bundle's
    feature set is refitted to new members even where another subset would win the search."""
    script = load_benchmark("quality_calibration")
    results = tmp_path / "validation.json"
    results.write_text(json.dumps({"rows": _rows()}))
    out = script.main([str(results), "--output", str(tmp_path / "q.json"), "--features", "total_foreground"])
    assert [c["features"] for c in out["candidates"]] == ["product rule", ["log_ensemble_dice", "total_foreground"]]
    assert out["chosen"]["features"] == ["log_ensemble_dice", "total_foreground"]  # log_kept would have won
    assert set(out["chosen"]["calibration"]["weights"]) == {"log_ensemble_dice", "total_foreground"}
    with pytest.raises(SystemExit, match=r"--features log_boundary: \['log_boundary'\] take one value"):
        script.main([str(results), "--output", str(tmp_path / "r.json"), "--features", "log_boundary"])
    searched = script.main([str(results), "--output", str(tmp_path / "s.json")])
    assert "log_kept" in searched["chosen"]["features"]  # what the search picks on the same rows
    few = tmp_path / "few.json"
    few.write_text(json.dumps({"rows": _rows(5)}))
    with pytest.raises(SystemExit, match=r"--features log_kept total_foreground: 5 validation cases cannot fit 4"):
        script.main([str(few), "--output", str(tmp_path / "f.json"), "--features", "log_kept", "total_foreground"])


def test_too_few_validation_cases_stop_the_fit(tmp_path):
    script = load_benchmark("quality_calibration")
    results = tmp_path / "validation.json"
    results.write_text(json.dumps({"rows": _rows(4)}))
    with pytest.raises(SystemExit, match=r"4 validation case\(s\) with a quality report .*need at least 5"):
        script.main([str(results), "--output", str(tmp_path / "q.json")])


def test_an_atlas_prior_not_applied_is_part_of_the_warning_line_and_its_share_a_feature(tmp_path):
    """The CLI's warning line names a case whose atlas prior was not applied; the fit's whole-line flags must too."""
    script = load_benchmark("quality_calibration")
    rows = _rows()
    atlas = {"margin_mm": 5.0, "min_kept": 0.5}
    rows[0]["quality"]["atlas_prior"] = {**atlas, "kept": 0.3, "applied": False}
    rows[1]["quality"]["atlas_prior"] = {**atlas, "kept": 0.8, "applied": True}
    results = tmp_path / "validation.json"
    results.write_text(json.dumps({"rows": rows}))
    loaded = script.load_rows([results])
    assert [r["other_flag"] for r in loaded[:3]] == [True, False, False]
    assert [r["features"]["log_atlas_kept"] for r in loaded[:3]] == pytest.approx([math.log(0.5), math.log(0.8), 0])


def test_a_fit_is_judged_against_a_reference_bundle_on_all_cases_and_each_group_and_written_only_if_it_wins(tmp_path):
    """``--reference``: the bundle's own calibration scored on the same reports beside the chosen fit's leave-one-out
    estimates, on every case and on each ``--group``; ``--write-bundle`` then writes only a fit that beats it."""
    from medwidit.inference.options import resolve_bundle

    script = load_benchmark("quality_calibration")
    results = tmp_path / "validation.json"
    results.write_text(json.dumps({"rows": _rows()}))
    shipped, exact = tmp_path / "shipped", tmp_path / "exact"
    for bundle in (shipped, exact):
        shutil.copytree(resolve_bundle(), bundle, ignore=shutil.ignore_patterns("eval", "runs"))
    config = json.loads((exact / "configs" / "inference.json").read_text())
    truth = {"intercept": math.log(0.95), "weights": {"log_ensemble_dice": 1.0, "log_kept": 1.5}}  # _rows's model
    (exact / "configs" / "inference.json").write_text(json.dumps({**config, "quality_calibration": truth}))
    group = ["--group", "first=case2,case3,case4"]
    won = script.main([str(results), "--output", str(tmp_path / "a.json"), "--reference", str(shipped),
                       "--write-bundle", str(shipped), *group])  # fmt: skip
    assert won["reference"]["beats"] and set(won["reference"]["groups"]) == {"all", "first"}
    written = json.loads((shipped / "configs" / "inference.json").read_text())
    assert written["quality_calibration"] == won["chosen"]["calibration"]  # it beat the bundle's own: written
    assert written["warn_dice"] == won["chosen"]["warning_line"]["warn_dice"]
    before = (shipped / "configs" / "inference.json").read_text()
    assert won["reference"]["groups"]["first"]["cases"] == 3 and won["reference"]["groups"]["all"]["cases"] == 12
    assert "| first | 3 |" in won["markdown"]

    lost = script.main([str(results), "--output", str(tmp_path / "b.json"), "--reference", str(exact), "--features",
                        "total_foreground", "--write-bundle", str(exact), *group])  # fmt: skip
    assert not lost["reference"]["beats"] and lost["reference"]["groups"]["all"]["reference"]["mae"] < 1e-9
    assert json.loads((exact / "configs" / "inference.json").read_text())["quality_calibration"] == truth  # unwritten
    script.main([str(results), "--output", str(tmp_path / "c.json"), "--reference", str(exact),
                 "--write-bundle", str(shipped)])  # fmt: skip
    assert (shipped / "configs" / "inference.json").read_text() == before  # the exact reference cannot be beaten

    with pytest.raises(SystemExit, match=r"--group none: 0 case\(s\) of \['case'\]"):  # not a prefix of case2
        script.main([str(results), "--output", str(tmp_path / "d.json"), "--reference", str(shipped),
                     "--group", "none=case"])  # fmt: skip
    with pytest.raises(SystemExit):  # argparse's usage error: NAME=PREFIX
        script.main([str(results), "--group", "first"])


def test_a_reference_whose_estimates_are_all_alike_ranks_nothing_and_is_beaten_by_a_lower_mae(tmp_path):
    """A reference calibration with a negative weight on the ensemble's estimate clips every case at 1 (bundle 0.9.0's
    on these rows): its Spearman is NaN, which made every comparison False, so no fit could beat it."""
    from medwidit.inference.options import resolve_bundle

    script = load_benchmark("quality_calibration")
    results = tmp_path / "validation.json"
    results.write_text(json.dumps({"rows": _rows()}))
    flat = tmp_path / "flat"
    shutil.copytree(resolve_bundle(), flat, ignore=shutil.ignore_patterns("eval", "runs"))
    config = json.loads((flat / "configs" / "inference.json").read_text())
    clipped = {"intercept": 0.0, "weights": {"log_ensemble_dice": -1.0}}  # exp(-log own) > 1: clipped to 1
    (flat / "configs" / "inference.json").write_text(json.dumps({**config, "quality_calibration": clipped}))
    won = script.main([str(results), "--output", str(tmp_path / "a.json"), "--reference", str(flat)])
    reference = won["reference"]["groups"]["all"]["reference"]
    assert math.isnan(reference["spearman"]) and won["reference"]["groups"]["all"]["chosen"]["mae"] < reference["mae"]
    assert won["reference"]["beats"]


def test_reports_with_and_without_the_template_dice_are_not_fitted_together(tmp_path):
    """A report without ``atlas_prior.template_dice`` reads log_atlas_dice 0, perfect agreement, where the predictor
    would not calibrate it at all (``calibration.missing_evidence``): mixed with reports that have it, the fit would
    learn from a figure the product never uses. All without it (reports before 0.7.1) is fine: the feature is constant
    and left out."""
    script = load_benchmark("quality_calibration")
    rows = _rows()
    atlas = {"margin_mm": 5.0, "min_kept": 0.5, "kept": 0.9, "applied": True}
    for i, row in enumerate(r for r in rows if r.get("quality")):
        row["quality"]["atlas_prior"] = {**atlas, "template_dice": None if i == 3 else 0.9}
    results = tmp_path / "validation.json"
    results.write_text(json.dumps({"rows": rows}))
    with pytest.raises(SystemExit, match=r"1 of 12 validation cases have no atlas_prior.template_dice \(case3\)"):
        script.main([str(results), "--output", str(tmp_path / "q.json")])


def test_monotone_fits_hold_every_weight_to_its_features_sign_and_say_so(tmp_path):
    """``--monotone``: the truth here falls as the ensemble's estimate rises, which a free fit follows with a negative
    weight; the monotone search holds it at 0 or leaves it, records the choice and names it in ``chosen_on``."""
    script = load_benchmark("quality_calibration")
    rows = _rows()
    for row in rows:
        if row.get("quality"):
            row["dice"] = row["dice"] * (0.96 / float(row["quality"]["predicted_dice"]["1"])) ** 2
    results = tmp_path / "validation.json"
    results.write_text(json.dumps({"rows": rows}))
    free = script.main([str(results), "--output", str(tmp_path / "free.json")])
    assert free["monotone"] is False and free["chosen"]["calibration"]["weights"]["log_ensemble_dice"] < -0.5
    out = script.main([str(results), "--output", str(tmp_path / "m.json"), "--monotone"])
    assert out["monotone"] is True and out["chosen"]["calibration"]["chosen_on"].endswith("--monotone")
    weights = out["chosen"]["calibration"]["weights"]
    assert weights["log_ensemble_dice"] >= 0 and all(
        w * FEATURE_SIGNS[name] >= 0 for name, w in weights.items()
    )  # fmt: skip
    assert out["chosen"]["leave_one_out"]["mae"] > free["chosen"]["leave_one_out"]["mae"]  # the bound costs fit here
