"""benchmarks/threshold.py: every threshold read from one sampling, t = 0.5 equal to the Predictor's own argmax."""

import json

import numpy as np
import pytest
from benchmark_scripts import load_benchmark


def test_quick_run_scores_every_threshold_and_half_is_the_argmax(tmp_path):
    threshold = load_benchmark("threshold")
    result = threshold.main(["--quick", "--thresholds", "0.2", "0.5", "0.9", "--output", str(tmp_path / "t.json")])
    row = result["cases"]["quick"]
    assert set(row) == {"0.2", "0.5", "0.9", "argmax_dice", "cpu_seconds"}
    assert row["0.5"]["dice"] == row["argmax_dice"]  # two classes: p > 0.5 is the predictor's argmax
    volumes = [row[t]["volume_error_ml"] for t in ("0.2", "0.5", "0.9")]
    assert volumes == sorted(volumes, reverse=True)  # a higher threshold never keeps more voxels
    assert len(set(volumes)) > 1  # the random model's probabilities are not all 0 or 1: the thresholds differ
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["mean_dice"]["0.5"] == row["0.5"]["dice"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # the scratch model and head are gone


def test_quick_needs_an_output_so_the_recorded_results_stay(capsys):
    threshold = load_benchmark("threshold")
    with pytest.raises(SystemExit):
        threshold.main(["--quick"])
    assert "--quick scores a random model: give --output" in capsys.readouterr().err


def test_score_is_dice_after_the_post_processing():
    threshold = load_benchmark("threshold")
    truth = np.zeros((8, 8, 8), bool)
    truth[2:6, 2:6, 2:6] = True
    probability = truth * 0.8
    probability[0, 0, 0] = 0.95  # an island: kept at 0.9 without post-processing, removed with it
    plain = threshold.score(probability, truth, [0.5, 0.9], [], 0.001)
    kept = threshold.score(probability, truth, [0.5], [{"name": "keep_largest_component"}], 0.001)
    assert plain["0.5"]["dice"] == round(2 * 64 / 129, 4) and plain["0.9"]["volume_error_ml"] == round(-0.063, 1)
    assert kept["0.5"]["dice"] == 1.0
