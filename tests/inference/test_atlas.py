"""The atlas prior: a template head registered to the case (SimpleITK, mutual information), its mask carried onto the
case's grid, and every member background farther than ``margin_mm`` from it; the geometry between nibabel's RAS
arrays and ITK's LPS images, its settings, the bundle's ``inference.json`` entry and the CLI's ``--no-atlas-prior``."""

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_volumes import ThresholdOracle, run_cli_with_and_without, save_nifti, set_inference_key
from nibabel.processing import resample_from_to
from scipy.spatial.transform import Rotation

import medwidit.inference.predictor as predictor_module
from medwidit.diffusion import DiffusionSegmenter
from medwidit.inference import InputError, Predictor
from medwidit.inference.atlas import (
    AtlasFit,
    atlas_mask,
    atlas_warning,
    check_atlas_prior,
    core_of,
    fit_atlas,
    sitk_image,
    template_dice,
    template_information,
)
from medwidit.inference.localize import (
    decode_regions,
    encode_regions,
    fill_core,
    foreground_region,
    outside_to_background,
    restrict_to_region,
)
from medwidit.utils import itk_ras_affine

PREPROCESSING = {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "none"}
FAST = {"steps": 2, "num_samples": 2}


def _dice(a, b) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _oblique_affine(spacing=(1.5, 1.2, 2.0), degrees=(10, -20, 30), origin=(-40.0, 25.0, -30.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 0] *= -1  # a left-handed voxel order too
    affine[:3, 3] = origin
    return affine


def test_an_array_and_its_ras_affine_become_an_itk_image_at_the_same_places_in_the_world():
    array = np.random.default_rng(0).random((7, 5, 6)).astype(np.float32)
    affine = _oblique_affine()
    image = sitk_image(array, affine)
    assert np.array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), array)
    for index in [(0, 0, 0), (6, 4, 5), (3, 1, 2)]:
        ras = (affine @ [*index, 1])[:3]
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-9)
        assert image[index] == array[index]
    # as ITK itself reads the same array and affine from a NIfTI file
    assert sitk_image(array, np.diag([2.0, 3.0, 4.0, 1.0])).GetSpacing() == (2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match=r"needs a 3D image, got shape \(7, 5\)"):
        sitk_image(array[..., 0], affine)


def test_the_itk_geometry_converts_back_to_the_same_ras_affine():
    affine = _oblique_affine()
    image = sitk_image(np.zeros((3, 4, 5), np.float32), affine)
    np.testing.assert_allclose(itk_ras_affine(image.GetSpacing(), image.GetOrigin(), image.GetDirection()), affine,
                               atol=1e-9)  # fmt: skip


def test_the_image_read_by_itk_from_a_nifti_file_is_the_one_built_from_nibabels_array(tmp_path):
    array = np.random.default_rng(1).random((6, 5, 4)).astype(np.float32)
    affine = _oblique_affine(degrees=(0, 0, 90))
    path = save_nifti(tmp_path / "x.nii.gz", array, affine=affine)
    read, built = sitk.ReadImage(str(path)), sitk_image(array, affine)
    np.testing.assert_allclose(read.GetOrigin(), built.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), built.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(read.GetSpacing(), built.GetSpacing(), atol=1e-5)


def _template(tmp_path):
    """A synthetic head at 2 mm: scalp, a dark skull, a brain with a dark core, an eye in front and a neck below; the
    brain is the template's mask."""
    shape = (48, 56, 52)
    grid = np.stack(np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij")).astype(np.float64) * 2.0

    def inside(center, radii):
        return (((grid - np.reshape(center, (3, 1, 1, 1))) / np.reshape(radii, (3, 1, 1, 1))) ** 2).sum(0) <= 1

    head = inside((0, 0, 6), (36, 46, 40)) | (inside((0, 6, -40), (16, 18, 30)) & (grid[2] < -10))
    skull = inside((0, 0, 8), (32, 42, 34))
    brain = inside((0, 0, 9), (29, 38, 30))
    image = np.where(head, 0.8, 0.0)
    image[skull] = 0.15
    image[brain] = 0.55
    image[inside((0, 0, 10), (8, 14, 8))] = 0.25
    image[inside((14, 40, -6), (6, 6, 6))] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -np.asarray(shape) + 1.0
    files = {"image": save_nifti(tmp_path / "head.nii.gz", image.astype(np.float32), affine=affine),
             "label": save_nifti(tmp_path / "brain.nii.gz", brain.astype(np.uint8), affine=affine)}  # fmt: skip
    return files, image, brain, affine


def _moved_case(template_image, brain, template_affine, *, invert=False):
    """The template moved in the world (8 degrees, 5 mm, 6 % larger) and sampled on an oblique 1.5 mm grid."""
    move = np.eye(4)
    move[:3, :3] = 1.06 * Rotation.from_euler("xyz", (8, -5, 6), degrees=True).as_matrix()
    move[:3, 3] = (5.0, -4.0, 6.0)
    moved = nib.Nifti1Image(template_image.astype(np.float32), move @ template_affine)
    shape, affine = (72, 80, 76), _oblique_affine((1.5, 1.5, 1.5), (0, 0, 180), (0.0, 0.0, 0.0))
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) - 1) / 2  # centred on the world's origin, as the head
    grid = (shape, affine)
    case = np.asarray(resample_from_to(moved, grid, order=1).dataobj)
    truth = np.asarray(resample_from_to(nib.Nifti1Image(brain.astype(np.float32), moved.affine), grid, order=1).dataobj)
    if invert:  # another contrast: the head's tissues in reverse order, the air still dark
        case = np.where(case > 0.05, 1.1 - case, 0.0)
    return case.astype(np.float32), truth >= 0.5, grid[1]


@pytest.mark.parametrize("invert, least", [(False, 0.95), (True, 0.9)])
def test_the_registered_template_mask_lands_on_the_moved_brain_whatever_the_contrast(tmp_path, invert, least):
    files, image, brain, affine = _template(tmp_path)
    case, truth, case_affine = _moved_case(image, brain, affine, invert=invert)
    spec = check_atlas_prior({**files, "margin_mm": 0})
    unregistered = np.asarray(
        resample_from_to(nib.Nifti1Image(brain.astype(np.float32), affine), (case.shape, case_affine)).dataobj
    )
    mask = atlas_mask(case, case_affine, spec)
    assert _dice(unregistered >= 0.5, truth) < 0.8  # the move matters
    assert _dice(mask, truth) > least
    assert np.array_equal(atlas_mask(case[None], case_affine, spec), mask)  # (C, *S): the first channel; and the same
    # draw: a case registers the same way every time


