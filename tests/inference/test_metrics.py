"""inference/metrics: AUROC (torchmetrics) equal to the formula it replaced, ties included; ECE and its bins; the
boundary band; the one Dice (MONAI) in memory and between files; HD95."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from medwidit.inference.metrics import (
    auroc,
    boundary_band,
    boundary_distance,
    dice_per_class,
    evaluate_files,
    expected_calibration_error,
    segmentation_metrics,
    uncertainty_quality,
)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


#####################################################################################################################
# AUROC
#####################################################################################################################


def test_auroc_perfect_inverted_random():
    target = torch.arange(1000) % 3 == 0
    score = target.double() + 0.01 * torch.rand(1000, generator=_generator())
    assert auroc(score, target) == 1.0
    assert auroc(-score, target) == 0.0
    random = torch.rand(200_000, generator=_generator(1))
    assert auroc(random, torch.rand(200_000, generator=_generator(2)) < 0.3) == pytest.approx(0.5, abs=0.01)


def test_auroc_ties_count_half_and_one_class_is_nan():
    target = torch.tensor([0, 1, 0, 1])
    assert auroc(torch.zeros(4), target) == 0.5  # every pair tied
    assert auroc(torch.tensor([0.0, 1.0, 1.0, 2.0]), target) == 0.875  # of 4 pairs: 3 won, 1 tied
    assert math.isnan(auroc(torch.rand(5, generator=_generator()), torch.zeros(5)))


def _mann_whitney(score: torch.Tensor, target: torch.Tensor) -> float:
    """The hand-written AUROC that torchmetrics replaced: mid-ranks for ties, one sort, in float64."""
    score, target = score.flatten().double(), target.flatten().bool()
    n_pos = int(target.sum())
    n_neg = target.numel() - n_pos
    sorted_score, order = score.sort()
    _, inverse, counts = torch.unique_consecutive(sorted_score, return_inverse=True, return_counts=True)
    mid_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2
    positive_ranks = mid_rank[inverse][target[order]].sum()
    return float((positive_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize("levels", [None, 2, 7, 50])  # continuous scores, then ever fewer ties
def test_auroc_equals_the_mann_whitney_formula_and_monai_with_ties(levels):
    g = _generator(3)
    for _ in range(20):
        n = int(torch.randint(20, 3000, (1,), generator=g))
        score = torch.rand(n, generator=g) if levels is None else torch.randint(0, levels, (n,), generator=g).float()
        target = (torch.rand(n, generator=g) < 0.2 + 0.5 * score / score.max().clamp_min(1)).long()
        if target.sum() in (0, n):
            continue
        # torchmetrics computes in float32: equal to float32 rounding (measured: at most 1.0e-7 over 200 cases)
        assert auroc(score, target) == pytest.approx(_mann_whitney(score, target), abs=5e-7)
        assert auroc(score, target) == pytest.approx(float(compute_roc_auc(score, target)), abs=5e-7)


#####################################################################################################################
# ECE
#####################################################################################################################


def _binary(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([1 - p, p])  # (2, N)


def test_ece_calibrated_is_near_zero_and_overconfident_is_the_gap():
    g = _generator(4)
    p = torch.rand(400_000, generator=g)
    label = (torch.rand(400_000, generator=g) < p).long()  # truly p-calibrated
    calibrated = expected_calibration_error(_binary(p), label)
    assert calibrated["ece"] < 0.005 and calibrated["ece_classwise"] < 0.005
    # always 99 % sure, right 70 % of the time
    label = (torch.rand(400_000, generator=g) < 0.7).long()
    over = expected_calibration_error(_binary(torch.full((400_000,), 0.99)), label)
    assert over["ece"] == pytest.approx(0.29, abs=0.005)


def test_top_label_ece_keeps_a_confidence_of_one_in_the_last_bin():
    """Bins [b, b + 1/15) with 1 in the last: a sure wrong voxel and a right one at 0.95 share a bin, gap
    |0.5 - 0.975| (torchmetrics' multiclass_calibration_error gives 1 a bin of its own: 0.5 * 1 + 0.5 * 0.05)."""
    probability = torch.tensor([[1.0, 0.95], [0.0, 0.05]])  # (K, N): both predict class 0
    label = torch.tensor([1, 0])  # the sure one is wrong
    assert expected_calibration_error(probability, label)["ece"] == pytest.approx(0.475)


def test_ece_counts_whole_volumes_exactly():
    """MONAI's bins accumulated in float32: 4M voxels, all 70 % sure and right 7 of 10 times (ECE 0 up to float32's
    0.7), scored 0.028; the bins are now counted in float64."""
    n = 4_000_000
    label = (torch.arange(n) % 10 < 7).long()  # class 1 on 7 of every 10 voxels
    probability = _binary(torch.full((n,), 0.7))
    result = expected_calibration_error(probability, label)
    assert result["ece"] < 1e-6 and result["ece_classwise"] < 1e-6, result


def test_ece_bins_are_closed_on_the_left_as_documented():
    """Bins [b, b + 1/n): with 4 bins, 0.5 opens the third bin with 0.625. MONAI's bucketize closed them on the right
    (0.5 fell into the second bin alone): 0.5625 instead of 0.0625."""
    probability = _binary(torch.tensor([0.5, 0.5, 0.625, 0.625]))
    label = torch.tensor([0, 0, 0, 0])  # the 0.5 voxels right (a tie predicts class 0), the 0.625 ones wrong
    assert expected_calibration_error(probability, label, num_bins=4)["ece"] == pytest.approx(0.0625)


def test_ece_one_hot_right_is_zero_and_errors_name_shapes():
    label = torch.tensor([[0, 1], [2, 1]])
    probability = torch.nn.functional.one_hot(label, 3).permute(2, 0, 1).float()  # (K, *S)
    assert expected_calibration_error(probability, label, num_bins=15) == {"ece": 0.0, "ece_classwise": 0.0}
    with pytest.raises(ValueError, match="probability must be"):
        expected_calibration_error(probability[:, :1], label)
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error(probability, label, num_bins=0)


#####################################################################################################################
# boundary band
#####################################################################################################################


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_boundary_band_of_a_sphere_is_a_shell(spacing):
    radius, width, shape = 12.0, 3.0, (40, 40, 24 if spacing[2] == 2.0 else 40)
    mm = [(torch.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    r = torch.sqrt(sum(a**2 for a in torch.meshgrid(*mm, indexing="ij")))  # distance from the centre in mm
    sphere = (r <= radius).long()
    band = boundary_band([sphere], width_mm=width, spacing=spacing)
    step = max(spacing)  # voxelisation puts the discrete surface within one voxel of the sphere
    assert band[(r - radius).abs() <= width - step].all()
    assert not band[(r - radius).abs() > width + step].any()
    inner = (r <= radius - 1).long()  # a second map adds its own boundary
    both = boundary_band([sphere, inner], width_mm=width, spacing=spacing)
    assert (both >= band).all() and both.sum() > band.sum()


def test_boundary_band_without_edges_is_empty_and_width_zero_is_the_edges():
    assert not boundary_band([torch.ones(8, 8, 8, dtype=torch.long)], width_mm=5.0).any()
    label = torch.zeros(8, 8, dtype=torch.long)
    label[:, 4:] = 1
    edges = boundary_band([label], width_mm=0.0)
    assert edges[:, 3:5].all() and edges.sum() == 16


#####################################################################################################################
# Dice, HD95, uncertainty quality
#####################################################################################################################


def test_dice_and_hd95_with_spacing():
    truth = torch.zeros(16, 16, 16, dtype=torch.long)
    prediction = torch.zeros_like(truth)
    truth[4:8, 4:8, 4:8] = 1
    prediction[4:8, 4:8, 6:10] = 1  # half the cube, shifted by 2 voxels along the 2 mm axis
    truth[12, 12, 2] = 2
    prediction[12, 12, 5] = 2  # one voxel, 3 voxels = 6 mm away
    out = segmentation_metrics(prediction, truth, num_classes=4, spacing=(1.0, 1.0, 2.0))
    assert out["dice"][1] == pytest.approx(0.5)
    assert out["dice"][2] == 0.0 and out["dice"][3] == 1.0  # class 3 absent from both
    assert out["hd95"][1] == pytest.approx(4.0)  # every surface point moved 0 or 2 voxels; the 95th: 4 mm
    assert out["hd95"][2] == pytest.approx(6.0)
    assert math.isnan(out["hd95"][3]) and math.isnan(out["hd95"][0])  # absent class; background
    missed = segmentation_metrics(torch.zeros_like(truth), truth, num_classes=3, spacing=2.0)
    assert missed["hd95"][1] == math.inf
    with pytest.raises(ValueError, match="outside"):
        segmentation_metrics(prediction, truth, num_classes=2)


def test_uncertainty_quality_regions():
    g = _generator(5)
    truth = torch.randint(0, 3, (20, 20, 20), generator=g)
    probability = torch.softmax(torch.randn(3, 20, 20, 20, generator=g), dim=0)
    wrong = probability.argmax(0) != truth
    band = torch.zeros_like(truth, dtype=torch.bool)
    band[:10] = True
    out = uncertainty_quality(probability, wrong.float(), truth, band=band)  # an oracle uncertainty
    assert out["volume"]["auroc"] == 1.0 and out["band"]["auroc"] == 1.0
    assert out["volume"]["voxels"] == 8000 and out["band"]["voxels"] == 4000
    assert out["volume"]["error_rate"] == pytest.approx(float(wrong.float().mean()))
    assert set(out["band"]) == {"voxels", "error_rate", "auroc", "ece", "ece_classwise"}
    assert "band" not in uncertainty_quality(probability, wrong.float(), truth)
    with pytest.raises(ValueError, match="share"):
        uncertainty_quality(probability, wrong.float()[0], truth)
    np.testing.assert_allclose(out["volume"]["ece"], expected_calibration_error(probability, truth)["ece"])


def test_dice_empty_truth_scores_one_when_predicted_empty_and_zero_otherwise():
    label = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    label[..., :2] = 1  # class 2 is absent from the truth
    right = label.clone()
    wrong = label.clone()
    wrong[0, 0, 0, 0, 3] = 2  # one voxel of the absent class
    assert dice_per_class(right, label, 3)[0].tolist() == [1.0, 1.0, 1.0]
    scores = dice_per_class(wrong, label, 3)[0]
    assert scores[2] == 0.0 and scores[1] == 1.0 and 0.9 < scores[0] < 1.0
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        dice_per_class(right[0], label[0], 3)


def test_evaluate_files_on_the_label_grid(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    label = np.zeros((16, 16, 16), np.int16)
    label[4:12, 4:12, 4:12] = 1
    label[7:9, 7:9, 7:9] = 2
    prediction = label.copy()
    prediction[label == 2] = 1  # class 2 missed entirely
    for name, array, a in (("label", label, affine), ("pred", prediction, affine), ("moved", label, affine * 1.5)):
        nib.save(nib.Nifti1Image(array, a), tmp_path / f"{name}.nii.gz")
    names = ["background", "outer", "inner"]
    report = evaluate_files(
        [tmp_path / "label.nii.gz", tmp_path / "pred.nii.gz"], [tmp_path / "label.nii.gz"] * 2, num_classes=3,
        class_names=names, output_file=tmp_path / "dice.json",
    )  # fmt: skip
    assert report["cases"][0]["dice"] == {"background": 1.0, "outer": 1.0, "inner": 1.0}
    assert report["cases"][1]["dice"]["inner"] == 0.0 and report["cases"][1]["dice"]["background"] == 1.0
    assert report["mean"]["inner"] == 0.5 and json.loads((tmp_path / "dice.json").read_text()) == report
    # from a mutation review: the foreground mean leaves the background out (with it, 0.832 for 0.748)
    assert report["mean_foreground"] == pytest.approx((report["mean"]["outer"] + report["mean"]["inner"]) / 2)
    assert (tmp_path / "dice.json").stat().st_mode & 0o777 == 0o644
    # a second report into the same file is refused (it was replaced without a word), unless asked
    again = {"num_classes": 3, "output_file": tmp_path / "dice.json"}
    with pytest.raises(FileExistsError, match=r"dice.json: already exists; pass overwrite"):
        evaluate_files([tmp_path / "pred.nii.gz"], [tmp_path / "label.nii.gz"], **again)
    assert json.loads((tmp_path / "dice.json").read_text()) == report
    with pytest.raises(FileExistsError, match="dice.json: already exists"):  # a bundle's "false" is false
        evaluate_files([tmp_path / "pred.nii.gz"], [tmp_path / "label.nii.gz"], **again, overwrite="false")
    second = evaluate_files([tmp_path / "pred.nii.gz"], [tmp_path / "label.nii.gz"], **again, overwrite=True)
    assert json.loads((tmp_path / "dice.json").read_text()) == second != report
    with pytest.raises(ValueError, match="grid"):
        evaluate_files([tmp_path / "moved.nii.gz"], [tmp_path / "label.nii.gz"], num_classes=3)
    # a 0/255 mask: MONAI's Dice dropped the 255 voxels and scored a perfect prediction 0 without a word
    nib.save(nib.Nifti1Image((label > 0).astype(np.uint8) * 255, affine), tmp_path / "mask255.nii.gz")
    nib.save(nib.Nifti1Image((label > 0).astype(np.uint8), affine), tmp_path / "mask1.nii.gz")
    with pytest.raises(ValueError, match=r"mask255.nii.gz: holds label 255, outside the class indices 0..1"):
        evaluate_files([tmp_path / "mask1.nii.gz"], [tmp_path / "mask255.nii.gz"], num_classes=2)


def test_boundary_distance_is_millimetres_to_the_nearest_interface_on_an_anisotropic_grid():
    """A cube's interface voxels (both sides of its faces) are at 0; elsewhere the Euclidean distance in mm with the
    grid's spacing; no interface at all: inf everywhere."""
    label = torch.zeros(20, 20, 20, dtype=torch.long)
    label[5:15, 5:15, 5:15] = 1
    distance = boundary_distance([label], spacing=(1.0, 1.0, 2.0))
    assert distance.dtype == torch.float32 and distance.shape == label.shape
    assert distance[5, 10, 10] == 0 and distance[4, 10, 10] == 0  # either side of the face
    assert distance[7, 10, 10] == pytest.approx(2.0)  # two 1 mm voxels inside along the first axis
    assert distance[10, 10, 2] == pytest.approx(4.0)  # two 2 mm voxels outside along the last
    assert distance[10, 10, 10] == pytest.approx(4.0)  # the centre: 4 voxels of 1 mm in x and y (8 mm in z)
    assert torch.isinf(boundary_distance([torch.ones(6, 6, 6, dtype=torch.long)])).all()


def test_hd95_prints_no_warning_about_monais_own_code():
    """From a review: MONAI 1.5-1.6's compute_hausdorff_distance passes get_mask_edges a deprecated argument, and its
    FutureWarning (with the install's path) printed into the notebook's stored output at every scoring."""
    import warnings

    truth = np.zeros((12, 12, 12), dtype=np.int64)
    truth[3:8, 3:8, 3:8] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = segmentation_metrics(np.roll(truth, 1, axis=0), truth, num_classes=2, spacing=(1.0, 1.0, 1.0))
    assert scores["hd95"][1] == pytest.approx(1.0)


def test_evaluate_files_scores_a_label_stored_in_another_voxel_order_at_the_same_points(tmp_path):
    """A label on the prediction's lattice but stored PIL against RAS (as another tool writes it) was refused as off
    the grid; it is scored voxel by voxel at the same points now. A flip without its shift is another lattice."""
    from nibabel.orientations import axcodes2ornt, ornt_transform

    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [-20.0, 5.0, 12.0]
    label = np.zeros((16, 12, 10), np.int16)
    label[4:12, 3:9, 2:7] = 1
    label[4:6, 3:5, 2:4] = 2  # a corner: any wrong flip or swap moves it
    prediction = label.copy()
    prediction[10:12, 7:9, 5:7] = 0
    nib.save(nib.Nifti1Image(prediction, affine), tmp_path / "pred.nii.gz")
    stored = nib.Nifti1Image(label, affine)
    nib.save(stored, tmp_path / "ras.nii.gz")
    reordered = stored.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("PIL")))
    nib.save(reordered, tmp_path / "pil.nii.gz")
    scored = [evaluate_files([tmp_path / "pred.nii.gz"], [tmp_path / f"{name}.nii.gz"], num_classes=3)["mean"]
              for name in ("ras", "pil")]  # fmt: skip
    assert scored[0] == scored[1] and scored[0]["class_2"] == 1.0 and scored[0]["class_1"] < 1.0
    shifted = nib.Nifti1Image(np.asarray(reordered.dataobj), reordered.affine @ np.diag([1.0, 1.0, -1.0, 1.0]))
    nib.save(shifted, tmp_path / "shifted.nii.gz")
    with pytest.raises(ValueError, match=r"shifted.nii.gz \(shape \(1, 12, 10, 16\)\); predictions must keep"):
        evaluate_files([tmp_path / "pred.nii.gz"], [tmp_path / "shifted.nii.gz"], num_classes=3)
