"""The localization pass: a coarse pass of the same weights finds the foreground, and the full-resolution ensemble is
background farther than ``margin_mm`` from it; its settings, the bundle's ``inference.json`` entry, the CLI's
``--no-localize``, and the cases it leaves alone."""

import json
import logging
import re

import numpy as np
import pytest
import torch
from inference_volumes import ThresholdOracle, run_cli_with_and_without, save_nifti, set_inference_key

from medwidit.diffusion import DiffusionSegmenter
from medwidit.inference import InputError, Predictor, localize, sample_ensemble
from medwidit.inference.localize import check_localization, foreground_region, restrict_to_region

PREPROCESSING = {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "none"}
FAST = {"steps": 2, "num_samples": 2}
SHIPPED = {"spacing": [4.0, 4.0, 4.0], "margin_mm": 6.0, "min_kept": 0.5, "warn_kept": 0.85}


def test_settings_are_checked_and_name_what_is_wrong():
    assert check_localization(None, 3) is None
    assert check_localization({"spacing": 4, "margin_mm": 6}, 3) == SHIPPED  # the defaults are the shipped values
    assert check_localization({"spacing": [3, 4], "margin_mm": 0, "min_kept": 1, "warn_kept": 1}, 2) == {
        "spacing": [3.0, 4.0], "margin_mm": 0.0, "min_kept": 1.0, "warn_kept": 1.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"min_kept 0.9 is above warn_kept 0.85"):
        check_localization({"spacing": 4, "margin_mm": 6, "min_kept": 0.9, "warn_kept": 0.85}, 3)
    # a min_kept alone above the default warn_kept raises the default with it (from a review: refused, naming a
    # warn_kept the user had not set); every case the region does not cut is still warned
    assert check_localization({"spacing": 4, "margin_mm": 6, "min_kept": 0.9}, 3)["warn_kept"] == 0.9
    with pytest.raises(ValueError, match=r"warn_kept must be a share in \[0, 1\], got -0.1"):
        check_localization({"spacing": 4, "margin_mm": 6, "warn_kept": -0.1}, 3)
    bad = [
        ([4, 4], r"spacing must be a positive number of mm or 3 of them, got \[4, 4\]"),
        ("4", r"spacing must be a positive number"),
        ([4, 0, 4], r"spacing must be a positive number"),
        (True, r"spacing must be a positive number"),
    ]
    for spacing, message in bad:
        with pytest.raises(ValueError, match=rf"^here: {message}"):
            check_localization({"spacing": spacing, "margin_mm": 6}, 3, source="here")
    with pytest.raises(ValueError, match=r"margin_mm must be a number of mm >= 0, got -1"):
        check_localization({"spacing": 4, "margin_mm": -1}, 3)
    with pytest.raises(ValueError, match=r"min_kept must be a share in \[0, 1\], got 1.5"):
        check_localization({"spacing": 4, "margin_mm": 6, "min_kept": 1.5}, 3)
    with pytest.raises(ValueError, match=r"missing \['margin_mm'\]; unknown \['margin'\]"):
        check_localization({"spacing": 4, "margin": 6}, 3)
    with pytest.raises(ValueError, match=r"must be null or a mapping"):
        check_localization([4, 6], 3)


def test_the_margin_is_in_mm_along_each_axis_of_an_anisotropic_grid():
    labels = np.zeros((9, 9, 9), dtype=np.int64)
    labels[4, 4, 4] = 1
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    region = foreground_region(labels, affine, margin_mm=3.0)
    assert region[1, 4, 4] and region[7, 4, 4] and not region[0, 4, 4]  # 3 voxels of 1 mm
    assert region[4, 4, 3] and region[4, 4, 5] and not region[4, 4, 2]  # 1 voxel of 3 mm (2 would be 6 mm)
    assert region[6, 6, 4] and not region[7, 7, 4]  # 2.83 mm and 4.24 mm away in the x-y plane
    assert np.array_equal(foreground_region(labels, affine, 0.0), labels > 0)
    assert not foreground_region(np.zeros_like(labels), affine, 3.0).any()  # nothing found: no region