def test_a_case_stored_in_another_voxel_order_gets_the_same_template_mask(tmp_path):
    """From a review: the registration ran on the file's own voxel grid, whose pyramid shrinks from voxel 0, so the
    example stored in LPS order (the same voxels in the same places) got its template about a voxel away from the
    RAS copy's (the brain's Dice 0.937 against 0.941). It runs on the grid's RAS-ordered view now."""
    files, image, brain, affine = _template(tmp_path)
    case, _, case_affine = _moved_case(image, brain, affine)
    spec = check_atlas_prior({**files, "margin_mm": 0})
    mask = atlas_mask(case, case_affine, spec)
    for flips, order in (((0, 1), (0, 1, 2)), ((2,), (2, 0, 1))):
        index = np.eye(4)  # stored voxel index -> the case's voxel index
        for axis in flips:
            index[axis, axis], index[axis, 3] = -1.0, case.shape[axis] - 1
        index = index[:, [*order, 3]]
        stored = np.ascontiguousarray(np.flip(case, flips).transpose(order))
        assert np.allclose(stored[1, 2, 3], case[tuple(int(v) for v in (index @ [1, 2, 3, 1])[:3])])
        other = atlas_mask(stored, case_affine @ index, spec)
        assert np.array_equal(np.flip(other.transpose(np.argsort(order)), flips), mask), (flips, order)


def test_ranks_share_ties_span_zero_to_one_and_keep_the_images_geometry():
    import medwidit.inference.atlas as atlas

    image = sitk.GetImageFromArray(np.array([[[0.0, 0.0, 5.0, 2.0]]], np.float32))
    image.SetSpacing((4.0, 4.0, 4.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    ranked = atlas._ranks(image)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ranked).ravel(), [1 / 6, 1 / 6, 1.0, 2 / 3])  # ties: mean rank
    assert ranked.GetSpacing() == image.GetSpacing() and ranked.GetOrigin() == image.GetOrigin()
    one = sitk.GetImageFromArray(np.ones((1, 1, 1), np.float32))
    assert sitk.GetArrayFromImage(atlas._ranks(one)).ravel().tolist() == [0.0]


def test_fit_atlas_builds_the_region_the_core_and_the_guard_from_one_registered_mask(tmp_path):
    files, image, brain, affine = _template(tmp_path)
    case, _, case_affine = _moved_case(image, brain, affine)
    spec = check_atlas_prior({**files, "margin_mm": 2, "core_mm": 3, "kept_margin_mm": 5})
    fit = fit_atlas(case, case_affine, spec)
    assert np.array_equal(fit.region, foreground_region(fit.mask.astype(np.uint8), case_affine, 2.0))
    assert np.array_equal(fit.guard, foreground_region(fit.mask.astype(np.uint8), case_affine, 5.0))
    assert np.array_equal(fit.core, core_of(fit.mask, case_affine, 3.0))
    assert (fit.core <= fit.mask).all() and (fit.mask <= fit.region).all() and (fit.region <= fit.guard).all()
    assert fit.guard.sum() > fit.region.sum() > fit.mask.sum() > fit.core.sum() > 0
    plain = fit_atlas(case, case_affine, check_atlas_prior({**files, "margin_mm": 2}))
    assert plain.core is None and plain.guard is None and np.array_equal(plain.mask, fit.mask)


def test_the_registration_holds_under_a_strong_coil_field(tmp_path):
    """A multiplicative field that spans a factor 40 across the brain (MONAI's RandBiasField, coefficient 1.2): on raw
    intensities Mattes's equal-width bins crowd the head into a few of them and the mask slid off (Dice 0.913 on this
    head; 0.25-0.61 on validation heads under weaker fields); on the images' ranks it lands (0.950)."""
    from monai.transforms import RandBiasField

    files, image, brain, affine = _template(tmp_path)
    case, truth, case_affine = _moved_case(image, brain, affine)
    field = RandBiasField(coeff_range=(1.2, 1.2), prob=1.0)
    field.set_random_state(0)
    biased = np.asarray(field(torch.from_numpy(case)[None]))[0]
    assert biased[truth].max() / biased[truth].min() > 30  # a strong field
    assert _dice(atlas_mask(biased, case_affine, check_atlas_prior({**files, "margin_mm": 0})), truth) > 0.94


def test_settings_are_checked_and_name_what_is_wrong(tmp_path):
    files, *_ = _template(tmp_path)
    assert check_atlas_prior(None) is None
    spec = check_atlas_prior({"image": "head.nii.gz", "label": "brain.nii.gz", "margin_mm": 5}, root=tmp_path)
    assert spec == {"image": files["image"], "label": files["label"], "margin_mm": 5.0, "min_kept": 0.5,
                    "core_mm": None, "core_label": 1, "warn_filled": None, "kept_margin_mm": None}  # fmt: skip
    assert "warn_information" not in spec  # unset: not named, so an earlier version's run digest matches (a review)
    with_core = check_atlas_prior({**files, "margin_mm": 5, "core_mm": 4, "core_label": np.int64(2)})
    assert (with_core["core_mm"], with_core["core_label"]) == (4.0, 2) and type(with_core["core_label"]) is int
    assert check_atlas_prior({**files, "margin_mm": 5, "kept_margin_mm": 2})["kept_margin_mm"] == 5.0  # never tighter
    for bad, message in [
        ([1], r"atlas_prior must be null or a mapping with image, label, margin_mm"),
        ({"image": "head.nii.gz", "margin_mm": 5}, r"missing \['label'\]"),
        ({**files, "margin_mm": 5, "kept": 1}, r"unknown \['kept'\]"),
        ({**files, "image": 3, "margin_mm": 5}, r"image file must be a path, got 3"),
        ({**files, "label": "none.nii.gz", "margin_mm": 5}, r"label file .*none\.nii\.gz does not exist"),
        ({**files, "margin_mm": -1}, r"margin_mm must be a number of mm >= 0, got -1"),
        ({**files, "margin_mm": 5, "min_kept": 1.5}, r"min_kept must be a share in \[0, 1\], got 1\.5"),
        ({**files, "margin_mm": 5, "core_mm": -2}, r"core_mm must be null or a number of mm >= 0, got -2"),
        ({**files, "margin_mm": 5, "core_mm": float("nan")}, r"core_mm must be null or a number of mm >= 0, got nan"),
        ({**files, "margin_mm": 5, "core_label": 0}, r"core_label must be a class index >= 1, got 0"),
        ({**files, "margin_mm": 5, "core_label": True}, r"core_label must be a class index >= 1, got True"),
        ({**files, "margin_mm": 5, "core_label": 1.5}, r"core_label must be a class index >= 1, got 1\.5"),
        ({**files, "margin_mm": 5, "warn_filled": 2}, r"warn_filled must be null or a share in \[0, 1\], got 2"),
        (
            {**files, "margin_mm": 5, "warn_information": -0.1},
            r"warn_information must be null or a number of nats >= 0, got -0\.1",
        ),
        (
            {**files, "margin_mm": 5, "kept_margin_mm": -1},
            r"kept_margin_mm must be null or a number of mm >= 0, got -1",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            check_atlas_prior(bad, root=tmp_path)
    flat = type("FlatOracle", (ThresholdOracle,), {"spatial_dim": 2, "size_multiple": (1, 1), "alignment": (1, 1)})
    with pytest.raises(ValueError, match=r"atlas_prior needs a 3D model, got 2 spatial dimensions"):
        Predictor(DiffusionSegmenter(flat(), num_classes=2), device="cpu", atlas_prior={**files, "margin_mm": 5})
    core = {**files, "margin_mm": 5, "core_mm": 4, "core_label": 2}
    with pytest.raises(ValueError, match=r"core_label 2 is not a foreground class of a model with 2 classes \(1 to 1"):
        Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=2), device="cpu", atlas_prior=core)
    assert Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=3), device="cpu", atlas_prior=core).atlas_prior


