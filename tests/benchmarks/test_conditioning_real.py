"""conditioning_real.py's summary: a case where a model wrote an empty mask (HD95 null, as the results JSON stores
inf) no longer breaks it (it raised a TypeError after four trainings), and each base scan gets its own mean."""

import json
import shutil

import pytest
import torch
from benchmark_scripts import load_benchmark

conditioning_real = load_benchmark("conditioning_real")


def _row(dice, hd95):
    return {"dice": dice, "hd95_mm": hd95, "volume_error_ml": 0.0, "cpu_seconds": 1.0}


def test_summary_with_an_empty_mask_and_per_base_means():
    cases = {
        "without": {"mni": _row(0.96, 4.0), "mni_thick_x": _row(0.94, 6.0), "painted_0": _row(0.0, None)},
        "with": {"mni": _row(0.97, 5.0), "mni_thick_x": _row(0.95, 7.0), "painted_0": _row(0.3, 30.0)},
    }
    summary = conditioning_real.compare(cases, ["mni", "painted_0"])
    assert summary["without"]["mean_hd95_mm"] == pytest.approx(5.0) and summary["without"]["empty_masks"] == 1
    assert summary["with"]["mean_hd95_mm"] == pytest.approx(14.0) and summary["with"]["empty_masks"] == 0
    assert summary["without"]["mean_dice_by_base"] == pytest.approx({"mni": 0.95, "painted_0": 0.0})
    assert summary["without"]["thick_mean_dice"] == pytest.approx(0.94)
    difference = summary["with_minus_without"]
    assert difference["mean_dice"] == pytest.approx(0.32 / 3) and (difference["cases_better"], difference["cases"]) == (
        3,
        3,
    )


def test_a_run_of_one_pair_keeps_the_others_with_their_environment(tmp_path):
    output = tmp_path / "conditioning_real.json"
    assert conditioning_real.earlier_pairs(output, ["contrast"]) == {}  # nothing earlier
    earlier = {
        "environment": {"commit": "old"},
        "work": "/old",
        "pairs": {
            "conditioning": {"cases": {}},
            "spacing": {"environment": {"commit": "older"}, "work": "/older", "cases": {}},
            "contrast": {"cases": {}},
        },
    }
    output.write_text(json.dumps(earlier))
    kept = conditioning_real.earlier_pairs(output, ["contrast"])
    assert sorted(kept) == ["conditioning", "spacing"]  # the pair run now is replaced, not kept
    assert kept["conditioning"]["environment"] == {"commit": "old"}
    assert kept["spacing"]["environment"] == {"commit": "older"}  # a pair's own environment wins
    assert (kept["conditioning"]["work"], kept["spacing"]["work"]) == ("/old", "/older")


def test_a_second_set_of_weights_joins_a_copy_of_the_shipped_bundle(tmp_path):
    """The weight_sets pair: the shipped bundle with a trained variant (here the shipped weights standing in for the
    contrast retrain, reused as trained) as its extra_weights, sampled as the pair's inference settings say."""
    from medwidit.inference import Predictor

    shutil.copytree(conditioning_real.BUNDLE / "models", tmp_path / "remap" / "models")  # "trained" before
    spec = conditioning_real.PAIRS["weight_sets"]["variants"]["shipped_and_remap"]
    bundle = conditioning_real.with_extra_weights("shipped_and_remap", spec, tmp_path)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["extra_weights"] == ["models/model_remap.pt"]
    assert (inference["weight_sets"], inference["num_samples"]) == (2, 2)
    predictor = Predictor.from_bundle(bundle, device="cpu")
    assert len(predictor.select_weights(None)) == 2 and predictor.sampling_defaults["num_samples"] == 2
    first, second = (s.net.state_dict() for s in predictor.segmenters)
    assert all(torch.equal(first[k], second[k]) for k in first)
    alone = conditioning_real.with_extra_weights("shipped_alone", conditioning_real.SHIPPED_ALONE, tmp_path)
    predictor = Predictor.from_bundle(alone, device="cpu")  # what every pair's None variant measured: 0.3.1's default
    assert len(predictor.segmenters) == 1 and predictor.sampling_defaults["num_samples"] == 4
    trained = json.loads((tmp_path / "remap" / "configs" / "inference.json").read_text())
    assert (trained["weight_sets"], trained["num_samples"], trained["extra_weights"]) == (1, 4, [])