def test_a_voxel_size_off_by_float_rounding_measures_as_the_round_one():
    """From a review: a header's 2.0000005 mm voxels (float32 rounding; a NIfTI in metres) put the next voxel 1e-6 mm
    past the atlas prior's 2 mm margin, which then left the network no voxel (the mask was the template), and a 1 mm
    scan's 1 mm core kept every voxel (+2 % brain volume). Within DISTANCE_RTOL a distance is the round one's; a voxel
    size really larger (2.0001 mm) is not."""
    from medwidit.inference.atlas import core_of

    cube = np.zeros((24, 24, 24), dtype=np.int64)
    cube[6:18, 6:18, 6:18] = 1
    for size, margin in ((2.0, 2.0), (1.0, 1.0), (0.002 * 1000, 2.0)):
        for noisy in (size * (1 + 2.5e-7), np.float32(size) * (1 + 1e-7), size * (1 - 2.5e-7)):
            exact, jittered = np.diag([size] * 3 + [1.0]), np.diag([noisy] * 3 + [1.0])
            assert np.array_equal(foreground_region(cube, jittered, margin), foreground_region(cube, exact, margin))
            assert np.array_equal(core_of(cube > 0, jittered, margin), core_of(cube > 0, exact, margin))
    assert foreground_region(cube, np.diag([2.0] * 3 + [1.0]), 2.0).sum() > cube.sum()  # the margin reaches a voxel
    assert foreground_region(cube, np.diag([2.0001] * 3 + [1.0]), 2.0).sum() == cube.sum()  # a larger voxel: not


def test_the_region_computed_in_the_foregrounds_box_equals_the_whole_grids_transform():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    labels = np.zeros((30, 24, 20), dtype=np.int64)
    labels[8:14, 5:9, 12:15] = rng.integers(0, 3, (6, 4, 3))  # two classes, holes, near one face
    affine = np.diag([0.8, 1.5, 2.5, 1.0])
    whole = ndimage.distance_transform_edt(labels == 0, sampling=(0.8, 1.5, 2.5)) <= 5.0
    assert np.array_equal(foreground_region(labels, affine, 5.0), whole) and whole.sum() > (labels > 0).sum()


@pytest.mark.parametrize("shifts", [localize.MAX_BALL_SHIFTS, 0])
def test_the_region_is_scipys_distance_transform_on_any_grid_and_margin(monkeypatch, shifts):
    """The ball dilation is exact: the voxels within the margin by scipy's transform, for scattered, dense and single
    foregrounds, thick slices, anisotropic voxels, margins on and off the lattice; 0 shifts allowed: the transform."""
    from scipy import ndimage

    monkeypatch.setattr(localize, "MAX_BALL_SHIFTS", shifts)
    rng = np.random.default_rng(2)
    spacings = ([2.0, 2.0, 2.0], [1.0, 1.0, 3.0], [0.7, 0.7, 5.0], [2.5, 1.3, 0.9], [0.65, 0.55, 0.65])
    for shape in ((23, 19, 17), (10, 4, 10), (6, 2, 30)):  # grids thinner than the ball across an axis too
        for spacing in spacings:
            for margin in (0.5, 2.0, 4.55, 6.0, 6.5, 8.25):  # 4.55 = 7 x 0.65 and 8.25 = 15 x 0.55 mm, as floats
                for density in (0.001, 0.05, 0.4):
                    labels = (rng.random(shape) < density).astype(np.int64)
                    labels.flat[rng.integers(labels.size)] = 1  # scipy's transform of no foreground measures nothing
                    distance = ndimage.distance_transform_edt(labels == 0, sampling=spacing)
                    whole = distance <= margin * (1 + localize.DISTANCE_RTOL)  # 7 x 0.65 is 4.550000000000001
                    assert np.array_equal(foreground_region(labels, np.diag([*spacing, 1.0]), margin), whole)
    single = np.zeros((20, 3), np.int64)
    single[10, 1] = 1  # a 2-D grid three voxels wide, a 12 mm ball
    expected = ndimage.distance_transform_edt(single == 0) <= 12.0
    assert np.array_equal(foreground_region(single, np.eye(4), 12.0), expected)