def test_a_core_over_a_model_of_more_than_two_classes_is_warned_about(tmp_path, caplog):
    """A model for other labels exported into the brain bundle got the registered MNI152 brain as its class 1, over
    its other classes, without a word; a two-class model (brain extraction) gets no warning."""
    files = {"image": "head.nii.gz", "label": "mask.nii.gz"}
    for name in files.values():
        nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), tmp_path / name)
    core = {key: str(tmp_path / name) for key, name in files.items()} | {"margin_mm": 5, "core_mm": 4}
    for classes, warned in ((2, False), (3, True)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="medwidit.inference.predictor"):
            Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=classes), device="cpu", atlas_prior=core)
        said = [r.getMessage() for r in caplog.records]
        assert bool(said) == warned, said
    assert "its core writes class 1 over the inside of the mask, over any other class there" in said[0]
    assert "this model has 3 classes" in said[0] and "--no-atlas-prior" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="medwidit.inference.predictor"):  # no core: the region alone, said so
        Predictor(
            DiffusionSegmenter(ThresholdOracle(), num_classes=3), device="cpu", atlas_prior={**core, "core_mm": None}
        )
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("atlas_prior: its region makes every voxel beyond the registered template's mask and margin")


def test_the_regions_the_core_and_the_guard_travel_as_one_label_and_come_back_apart():
    rng = np.random.default_rng(0)
    masks = [rng.random((5, 6, 7)) > share for share in (0.5, 0.3, 0.7, 0.4)]  # region, prior, core, guard
    assert encode_regions((5, 6, 7), None, None) is None and encode_regions((5, 6, 7), None, None, None, None) is None
    for given in [(1, 1, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (1, 1, 1, 0), (0, 1, 1, 1), (0, 0, 1, 0), (1, 1, 1, 1)]:
        chosen = [m if g else None for m, g in zip(masks, given, strict=True)]
        bits = torch.from_numpy(encode_regions((5, 6, 7), *chosen).astype(np.int64))  # as the label comes back
        back = decode_regions(
            bits, **{k: bool(g) for k, g in zip(("region", "prior", "core", "guard"), given, strict=True)}
        )
        for mask, got in zip(chosen, back, strict=True):
            assert got is None if mask is None else np.array_equal(got.numpy(), mask)
        absent = decode_regions(bits, region=not given[0], prior=not given[1])  # an absent region: everywhere
        assert all(np.array_equal(r.numpy(), np.ones((5, 6, 7), bool)) for r in absent[:2] if r is not None)


def test_min_kept_judges_the_share_inside_the_guard_and_the_cut_stays_the_region():
    probabilities = torch.zeros(1, 1, 2, 1, 1, 10)
    probabilities[:, :, 1] = 1  # the members call all ten voxels foreground
    region, guard = torch.zeros(1, 1, 1, 1, 10, dtype=torch.bool), torch.zeros(1, 1, 1, 1, 10, dtype=torch.bool)
    region[..., :4], guard[..., :6] = True, True
    _, kept, applied = restrict_to_region(probabilities, region, 0.5)
    assert kept.tolist() == [0.4] and applied.tolist() == [False]  # the tight region alone: not applied
    cut, kept, applied = restrict_to_region(probabilities, region, 0.5, guard)
    assert kept.tolist() == [0.4] and applied.tolist() == [True]  # kept is the region's; judged within the guard
    assert cut[0, 0, 1, 0, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # cut to the region
    with pytest.raises(ValueError, match=r"guard must be \(B, 1, \*S\) = \(1, 1, 1, 1, 10\), got \(1, 1, 1, 10\)"):
        restrict_to_region(probabilities, region, 0.5, guard[0])


def test_a_tight_cut_whose_region_holds_too_little_still_applies_when_the_guard_holds_enough(tmp_path, monkeypatch):
    path, ball = _hollow_ball(tmp_path)
    shell_out = foreground_region(ball.astype(np.uint8), np.eye(4), 2.0)
    small = core_of(ball, np.eye(4), 3.0)  # a template smaller than the members' shell: its region misses much of it
    region = foreground_region(small.astype(np.uint8), np.eye(4), 1.0)
    plain = _prior_predictor(tmp_path, monkeypatch, region, mask=small, core=small, core_mm=1.0).segment(path, **FAST)
    assert not plain.quality["atlas_prior"]["applied"]
    guarded = _prior_predictor(tmp_path, monkeypatch, region, mask=small, core=small, core_mm=1.0, kept_margin_mm=5.0)
    monkeypatch.setattr(predictor_module, "fit_atlas", lambda array, affine, spec: AtlasFit(small, region, small,
                                                                                          shell_out))  # fmt: skip
    held = guarded.segment(path, **FAST)
    entry = held.quality["atlas_prior"]
    assert entry["applied"] and entry["kept_margin_mm"] == 5.0 and entry["guard_kept"] > 0.5 > entry["kept"]
    assert entry["kept"] == pytest.approx(plain.quality["atlas_prior"]["kept"])  # the region's share, as before
    assert not held.label_map[~region].any() and held.label_map[small].all()  # cut to the tight region, core filled
    words = atlas_warning({**entry, "applied": False})  # as the warning line words a guard's share
    assert words.startswith("the atlas prior's region within 5 mm held 1.0000 of the") and "min_kept 0.50" in words


def test_the_core_is_the_mask_eroded_by_a_ball_in_mm_and_the_grids_faces_are_not_an_outside():
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(1)
    mask = np.zeros((30, 24, 12), bool)
    mask[3:27, 2:20, 2:12] = True  # touches the last axis' far face
    mask &= rng.random(mask.shape) > 0.02  # pinholes: each is an outside
    affine = np.diag([1.0, 1.5, 3.0, 1.0])  # distances between voxel centres: an axis coarser than core_mm erodes none
    for core_mm in (0.0, 2.0, 3.0, 4.5):
        expected = distance_transform_edt(mask, sampling=(1.0, 1.5, 3.0)) > core_mm
        assert np.array_equal(core_of(mask, affine, core_mm), expected)
    solid = np.zeros((20, 20, 20), bool)
    solid[5:15, 5:15, 10:] = True
    core = core_of(solid, np.eye(4), 2.0)
    assert core[10, 10, 19] and not core[10, 10, 11] and not core[6, 10, 15]  # not eroded at the grid's face
    assert np.array_equal(core_of(solid, np.diag([2.0, 2.0, 2.0, 1.0]), 1.0), solid)  # 2 mm voxels: 1 mm erodes none
    assert not core_of(solid, np.diag([2.0, 2.0, 2.0, 1.0]), 2.0)[5].any()  # 2 mm: the outermost voxel goes


def _ball_and_a_far_blob(tmp_path):
    """A ball (the structure) and, far from it, a blob the threshold oracle also calls foreground."""
    shape = (40, 32, 32)
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    distance = np.sqrt((grid[0] - 12) ** 2 + (grid[1] - 16) ** 2 + (grid[2] - 16) ** 2)
    image = (distance <= 8).astype(np.float32)
    image[33:37, 15:19, 15:19] = 1.0
    return save_nifti(tmp_path / "scan.nii.gz", image, affine=np.eye(4)), image


def _prior_predictor(tmp_path, monkeypatch, region, mask=None, core=None, **spec):
    """A threshold-oracle predictor whose atlas prior's registered region is ``region``, its template's mask
    ``mask`` (default: the region) and its core ``core`` (the registration is tested above; here the cut)."""
    files, *_ = _template(tmp_path)
    fit = AtlasFit(region if mask is None else mask, region, core)
    monkeypatch.setattr(predictor_module, "fit_atlas", lambda array, affine, spec: fit)
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    return Predictor(segmenter, preprocessing=PREPROCESSING, roi_size=16, device="cpu",
                     atlas_prior={**files, "margin_mm": 5.0, **spec})  # fmt: skip


def test_foreground_outside_the_atlas_region_is_removed_and_the_rest_is_untouched(tmp_path, monkeypatch):
    path, image = _ball_and_a_far_blob(tmp_path)
    region = np.zeros(image.shape, bool)
    region[:26] = True
    free = Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=2), preprocessing=PREPROCESSING, roi_size=16,
                     device="cpu").segment(path, **FAST)  # fmt: skip
    predictor = _prior_predictor(tmp_path, monkeypatch, region)
    held = predictor.segment(path, **FAST)
    assert free.label_map[34, 16, 16] == 1 and held.label_map[34, 16, 16] == 0
    assert np.array_equal(held.label_map[region], free.label_map[region]) and held.label_map[12, 16, 16] == 1
    assert np.array_equal(held.probability[:, region], free.probability[:, region])
    assert held.probability[1, 34, 16, 16] == 0 and held.entropy[34, 16, 16] == 0
    ball, blob = int((image[:26] > 0.5).sum()), int((image[26:] > 0.5).sum())
    assert held.quality["atlas_prior"] == {
        "margin_mm": 5.0, "min_kept": 0.5, "kept": pytest.approx(ball / (ball + blob)),
        "template_dice": pytest.approx(_dice(held.label_map > 0, region)), "applied": True,
        "template_information": None,  # the stand-in fit measured none
    }  # fmt: skip
    assert free.quality["atlas_prior"] is None
    skipped = predictor.segment(path, atlas=False, **FAST)
    assert np.array_equal(skipped.probability, free.probability) and skipped.quality["atlas_prior"] is None


