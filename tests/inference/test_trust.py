"""inference/trust: the entropy decomposition and the Dice estimate on ensembles whose answers are known, and
test-time views that undo exactly."""

import json
import math

import numpy as np
import pytest
import torch
from monai.transforms import RandBiasField

from medwidit.diffusion import encode_labels, to_probabilities
from medwidit.inference.trust import (
    View,
    apply_view,
    augmentation_views,
    boundary_overlap,
    check_expected_volumes,
    check_view_options,
    decompose_entropy,
    edge_faces,
    estimated_dice,
    fit_view,
    invert_view,
    quality_report,
)


def _hard(labels: torch.Tensor, k: int = 2) -> torch.Tensor:
    return to_probabilities(encode_labels(labels, k))


def test_groups_that_disagree_are_epistemic_and_noise_inside_a_group_aleatoric():
    zero, one = _hard(torch.zeros(1, 1, 4, 4, dtype=torch.long)), _hard(torch.ones(1, 1, 4, 4, dtype=torch.long))
    # two groups that each always say the same thing, but the opposite of each other: all epistemic
    split = decompose_entropy(torch.stack([zero, zero, one, one]), groups=2)
    torch.testing.assert_close(split["total"], torch.full((1, 1, 4, 4), math.log(2)))
    torch.testing.assert_close(split["aleatoric"], torch.zeros(1, 1, 4, 4))
    torch.testing.assert_close(split["epistemic"], torch.full((1, 1, 4, 4), math.log(2)))
    # each group torn the same way inside: all aleatoric
    split = decompose_entropy(torch.stack([zero, one, zero, one]), groups=2)
    torch.testing.assert_close(split["aleatoric"], torch.full((1, 1, 4, 4), math.log(2)))
    torch.testing.assert_close(split["epistemic"], torch.zeros(1, 1, 4, 4))


def test_decomposition_adds_up_and_rejects_uneven_groups():
    p = torch.softmax(torch.randn(6, 2, 3, 5, 5, generator=torch.Generator().manual_seed(0)), dim=2)
    split = decompose_entropy(p, groups=3)
    torch.testing.assert_close(split["aleatoric"] + split["epistemic"], split["total"])
    assert (split["epistemic"] >= 0).all()
    with pytest.raises(ValueError, match="6 members cannot form 4 groups"):
        decompose_entropy(p, groups=4)


def test_estimated_dice_is_one_when_members_agree_and_exact_for_a_known_split():
    labels = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    labels[..., :5] = 1
    same = _hard(labels)
    torch.testing.assert_close(estimated_dice(torch.stack([same, same, same])), torch.ones(1, 2))
    shifted = labels.clone()
    shifted[..., 4] = 0  # one member's class 1 loses a column: 40 of 50 voxels
    members = torch.stack([same, same, _hard(shifted)])
    dice = estimated_dice(members)  # final labels = majority = `labels`
    torch.testing.assert_close(dice[0, 1], torch.tensor((1 + 1 + 2 * 40 / 90) / 3))
    torch.testing.assert_close(dice[0, 0], torch.tensor((1 + 1 + 2 * 50 / 110) / 3))


def test_view_options_restrict_flips_and_gammas_and_leave_the_default_draws_alone():
    """``flip_axes`` cycles the allowed flips (the second view already flips), ``gamma_range`` bounds the curve, and
    the shifts are the default views' own: both draw the same random stream as the unrestricted views."""
    plain = augmentation_views(7, 3, seed=2)
    restricted = augmentation_views(7, 3, seed=2, flip_axes=[0], gamma_range=[1.0, 1.35])
    assert [v.flip_axes for v in restricted] == [(), (0,), (), (0,), (), (0,), ()]
    assert all(1.0 <= v.gamma <= 1.35 for v in restricted) and len({v.gamma for v in restricted[1:]}) == 6
    assert [v.shift for v in restricted] == [v.shift for v in plain]
    two = augmentation_views(9, 3, flip_axes=[0, 2])  # the nonempty subsets in turn, then none
    assert [v.flip_axes for v in two[1:5]] == [(0,), (2,), (0, 2), ()]
    # the unrestricted draws as they were before the limits existed (commit 9139547), pinned
    assert [v.flip_axes for v in plain[:4]] == [(), (0, 1), (0, 1, 2), (0, 1)]
    assert [v.shift for v in plain[:4]] == [(), (1, 2, 3), (2, 1, 2), (0, 2, 3)]
    gammas = [1.0, 0.7828216124210138, 1.0990649896422682, 0.9547276179039966]
    torch.testing.assert_close([v.gamma for v in plain[:4]], gammas, rtol=0, atol=1e-12)
    assert all(v.shift == () for v in augmentation_views(5, 3, max_shift=0))