def test_members_are_background_outside_the_region_and_untouched_inside():
    members = torch.rand(3, 1, 2, 4, 4, 4)
    members = members / members.sum(2, keepdim=True)
    region = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    region[..., :2, :, :] = True
    out, kept, applied = restrict_to_region(members, region)
    assert applied.tolist() == [True] and torch.equal(out[..., :2, :, :], members[..., :2, :, :])
    assert torch.equal(out[:, :, 0, 2:], torch.ones(3, 1, 2, 4, 4)) and not out[:, :, 1, 2:].any()
    foreground = members.mean(0).argmax(1) > 0  # (1, 4, 4, 4)
    assert torch.allclose(kept, foreground[:, :2].sum() / foreground.sum().double())
    assert restrict_to_region(members, None) == (members, None, None)
    # a region that holds less than min_kept of the foreground leaves the members as they are
    untouched, share, applied = restrict_to_region(members, region, min_kept=float(kept) + 0.01)
    assert torch.equal(untouched, members) and torch.equal(share, kept) and applied.tolist() == [False]
    with pytest.raises(ValueError, match=r"region must be \(B, 1, \*S\) = \(1, 1, 4, 4, 4\), got \(1, 4, 4, 4\)"):
        restrict_to_region(members, region[0])


def test_the_ensemble_summary_describes_the_restricted_members():
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    image = torch.zeros(1, 1, 8, 8, 8)
    image[..., 1:7, 1:7, 1:7] = torch.linspace(0.3, 0.7, 6).view(6, 1, 1)  # a band of uncertain voxels
    region = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    region[..., :4, :, :] = True
    free = sample_ensemble(segmenter, image, roi_size=(8, 8, 8), generator=torch.Generator().manual_seed(0), **FAST)
    held = sample_ensemble(
        segmenter, image, roi_size=(8, 8, 8), generator=torch.Generator().manual_seed(0), region=region, **FAST
    )
    assert torch.equal(held["mean_probability"][..., :4, :, :], free["mean_probability"][..., :4, :, :])
    assert torch.equal(held["mean_probability"][:, 0, 4:], torch.ones(1, 4, 8, 8))
    assert free["mean_probability"][:, 1, 4:].max() > 0.5 and not held["entropy"][..., 4:, :, :].any()


def _scan_with_a_far_speck(tmp_path):
    """A ball (the structure) and, 14 mm from its edge, one bright voxel: the full-resolution oracle calls it
    foreground, while on a 4 mm grid the resampled speck is dim (it lies between the coarse grid's points)."""
    shape = (40, 32, 32)
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    distance = np.sqrt((grid[0] - 12) ** 2 + (grid[1] - 16) ** 2 + (grid[2] - 16) ** 2)
    image = (distance <= 8).astype(np.float32)
    image[34, 18, 18] = 1.0
    return save_nifti(tmp_path / "scan.nii.gz", image, affine=np.eye(4)), image


def test_a_coarse_pass_that_disagrees_with_the_full_one_cuts_nothing_and_is_warned_about(tmp_path, caplog):
    path, _ = _scan_with_a_far_speck(tmp_path)
    strict = _oracle_predictor({"spacing": 4.0, "margin_mm": 4.0, "min_kept": 1.0, "warn_kept": 1.0})  # speck outside
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        (done,) = strict.predict_from_files(path, tmp_path / "out", progress=False, warn_dice=0.5, **FAST)
    result = strict.segment(path, **FAST)
    assert result.label_map[34, 18, 18] == 1
    assert result.quality["localization"]["applied"] is False and result.quality["localization"]["kept"] < 1
    assert done.quality["localization"] == result.quality["localization"]
    assert np.array_equal(result.probability, _oracle_predictor(None).segment(path, **FAST).probability)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and re.fullmatch(
        r"scan: the localization pass's region held 0\.99\d\d of the full-resolution foreground \(below min_kept 1: "
        r"the two grids disagree about where it is, so it was not localised\): check this case before using it\.",
        warnings[0],
    )  # fmt: skip