def _hollow_ball(tmp_path):
    """A ball (the structure) whose inside is dark (a lobe under a coil field): the threshold oracle calls a shell."""
    shape = (32, 32, 32)
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    distance = np.sqrt(sum((g - 16) ** 2 for g in grid))
    image = ((distance <= 10) & (distance > 6)).astype(np.float32)
    return save_nifti(tmp_path / "hollow.nii.gz", image, affine=np.eye(4)), distance <= 10


def test_the_core_makes_every_member_the_structure_deep_inside_the_template_and_reports_what_it_added(
    tmp_path, monkeypatch
):
    path, ball = _hollow_ball(tmp_path)
    region = foreground_region(ball.astype(np.uint8), np.eye(4), 5.0)
    core = core_of(ball, np.eye(4), 3.0)  # the ball deeper than 3 mm: radius 7, so the dark inside (radius 6) is in it
    plain = _prior_predictor(tmp_path, monkeypatch, region, mask=ball).segment(path, **FAST)
    filled = _prior_predictor(tmp_path, monkeypatch, region, mask=ball, core=core, core_mm=3.0).segment(path, **FAST)
    assert plain.label_map[16, 16, 16] == 0 and filled.label_map[16, 16, 16] == 1  # the members' hole is filled
    assert np.array_equal(filled.label_map[~core], plain.label_map[~core])  # the band is the members' own
    assert np.array_equal(filled.label_map > 0, ball)
    assert (filled.probability[1][core] == 1).all() and (filled.entropy[core] == 0).all()
    added = int((core & (plain.label_map == 0)).sum())
    entry = filled.quality["atlas_prior"]
    assert entry["core_mm"] == 3.0 and entry["core_filled"] == pytest.approx(added / int(ball.sum()), rel=1e-6)
    assert entry["warn_filled"] is None and atlas_warning(entry) is None
    assert entry["template_dice"] == pytest.approx(1.0) and "core_mm" not in plain.quality["atlas_prior"]
    # a region that held less than min_kept (a registration gone wrong) fills nothing either
    far = np.zeros(ball.shape, bool)
    far[:4] = True
    wrong = _prior_predictor(tmp_path, monkeypatch, far, mask=far, core=core, core_mm=3.0).segment(path, **FAST)
    assert wrong.label_map[16, 16, 16] == 0 and not wrong.quality["atlas_prior"]["applied"]
    assert wrong.quality["atlas_prior"]["core_filled"] == 0.0


def test_a_case_whose_core_made_more_than_warn_filled_of_the_brain_gets_a_warning_line(tmp_path, monkeypatch, caplog):
    path, ball = _hollow_ball(tmp_path)
    region = foreground_region(ball.astype(np.uint8), np.eye(4), 5.0)
    core = core_of(ball, np.eye(4), 3.0)
    lines = []
    for warn_filled in (0.5, 0.05):  # the core adds about 0.2 of the ball
        predictor = _prior_predictor(tmp_path, monkeypatch, region, mask=ball, core=core, core_mm=3.0,
                                     warn_filled=warn_filled)  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medwidit"):
            out = predictor.predict_from_files(path, tmp_path / f"out{warn_filled}", progress=False, warn_dice=0.01,
                                               **FAST)  # fmt: skip
        assert out[0].quality["atlas_prior"]["warn_filled"] == warn_filled
        lines.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])
    assert lines[0] == []
    assert any(
        "hollow: the atlas prior's core made 0.2" in line and "of the foreground (above warn_filled 0.05): there the "
        "answer is the registered template's, not the network's" in line for line in lines[1]
    ), lines[1]  # fmt: skip


