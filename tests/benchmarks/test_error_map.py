"""benchmarks/error_map.py: the leave-one-case-out logistic fit learns what separates wrong voxels, on raw features,
and the features are drawn on the case's own grid with the clean scan's head."""

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import torch
from benchmark_scripts import load_benchmark, sphere_head

from medwidit.inference.metrics import auroc


def _case(rng, size=4000):
    """Wrong voxels where a + 2b is large; c is noise."""
    a, b, c = (rng.normal(size=size).astype(np.float32) for _ in range(3))
    return {"a": a, "b": b, "c": c, "wrong": a + 2 * b + 0.3 * rng.normal(size=size) > 1.5}


def test_fit_recovers_the_separating_direction_on_raw_features():
    error_map = load_benchmark("error_map")
    rng = np.random.default_rng(0)
    cases = [_case(rng) for _ in range(3)]
    for case in cases:
        case["a"] = case["a"] * 10 + 5  # scaled and shifted: the coefficients come back on the raw scale
    for balanced in (False, True):
        coef = error_map.fit(cases[:2], ("a", "b", "c"), balanced, np.random.default_rng(0))
        held_out = cases[2]
        score = coef[0] + coef[1] * held_out["a"] + coef[2] * held_out["b"] + coef[3] * held_out["c"]
        assert auroc(torch.from_numpy(score), torch.from_numpy(held_out["wrong"])) > 0.97
        assert coef[1] > 0 and coef[2] > 0 and abs(coef[3]) < 0.2 * coef[2]
        assert 15 < coef[2] / coef[1] < 25  # the logit goes with a + 2b = raw a / 10 + 2b: b's weight is 20 raw a's


def test_features_are_on_the_case_grid_inside_the_clean_head():
    error_map = load_benchmark("error_map")
    image, brain = sphere_head()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    clean, label = nib.Nifti1Image(image, affine), nib.Nifti1Image(brain.astype(np.uint8), affine)
    thick = np.diag([2.0, 2.0, 6.0, 1.0])  # every third slice, as generalisation.variant("thick_z") keeps
    shifted = nib.Nifti1Image(np.ascontiguousarray(image[:, :, ::3]), thick)
    predicted = brain[:, :, ::3].copy()
    predicted[:, :, 5:7] = 0  # two central slices' brain missed
    entropy = np.zeros(predicted.shape, np.float32)
    result = SimpleNamespace(label_map=predicted, entropy=entropy, disagreement=np.zeros_like(entropy))
    f, maps = error_map.features(result, shifted, clean, label)
    head = error_map.head_mask(image)[:, :, ::3]
    assert f["wrong"].shape == (int(head.sum()),)
    assert int(f["wrong"].sum()) == int(((predicted > 0) != (brain[:, :, ::3] > 0))[head].sum()) > 0
    assert set(maps) == set(error_map.SINGLE) and all(m.shape == f["wrong"].shape for m in maps.values())
    assert np.all(maps["boundary_proximity"] <= 0) and np.all(f["inside"][f["din"] > 0] == 1)