def test_a_share_at_min_kept_is_applied_and_reported_applied():
    """The share is float64, as Python compares it: 7 of 10 voxels held with min_kept 0.7 is applied, and so
    reported (a float32 share of 0.7 lies above 0.7, the float64 one does not)."""
    members = torch.zeros(1, 1, 2, 10, 1, 1)
    members[:, :, 1] = 1  # every voxel foreground
    region = torch.zeros(1, 1, 10, 1, 1, dtype=torch.bool)
    region[:, :, :7] = True
    out, kept, applied = restrict_to_region(members, region, min_kept=0.7)
    assert kept.dtype == torch.float64 and float(kept) >= 0.7 and bool(applied) and not out[:, :, 1, 7:].any()


def test_each_item_of_a_batch_is_cut_or_not_by_its_own_share():
    members = torch.zeros(2, 2, 2, 4, 1, 1)
    members[:, :, 1] = 1
    region = torch.zeros(2, 1, 4, 1, 1, dtype=torch.bool)
    region[0, :, :3] = True  # item 0 holds 3 of 4, item 1 holds 1 of 4
    region[1, :, :1] = True
    out, kept, applied = restrict_to_region(members, region, min_kept=0.5)
    assert kept.tolist() == [0.75, 0.25] and applied.tolist() == [True, False]
    assert not out[:, 0, 1, 3:].any() and torch.equal(out[:, 1], members[:, 1])  # item 0 cut, item 1 left


def _oracle_predictor(localization):
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    return Predictor(segmenter, preprocessing=PREPROCESSING, roi_size=16, device="cpu", localization=localization)


def test_foreground_far_from_the_coarse_pass_is_removed_and_the_rest_is_untouched(tmp_path):
    path, image = _scan_with_a_far_speck(tmp_path)
    free = _oracle_predictor(None).segment(path, **FAST)
    held = _oracle_predictor({"spacing": 4.0, "margin_mm": 4.0}).segment(path, **FAST)
    assert free.label_map[34, 18, 18] == 1 and held.label_map[34, 18, 18] == 0
    near = np.zeros(image.shape, dtype=bool)
    near[:26] = True  # the ball and more than 4 mm around it
    assert np.array_equal(held.label_map[near], free.label_map[near]) and held.label_map[12, 16, 16] == 1
    assert np.array_equal(held.probability[:, near], free.probability[:, near])
    assert held.probability[1, 34, 18, 18] == 0 and held.entropy[34, 18, 18] == 0
    ball = int((image > 0.5).sum())
    assert held.quality["localization"] == {
        "spacing": [4.0, 4.0, 4.0], "margin_mm": 4.0, "min_kept": 0.5, "warn_kept": 0.85,
        "kept": pytest.approx(ball / (ball + 1)),
        "applied": True,
    }  # fmt: skip
    assert free.quality["localization"] is None
    skipped = _oracle_predictor({"spacing": 4.0, "margin_mm": 4.0}).segment(path, localize=False, **FAST)
    assert np.array_equal(skipped.probability, free.probability) and skipped.quality["localization"] is None


class NoisyOracle(ThresholdOracle):
    """ThresholdOracle whose estimate also follows the noisy input: its samples depend on the noise drawn."""

    def forward(self, x, t, conditioned=None):
        return super().forward(x, t, conditioned) + 0.5 * x