def test_a_head_holds_information_about_the_registered_template_and_a_ball_holds_none(tmp_path):
    """From a review: a uniform ball of head size got a predicted Dice of 0.93 and no warning: the atlas prior
    registered the template onto it and its core wrote the template's brain into it. ``fit_atlas`` measures how much
    the case tells of the registered template inside its structure (``template_information``): a moved copy of the
    template holds it in either contrast, a noisy uniform ball of its size holds none."""
    files, image, brain, affine = _template(tmp_path)
    spec = check_atlas_prior({**files, "margin_mm": 2.0})
    values = {}
    for invert in (False, True):
        case, _, case_affine = _moved_case(image, brain, affine, invert=invert)
        values[invert] = fit_atlas(case, case_affine, spec).information
    grid = np.stack(np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in image.shape), indexing="ij")) * 2.0
    rng = np.random.default_rng(0)
    ball = np.where(np.sqrt((grid**2).sum(0)) < 40.0, 0.6, 0.0) + rng.normal(0.0, 0.02, image.shape)
    featureless = fit_atlas(ball.astype(np.float32), affine, spec).information
    assert min(values.values()) > 0.2 and featureless < 0.05, (values, featureless)
    # a transform that carries no point into the template: 0, not SimpleITK's error (which discarded the fit)
    head, template = sitk.ReadImage(str(files["image"])), sitk.ReadImage(str(files["image"]))
    far = sitk.TranslationTransform(3, (500.0, 0.0, 0.0))
    assert template_information(head, template, sitk.ReadImage(str(files["label"])), far) == 0.0


def test_a_case_that_holds_little_of_the_template_gets_a_warning_line(tmp_path, monkeypatch, caplog):
    """``warn_information``: a case whose ``template_information`` is below it gets a warning line naming it,
    whatever the prior did; the quality report records both, and no line without the setting."""
    path, ball = _hollow_ball(tmp_path)
    region = foreground_region(ball.astype(np.uint8), np.eye(4), 5.0)
    lines, entries = [], []
    fit = AtlasFit(ball, region, information=0.03)
    for name, spec in (("plain", {}), ("high", {"warn_information": 0.1}), ("low", {"warn_information": 0.01})):
        predictor = _prior_predictor(tmp_path, monkeypatch, region, mask=ball, **spec)
        monkeypatch.setattr(predictor_module, "fit_atlas", lambda array, affine, spec: fit)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medwidit"):
            (out,) = predictor.predict_from_files(path, tmp_path / name, progress=False, warn_dice=0.01, **FAST)
        lines.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])
        entries.append(out.quality["atlas_prior"])
    assert lines[0] == [] and lines[2] == []
    assert [e["template_information"] for e in entries] == [0.03] * 3
    assert "warn_information" not in entries[0] and entries[1]["warn_information"] == 0.1
    (line,) = lines[1]
    assert (
        "hollow: the image holds 0.030 nats of the registered template's structure (below warn_information 0.1): not "
        "the kind of scan the template is, or a registration that ran away" in line
    )
    assert atlas_warning({**entries[1], "applied": False, "kept": None}).startswith("the atlas template did not")


def test_a_prior_that_leaves_the_network_no_voxel_says_so(tmp_path, monkeypatch, caplog):
    """From a review: on a 3 mm scan the 2 mm margin's region is the 1 mm core (no ring between them on that grid),
    so every member was the registered template: the labels were the template, every map 0, the predicted Dice 0.974
    against a true 0.940, and no warning. The report counts the voxels left to the network, and 0 is a warning."""
    path, ball = _hollow_ball(tmp_path)
    lines, voxels = [], []
    for region in (foreground_region(ball.astype(np.uint8), np.eye(4), 5.0), ball):  # a ring, then none
        predictor = _prior_predictor(tmp_path, monkeypatch, region, mask=ball, core=ball, core_mm=1.0)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medwidit"):
            (out,) = predictor.predict_from_files(path, tmp_path / f"out{len(lines)}", progress=False, warn_dice=0.01,
                                                  **FAST)  # fmt: skip
        voxels.append(out.quality["atlas_prior"]["network_voxels"])
        lines.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])
    assert voxels[0] > 0 and voxels[1] == 0
    assert not any("no voxel to decide" in line for line in lines[0]), lines[0]
    assert any(
        "hollow: the atlas prior left the network no voxel to decide (voxels coarser than its margin_mm 5): the "
        "labels are the registered template's" in line
        for line in lines[1]
    ), lines[1]


def test_the_coarse_reference_is_cut_and_filled_as_the_members_are():
    probability = np.full((3, 4, 4, 4), 1 / 3, np.float32)
    region, core = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    region[:3], core[1] = True, True
    out = outside_to_background(probability, region, core, 2)
    assert (out[:, 3] == np.array([1, 0, 0])[:, None, None]).all()  # outside the region: background
    assert (out[:, 1] == np.array([0, 0, 1])[:, None, None]).all()  # the core: class 2
    assert np.array_equal(out[:, [0, 2]], probability[:, [0, 2]]) and out is not probability
    assert np.array_equal(
        outside_to_background(probability, region), np.concatenate([probability[:, :3], out[:, 3:]], 1)
    )


def test_fill_core_sets_the_members_one_hot_where_applied_and_counts_the_share_it_added():
    probabilities = torch.full((2, 2, 3, 4, 4, 4), 0.1)
    probabilities[:, :, 0, :2] = 0.8  # background in the first half, class 1 in the second
    probabilities[:, :, 1, 2:] = 0.8
    core = torch.zeros(2, 1, 4, 4, 4, dtype=torch.bool)
    core[:, :, 1:3] = True
    out, filled = fill_core(probabilities, core, 2, applied=torch.tensor([True, False]))
    assert torch.equal(out[:, 1], probabilities[:, 1])  # not applied: as sampled
    assert (out[:, 0, 2][:, core[0, 0]] == 1).all() and (out[:, 0, :2][:, :, core[0, 0]] == 0).all()
    assert torch.equal(out[:, 0][:, :, ~core[0, 0]], probabilities[:, 0][:, :, ~core[0, 0]])
    # the core's 16 voxels in slice 1 were background; the foreground is now slices 1-3, 48 voxels
    assert filled.tolist() == [pytest.approx(16 / 48), 0.0]
    assert fill_core(probabilities, None, 1) == (probabilities, None)
    everywhere, _ = fill_core(probabilities, core, 1)  # without a prior's decision: every item
    assert (everywhere[:, :, 1][:, :, core[0, 0]] == 1).all()
    with pytest.raises(ValueError, match=r"core label must be a foreground class in \[1, 2\], got 3"):
        fill_core(probabilities, core, 3)
    with pytest.raises(ValueError, match=r"core must be \(B, 1, \*S\) = \(2, 1, 4, 4, 4\), got \(1, 1, 4, 4, 4\)"):
        fill_core(probabilities, core[:1], 1)