def test_spread_shifts_put_the_views_patch_grids_evenly_apart_and_keep_the_other_draws():
    """``spread_shifts``: view k moves k (max_shift + 1) / count voxels along every axis (two views half a 4-voxel
    patch apart, four a quarter), where a random draw can leave an axis' grid in place; flips and gammas are the
    random views' own."""
    random = augmentation_views(4, 3, seed=0, flip_axes=[0], gamma_range=[1.0, 1.35])
    spread = augmentation_views(4, 3, seed=0, flip_axes=[0], gamma_range=[1.0, 1.35], spread_shifts=True)
    assert [v.shift for v in spread] == [(), (1, 1, 1), (2, 2, 2), (3, 3, 3)]
    assert [v.shift for v in random][1] == (0, 3, 2)  # the first axis' grid stays where it was
    assert [(v.flip_axes, v.gamma) for v in spread] == [(v.flip_axes, v.gamma) for v in random]
    assert [v.shift for v in augmentation_views(2, 3, spread_shifts=True)] == [(), (2, 2, 2)]
    assert [v.shift for v in augmentation_views(3, 2, max_shift=5, spread_shifts=True)] == [(), (2, 2), (4, 4)]
    assert check_view_options({"spread_shifts": True}, 3) == {"spread_shifts": True}
    assert check_view_options({"spread_shifts": False}, 3) == {}  # the default: the keywords as without it


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"flip_axes": [3]}, r"augment_views: flip_axes must be distinct spatial axes 0\.\.2, e\.g\. \[0\], got \[3\]"),
        ({"flip_axes": [0, 0]}, "flip_axes must be distinct"),
        ({"flip_axes": "0"}, "flip_axes must be distinct"),
        ({"gamma_range": [1.3, 1.0]}, r"gamma_range must be \[low, high\] with 0 < low <= high, got \[1.3, 1.0\]"),
        ({"gamma_range": [0, 1]}, "gamma_range must be"),
        ({"gamma_range": [1.0]}, "gamma_range must be"),
        ({"max_shift": -1}, r"augment_views: max_shift must be an int >= 0, got -1"),
        ({"bias_range": [0.2, 0.1]}, r"augment_views: bias_range must be \[low, high\] coil-field coefficients"),
        ({"bias_range": [0.1, float("nan")]}, "bias_range must be"),
        ({"bias_range": 0.2}, "bias_range must be"),
        ({"spread_shifts": 1}, r"augment_views: spread_shifts must be true or false, got 1"),
        ({"flips": [0]}, r"augment_views: unknown key\(s\) \['flips'\]; expected some of flip_axes"),
        ([0], "augment_views must be a mapping of flip_axes, gamma_range, max_shift"),
    ],
)
def test_bad_view_options_name_the_key(spec, match):
    with pytest.raises(ValueError, match=match):
        check_view_options(spec, 3)


def test_bad_view_limits_in_a_direct_call_name_the_function():
    with pytest.raises(ValueError, match=r"^augmentation_views: flip_axes must be distinct spatial axes 0\.\.1"):
        augmentation_views(3, 2, flip_axes=[2])


