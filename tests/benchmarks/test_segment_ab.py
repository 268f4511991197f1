"""benchmarks/segment_ab.py: its checkout arguments and its refusals, without running the CLI."""

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def test_a_checkout_is_a_label_and_a_folder_holding_the_example(tmp_path):
    segment_ab = load_benchmark("segment_ab")
    assert segment_ab.checkout(f"abc={ROOT}") == ("abc", ROOT)
    for value in ("abc", f"={ROOT}", "abc=", f"abc={tmp_path}"):
        with pytest.raises(argparse.ArgumentTypeError, match="LABEL=PATH") as error:
            segment_ab.checkout(value)
        assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--old", "a=R", "--new", "a=R"], "different labels"),
        (["--old", "a=R", "--new", "b=R", "--rounds", "0"], "--rounds"),
    ],
)
def test_refusals_name_the_argument(monkeypatch, capsys, argv, message):
    segment_ab = load_benchmark("segment_ab")
    argv = [a.replace("=R", f"={ROOT}") for a in argv]
    monkeypatch.setattr(sys, "argv", ["segment_ab.py", *argv, "--purpose", "test"])
    with pytest.raises(SystemExit) as stop:
        segment_ab.main()
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_dice_of_masks():
    segment_ab = load_benchmark("segment_ab")
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2], b[1:3] = True, True
    assert segment_ab.dice(a, b) == 0.5 and segment_ab.dice(a, a) == 1.0
    assert segment_ab.dice(a & False, b & False) is None  # undefined, not NaN (which is no JSON)