def test_an_atlas_region_that_holds_less_than_min_kept_cuts_nothing_and_says_so(tmp_path, monkeypatch, caplog):
    path, image = _ball_and_a_far_blob(tmp_path)
    region = np.zeros(image.shape, bool)
    region[26:] = True  # a registration gone wrong: only the blob
    free = Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=2), preprocessing=PREPROCESSING, roi_size=16,
                     device="cpu").segment(path, **FAST)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="medwidit"):
        held = _prior_predictor(tmp_path, monkeypatch, region).segment(path, **FAST)
    assert np.array_equal(held.probability, free.probability)
    assert held.quality["atlas_prior"]["applied"] is False and held.quality["atlas_prior"]["kept"] < 0.5
    assert any("no atlas prior: its region holds" in r.getMessage() for r in caplog.records)


def test_the_localization_and_the_atlas_prior_each_cut_and_each_report_their_own_share(tmp_path, monkeypatch):
    _, image = _ball_and_a_far_blob(tmp_path)
    image[26:] = 0
    image[34, 18, 18] = 1.0  # a speck the 4 mm pass does not see: the localization cuts it
    path = save_nifti(tmp_path / "speck.nii.gz", image, affine=np.eye(4))
    region = np.ones(image.shape, bool)
    region[:, :, :14] = False  # the atlas region cuts the ball's side along the last axis
    predictor = _prior_predictor(tmp_path, monkeypatch, region)
    predictor.localization = {"spacing": [4.0] * 3, "margin_mm": 4.0, "min_kept": 0.5, "warn_kept": 0.85}
    held = predictor.segment(path, **FAST)
    assert held.label_map[34, 18, 18] == 0 and not held.label_map[:, :, :14].any()  # both cuts hold
    assert held.label_map[12, 16, 16] == 1
    assert held.quality["localization"]["applied"] and held.quality["atlas_prior"]["applied"]
    assert held.quality["localization"]["kept"] != held.quality["atlas_prior"]["kept"]


def test_a_bundle_declares_it_with_its_own_files_and_a_caller_or_a_bad_entry_overrides_or_stops_it(bundle):
    shipped = Predictor.from_bundle(bundle, device="cpu", weight_sets=1).atlas_prior
    assert shipped["image"].parent == shipped["label"].parent == bundle / "atlas"
    assert shipped["image"].is_file() and shipped["label"].is_file()
    assert Predictor.from_bundle(bundle, device="cpu", weight_sets=1, atlas_prior=None).atlas_prior is None
    own = {"image": "atlas/mni152nlin6asym_2mm_head.nii.gz", "label": "atlas/mni152nlin6asym_2mm_brain.nii.gz",
           "margin_mm": 3}  # a caller's, its files relative to the bundle as the bundle's are  # fmt: skip
    given = Predictor.from_bundle(bundle, device="cpu", weight_sets=1, atlas_prior=own).atlas_prior
    assert given == {**{k: v for k, v in shipped.items() if k != "warn_information"}, "margin_mm": 3.0,
                     "core_mm": None, "warn_filled": None, "kept_margin_mm": None}  # fmt: skip
    set_inference_key(bundle, "atlas_prior", None)
    assert Predictor.from_bundle(bundle, device="cpu", weight_sets=1).atlas_prior is None
    set_inference_key(
        bundle, "atlas_prior", {"image": "atlas/missing.nii.gz", "label": "atlas/missing.nii.gz", "margin_mm": 5}
    )
    with pytest.raises(InputError, match=r"inference\.json: atlas_prior: image file .*missing\.nii\.gz does not exist"):
        Predictor.from_bundle(bundle, device="cpu", weight_sets=1)


def test_the_shipped_atlas_is_a_head_with_a_brain_mask_on_the_same_grid():
    from medwidit.inference.options import resolve_bundle

    spec = Predictor.from_bundle(resolve_bundle(), device="cpu", weight_sets=1).atlas_prior
    head, brain = nib.load(spec["image"]), nib.load(spec["label"])
    assert head.shape == brain.shape and np.allclose(head.affine, brain.affine)
    mask = np.asarray(brain.dataobj) > 0
    volume_ml = mask.sum() * abs(np.linalg.det(brain.affine[:3, :3])) / 1000
    assert 1200 < volume_ml < 2000  # an adult brain
    assert np.asarray(head.dataobj)[mask].mean() > 0 and (np.asarray(head.dataobj)[~mask] > 0).any()  # a whole head


def test_the_cli_applies_the_bundles_atlas_prior_and_records_it_and_no_atlas_prior_turns_it_off(tmp_path, bundle):
    run_cli_with_and_without(tmp_path, bundle, "--no-atlas-prior")  # into a/ and b/
    record = json.loads((tmp_path / "a" / "medwidit_run.json").read_text())["sampling"]["atlas_prior"]
    assert record == {"image": str(bundle / "atlas" / "mni152nlin6asym_2mm_head.nii.gz"),
                      "label": str(bundle / "atlas" / "mni152nlin6asym_2mm_brain.nii.gz"),
                      "margin_mm": 2.0, "min_kept": 0.5, "core_mm": 1.0, "core_label": 1,
                      "warn_filled": 0.25, "kept_margin_mm": 5.0, "warn_information": 0.149}  # fmt: skip
    assert json.loads((tmp_path / "b" / "medwidit_run.json").read_text())["sampling"]["atlas_prior"] is None
    assert json.loads((tmp_path / "b" / "scan_quality.json").read_text())["atlas_prior"] is None
    entry = json.loads((tmp_path / "a" / "scan_quality.json").read_text())["atlas_prior"]
    assert entry["margin_mm"] == 2.0 and 0 <= entry["kept"] <= 1 and isinstance(entry["applied"], bool)
    assert entry["core_mm"] == 1.0 and 0 <= entry["core_filled"] <= 1
    assert entry["kept_margin_mm"] == 5.0 and (entry["kept"] is None or entry["kept"] <= entry["guard_kept"] <= 1)


def test_no_atlas_core_keeps_the_cut_and_drops_the_core_in_the_record_and_the_report(tmp_path, bundle):
    run_cli_with_and_without(tmp_path, bundle, "--no-atlas-core")  # into a/ and b/
    records = [json.loads((tmp_path / d / "medwidit_run.json").read_text())["sampling"]["atlas_prior"] for d in "ab"]
    assert records[0]["core_mm"] == 1.0 and records[1] == {**records[0], "core_mm": None}
    entries = [json.loads((tmp_path / d / "scan_quality.json").read_text())["atlas_prior"] for d in "ab"]
    assert "core_filled" in entries[0] and "core_filled" not in entries[1] and entries[1]["margin_mm"] == 2.0
    assert entries[0]["core_filled"] > 0.1 and entries[1]["template_dice"] < entries[0]["template_dice"]
    labels = [np.asarray(nib.load(tmp_path / d / "scan.nii.gz").dataobj) for d in "ab"]
    assert (labels[0] > 0).sum() > (labels[1] > 0).sum() and ((labels[1] > 0) <= (labels[0] > 0)).all()