def test_views_start_with_the_identity_and_invert_exactly():
    views = augmentation_views(6, 3, seed=1)
    assert views[0] == View() and len(views) == 6
    assert any(v.flip_axes for v in views[1:]) and any(v.gamma != 1.0 for v in views[1:])
    assert any(v.shift for v in views[1:]) and all(0 <= s <= 3 for v in views for s in v.shift)
    image = torch.rand(1, 1, 5, 6, 7) * 2 - 1
    for view in views:
        seen = apply_view(image, view)
        shift = view.shift or (0, 0, 0)
        assert seen.shape[2:] == tuple(n + s for n, s in zip(image.shape[2:], shift, strict=True))
        assert seen.min() >= image.min() and seen.max() <= image.max()  # the curve keeps the range, air is the floor
        maps = torch.rand(2, *seen.shape[:2], *seen.shape[2:])  # (S, B, K, *S + shift) as the network sees them
        back = invert_view(maps, view, 3)
        assert back.shape[3:] == image.shape[2:]
        if view.gamma == 1.0:  # the image itself goes through the views' spatial part and back exactly
            assert torch.equal(invert_view(seen, view), image)
        else:  # the curve is monotone: the order of intensities survives it
            assert torch.equal(invert_view(seen, view).flatten().argsort(), image.flatten().argsort())


def test_coil_field_views_multiply_by_monai_fields_and_leave_the_air_and_the_other_draws_alone():
    """``bias_range`` gives every view but the identity its own seeded RandBiasField on the [0, 1] intensities; the
    first view's flip, gamma and shift are those drawn without it, and the identity stays the identity."""
    plain = augmentation_views(4, 3, seed=5, flip_axes=[0], gamma_range=[1.0, 1.35])
    biased = augmentation_views(4, 3, seed=5, flip_axes=[0], gamma_range=[1.0, 1.35], bias_range=[0.0, 0.2])
    assert biased[0] == View()
    assert (biased[1].flip_axes, biased[1].gamma, biased[1].shift) == (
        plain[1].flip_axes,
        plain[1].gamma,
        plain[1].shift,
    )
    assert all(v.bias_range == (0.0, 0.2) for v in biased[1:]) and len({v.bias_seed for v in biased[1:]}) == 3
    image = torch.rand(2, 1, 6, 7, 8) * 3 - 1
    image[..., 0, :, :] = -1.0  # a slab of air at each volume's floor
    view = View(bias_range=(0.1, 0.3), bias_seed=11)
    seen = apply_view(image, view, value_range=(-1.0, 2.0))
    u = (image + 1) / 3
    for b in range(2):  # MONAI's transform on each volume's [0, 1] intensities, seeded alike, then clipped
        monai = RandBiasField(coeff_range=(0.1, 0.3), prob=1.0)
        monai.set_random_state(11)
        expected = -1 + 3 * torch.as_tensor(np.asarray(monai(u[b].numpy()))).clamp(0, 1)
        torch.testing.assert_close(seen[b], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen, image) and (seen[..., 0, :, :] == -1.0).all()  # air stays air
    assert seen.min() >= -1.0 and seen.max() <= 2.0
    assert torch.equal(apply_view(image, view, value_range=(-1.0, 2.0)), seen)  # seeded: the same field every time
    assert torch.equal(invert_view(seen, view), seen)  # nothing spatial to undo
    # from a review: the range's bounds were built on the CPU whatever the image's device (meta: the same rule)
    assert apply_view(image.to("meta"), view, value_range=(-1.0, 2.0)).device.type == "meta"


def test_a_shifted_view_pads_air_before_each_axis_and_crops_it_off():
    image = torch.arange(24.0).reshape(1, 1, 2, 3, 4) + 5
    view = View(flip_axes=(1,), shift=(1, 0, 2))
    seen = apply_view(image, view)
    assert seen.shape == (1, 1, 3, 3, 6)
    unflipped = torch.flip(seen, dims=[3])
    assert (unflipped[:, :, :1] == 5).all() and (unflipped[..., :2] == 5).all()  # each channel's floor
    torch.testing.assert_close(unflipped[:, :, 1:, :, 2:], image)
    assert torch.equal(invert_view(seen, view), image)
    with pytest.raises(ValueError, match="shift must be 3 voxel counts"):
        apply_view(image, View(shift=(1, 2)))