def test_a_region_that_holds_everything_gives_exactly_the_unlocalised_result(tmp_path):
    """The coarse pass draws from a copy of the generator: the full-resolution members draw what they would alone."""
    image = np.random.default_rng(0).random((24, 20, 16)).astype(np.float32)
    path = save_nifti(tmp_path / "scan.nii.gz", image, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    results = []
    for localization in (None, {"spacing": 3.0, "margin_mm": 1000.0}):
        predictor = Predictor(
            DiffusionSegmenter(NoisyOracle(), num_classes=2), preprocessing={**PREPROCESSING, "spacing": [2.0] * 3},
            roi_size=16, device="cpu", localization=localization,
        )  # fmt: skip
        results.append(predictor.segment(path, generator=torch.Generator().manual_seed(5), **FAST))
    free, held = results
    assert held.quality["localization"] is not None and (free.label_map > 0).any()
    assert np.array_equal(held.probability, free.probability) and np.array_equal(held.entropy, free.entropy)
    other = _oracle_predictor(None)
    other.segmenter = other.segmenters[0] = DiffusionSegmenter(NoisyOracle(), num_classes=2)
    other.preprocessing = {**other.preprocessing, "spacing": [2.0] * 3}
    reseeded = other.segment(path, generator=torch.Generator().manual_seed(6), **FAST)
    assert not np.array_equal(reseeded.probability, free.probability)  # the noise does reach the result


def test_a_coarse_pass_that_finds_nothing_cuts_nothing_and_a_grid_too_small_skips_it_with_a_warning(tmp_path, caplog):
    speck = np.zeros((40, 32, 32), dtype=np.float32)
    speck[34, 18, 18] = 1.0
    path = save_nifti(tmp_path / "speck.nii.gz", speck, affine=np.eye(4))
    small = save_nifti(
        tmp_path / "small.nii.gz", np.linspace(1, 2, 1440, dtype=np.float32).reshape(10, 12, 12), affine=np.eye(4)
    )
    predictor = _oracle_predictor({"spacing": 4.0, "margin_mm": 4.0})
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        predictor.predict_from_files(path, tmp_path / "out", progress=False, warn_dice=0.5, **FAST)
        found = predictor.segment(path, **FAST)
        whole = predictor.segment(small, **FAST)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("speck: the localization pass's region held 0.0000 of the full-resolution foreground" in w
               for w in warnings)  # fmt: skip
    assert any("small.nii.gz: not localised" in w and "too small to segment" in w for w in warnings)
    assert found.label_map[34, 18, 18] == 1 and found.quality["localization"]["applied"] is False
    assert whole.label_map.all() and whole.quality["localization"] is None


def test_a_bundle_declares_it_and_a_caller_or_a_bad_entry_overrides_or_stops_it(bundle):
    shipped = Predictor.from_bundle(bundle, device="cpu", weight_sets=1)
    assert shipped.localization == SHIPPED
    assert Predictor.from_bundle(bundle, device="cpu", weight_sets=1, localization=None).localization is None
    set_inference_key(bundle, "localization", None)
    assert Predictor.from_bundle(bundle, device="cpu", weight_sets=1).localization is None
    set_inference_key(bundle, "localization", {"spacing": 4.0})
    with pytest.raises(InputError, match=r"inference\.json: localization: expected the keys .*missing \['margin_mm'\]"):
        Predictor.from_bundle(bundle, device="cpu", weight_sets=1)


def test_the_cli_localises_with_the_bundle_and_records_it_and_no_localize_turns_it_off(tmp_path, bundle):
    run_cli_with_and_without(tmp_path, bundle, "--no-localize")  # into a/ and b/
    for out, expected in (("a", SHIPPED), ("b", None)):
        record = json.loads((tmp_path / out / "medwidit_run.json").read_text())
        assert record["sampling"]["localization"] == expected
    quality = json.loads((tmp_path / "b" / "scan_quality.json").read_text())
    assert quality["localization"] is None
    localized = json.loads((tmp_path / "a" / "scan_quality.json").read_text())["localization"]
    assert {k: localized[k] for k in SHIPPED} == SHIPPED and 0 <= localized["kept"] <= 1


def test_the_localization_pass_alone_is_the_case_sampled_on_the_coarse_grid(tmp_path):
    path, _ = _scan_with_a_far_speck(tmp_path)
    noisy = {"preprocessing": PREPROCESSING, "roi_size": 16, "device": "cpu"}
    predictor = Predictor(DiffusionSegmenter(NoisyOracle(), num_classes=2), **noisy, localization={"spacing": 4.0,
                          "margin_mm": 4.0})  # fmt: skip
    coarse = predictor.localization_pass(path, generator=torch.Generator().manual_seed(2), **FAST)
    noisy["preprocessing"] = {**PREPROCESSING, "spacing": [4.0] * 3}
    direct = Predictor(DiffusionSegmenter(NoisyOracle(), num_classes=2), **noisy).segment(
        path, generator=torch.Generator().manual_seed(2), **FAST
    )
    assert np.array_equal(coarse.probability, direct.probability) and np.array_equal(coarse.label_map, direct.label_map)
    assert coarse.label_map[12, 16, 16] == 1 and coarse.label_map[34, 18, 18] == 0  # the speck is not found at 4 mm
    assert _oracle_predictor(None).localization_pass(path, **FAST) is None


def test_a_seed_given_as_the_generator_is_refused_with_how_to_pass_one(tmp_path):
    """generator=0 raised a raw AttributeError under the shipped bundle's localization and bias retry (before the
    ensemble's own check), and localization_pass(generator=0) sampled with the default seed without a word."""
    path, _ = _scan_with_a_far_speck(tmp_path)
    segmenter = DiffusionSegmenter(NoisyOracle(), num_classes=2)
    options = {"preprocessing": PREPROCESSING, "roi_size": 16, "device": "cpu"}
    for extra in ({"localization": {"spacing": 4.0, "margin_mm": 4.0}}, {"bias_retry": True}):
        predictor = Predictor(segmenter, **options, **extra)
        for call in (predictor.segment, predictor.localization_pass):
            with pytest.raises(ValueError, match=r"generator must be a torch.Generator or None, got int .*manual_seed"):
                call(path, generator=0, **FAST)


def test_views_that_stand_in_for_samples_leave_the_localization_pass_as_it_was(tmp_path):
    """The pass has no views: with ``augment`` V it draws V x ``num_samples`` members per set, so 2 views x 1 sample
    (the same network calls as 1 x 2) find the region 1 x 2 finds, and ``localization_pass(augment=V)`` is segment's."""
    path, _ = _scan_with_a_far_speck(tmp_path)
    predictor = Predictor(
        DiffusionSegmenter(NoisyOracle(), num_classes=2), preprocessing=PREPROCESSING, roi_size=16, device="cpu",
        localization={"spacing": 4.0, "margin_mm": 1000.0}, view_options={"flip_axes": [], "gamma_range": [1, 1]},
    )  # fmt: skip
    pairs = predictor.localization_pass(path, generator=torch.Generator().manual_seed(4), **FAST)
    viewed = predictor.localization_pass(path, generator=torch.Generator().manual_seed(4), steps=2, num_samples=1,
                                         augment=2)  # fmt: skip
    single = predictor.localization_pass(path, generator=torch.Generator().manual_seed(4), steps=2, num_samples=1)
    assert np.array_equal(viewed.probability, pairs.probability)
    assert not np.array_equal(single.probability, pairs.probability)  # one member per set draws another pass
    result = predictor.segment(path, generator=torch.Generator().manual_seed(4), steps=2, num_samples=1, augment=2)
    assert np.allclose(result.disagreement, 0.5 * np.abs(result.probability - pairs.probability).sum(0))


def test_a_region_that_held_less_than_warn_kept_is_cut_and_named_in_the_cases_warning_line(tmp_path, caplog):
    path, _ = _scan_with_a_far_speck(tmp_path)
    predictor = _oracle_predictor({"spacing": 4.0, "margin_mm": 4.0, "min_kept": 0.5, "warn_kept": 1.0})
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        (result,) = predictor.predict_from_files(path, tmp_path / "out", progress=False, warn_dice=0.5, **FAST)
    localized = result.quality["localization"]
    assert localized["applied"] and localized["kept"] < 1.0  # cut: the speck is gone
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and re.fullmatch(
        r"scan: the localization pass's region held 0\.99\d\d of the full-resolution foreground \(below 1: the two "
        r"grids disagree\): check this case before using it\.", warnings[0]
    )  # fmt: skip
    caplog.clear()
    quiet = _oracle_predictor({"spacing": 4.0, "margin_mm": 4.0})  # the default warn_kept: 0.9995 held is fine
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        quiet.predict_from_files(path, tmp_path / "quiet", progress=False, warn_dice=0.5, **FAST)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_the_disagreement_map_is_the_two_passes_distance_and_zero_without_the_pass(tmp_path):
    """``_disagreement``: the total variation distance between the localization pass's class probabilities and the
    result's, voxel by voxel (the speck the 4 mm pass does not find: 1 there); written with the other maps, zeros
    where no pass ran."""
    import nibabel as nib

    from medwidit.inference.localize import scale_disagreement

    path, _ = _scan_with_a_far_speck(tmp_path)
    predictor = _oracle_predictor({"spacing": 4.0, "margin_mm": 1000.0})  # the region holds everything: no cut
    result = predictor.segment(path, generator=torch.Generator().manual_seed(3), **FAST)
    coarse = predictor.localization_pass(path, generator=torch.Generator().manual_seed(3), **FAST)
    expected = 0.5 * np.abs(result.probability - coarse.probability).sum(0)
    assert np.allclose(result.disagreement, expected) and result.disagreement.dtype == np.float32
    assert result.disagreement[34, 18, 18] == pytest.approx(1.0) and result.disagreement[12, 16, 16] == 0.0
    assert 0.0 <= result.disagreement.min() and result.disagreement.max() <= 1.0
    assert predictor.segment(path, localize=False, **FAST).disagreement is None
    predictor.predict_from_files(path, tmp_path / "on", save_uncertainty=True, progress=False, **FAST)
    written = np.asarray(nib.load(tmp_path / "on" / "scan_disagreement.nii.gz").dataobj)
    assert written.shape == result.label_map.shape and written.max() == pytest.approx(1.0)
    unlocalized = _oracle_predictor(None)
    unlocalized.predict_from_files(path, tmp_path / "none", save_uncertainty=True, progress=False, **FAST)
    assert not np.asarray(nib.load(tmp_path / "none" / "scan_disagreement.nii.gz").dataobj).any()
    with pytest.raises(ValueError, match=r"not on one grid"):
        scale_disagreement(result.probability, result.probability[:, :-1])


def test_the_error_score_is_the_entropy_in_bits_plus_the_disagreement_plus_the_surface_and_is_written(tmp_path):
    """``_error_score``: the map that ranked wrong voxels best on the validation scans, written by the CLI instead of
    left for the user to add up: the entropy over ln K plus the disagreement (none without the pass) plus
    ``exp(-d / SURFACE_MM)``, d the distance in mm to the written labels' surface."""
    import nibabel as nib

    from medwidit.inference.localize import SURFACE_MM, error_score
    from medwidit.inference.metrics import boundary_distance

    path, _ = _scan_with_a_far_speck(tmp_path)
    predictor = _oracle_predictor({"spacing": 4.0, "margin_mm": 1000.0})
    result = predictor.segment(path, generator=torch.Generator().manual_seed(3), **FAST)
    spacing = result.geometry.spacing
    surface = np.exp(-boundary_distance([result.label_map], spacing=spacing).numpy() / SURFACE_MM)
    expected = result.entropy / np.log(2) + result.disagreement + surface
    assert np.allclose(result.error_score, expected) and result.error_score.dtype == np.float32
    assert result.error_score[34, 18, 18] >= 1.0  # the speck the 4 mm pass missed
    predictor.predict_from_files(path, tmp_path / "on", save_uncertainty=True, progress=False, **FAST)
    written = np.asarray(nib.load(tmp_path / "on" / "scan_error_score.nii.gz").dataobj)
    assert np.allclose(written, result.error_score)
    alone = _oracle_predictor(None).segment(path, **FAST)
    alone_surface = np.exp(-boundary_distance([alone.label_map], spacing=spacing).numpy() / SURFACE_MM)
    assert np.allclose(alone.error_score, alone.entropy / np.log(2) + alone_surface)
    with pytest.raises(ValueError, match=r"not on one grid"):
        error_score(result.entropy, result.disagreement[:-1], 2)
    with pytest.raises(ValueError, match=r"label map .* not on one grid"):
        error_score(result.entropy, None, 2, result.label_map[:-1], spacing=spacing)
    with pytest.raises(ValueError, match=r"num_classes must be at least 2"):
        error_score(result.entropy, None, 1)


def test_the_error_score_surface_term_is_one_on_the_surface_and_falls_with_distance_in_mm():
    """The surface term is exp(-d / SURFACE_MM) with d in mm on the label map's own spacing: 1 on both sides of a
    boundary, exp(-1) SURFACE_MM away, and nothing where the map has no boundary."""
    from medwidit.inference.localize import SURFACE_MM, error_score

    labels = np.zeros((40, 4, 4), np.int64)
    labels[20:] = 1  # a boundary between x = 19 and 20
    zero = np.zeros(labels.shape, np.float32)
    score = error_score(zero, None, 2, labels, spacing=(0.5, 1.0, 1.0))
    assert score[19, 0, 0] == pytest.approx(1.0) and score[20, 0, 0] == pytest.approx(1.0)
    steps = round(SURFACE_MM / 0.5)  # SURFACE_MM away on a 0.5 mm axis
    assert score[20 + steps, 0, 0] == pytest.approx(np.exp(-1.0), rel=1e-5)
    assert score[0, 0, 0] < score[10, 0, 0] < score[19, 0, 0]
    assert not error_score(zero, None, 2, np.ones_like(labels), spacing=(1.0, 1.0, 1.0)).any()  # no boundary
    assert np.array_equal(error_score(zero, None, 2), zero)  # without the label map: the map before the term
    with pytest.raises(ValueError, match=r"spacing .* is required with label_map"):
        error_score(zero, None, 2, labels)  # the term is in mm: no silent 1 mm


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_a_written_error_score_measures_the_surface_in_mm_on_each_axis_of_the_file(tmp_path, suffix):
    """The CLI's map takes each axis' own spacing from the file: on 1 x 2 x 3 mm voxels a voxel 4 mm from a face
    across the 2 mm axis (2 voxels) scores exp(-1), one 2 mm away across the 1 mm axis exp(-0.5), one 3 mm away across
    the 3 mm axis exp(-0.75)."""
    import SimpleITK as sitk

    from medwidit.inference.io import read_image
    from medwidit.inference.predictor import Segmentation

    labels = np.zeros((12, 12, 12), np.int64)
    labels[6:, 6:, 6:] = 1  # a cube's corner: faces at i = 5|6, j = 5|6 and k = 5|6
    image = sitk.GetImageFromArray(labels.transpose(2, 1, 0).astype(np.int16))  # ITK arrays are (k, j, i)
    image.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / f"case{suffix}"))
    _, geometry = read_image(tmp_path / f"case{suffix}")
    zero = np.zeros(labels.shape, np.float32)
    probability = np.stack([1.0 - labels, labels]).astype(np.float32)
    result = Segmentation(labels, probability, zero, geometry, num_samples=1)
    score = result.error_score
    assert score[11, 8, 11] == pytest.approx(np.exp(-4.0 / 4.0), rel=1e-5)  # 2 voxels from j = 6: 4 mm
    assert score[8, 11, 11] == pytest.approx(np.exp(-2.0 / 4.0), rel=1e-5)  # 2 voxels from i = 6: 2 mm
    assert score[11, 11, 7] == pytest.approx(np.exp(-3.0 / 4.0), rel=1e-5)  # 1 voxel from k = 6: 3 mm