def test_no_atlas_core_without_a_prior_says_it_does_nothing(tmp_path, bundle, capsys):
    from medwidit.cli import main

    ramp = np.linspace(1, 2, 24**3, dtype=np.float32).reshape((24,) * 3)
    source = save_nifti(tmp_path / "scan.nii.gz", ramp, affine=np.eye(4) * 2)
    assert main(["segment", "-i", str(source), "-o", str(tmp_path / "out"), "--bundle", str(bundle), "--steps", "1",
                 "--samples", "1", "--weight-sets", "1", "--quiet", "--device", "cpu", "--no-atlas-prior",
                 "--no-atlas-core"]) == 0  # fmt: skip
    assert "--no-atlas-core has no effect: the model has no atlas prior" in capsys.readouterr().err


def test_a_case_whose_atlas_prior_was_not_applied_gets_a_warning_line(tmp_path, monkeypatch, caplog):
    path, image = _ball_and_a_far_blob(tmp_path)
    region = np.zeros(image.shape, bool)
    region[26:] = True
    predictor = _prior_predictor(tmp_path, monkeypatch, region)
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        predictor.predict_from_files(path, tmp_path / "out", progress=False, warn_dice=0.01, **FAST)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "scan: the atlas prior's region held 0.0" in line and "of the foreground (below min_kept 0.50): not applied"
        in line and line.endswith("check this case before using it.") for line in lines
    ), lines  # fmt: skip


def test_a_template_that_cannot_register_leaves_the_case_uncut_and_says_so(tmp_path, caplog):
    files, *_ = _template(tmp_path)
    grid = np.meshgrid(*(np.arange(24),) * 3, indexing="ij")
    ball = (sum((g - 12.0) ** 2 for g in grid) <= 36).astype(np.float32)
    path = save_nifti(tmp_path / "small.nii.gz", ball, affine=np.eye(4))  # 24 mm: too small to register at 4 mm
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    predictor = Predictor(segmenter, preprocessing=PREPROCESSING, roi_size=16, device="cpu",
                          atlas_prior={**files, "margin_mm": 5.0})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        result = predictor.segment(path, **FAST)
        predictor.predict_from_files(path, tmp_path / "out", progress=False, warn_dice=0.01, **FAST)
    assert result.quality["atlas_prior"] == {
        "margin_mm": 5.0, "min_kept": 0.5, "kept": None, "template_dice": None, "applied": False,
        "template_information": None,
    }  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "small.nii.gz: no atlas prior: the template did not register on this field of view (24 x 24 x 24 mm;" in line
        for line in lines
    ), lines
    assert not any("\n" in line or "0x" in line or "ITK-prefix" in line for line in lines)  # one line, no addresses
    assert any("small: " in line and "the atlas template did not register: no atlas prior" in line for line in lines)
    assert result.label_map[12, 12, 12] == 1  # segmented all the same


def test_the_notebook_call_takes_the_atlas_prior_off_as_the_cli_does(tmp_path, bundle):
    from medwidit import segment

    source = save_nifti(
        tmp_path / "scan.nii.gz", np.linspace(1, 2, 24**3, dtype=np.float32).reshape((24,) * 3), affine=np.eye(4) * 2
    )
    fast = {"steps": 1, "num_samples": 1, "weight_sets": 1, "device": "cpu", "bundle": bundle}
    result = segment(source, **fast)
    entry = result.quality["atlas_prior"]
    assert entry["margin_mm"] == 2.0 and entry["kept"] is not None  # registered and applied or not by its share
    assert 0.0 <= entry["template_dice"] <= 1.0
    features = result.quality["calibration"]["features"]["1"]  # what the bundle's calibration read
    assert features["log_atlas_dice"] == pytest.approx(np.log(max(entry["template_dice"], 1e-3)))
    assert segment(source, atlas=False, **fast).quality["atlas_prior"] is None


def test_the_localization_keeps_its_own_share_and_the_atlas_prior_its_share_of_what_is_left(tmp_path, monkeypatch):
    _, image = _ball_and_a_far_blob(tmp_path)
    image[26:] = 0
    image[34, 18, 18] = 1.0
    path = save_nifti(tmp_path / "speck.nii.gz", image, affine=np.eye(4))
    region = np.ones(image.shape, bool)
    region[:, :, :14] = False
    predictor = _prior_predictor(tmp_path, monkeypatch, region)
    predictor.localization = {"spacing": [4.0] * 3, "margin_mm": 4.0, "min_kept": 0.5, "warn_kept": 0.85}
    held, free = predictor.segment(path, **FAST), predictor.segment(path, atlas=False, **FAST)
    assert held.quality["localization"] == free.quality["localization"]  # what the calibration reads: unchanged
    ball = image[:26] > 0.5  # what the localization leaves: the ball without the speck
    assert held.quality["atlas_prior"]["kept"] == pytest.approx(ball[:, :, 14:].sum() / ball.sum())


def test_the_prior_cuts_where_it_lies_in_the_world_on_an_oblique_grid_resampled_to_the_models(tmp_path, monkeypatch):
    """The region travels through the model's pre-processing (reorientation to RAS, 2 mm) and back: a world half-space
    given on an oblique, left-handed 1.5 mm input grid must cut the same half of the written labels."""
    image = np.zeros((40, 36, 32), np.float32)
    image[6:34, 6:30, 6:26] = 1.0  # a box the oracle calls foreground
    affine = _oblique_affine((1.5, 1.5, 1.5), (0, 0, 30), (10.0, -20.0, 5.0))
    path = save_nifti(tmp_path / "oblique.nii.gz", image, affine=affine)
    world = np.einsum("ij,j...->i...", affine[:3, :3], np.indices(image.shape)) + affine[:3, 3].reshape(3, 1, 1, 1)
    plane = np.median(world[0][image > 0])
    predictor = _prior_predictor(tmp_path, monkeypatch, world[0] > plane)
    predictor.preprocessing = {**predictor.preprocessing, "spacing": [2.0, 2.0, 2.0]}
    held, free = predictor.segment(path, **FAST), predictor.segment(path, atlas=False, **FAST)
    assert free.label_map[world[0] < plane - 3].sum() > 2000  # there is foreground to cut
    assert not held.label_map[world[0] < plane - 3].any()  # cut, beyond a 2 mm voxel's reach of the plane
    far = world[0] > plane + 3
    assert np.array_equal(held.label_map[far], free.label_map[far])  # and untouched on the other side
    assert held.quality["atlas_prior"]["kept"] == pytest.approx(0.5, abs=0.1)


