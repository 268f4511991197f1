"""Metric helpers of benchmarks/quality.py (medwidit.inference.metrics): AUROC, ECE, boundary band, Dice and HD95."""

import math

import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark
from monai.metrics import compute_roc_auc

from medwidit.inference.metrics import (
    auroc,
    boundary_band,
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


def test_auroc_equals_monai_with_ties():
    g = _generator(3)
    score = torch.randint(0, 7, (500,), generator=g).float()  # many ties
    target = (torch.rand(500, generator=g) < 0.2 + 0.1 * score).long()
    assert auroc(score, target) == pytest.approx(compute_roc_auc(score, target), abs=1e-12)


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


#####################################################################################################################
# the script's report helpers
#####################################################################################################################


def test_mean_over_cases_and_markdown_table():
    quality = load_benchmark("quality")
    cases = [{"dice": [1.0, 3.0], "steps": 2, "case": "a"}, {"dice": [3.0, 5.0], "steps": 2, "case": "b"}]
    assert quality.mean_over_cases(cases) == {"dice": [2.0, 4.0], "steps": 2, "case": "a"}
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
    assert quality._finite({"hd95": [1.0, math.inf, math.nan]}) == {"hd95": [1.0, None, None]}


def test_benchmark_sampling_path_equals_the_predictor(tmp_path):
    """The script samples medwidit through public pieces (to keep every ensemble member); its maps must be the
    Predictor's, through reorientation, resampling and Invertd."""
    import nibabel as nib
    from monai.transforms import Compose

    from medwidit.data.transforms import preprocessing_transforms
    from medwidit.diffusion import DiffusionSegmenter
    from medwidit.inference import Predictor
    from medwidit.nets import WiDiT

    quality = load_benchmark("quality")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = WiDiT(spatial_dim=3, in_channels=2, cond_channels=1, learn_sigma=False, hidden_size=32, depth=1,
                    num_heads=2, patch_size=2, window_size=2)  # fmt: skip
    preprocessing = {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "intensity": "zscore_nonzero"}
    predictor = Predictor(DiffusionSegmenter(net, num_classes=2), preprocessing=preprocessing, roi_size=16,
                          device="cpu")  # fmt: skip
    affine = np.diag([-1.5, 1.5, 1.25, 1.0])  # LAS, anisotropic: reoriented and resampled on the way in
    image = torch.rand(20, 18, 16, generator=_generator(6)).numpy().astype(np.float32)
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), path)
    expected = predictor.segment(str(path), steps=2, num_samples=3, generator=_generator(7))
    pre = Compose(preprocessing_transforms(predictor.preprocessing, image_key="image"))
    run = quality.sample_medwidit(predictor, str(path), pre, steps=2, num_samples=3, overlap=0.5, seed=7)
    maps = quality.medwidit_maps(run, pre, 3)
    np.testing.assert_allclose(maps["probability"].numpy(), expected.probability, atol=1e-5)
    np.testing.assert_allclose(maps["entropy"].numpy(), expected.entropy, atol=1e-5)
    prefix = quality.medwidit_maps(run, pre, 2)  # the first two members are the 2-sample ensemble
    two = predictor.segment(str(path), steps=2, num_samples=2, generator=_generator(7))
    np.testing.assert_allclose(prefix["probability"].numpy(), two.probability, atol=1e-5)
