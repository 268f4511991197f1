"""benchmarks/opening.py: the opening cuts what hangs on the brain by a bridge thinner than its ball and keeps the
rest; each setting is scored against the truth of a generalisation.py --keep run."""

import json

import nibabel as nib
import numpy as np
import pytest
from benchmark_scripts import load_benchmark

opening = load_benchmark("opening")


def _ball_with_a_bridged_blob(shape=(40, 24, 24)):
    """A ball of radius 8 (the brain) and a blob of radius 4 joined to it by a 1-voxel bridge (false brain)."""
    grid = np.indices(shape)
    ball = ((grid[0] - 12) ** 2 + (grid[1] - 12) ** 2 + (grid[2] - 12) ** 2) <= 64
    blob = ((grid[0] - 31) ** 2 + (grid[1] - 12) ** 2 + (grid[2] - 12) ** 2) <= 16
    bridge = (grid[0] >= 20) & (grid[0] <= 27) & (grid[1] == 12) & (grid[2] == 12)
    return ball, ball | blob | bridge


def test_the_bridge_and_what_hangs_on_it_are_cut_and_the_brain_kept():
    ball, mask = _ball_with_a_bridged_blob()
    spacing = np.ones(3)
    kept = opening.open_mask(mask, spacing, radius=2.0, margin=2.0)
    assert not kept[25:, :, :].any()  # the blob and most of the bridge are gone
    assert np.array_equal(kept[:20], ball[:20])  # the ball comes back whole with a margin
    assert kept[21:24].sum() <= 3  # what is left of the bridge lies within r + m of the ball's core
    opened = opening.open_mask(mask, spacing, radius=2.0, margin=0.0)
    assert opened.sum() < ball.sum() and not opened[25:].any()  # m 0: the opening, the ball's corners trimmed
    assert np.array_equal(opening.open_mask(mask, spacing, radius=9.0, margin=0.0), mask)  # erodes to nothing


def test_each_setting_is_scored_against_the_kept_truth(tmp_path):
    ball, mask = _ball_with_a_bridged_blob()
    folder = tmp_path / "kept"
    folder.mkdir()
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), str(folder / "case_medwidit_mask.nii.gz"))
    nib.save(nib.Nifti1Image(ball.astype(np.uint8), np.eye(4)), str(folder / "case_truth.nii.gz"))
    rows = [{"case": "case", "tool": "medwidit", "dice": 0.9}]
    (tmp_path / "run.json").write_text(json.dumps({"rows": rows, "bases": {}}))
    out = tmp_path / "opening.json"
    result = opening.main(
        [str(tmp_path / "run.json"), str(folder), "--radii", "2", "--margins", "0", "2", "--output", str(out)]
    )
    assert result["summary"]["shipped"]["mean_dice"] < 0.97
    assert result["summary"]["r2_m2"]["mean_dice"] > 0.995 and result["summary"]["r2_m2"]["better"] == 1
    written = json.loads(out.read_text())["summary"]
    assert written["shipped"]["mean_dice"] < written["r2_m0"]["mean_dice"] < written["r2_m2"]["mean_dice"]


def test_the_ball_is_in_mm_on_a_permuted_grid_and_scored_on_the_truths_finer_grid(tmp_path):
    """The mask on a 1 x 1 x 2 mm grid whose axes are permuted in the affine (the voxel sizes are its columns'
    lengths, not its rows'), the truth on a 1 mm grid of the same space: a 2 mm ball must not erode 4 mm."""
    ball, mask = _ball_with_a_bridged_blob(shape=(40, 24, 24))  # 1 mm voxels
    mask_coarse = mask[:, :, ::2]  # 2 mm along the third voxel axis
    affine = np.array([[0, 0, 2, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)  # voxel axes -> y, z, x
    fine = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    folder = tmp_path / "kept"
    folder.mkdir()
    nib.save(nib.Nifti1Image(mask_coarse.astype(np.uint8), affine), str(folder / "c_medwidit_mask.nii.gz"))
    nib.save(nib.Nifti1Image(ball.astype(np.uint8), fine), str(folder / "c_truth.nii.gz"))
    kept = opening.open_mask(mask_coarse, np.array([1.0, 1.0, 2.0]), radius=2.0, margin=2.0)
    assert not kept[25:].any() and kept[:20].sum() == mask_coarse[:20].sum()
    (tmp_path / "run.json").write_text(json.dumps({"rows": [{"case": "c", "tool": "medwidit", "dice": 0.9}]}))
    run, out = str(tmp_path / "run.json"), str(tmp_path / "o.json")
    result = opening.main([run, str(folder), "--radii", "2", "--margins", "0", "2", "--output", out])
    assert result["cases"][0]["r2_m2"]["dice"] > 0.95 > result["cases"][0]["shipped"]["dice"]
    opened = opening.open_mask(mask_coarse, np.array([1.0, 1.0, 2.0]), radius=2.0, margin=0.0)
    truth_image = nib.load(str(folder / "c_truth.nii.gz"))
    assert result["cases"][0]["r2_m0"] == opening.score(opened, affine, truth_image)  # the affine's voxel sizes


def test_a_folder_without_the_runs_masks_and_bad_settings_are_refused(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"rows": [{"case": "c", "tool": "medwidit", "dice": 0.9}]}))
    (tmp_path / "other").mkdir()
    with pytest.raises(SystemExit, match="no c_medwidit_mask.nii.gz or no truth for c"):
        opening.main([str(tmp_path / "run.json"), str(tmp_path / "other")])
    for bad in (["--radii", "nan"], ["--radii", "0"], ["--margins", "-1"]):
        with pytest.raises(SystemExit):
            opening.parse_args([str(tmp_path / "run.json"), str(tmp_path / "other"), *bad])