def test_a_shift_through_air_rolls_the_grid_and_keeps_its_size_where_the_anatomy_reaches_a_face_it_pads():
    """``fit_view``: along an axis whose last ``shift`` voxels are air (each channel's minimum, in every case) the
    shift rolls the grid, so the network sees what padding shows it on a grid of the same size; where anatomy reaches
    the far face it pads as before. Either way the inverse is exact, flips included."""
    image = torch.zeros(2, 1, 7, 6, 9)  # air at 0
    image[:, :, 1:5, 1:6, 2:6] = torch.rand(2, 1, 4, 5, 4) + 1  # the head; it reaches the far face of the 2nd axis
    view = fit_view(image, View(flip_axes=(0,), shift=(2, 2, 3)))
    assert view.wrap == (True, False, True) and view.shift == (2, 2, 3) and view.flip_axes == (0,)
    seen = apply_view(image, view)
    assert seen.shape == (2, 1, 7, 8, 9)  # only the axis without air at its far face grew
    assert apply_view(image, View(flip_axes=(0,), shift=(2, 2, 3))).shape == (2, 1, 9, 8, 12)  # padding, unfitted
    unflipped = seen.flip(2)
    torch.testing.assert_close(unflipped[:, :, 2:, 2:, 3:], image[:, :, :5, :, :6])  # the content moved by the shift
    assert (unflipped[:, :, :2] == 0).all() and (unflipped[..., :3] == 0).all()  # air came round to the front
    assert torch.equal(invert_view(seen, view), image)
    maps = torch.rand(3, *seen.shape)  # (S, B, K, *S of the view)
    back = invert_view(maps, view, 3)
    assert back.shape[3:] == image.shape[2:] and torch.equal(back, maps.flip(3).roll((-2, -3), (3, 5))[..., 2:, :])
    image[1, 0, -1, 0, 0] = 3.0  # one case has anatomy at the far face of the first axis: no wrap there for the batch
    assert fit_view(image, View(shift=(2, 0, 0))).wrap == (False, False, False)
    assert fit_view(image, View()) == View() and fit_view(image, View(shift=(0, 0, 9))).wrap == (False, False, False)
    two = torch.zeros(1, 2, 6, 5, 4)  # two channels: only the second reaches the far face of the last axis
    two[:, 1, 2:4, 1:3, 1:] = 1.0
    assert fit_view(two, View(shift=(1, 1, 1))).wrap == (True, True, False)
    assert fit_view(two, View(shift=(1, 1, 1)), value_range=(-1.0, 2.0)).wrap == (False, False, False)  # air at -1
    assert fit_view(two, View(shift=(1, 1, 1)), value_range=(0.0, 2.0)).wrap == (True, True, False)
    with pytest.raises(ValueError, match=r"a view's wrap must be 3 flags"):
        apply_view(image, View(shift=(1, 1, 1), wrap=(True,)))


def test_quality_report_counts_millilitres_on_the_grid_and_summarises_the_maps():
    labels = np.zeros((4, 5, 6), dtype=np.int64)
    labels[:2] = 1  # 60 voxels of class 1
    affine = np.diag([2.0, 0.5, 3.0, 1.0])  # 3 mm^3 per voxel
    total = np.where(labels == 1, 0.4, 0.0).astype(np.float32)
    report = quality_report(labels, affine, [0.99, 0.8], {"total": total}, views=3, num_samples=2)
    assert report["volume_ml"] == pytest.approx({"0": 60 * 3 / 1000, "1": 60 * 3 / 1000})
    assert report["predicted_dice"] == pytest.approx({"0": 0.99, "1": 0.8}) and report["min_predicted_dice"] == 0.8
    assert report["uncertainty"]["total"] == pytest.approx({"mean_foreground_nats": 0.4, "mean_volume_nats": 0.2})
    assert report["views"] == 3 and report["samples_per_view"] == 2
    assert report["expected_volume_ml"] == {} and report["unexpected_volumes"] == {}
    json.dumps(report, allow_nan=False)  # JSON types only