def test_probability_smoothing_leaves_the_localization_pass_and_its_region_as_they_were(tmp_path, monkeypatch):
    """``probability_smoothing`` smooths the full-resolution result only: the coarse pass's labels, from which the
    region is drawn, are the unsmoothed pass's, so the region does not move with the smoothing."""
    import medwidit.inference.predictor as predictor_module

    path, _ = _scan_with_a_far_speck(tmp_path)
    seen = []
    region = predictor_module.foreground_region
    monkeypatch.setattr(
        predictor_module, "foreground_region", lambda labels, *a: seen.append(labels) or region(labels, *a)
    )
    results = []
    for sigma in (0.0, 2.0):
        predictor = Predictor(
            DiffusionSegmenter(NoisyOracle(), num_classes=2), preprocessing=PREPROCESSING, roi_size=16, device="cpu",
            localization={"spacing": 4.0, "margin_mm": 4.0}, probability_smoothing=sigma,
        )  # fmt: skip
        results.append(predictor.segment(path, generator=torch.Generator().manual_seed(2), **FAST))
    assert len(seen) == 2 and np.array_equal(seen[0], seen[1])
    plain, smoothed = results
    assert not np.array_equal(plain.probability, smoothed.probability)  # the result itself is smoothed
    assert smoothed.label_map[34, 18, 18] == 0 and smoothed.label_map[12, 16, 16] == 1
