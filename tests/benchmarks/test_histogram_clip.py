"""benchmarks/histogram_clip.py: its rule, its quick mode, and the shipped clip and bias
correction are the ones its recorded runs chose."""

import json

import pytest
from benchmark_scripts import BENCHMARKS, load_benchmark

import medwidit.data.transforms as transforms


@pytest.fixture(scope="module")
def clip():
    return load_benchmark("histogram_clip")


def _row(case, **dice):
    return {"case": case, "runs": {str(float(p)): {"dice": d} for p, d in dice.items()}}


def test_the_rule_takes_the_best_mean_unless_a_clean_scan_loses(clip):
    rows = [_row("a", **{"100": 0.96, "99": 0.955, "98": 0.96}), _row("a_bias", **{"100": 0.0, "99": 0.8, "98": 0.7})]
    choices = clip.settings([100.0, 99.0, 98.0], [], [])
    choice = clip.choose(rows, choices, clean=["a"])
    assert (
        choice["percentile"] == 98.0 and choice["bias_correction"] is None and choice["air"] is None
    )  # 99's mean is higher, but the clean scan loses 0.005 > 0.002
    assert choice["clean_loss"]["99.0"] == pytest.approx(0.005)
    rows[0]["runs"]["99.0"]["dice"] = 0.959
    assert clip.choose(rows, choices, clean=["a"])["setting"] == "99.0"


def test_quick_mode_scores_every_setting_and_restores_the_clip(clip, tmp_path):
    before = transforms.HISTOGRAM_CLIP_PERCENTILE
    argv = ["--quick", "--percentiles", "100", "99", "--n4", "99", "--air", "0.1", "--output", str(tmp_path / "c.json")]
    result = clip.main(argv)
    assert transforms.HISTOGRAM_CLIP_PERCENTILE == before
    assert [row["case"] for row in result["rows"]] == ["ball", "ball_spike"]
    settings = {"100.0", "99.0", "99.0+n4", "100.0+air0.1", "99.0+air0.1"}
    assert all(set(row["runs"]) == settings for row in result["rows"])
    assert json.loads((tmp_path / "c.json").read_text())["choice"]["setting"] in settings


def test_settings_keep_the_air_unless_told():
    """Every setting but the --air ones keeps the air (``air_threshold`` None), whatever the bundle declares: the
    first, the reference, is the mode as the shipped weights were trained."""
    clip = load_benchmark("histogram_clip")
    choices = clip.settings([99.0], [99.0], [0.1])
    assert choices == {"99.0": (99.0, None, None), "99.0+n4": (99.0, "n4", None), "99.0+air0.1": (99.0, None, 0.1)}


def test_the_shipped_clip_is_the_recorded_choice():
    record = json.loads((BENCHMARKS / "results" / "histogram_clip.json").read_text())
    assert "colin27" not in json.dumps(record["rows"]).lower()  # chosen on validation scans only
    assert record["choice"]["percentile"] == transforms.HISTOGRAM_CLIP_PERCENTILE


def test_the_shipped_bundle_corrects_bias_only_if_its_recorded_run_chose_it():
    from medwidit.diffusion import read_model_config
    from medwidit.utils.resources import shipped_path

    record = json.loads((BENCHMARKS / "results" / "bias_correction.json").read_text())
    assert set(record["choice"]["mean_dice"]) == {"99.0", "99.0+n4"}  # N4 scored beside the shipped clip alone
    assert "colin27" not in json.dumps(record["rows"]).lower()
    config = read_model_config(shipped_path("bundles", "brain_widit_segmentation") / "models" / "model.pt")
    shipped = transforms.check_preprocessing(config["preprocessing"])["bias_correction"]
    assert shipped == record["choice"]["bias_correction"]
