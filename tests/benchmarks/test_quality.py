"""benchmarks/quality.py: its report (per-case means, the markdown tables, JSON without inf/NaN) and its medwidit
sampling, which must give the Predictor's maps."""

import math
import sys

import numpy as np
import torch
from benchmark_scripts import load_benchmark


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


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


def test_benchmark_sampling_path_equals_the_predictor(tmp_path):
    """The script samples medwidit through sample_ensemble(return_members=True) and the Predictor's autocast and
    inversion, but reads the file with LoadImaged (the Predictor with its own reader): its maps and the prefix
    ensembles must be the Predictor's, through reorientation, resampling and Invertd."""
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
    maps = quality.medwidit_maps(run, predictor, pre, 3)
    np.testing.assert_allclose(maps["probability"], expected.probability, atol=1e-5)
    np.testing.assert_allclose(maps["entropy"], expected.entropy, atol=1e-5)
    assert run["network_calls"] > 0 and run["probabilities"].shape[0] == 3
    prefix = quality.medwidit_maps(run, predictor, pre, 2)  # the first two members are the 2-sample ensemble
    two = predictor.segment(str(path), steps=2, num_samples=2, generator=_generator(7))
    np.testing.assert_allclose(prefix["probability"], two.probability, atol=1e-5)
