"""benchmarks/quality.py: its report (per-case means, the markdown tables, JSON without inf/NaN). Its medwidit
sampling is the library's public path (``sample_ensemble``, ``Predictor.wrap_model_fn``, ``Predictor.invert``),
tested in tests/inference/test_predictor.py."""

import math
import sys

from benchmark_scripts import load_benchmark


def test_mean_over_cases_and_markdown_table():
    quality = load_benchmark("quality")
    report = sys.modules["_report"]  # the sibling module the script imported
    cases = [{"dice": [1.0, 3.0], "steps": 2, "case": "a"}, {"dice": [3.0, 5.0], "steps": 2, "case": "b"}]
    assert report.mean_over_cases(cases) == {"dice": [2.0, 4.0], "steps": 2, "case": "a"}
    u = {"volume": {"auroc": 0.9, "ece": 0.01}, "band": {"auroc": 0.7, "ece": 0.1}}
    row = {"dice": [0.9, 0.8], "hd95": [1.0, math.inf], "mean_fg_dice": 0.8, "mean_fg_hd95": math.inf}
    row.update(seconds_per_volume=10.0, uncertainty=u)
    result = {
        "class_names": ["background", "brain"],
        "task": "brain_extraction",
        "cases": [{"case": "colin27_1mm"}],
        "budget": {"seconds": 60.0, "source": "--budget-seconds", "medwidit_training_seconds": None},
        "config": {"steps": 10, "samples": 5, "band_mm": 3.0},
        "environment": {"device": "cpu"},
        "mean": {
            "methods": {"basic_unet": row, "medwidit": {**row, "seconds_per_volume": 40.0}},
            "steps_sweep": [{"steps": 1, **row}, {"steps": 10, **row}],
            "ensemble_sweep": [{"samples": 1, **row}],
        },
    }
    text = quality.markdown(result)
    assert "| medwidit (10 steps, 5 samples) | 0.800 | 0.800 | — | 40 (4.0x) |" in text
    assert "| medwidit 1 | 0.800 | 0.900 | 0.700 | 0.0100 | 0.1000 | 10 |" in text
    for table in text.split("\n\n")[:3]:  # every row of a table has its header's number of cells
        counts = {line.count("|") for line in table.splitlines()}
        assert len(counts) == 1, table
    assert report.finite({"hd95": [1.0, math.inf, math.nan]}) == {"hd95": [1.0, None, None]}