def test_the_faces_of_the_field_of_view_a_class_touches_are_named_by_the_world_direction_they_face():
    """From a review: a brain cut at the top by the field of view was 1395 of 1758 mL, inside the expected range,
    and the report said nothing of it. Each class lists the faces it touches, named as the world sees them whatever
    the voxel order."""
    labels = np.zeros((6, 7, 8), dtype=np.int64)
    labels[2:4, 2:4, 5:] = 1  # reaches the last slice of axis 2
    labels[0, 3, 3] = 2  # the first slice of axis 0
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    assert edge_faces(labels, ras, 4) == {"1": ["superior"], "2": ["left"], "3": []}
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])  # axis 0 runs towards the left: its first slice faces right
    assert edge_faces(labels, lps, 3) == {"1": ["superior"], "2": ["right"]}
    report = quality_report(labels, ras, [1.0, 0.9, 0.9], {}, views=1, num_samples=2)
    assert report["edge_faces"] == {"1": ["superior"], "2": ["left"]}


def _ball(shape=(24, 24, 24), radius=7.0) -> np.ndarray:
    grid = np.indices(shape) - (np.array(shape) // 2)[:, None, None, None]
    return (grid**2).sum(0) <= radius**2


def test_boundary_overlap_is_low_on_an_edge_and_high_where_the_image_shows_none():
    """A bright ball on dark air: its own mask's outside shell is air (0), whatever the sign of the contrast; a mask
    cut 3 voxels inside the ball has tissue on both sides (1)."""
    ball, rng = _ball(), np.random.default_rng(0)
    image = np.where(ball, 100.0, 0.0) + rng.normal(0, 2.0, ball.shape)
    affine = np.eye(4)
    assert boundary_overlap(image[None], ball, affine) == 0.0
    assert boundary_overlap(-image[None], ball, affine) == 0.0  # an inverted contrast's edge is an edge too
    assert boundary_overlap(image[None], _ball(radius=4.0), affine) > 0.75  # 10th-90th percentile of the inside
    assert boundary_overlap(image[None], np.zeros_like(ball), affine) is None  # no class, no boundary
    assert boundary_overlap(image[None], np.ones_like(ball), affine) is None  # no outside
    inner = _ball(radius=4.0)
    share = boundary_overlap(image[None], inner, affine)
    image[12, 12, 16] = np.nan  # on the inner shell (4 voxels from the centre): counts for neither side
    assert boundary_overlap(image[None], inner, affine) == pytest.approx(share, abs=0.01)
    with pytest.raises(
        ValueError, match=r"image \(1, 24, 24, 24\) must be \(C, \*S\) on the mask's grid \(24, 24, 20\)"
    ):
        boundary_overlap(image[None], ball[..., :20], affine)
    with pytest.raises(ValueError, match="must be \\(C, \\*S\\) on the mask's grid"):  # as many voxels, another grid
        boundary_overlap(np.zeros((1, 10, 20, 30)), np.ones((20, 10, 30), dtype=bool), affine)
    for depth in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="depth_mm must be a positive number of mm"):
            boundary_overlap(image[None], ball, affine, depth_mm=depth)
    assert boundary_overlap(image[None], ball, np.diag([4.0, 4.0, 4.0, 1.0])) is None  # no voxel within 3 mm