def test_simpleitks_thread_count_is_restored_even_when_the_registration_fails(monkeypatch):
    import medwidit.inference.atlas as atlas

    def fail(case, template, ranked=True):
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        raise RuntimeError("no")

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(3)
    try:
        monkeypatch.setattr(atlas, "_register", fail)
        image = sitk.Image([8, 8, 8], sitk.sitkFloat32)
        with pytest.raises(RuntimeError, match="no"):
            atlas.register_template(image, image)
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 3
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def test_the_coarse_pass_is_never_cut_by_the_prior(tmp_path, monkeypatch):
    path, image = _ball_and_a_far_blob(tmp_path)
    predictor = _prior_predictor(tmp_path, monkeypatch, np.ones(image.shape, bool))
    predictor.localization = {"spacing": [4.0] * 3, "margin_mm": 4.0, "min_kept": 0.5, "warn_kept": 0.85}
    calls, sample = [], Predictor._sample_case

    def spy(self, *args, prior=None, **kwargs):
        calls.append((kwargs["uncertainty"] if "uncertainty" in kwargs else True, prior is not None))
        return sample(self, *args, prior=prior, **kwargs)

    monkeypatch.setattr(Predictor, "_sample_case", spy)
    predictor.segment(path, **FAST)
    assert calls == [(False, False), (True, True)]  # the coarse pass (no uncertainty) without it, the full pass with


def test_the_disagreement_map_compares_the_result_with_the_coarse_pass_cut_alike(tmp_path, monkeypatch):
    """Where the prior removed what the 4 mm pass saw too (a blob), both say background: no disagreement there."""
    path, image = _ball_and_a_far_blob(tmp_path)
    region = np.zeros(image.shape, bool)
    region[:26] = True
    predictor = _prior_predictor(tmp_path, monkeypatch, region)
    predictor.localization = {"spacing": [4.0] * 3, "margin_mm": 4.0, "min_kept": 0.5, "warn_kept": 0.85}
    held, free = predictor.segment(path, **FAST), predictor.segment(path, atlas=False, **FAST)
    assert free.label_map[34, 16, 16] == 1 and held.label_map[34, 16, 16] == 0
    assert held.disagreement[34, 16, 16] == 0 and held.disagreement[~region].max() == 0
    assert np.array_equal(held.disagreement[region], free.disagreement[region])


def test_template_files_that_are_not_3d_images_on_one_grid_are_refused_by_name(tmp_path):
    files, image, brain, affine = _template(tmp_path)
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    flat = save_nifti(tmp_path / "flat.nii.gz", image[:, :, 0].astype(np.float32), affine=affine)
    moved = save_nifti(tmp_path / "moved.nii.gz", brain.astype(np.uint8), affine=affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    for given, message in [
        ({"image": tmp_path / "junk.nii.gz"}, r"image file .*junk\.nii\.gz is not an image SimpleITK reads"),
        ({"label": flat}, r"label file .*flat\.nii\.gz must be a 3D image, got 2D"),
        ({"label": moved}, r"label file .*moved\.nii\.gz is not on the grid of image file .*head\.nii\.gz"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_atlas_prior({**files, **given, "margin_mm": 5})


def test_a_registration_error_reads_as_its_last_line():
    from medwidit.inference.io import one_line

    raw = RuntimeError(
        "Exception thrown in SimpleITK ImageRegistrationMethod_Execute: /tmp/SimpleITK-build/ITK-prefix/include/"
        "ITK-5.4/itkImageToImageMetricv4.hxx:263:\nITK ERROR: MattesMutualInformationImageToImageMetricv4"
        "(0x556791e8d790): VirtualSampledPointSet must have 1 or more points."
    )
    assert one_line(raw) == "VirtualSampledPointSet must have 1 or more points."


def test_template_dice_is_the_dice_of_every_written_label_with_the_template_mask_on_one_grid():
    labels = np.zeros((6, 6, 6), np.int64)
    labels[:2], labels[2:3] = 1, 2  # two foreground classes: both count
    mask = np.zeros((6, 6, 6), bool)
    mask[1:4] = True
    assert template_dice(labels, mask) == pytest.approx(2 * 2 * 36 / (3 * 36 + 3 * 36))
    assert template_dice(np.zeros((6, 6, 6), np.int64), np.zeros((6, 6, 6), bool)) == 1.0  # both empty: agree
    assert template_dice(labels, np.zeros((6, 6, 6), bool)) == 0.0
    with pytest.raises(ValueError, match=r"label map \(6, 6, 6\) and template mask \(6, 6, 5\)"):
        template_dice(labels, mask[..., :5])


def test_the_report_gives_the_written_labels_dice_with_the_template_mask_whether_the_prior_cut_or_not(
    tmp_path, monkeypatch
):
    """The agreement is measured against the template's structure, not the region a margin wider, and on the labels
    as written: cut where the prior applied, as the members saw them where it did not."""
    path, image = _ball_and_a_far_blob(tmp_path)
    grid = np.meshgrid(*(np.arange(n) for n in image.shape), indexing="ij")
    mask = np.sqrt((grid[0] - 14) ** 2 + (grid[1] - 16) ** 2 + (grid[2] - 16) ** 2) <= 7  # a template off by 2 voxels
    region = np.zeros(image.shape, bool)
    region[:26] = True
    held = _prior_predictor(tmp_path, monkeypatch, region, mask=mask).segment(path, **FAST)
    assert held.quality["atlas_prior"]["applied"] and not held.label_map[26:].any()
    assert held.quality["atlas_prior"]["template_dice"] == pytest.approx(_dice(held.label_map > 0, mask))
    assert held.quality["atlas_prior"]["template_dice"] != pytest.approx(_dice(held.label_map > 0, region), abs=0.05)
    uncut = _prior_predictor(tmp_path, monkeypatch, ~region, mask=mask).segment(path, **FAST)  # holds only the blob
    assert not uncut.quality["atlas_prior"]["applied"] and uncut.label_map[26:].any()
    assert uncut.quality["atlas_prior"]["template_dice"] == pytest.approx(_dice(uncut.label_map > 0, mask))


def test_the_output_settings_name_the_atlas_prior_by_its_files_content(tmp_path, monkeypatch):
    """A review found the prior compared by its files' names: an empty brain mask under the bundle's name read as the
    same settings, and --continue kept cases of the earlier template. By content: the same files under another folder
    are the same prior, another file under the same name is not."""
    import shutil

    from medwidit.inference.options import sampling_options

    files, *_ = _template(tmp_path)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    copies = {key: shutil.copy(path, moved / path.name) for key, path in files.items()}
    options = sampling_options(1, 1, 0.25, None, 0.0, 1.0)

    def settings(prior_files):
        prior = {**prior_files, "margin_mm": 5}
        predictor = Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=2), device="cpu", atlas_prior=prior)
        return predictor.output_settings(options, seed=0, augment=1, weight_sets=1)

    first = settings(files)
    assert settings(copies) == first and first["atlas_prior"]["margin_mm"] == 5.0
    label = nib.load(copies["label"])
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine), copies["label"])
    changed = settings(copies)
    assert changed["atlas_prior"]["label"] != first["atlas_prior"]["label"]
    assert changed["atlas_prior"]["image"] == first["atlas_prior"]["image"]
    # a relative path is kept absolute: the files are read again when the run starts, wherever its working folder is
    monkeypatch.chdir(moved)
    relative = check_atlas_prior({"image": copies["image"].name, "label": copies["label"].name, "margin_mm": 5})
    assert relative["image"] == copies["image"] and relative["image"].is_absolute()
