"""benchmarks/boundary_overlap.py: the overlap is computed from a generalisation.py --keep run's files, and a feature
that tells the failing cases apart lowers the leave-one-case-out error of the Dice estimate."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
from benchmark_scripts import load_benchmark

boundary = load_benchmark("boundary_overlap")


def _kept_run(tmp_path, count=8):
    """A --keep folder and its rows: a bright ball in air, masks that follow its edge (Dice 0.95) or stop 3 voxels
    inside it (0.5), every ensemble as sure of itself (0.97)."""
    grid = np.indices((24, 24, 24)) - 12
    radius = np.sqrt((grid**2).sum(0))
    image = np.where(radius <= 8, 100.0, 0.0) + np.random.default_rng(0).normal(0, 1.0, radius.shape)
    folder, rows = tmp_path / "kept", []
    folder.mkdir()
    for i in range(count):
        good = i % 2 == 0
        mask = (radius <= (8 if good else 5)).astype(np.uint8)
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(folder / f"case{i}_image.nii.gz"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(folder / f"case{i}_medwidit_mask.nii.gz"))
        quality = {"predicted_dice": {"0": 0.99, "1": 0.97}, "volume_ml": {"0": 10.0, "1": 2.0}}
        rows.append({"case": f"case{i}", "tool": "medwidit", "dice": 0.95 if good else 0.5, "quality": quality})
    rows.append({"case": "case0", "tool": "deepbet", "dice": 0.97})  # another tool's row: skipped
    results = tmp_path / "run.json"
    results.write_text(json.dumps({"rows": rows}))
    return results, folder


def test_a_feature_that_sees_the_missing_edge_lowers_the_held_out_error(tmp_path):
    results, folder = _kept_run(tmp_path)
    out = tmp_path / "out.json"
    record = boundary.main(
        [str(results), str(folder), "--depths", "2", "--knees", "0.8", "--features", "log_ensemble_dice",
         "--output", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text())["candidates"] == record["candidates"]
    without, with_boundary = record["candidates"]
    assert without["depth_mm"] is None and without["features"] == ["log_ensemble_dice"]
    assert with_boundary["features"] == ["log_ensemble_dice", "log_boundary"] and with_boundary["knee"] == 0.8
    assert without["leave_one_out"]["mae"] > 0.2  # one estimate for every case: half are 0.45 off
    assert with_boundary["leave_one_out"]["mae"] < 0.5 * without["leave_one_out"]["mae"]
    overlaps = [case["overlap"]["2.0"] for case in record["cases"]]
    assert overlaps[0::2] == [0.0] * 4 and min(overlaps[1::2]) > 0.8  # the edge, then tissue on both sides
    assert [case["case"] for case in record["cases"]] == [f"case{i}" for i in range(8)]
    assert all(case["cpu_seconds"]["2.0"] >= 0 and case["shape"] == [24, 24, 24] for case in record["cases"])
    assert {case["mask_voxels_at_floor"] for case in record["cases"]} == {0}  # no mask took in the floor (air < 0)
    assert record["cases"][0]["run"] == str(results)


def test_bad_settings_and_a_folder_without_the_runs_files_are_named(tmp_path, capsys):
    results, folder = _kept_run(tmp_path)
    out = ["--output", str(tmp_path / "o.json")]
    bad = {
        ("--knees", "1.0"): "--knees: distinct shares in",
        ("--knees", "0.8", "0.8"): "--knees: distinct shares in",
        ("--depths", "0"): "--depths: distinct positive numbers of mm",
        ("--depths", "inf"): "--depths: distinct positive numbers of mm",
        ("--features", "log_ensemble_dice", "bogus"): r"--features: \['bogus'\] not among",
        ("--features", "log_kept"): "--features: distinct names that hold log_ensemble_dice",
    }
    for arguments, message in bad.items():
        with pytest.raises(SystemExit):  # argparse's error, before any image is read
            boundary.main([str(results), str(folder), *arguments, *out])
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o.json").exists()
    with pytest.raises(SystemExit):  # the folder first: not a JSON
        boundary.main([str(folder), str(results), *out])
    assert f"runs: {folder} must be a generalisation.py JSON and {results} its --keep folder" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"case case0 is in .*run.json and in .*run.json: one of each case"):
        boundary.main([str(results), str(folder), str(results), str(folder), *out])  # a twin would leak into its fit
    (folder / "case3_medwidit_mask.nii.gz").unlink()
    with pytest.raises(SystemExit):  # a JSON without its folder
        boundary.main([str(results), *out])
    assert "runs: pairs of a generalisation.py JSON and its --keep folder, got 1 paths" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="kept: no case3_image.nii.gz or case3_medwidit_mask.nii.gz; was it run.json"):
        boundary.main([str(results), str(folder), *out])