def test_boundary_overlap_measures_its_shells_in_mm_and_takes_the_clearest_channel():
    """A mask that ends at x = 10 (the volume's other faces are not a boundary), one dark voxel slab after it and
    tissue beyond: at 1 mm the 3 mm shell holds x = 10, 11, 12 (2 of 3 tissue-like); with 3 mm voxels along x only
    x = 10 (dark). Of two channels the one where the boundary is clearer counts."""
    mask = np.zeros((20, 6, 6), dtype=bool)
    mask[:10] = True
    image = np.full(mask.shape, 100.0)
    image[10] = 0.0
    assert boundary_overlap(image[None], mask, np.eye(4)) == pytest.approx(2 / 3)
    assert boundary_overlap(image[None], mask, np.diag([3.0, 1.0, 1.0, 1.0])) == 0.0
    assert boundary_overlap(image[None], mask, np.eye(4), depth_mm=1.0) == 0.0
    flat = np.full(mask.shape, 100.0)
    assert boundary_overlap(np.stack([flat, image]), mask, np.eye(4)) == pytest.approx(2 / 3)
    assert boundary_overlap(flat[None], mask, np.eye(4)) == 1.0


def test_quality_report_gives_each_foreground_class_its_boundary_overlap_with_the_image():
    labels = np.where(_ball(), 1, 0).astype(np.int64)
    image = np.where(labels == 1, 100.0, 0.0)[None]
    report = quality_report(labels, np.eye(4), [1.0, 0.9, 1.0], {}, views=1, num_samples=2, image=image)
    assert report["boundary_overlap"] == {"1": 0.0, "2": None}  # class 2 is empty
    assert quality_report(labels, np.eye(4), [1.0, 0.9], {}, views=1, num_samples=2)["boundary_overlap"] == {}
    json.dumps(report, allow_nan=False)


def test_a_class_volume_outside_the_expected_range_is_listed_with_its_range():
    labels = np.zeros((10, 10, 10), dtype=np.int64)
    labels[:5] = 1  # 500 voxels of 8 mm^3: 4 mL
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    report = quality_report(labels, affine, [1.0, 1.0], {}, views=1, num_samples=2, expected_volume_ml={1: [5, 9]})
    assert report["expected_volume_ml"] == {"1": [5.0, 9.0]}
    assert report["unexpected_volumes"] == {"1": {"volume_ml": pytest.approx(4.0), "expected_ml": [5.0, 9.0]}}
    inside = quality_report(labels, affine, [1.0, 1.0], {}, views=1, num_samples=2, expected_volume_ml={"1": [3, 4]})
    assert inside["unexpected_volumes"] == {}  # the bounds belong to the range
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize(
    "spec, message",
    [
        ([900, 2200], " must map foreground classes to \\[low, high\\]"),
        ({"0": [1, 2]}, ": '0' is not a foreground class \\(1 to 1\\)"),
        ({"2": [1, 2]}, ": '2' is not a foreground class"),
        ({"brain": [1, 2]}, ": 'brain' is not a foreground class"),
        ({"1": [2, 1]}, "\\['1'\\] must be \\[low, high\\] in mL with 0 <= low < high, got \\[2, 1\\]"),
        ({"1": [-1, 1]}, ".*0 <= low < high"),
        ({"1": [1]}, ".*0 <= low < high"),
        ({"1": "1-2"}, ".*0 <= low < high"),
        ({"1": [1, float("inf")]}, ".*0 <= low < high"),
    ],
)
def test_expected_volumes_are_checked_with_their_source_named(spec, message):
    with pytest.raises(ValueError, match=f"^where{message}"):
        check_expected_volumes(spec, 2, source="where")


def test_quality_report_names_a_short_dice_list_or_a_map_off_the_grid():
    """From a review: one Dice estimate too few read as 'label map values must be in 0..K-1', and a map on another
    grid failed in a bare boolean index."""
    labels = np.zeros((4, 4, 4), np.int64)
    labels[1:3, 1:3, 1:3] = 2
    with pytest.raises(
        ValueError, match="predicted_dice has 2 entries, one per class, but the label map holds class 2"
    ):
        quality_report(labels, np.eye(4), [0.9, 0.8], {}, views=1, num_samples=2)
    with pytest.raises(ValueError, match=r"maps\['total'\] has shape \(4, 4\), not the label map's \(4, 4, 4\)"):
        quality_report(labels, np.eye(4), [0.9, 0.8, 0.7], {"total": np.zeros((4, 4))}, views=1, num_samples=2)
