"""Inference split across processes (nnU-Net's --num-parts/--part-id): the parts cover every case exactly once, each
writes only its own cases, the plan still sees every case's outputs, and bad values get a clear error."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
from inference_volumes import random_tiny_segmenter

from medwidit.cli import main
from medwidit.diffusion import save_segmenter
from medwidit.inference import Predictor
from medwidit.inference.io import OutputError

FAST = ["--steps", "1", "--samples", "1", "--quiet", "--device", "cpu"]
NAMES = ["e", "a", "d", "b", "c"]  # not in sorted order: the split is of the sorted list


@pytest.fixture
def setup(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name in NAMES:
        nib.save(nib.Nifti1Image(rng.random((12, 10, 8)).astype(np.float32), np.eye(4)), str(inputs / f"{name}.nii.gz"))
    extra = {"preprocessing": {"spacing": [1.5, 1.5, 1.5], "num_modalities": 1}, "roi_size": [16, 16, 16]}
    checkpoint = save_segmenter(random_tiny_segmenter(), tmp_path / "model.pt", extra_config=extra)
    return tmp_path, inputs, str(checkpoint)


def _written(folder):
    """The outputs; the CLI's run records (medwidit_run*.json, one per part) are not outputs."""
    return sorted(
        p.name.removesuffix(".nii.gz") for p in folder.iterdir() if not p.name.startswith((".", "medwidit_run"))
    )


@pytest.mark.parametrize("num_parts", [2, 3])
def test_parts_cover_every_case_exactly_once(setup, num_parts):
    tmp_path, inputs, checkpoint = setup
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    shares = []
    for part in range(num_parts):
        out = tmp_path / f"out{part}"
        results = predictor.predict_from_files(
            inputs, out, progress=False, steps=1, num_samples=1, num_parts=num_parts, part_id=part
        )
        assert all(r.status == "done" for r in results)
        assert _written(out) == sorted(r.name for r in results)  # a part writes only its own cases
        shares.append([r.name for r in results])
    assert sorted(name for share in shares for name in share) == sorted(NAMES)  # every case once
    assert shares[0] == sorted(NAMES)[::num_parts]  # deterministic: every N-th of the sorted list


def test_parts_share_one_folder_through_the_cli(setup):
    """Two processes' worth of parts into one folder: together they give what one run gives, file for file."""
    tmp_path, inputs, checkpoint = setup
    base = ["segment", "-i", str(inputs), "--checkpoint", checkpoint, *FAST]
    for part in ("0", "1"):
        assert main([*base, "-o", str(tmp_path / "parts"), "--num-parts", "2", "--part-id", part]) == 0
    assert main([*base, "-o", str(tmp_path / "whole")]) == 0
    assert _written(tmp_path / "parts") == _written(tmp_path / "whole") == sorted(NAMES)
    assert sorted(p.name for p in (tmp_path / "parts").glob("medwidit_run*")) == [
        "medwidit_run.json",
        "medwidit_run_2.json",
    ]
    for name in NAMES:
        a, b = (nib.load(str(tmp_path / d / f"{name}.nii.gz")) for d in ("parts", "whole"))
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_the_plan_still_sees_every_case(setup):
    """An output of a case in another part that would replace an input is refused before anything runs."""
    tmp_path, inputs, checkpoint = setup
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.nii.gz").write_bytes((inputs / "a.nii.gz").read_bytes())
    with pytest.raises(OutputError, match="b.nii.gz: this output of case 'b' is also the input"):
        predictor.predict_from_files(
            [elsewhere / "a.nii.gz", inputs / "b.nii.gz"], inputs, progress=False, steps=1, num_samples=1, num_parts=2
        )  # part 0 holds only "a"; "b" (part 1) would write over its own input, and the plan of every case sees it


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_parts": 0}, "num_parts must be an int >= 1"),
        ({"num_parts": 2, "part_id": 2}, r"part_id must be an int in 0..1 \(num_parts=2\)"),
        ({"part_id": -1}, r"part_id must be an int in 0..0"),
        ({"num_parts": 1.5}, "num_parts must be an int"),
    ],
)
def test_bad_parts_are_clear_errors(setup, options, message):
    tmp_path, inputs, checkpoint = setup
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match=message):
        predictor.predict_from_files(inputs, tmp_path / "out", progress=False, **options)
    assert not (tmp_path / "out").exists() or not _written(tmp_path / "out")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-parts", "2", "--part-id", "2"], r"--part-id must be in 0..1 \(--num-parts 2\), got 2"),
        (["--num-parts", "0"], "--num-parts: expected a positive integer"),
        (["--part-id", "-1"], "--part-id: expected an integer >= 0"),
    ],
)
def test_bad_parts_on_the_command_line(setup, capsys, argv, message):
    tmp_path, inputs, checkpoint = setup
    try:
        code = main(["segment", "-i", str(inputs), "-o", str(tmp_path / "out"), "--checkpoint", checkpoint, *argv])
    except SystemExit as e:  # argparse's own usage error
        code = e.code
    assert code in (1, 2)
    assert re.search(message, capsys.readouterr().err)


def test_a_part_with_no_case_ends_well_and_records_so(setup):
    """A part that finds no case (more parts than cases: an array job with more tasks) did all it had to: it exits 0
    (from a review: it exited 1, a failed task where nothing failed) and its record says "done" with no case. A run
    of one part that finds no case is still a failure (the record's rule, from a mutation review)."""
    from medwidit.inference.record import finish_record

    tmp_path, inputs, checkpoint = setup
    out = tmp_path / "out"
    argv = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", checkpoint, *FAST]
    assert main([*argv, "--num-parts", "6", "--part-id", "5"]) == 0  # five cases: part 5 of 6 holds none
    record = json.loads((out / "medwidit_run.json").read_text())
    assert record["cases"] == [] and record["status"] == "done"
    assert finish_record(tmp_path / "r.json", {}, []) == "failed"
