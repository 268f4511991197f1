"""Whole-head label maps: the brain keeps its tissue classes, air stays 0, non-brain head voxels split by intensity."""

import numpy as np
import pytest

from medwidit.datasets.brain.head import BRAIN_LABELS, HEAD_CLASSES, NON_BRAIN_CLUSTERS, head_label_map, head_mask


def _phantom(shape=(40, 44, 48)):
    """A ball-shaped head: brain (tissue 1-4) in the middle, then shells of dark, mid and bright non-brain tissue."""
    grid = np.stack(np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    t1 = np.full(shape, 2.0)  # air: noise-free dark background
    tissue = np.zeros(shape, np.uint8)
    for inner, outer, value in ((0, 6, 120.0), (6, 9, 90.0), (9, 11, 60.0)):  # brain: WM, GM, CSF-like
        t1[(radius >= inner) & (radius < outer)] = value
    tissue[radius < 6], tissue[(radius >= 6) & (radius < 9)], tissue[(radius >= 9) & (radius < 11)] = 2, 1, 4
    tissue[radius < 2] = 3  # deep grey matter
    shells = {5: (11, 13, 20.0), 6: (13, 15, 70.0), 7: (15, 17, 150.0)}  # expected class: (inner, outer, T1)
    for inner, outer, value in shells.values():
        t1[(radius >= inner) & (radius < outer)] = value
    return t1, tissue, radius, shells


def test_brain_keeps_its_tissue_air_is_zero_and_non_brain_is_ordered_dark_to_bright():
    t1, tissue, radius, shells = _phantom()
    label = head_label_map(t1, tissue)
    assert label.dtype == np.uint8 and set(np.unique(label)) == set(HEAD_CLASSES)
    np.testing.assert_array_equal(label[tissue > 0], tissue[tissue > 0])
    assert (label[radius >= 18] == 0).all()
    for expected, (inner, outer, _) in shells.items():
        assert (label[(radius >= inner + 0.5) & (radius < outer - 0.5)] == expected).all(), expected
    assert np.isin(label, BRAIN_LABELS).sum() == (tissue > 0).sum()
    assert len(HEAD_CLASSES) == 1 + len(BRAIN_LABELS) + NON_BRAIN_CLUSTERS


def test_head_mask_is_one_filled_component():
    t1, _, radius, _ = _phantom()
    t1[radius < 3] = 0.0  # a dark hole inside the head is still head
    t1[:3, :3, :3] = 200.0  # a bright speck in the air is not
    mask = head_mask(t1)
    assert mask[radius < 16].all() and not mask[radius >= 18].any()


def test_deterministic():
    t1, tissue, _, _ = _phantom()
    rng = np.random.default_rng(0)
    noisy = t1 + rng.normal(0, 5, t1.shape)
    np.testing.assert_array_equal(head_label_map(noisy, tissue), head_label_map(noisy, tissue))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t1, tissue: (t1[1:], tissue), "shape"),
        (lambda t1, tissue: (t1, np.where(tissue == 4, 9, tissue).astype(np.uint8)), r"values \[9\]"),
        (lambda t1, tissue: (t1, np.zeros_like(tissue)), "no brain voxel"),
        (lambda t1, tissue: (t1 * (tissue > 0), tissue), "brain-extracted"),
    ],
)
def test_bad_input_names_the_template_and_the_problem(change, message):
    t1, tissue, _, _ = _phantom()
    with pytest.raises(ValueError, match=message) as error:
        head_label_map(*change(t1, tissue), name="mni152_1mm")
    assert "mni152_1mm" in str(error.value)
