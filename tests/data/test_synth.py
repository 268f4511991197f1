"""Label-to-image synthesis: images follow the label map, draws differ, seeds repeat, acquisitions act as
described, and a label map the generator cannot use fails naming the file and the label."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, HistogramNormalize, RandFlipd

from medwidit.data.synth import (
    CheckLabelMapd,
    RandCoilFieldd,
    RandContrastRemapd,
    RandFieldOfViewd,
    RandLabelsToImaged,
    RandNeckExtensiond,
    RandSliceThicknessd,
    RandSubdivideLabelsd,
    SynthesisError,
    synthesis_transforms,
)


def _head(shape=(32, 32, 32), name="head_labels.nii.gz") -> MetaTensor:
    """Nested spheres: 0 air, 1 scalp, 2 skull, 3 CSF, 4 brain."""
    grid = np.stack(np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    label = np.select([r < 8, r < 10, r < 12, r < 14], [4, 3, 2, 1], 0)
    return MetaTensor(torch.as_tensor(label[None], dtype=torch.float32), meta={"filename_or_obj": name})


def test_labels_to_image_draws_one_gaussian_per_label():
    label = _head()
    t = RandLabelsToImaged(num_labels=5, std_range=(0.0, 0.0), air_prob=0.0)
    t.set_random_state(1)
    image = t({"label": label})["image"]
    for value in range(5):
        inside = image[label == value]
        assert torch.allclose(inside, inside[0].expand_as(inside))  # zero std: one intensity per label
    second = t({"label": label})["image"]
    assert not torch.allclose(image, second)  # every draw is a new contrast


def test_air_is_drawn_without_noise():
    """From a mutation review: air_prob paints the background labels black, noise included; an air that kept its
    noise std was not seen by any test (the one above draws with zero std)."""
    label = _head()
    t = RandLabelsToImaged(num_labels=5, std_range=(0.01, 0.05), air_prob=1.0)
    t.set_random_state(0)
    image = t({"label": label})["image"]
    assert torch.count_nonzero(image[label == 0]) == 0 and image[label > 0].std() > 0


def test_pipeline_is_seeded_and_maps_to_task_classes():
    transforms = Compose(synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1]))
    transforms.set_random_state(7)
    first = transforms({"label": _head()})
    transforms.set_random_state(7)
    again = transforms({"label": _head()})
    assert torch.equal(torch.as_tensor(first["image"]), torch.as_tensor(again["image"]))
    assert set(torch.unique(torch.as_tensor(first["label"])).tolist()) <= {0, 1}
    assert first["image"].shape == (1, 32, 32, 32) and float(first["image"].std()) > 0.05
    brain = torch.as_tensor(first["label"]) == 1
    assert 0.5 * (4 / 3 * np.pi * 8**3) < brain.sum() < 2 * (4 / 3 * np.pi * 8**3)  # deformed, not destroyed


def test_thick_slices_keep_the_grid_and_blur_only_their_axis():
    rng = np.random.default_rng(0)
    image = MetaTensor(torch.as_tensor(rng.normal(size=(1, 32, 32, 32)), dtype=torch.float32))
    t = RandSliceThicknessd(prob=1.0, thickness_range=(4.0, 4.0), axes=(2,))
    out = t({"image": image})["image"]
    assert out.shape == image.shape
    along = torch.diff(out, dim=3).abs().mean()
    across = torch.diff(out, dim=1).abs().mean()
    assert along < 0.3 * across  # smooth through the slices, sharp within them


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_thick_slices_record_grid_and_acquisition_spacing(prob):
    """What spacing conditioning trains on: (grid spacing, acquisition spacing) in mm, the thick axis scaled."""
    image = MetaTensor(torch.rand(1, 16, 16, 16), affine=torch.diag(torch.tensor([1.5, 2.0, 2.5, 1.0])))
    t = RandSliceThicknessd(prob=prob, thickness_range=(4.0, 4.0), axes=(1,), spacing_key="spacing")
    spacing = t({"image": image})["spacing"]
    expected = [1.5, 2.0, 2.5, 1.5, 2.0 * (4.0 if prob else 1.0), 2.5]
    assert spacing.dtype == torch.float32 and spacing.tolist() == pytest.approx(expected)
    with pytest.raises(SynthesisError, match="spacing_key='spacing'.*MetaTensor"):
        t({"image": torch.rand(1, 16, 16, 16)})


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_thick_slices_keep_a_real_scans_own_acquisition(prob):
    """After RecordSpacingd: the scan's own 5 mm slices stay, and a simulated thickness only ever thickens an axis;
    the record it started from is not changed in place (crops of one volume share it)."""
    image = MetaTensor(torch.rand(1, 16, 16, 16), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    known = torch.tensor([2.0, 2.0, 2.0, 1.0, 5.0, 12.0])
    t = RandSliceThicknessd(prob=prob, thickness_range=(4.0, 4.0), axes=(0,), spacing_key="spacing")
    spacing = t({"image": image, "spacing": known})["spacing"]
    assert spacing.tolist() == pytest.approx([2.0, 2.0, 2.0, 8.0 if prob else 1.0, 5.0, 12.0])
    t = RandSliceThicknessd(prob=1.0, thickness_range=(4.0, 4.0), axes=(2,), spacing_key="spacing")
    assert t({"image": image, "spacing": known})["spacing"][5] == 12.0  # 12 mm slices beat the simulated 8 mm
    assert known.tolist() == [2.0, 2.0, 2.0, 1.0, 5.0, 12.0]


@pytest.mark.parametrize("value", [-1.0, 0.5])
def test_thick_slices_leave_a_uniform_crop_uniform_and_record_the_spacing_they_make(value):
    """The profile was zero-padded: a crop of air at -1 became -0.58 on its faces, 8 slices deep (0.5 became 0.31);
    slices through the first and last voxels were (S - 1) / (n - 1) apart, not the thickness recorded."""
    image = MetaTensor(torch.full((1, 32, 32, 30), value), affine=torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0])))
    t = RandSliceThicknessd(prob=1.0, thickness_range=(6.0, 6.0), axes=(2,), spacing_key="spacing")
    out = t({"image": image})
    assert torch.allclose(out["image"], torch.full_like(out["image"], value), atol=1e-3)
    assert out["spacing"][5] == pytest.approx(2.0 * 30 / 5)  # 5 slices of 6 voxels: 12 mm apart (was 14.5)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RandSliceThicknessd(prob=1.5), r"prob must be in \[0, 1\], got 1.5"),  # MONAI made it 1
        (lambda: RandFieldOfViewd(prob=-0.3), r"prob must be in \[0, 1\], got -0.3"),  # and this 0
        (lambda: RandFieldOfViewd(axes=(-1,)), r"RandFieldOfViewd axes must be spatial axis indices"),
        # -1 thickened the last axis but recorded the channel axis's size, so no thick slices in the spacing record
        (lambda: RandSliceThicknessd(axes=(-1,)), r"RandSliceThicknessd axes must be spatial axis indices .* \(-1,\)"),
        (lambda: RandSliceThicknessd(axes=()), r"RandSliceThicknessd axes must be .* got \(\)"),  # max() of nothing
        (lambda: RandSliceThicknessd(axes=2), r"RandSliceThicknessd axes must be .* got 2\."),  # not a collection
        (lambda: RandSliceThicknessd(axes=(1.5,)), r"RandSliceThicknessd axes must be .* got \(1.5,\)"),  # was 1
        # a class -1 was written into the training labels; 1.5 became class 1
        (lambda: synthesis_transforms(num_labels=2, target_labels=[0, -1]), r"target_labels must be task classes.*-1"),
        (lambda: synthesis_transforms(num_labels=2, target_labels=[0, 1.5]), r"target_labels must be .* \[0, 1.5\]"),
        # axis 5 of a 3-D image: an IndexError on the draw that cut, named now on the first call
        (
            lambda: RandFieldOfViewd(prob=0.0, axes=(5,))(
                {"image": torch.zeros(1, 4, 4, 4), "label": torch.zeros(1, 4, 4, 4)}
            ),
            r"RandFieldOfViewd axes \(5,\) must be spatial axes of a 3D image",
        ),
        (lambda: RandContrastRemapd(prob=7), r"prob must be in \[0, 1\], got 7"),
        (lambda: RandCoilFieldd(prob=-1), r"prob must be in \[0, 1\], got -1"),
        (lambda: RandCoilFieldd(coeff_range=(0.5, 0.1)), r"coeff_range must be .* got \(0.5, 0.1\)"),
        (lambda: RandCoilFieldd(coeff_range=0.4), r"coeff_range must be \(low, high\) with 0 <= low .* got 0.4"),
        (lambda: RandCoilFieldd(coeff_range=(0.0, float("inf"))), r"coeff_range .* got \(0.0, inf\)"),  # NaN air
        (lambda: RandCoilFieldd(coeff_range=(False, True)), r"coeff_range .* got \(False, True\)"),
        (
            lambda: synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1], bias_coeff_range=(-0.1, 0.3)),
            r"bias_coeff_range must be \(low, high\) with 0 <= low <= high, finite, got \(-0.1, 0.3\)",
        ),
        (lambda: RandNeckExtensiond(relabel={4: 5}, prob=2), r"prob must be in \[0, 1\], got 2"),
        (lambda: RandLabelsToImaged(num_labels=5, air_prob=5.0), r"air_prob must be in \[0, 1\], got 5.0"),
        (lambda: RandSliceThicknessd(thickness_range=4), r"thickness_range must be \(low, high\) in voxels .*, got 4"),
        (lambda: RandLabelsToImaged(num_labels=5, background_labels=(9,)), r"background_labels .* 0..4 .* got 9"),
        (lambda: RandLabelsToImaged(num_labels=5, background_labels=(-1,)), r"background_labels .* got -1"),
        (lambda: synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1], fov_prob=1.7), "fov_prob"),
        (lambda: synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1], elastic_prob=-2), "elastic_prob"),
        (lambda: synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1], scale_range=1.5), "scale_range"),
    ],
)
def test_probabilities_and_ranges_out_of_bounds_are_named(make, match):
    """Accepted before: MONAI clips a probability into [0, 1] without a word; a scale range of 1.5 drew scales <= 0;
    a background label 9 of 5 was an IndexError and -1 painted the brain as air."""
    with pytest.raises(ValueError, match=match):
        make()


def test_axes_may_be_any_collection_of_indices():
    """Lists, sets, numpy arrays and tensors of indices were taken before the axes were checked, and still are."""
    for axes in ([2], {2}, np.array([2]), torch.tensor([2]), (np.int64(2),)):
        assert RandSliceThicknessd(axes=axes).axes == (2,)
        assert RandFieldOfViewd(axes=axes).axes == (2,)


def test_thick_slice_axes_must_be_the_images():
    t = RandSliceThicknessd(prob=1.0, axes=(0, 1, 2))
    with pytest.raises(ValueError, match=r"axes \(0, 1, 2\) must be spatial axes of a 2D image"):
        t({"image": torch.rand(1, 8, 8)})


def test_field_of_view_cuts_image_and_label_together():
    label = _head()
    d = {"image": label.clone() + 1, "label": label}
    t = RandFieldOfViewd(prob=1.0, max_fraction=0.5, axes=(0,))
    t.set_random_state(3)
    out = t(d)
    cut = (out["image"][0] == 0).all(dim=(1, 2))
    assert cut.any() and (out["label"][0][cut] == 0).all() and not (out["label"][0][~cut] == 0).all()


def test_the_generators_flip_moves_the_label_with_the_image():
    """From a mutation review: the generator's left-right flip on the image alone put every synthetic label map on
    the mirror side of its image, unseen by any test."""
    flips = [t for t in synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1]) if isinstance(t, RandFlipd)]
    assert flips
    label = torch.zeros(1, 8, 6, 4)
    label[0, :3] = 1  # one side only
    for flip in flips:
        flip.prob = 1.0
        out = flip({"image": label.clone(), "label": label.clone()})
        assert torch.equal(out["image"], out["label"]) and not torch.equal(out["label"], label)


def _cut_head(z_sign: float) -> MetaTensor:
    """The nested spheres cut through the brain at the bottom, 2 mm voxels; z_sign -1: the array runs downwards."""
    label = _head()[..., 12:] if z_sign > 0 else _head()[..., 12:].flip(3)
    label = MetaTensor(label.as_tensor(), meta={"filename_or_obj": "cut.nii.gz"})
    label.affine = torch.diag(torch.tensor([2.0, 2.0, 2.0 * z_sign, 1.0], dtype=torch.float64))
    return label


@pytest.mark.parametrize("z_sign", [1.0, -1.0])
def test_neck_extension_continues_the_map_below_its_inferior_face(z_sign):
    label = _cut_head(z_sign)
    bottom = label[..., 0] if z_sign > 0 else label[..., -1]
    assert (bottom == 4).any()  # the brain reaches the map's inferior face
    t = RandNeckExtensiond(relabel={4: 3}, prob=1.0, length_mm=(20.0, 20.0))
    out = t({"label": label})["label"]
    assert out.shape == (1, 32, 32, 30)  # 20 mm = 10 slices of 2 mm, below
    neck, kept = (out[..., :10], out[..., 10:]) if z_sign > 0 else (out[..., 20:], out[..., :20])
    assert torch.equal(kept.as_tensor(), label.as_tensor())  # the map itself is untouched
    expected = torch.where(bottom == 4, 3, bottom).as_tensor()
    assert all(torch.equal(neck[..., k].as_tensor(), expected) for k in range(10))  # its last slice, relabelled
    # world coordinates of the map's voxels are unchanged: the origin moved down by the extension
    first_kept = torch.tensor([0.0, 0.0, 10.0 if z_sign > 0 else 0.0, 1.0], dtype=torch.float64)
    label_first = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(out.affine @ first_kept, label.affine @ label_first)
    lowest = out.affine @ torch.tensor([0.0, 0.0, 0.0 if z_sign > 0 else 29.0, 1.0], dtype=torch.float64)
    was = label.affine @ torch.tensor([0.0, 0.0, 0.0 if z_sign > 0 else 19.0, 1.0], dtype=torch.float64)
    assert float(lowest[2]) == pytest.approx(float(was[2]) - 20.0)


def test_neck_extension_in_the_pipeline_adds_tissue_that_is_not_target():
    options = {"neck_prob": 1.0, "neck_label": 3, "rotate_degrees": 0.0, "scale_range": 0.0, "fov_prob": 0.0}
    transforms = Compose(synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1], flip=False, **options))
    transforms.set_random_state(0)
    out = transforms({"label": _cut_head(1.0)})
    extra = out["label"].shape[3] - 20
    assert extra > 0 and out["image"].shape == out["label"].shape
    assert not (out["label"][..., :extra] == 1).any()  # below the map: no brain
    assert (out["image"][..., :extra] != 0).any()  # but tissue
    names = [type(t).__name__ for t in synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1], **options)]
    assert names.index("RandNeckExtensiond") < names.index("RandAffined")  # the column is deformed with the head


@pytest.mark.parametrize("neck_label", [None, 4, 5])
def test_neck_extension_needs_a_label_that_is_not_target(neck_label):
    with pytest.raises(ValueError, match="neck_prob 0.5 needs neck_label"):
        synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1], neck_prob=0.5, neck_label=neck_label)


def test_neck_extension_needs_an_affine_and_three_dimensions():
    with pytest.raises(SynthesisError, match="needs a MetaTensor label map"):
        RandNeckExtensiond(relabel={4: 3}, prob=1.0)({"label": torch.zeros(1, 4, 4, 4)})
    flat = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "slice.nii.gz"})
    with pytest.raises(SynthesisError, match="slice.nii.gz: RandNeckExtensiond needs a 3D label map, got 2D"):
        RandNeckExtensiond(relabel={4: 3}, prob=1.0)({"label": flat})


def test_contrast_remap_keeps_air_dark_and_leaves_an_equalised_crop():
    label = _head()[0]
    tissue = {0: 0.0, 1: 0.9, 2: 0.1, 3: 0.2, 4: 0.6}  # T1-like: air, bright scalp, dark skull and CSF, grey brain
    raw = sum(value * (label == index).float() for index, value in tissue.items())[None]
    image = HistogramNormalize(num_bins=256, min=-1.0, max=1.0)(raw)  # the pipeline's equalisation
    means = []
    for bias_prob in (0.0, 1.0):
        t = Compose([RandContrastRemapd(prob=1.0, num_control_points=(3, 3), bias_prob=bias_prob)])
        for seed in range(8):
            t.set_random_state(seed)
            out = torch.as_tensor(t({"image": image})["image"])
            assert out.shape == image.shape and float(out.min()) == -1.0 and float(out.max()) == 1.0
            assert torch.equal(out[0][label == 0], torch.full_like(out[0][label == 0], -1.0))  # air stays the floor
            means.append([float(out[0][label == k].mean()) for k in (3, 4)])
            t.set_random_state(seed)
            assert torch.equal(out, torch.as_tensor(t({"image": image})["image"]))  # seeded, the coil field too
            t.set_random_state(seed + 100)
            assert not torch.equal(out, torch.as_tensor(t({"image": image})["image"]))
    order = {csf < brain for csf, brain in means}
    assert order == {True, False}  # the curve need not be monotone: CSF brighter than brain in some draws (T2-like)
    air = MetaTensor(torch.full((1, 8, 8, 8), -1.0))
    assert torch.equal(RandContrastRemapd(prob=1.0)({"image": air})["image"], air)  # all air: nothing to remap


def test_contrast_remap_leaves_an_all_air_channel_as_it_is_beside_a_remapped_one():
    """The all-air check looked at the whole image: beside a channel with tissue, an air channel at -1 came back 0."""
    tissue = torch.linspace(-1, 1, 16**3).reshape(1, 16, 16, 16)
    image = MetaTensor(torch.cat([torch.full((1, 16, 16, 16), -1.0), tissue]))
    t = RandContrastRemapd(prob=1.0)
    t.set_random_state(0)
    out = t({"image": image})["image"]
    assert torch.equal(out[0], image[0]) and not torch.equal(out[1], image[1])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_control_points": (2, 4)}, "num_control_points"),
        ({"num_control_points": 5}, "num_control_points"),
        ({"num_control_points": (4, 5, 6)}, "num_control_points"),
        ({"num_control_points": (3.9, 4.2)}, "num_control_points"),
        ({"bias_coeff_range": (0.5,)}, "bias_coeff_range"),
        ({"bias_coeff_range": (0.5, 0.1)}, "bias_coeff_range"),
        ({"bias_prob": 1.5}, "bias_prob"),
    ],
)
def test_contrast_remap_options_are_checked(options, match):
    with pytest.raises(ValueError, match=match):
        RandContrastRemapd(**options)


@pytest.mark.parametrize(
    ("label", "match"),
    [
        (_head() * 2, "head_labels.nii.gz: label 8 is not one of the 5"),
        (_head() - 1, "head_labels.nii.gz: label -1"),
        (_head() + 0.5, r"head_labels.nii.gz: the label map must hold integer labels \(e.g. \[0.5, 0.5, 0.5\]\)"),
        (MetaTensor(torch.zeros(1, 0, 4, 4), meta={"filename_or_obj": "none.nii.gz"}), "none.nii.gz: .* no voxels"),
        (MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "air.nii.gz"}), "air.nii.gz: .* is empty"),
    ],
)
def test_unusable_label_maps_name_the_file_and_the_label(label, match):
    with pytest.raises(SynthesisError, match=match):
        RandLabelsToImaged(num_labels=5)({"label": label})


def test_the_generator_checks_its_label_map_before_deforming_it():
    """An unknown label near the border was checked only after the random rotation and scaling, which mostly cut it
    away (a label 7 at a corner passed 9 draws of 10); a map with another number of axes failed later, unnamed."""
    from monai.transforms import Compose

    label = _head()
    label[0, 0, 0, 0] = 7
    steps = Compose(synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1]))
    for seed in range(4):
        steps.set_random_state(seed)
        with pytest.raises(RuntimeError) as failed:  # MONAI's Compose names the transform; the cause names the file
            steps({"label": label})
        assert isinstance(failed.value.__cause__, SynthesisError)
        assert "head_labels.nii.gz: label 7 is not one of the 5 generation labels" in str(failed.value.__cause__)
    for shape in ((1, 32, 32), (2, 32, 32, 32)):
        flat = MetaTensor(torch.ones(shape), meta={"filename_or_obj": "odd.nii.gz"})
        with pytest.raises(SynthesisError, match=r"odd.nii.gz: the label map must be one 3-D volume .* got shape"):
            CheckLabelMapd("label", num_labels=5)({"label": flat})


def test_target_labels_must_cover_every_generation_label():
    with pytest.raises(ValueError, match="each of the 5 labels"):
        synthesis_transforms(num_labels=5, target_labels=[0, 1])


def _equalised_head() -> tuple[torch.Tensor, MetaTensor]:
    """The head's labels and a T1-like image of it (a little texture, so that tissue is not one value),
    equalised onto [-1, 1] as the pipeline does."""
    label = _head()[0]
    tissue = {0: 0.0, 1: 0.9, 2: 0.1, 3: 0.2, 4: 0.6}
    texture = 0.02 * torch.rand(label.shape, generator=torch.Generator().manual_seed(0))
    raw = sum(value * (label == index).float() for index, value in tissue.items()) + texture * (label > 0)
    return label, HistogramNormalize(num_bins=256, min=-1.0, max=1.0)(raw[None])


def test_coil_field_reorders_the_crops_own_values_by_the_field_and_keeps_the_air():
    label, image = _equalised_head()
    t = RandCoilFieldd(prob=1.0, coeff_range=(0.2, 0.6))  # a fixed coefficient would draw one field for every seed
    t.set_random_state(0)
    out = torch.as_tensor(t({"image": image})["image"])
    assert out.shape == image.shape
    assert torch.equal(torch.sort(out.flatten()).values, torch.sort(image.flatten()).values)  # its own values
    assert torch.equal(out[0][label == 0], image[0][label == 0])  # the air, the crop's minimum, stays the floor
    field = torch.as_tensor(t.bias_field(torch.ones_like(image), randomize=False))[0]
    brain = label == 4

    # the brain's values now follow the field: under its weak part the brain takes darker tissue's values
    def spearman(a, b):
        ranks = [torch.argsort(torch.argsort(x.flatten())).float() for x in (a, b)]
        return float(torch.corrcoef(torch.stack(ranks))[0, 1])

    head = label > 0
    assert spearman(out[0][head], ((image[0] + 1) * field)[head]) > 0.999  # the order of the product
    assert spearman(out[0][brain], field[brain]) > 0.8  # the brain's texture is small beside the field
    assert float(out[0][brain].min()) < float(image[0][label == 3].max())  # as dark as CSF somewhere
    t.set_random_state(0)
    assert torch.equal(out, torch.as_tensor(t({"image": image})["image"]))  # seeded
    t.set_random_state(1)
    assert not torch.equal(out, torch.as_tensor(t({"image": image})["image"]))


def test_coil_field_of_zero_coefficients_is_the_identity_and_channels_share_one_field():
    _, image = _equalised_head()
    flat = RandCoilFieldd(prob=1.0, coeff_range=(0.0, 0.0))  # exp(0): every voxel keeps its place
    assert torch.equal(torch.as_tensor(flat({"image": image})["image"]), torch.as_tensor(image))
    air = torch.full_like(image, -1.0)
    two = MetaTensor(torch.cat([image, image, air]), meta={"filename_or_obj": "crop.nii.gz"})
    t = RandCoilFieldd(prob=1.0)
    t.set_random_state(3)
    out = t({"image": two})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "crop.nii.gz"
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], two[0])  # one field for both modalities
    assert torch.equal(out[2], air[0])  # an all-air channel is left as it is
    assert torch.equal(RandCoilFieldd(prob=0.0)({"image": two})["image"], two)
    assert RandCoilFieldd(coeff_range=(np.float32(0.1), np.float32(0.4))).bias_field.coeff_range == (
        pytest.approx(0.1),
        pytest.approx(0.4),
    )


def test_coil_field_refuses_values_that_are_not_finite_naming_the_file():
    """One NaN made the crop's minimum NaN and the sort the identity: the channel came back as a ramp."""
    _, image = _equalised_head()
    broken = MetaTensor(image.clone(), meta={"filename_or_obj": "scan_7.nii.gz"})
    broken[0, 3, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="RandCoilFieldd: scan_7.nii.gz has values that are not finite"):
        RandCoilFieldd(prob=1.0)({"image": broken})


def test_generator_coil_field_takes_its_coefficient_range():
    options = {"num_labels": 5, "target_labels": [0, 0, 0, 0, 1]}
    for extra, expected in (({}, (0.0, 0.3)), ({"bias_coeff_range": [0, 0.6]}, (0.0, 0.6))):  # the default as before
        fields = [t for t in synthesis_transforms(**options, **extra) if type(t).__name__ == "RandBiasFieldd"]
        assert [f.rand_bias_field.coeff_range for f in fields] == [expected]


def test_subdivision_cuts_only_the_chosen_labels_into_new_ones_and_repeats_with_its_seed():
    label = _head()
    t = RandSubdivideLabelsd(labels=[1, 2], first_label=5, parts=3, scale_range=(2.0, 2.0))
    t.set_random_state(0)
    out = t({"label": label})["label"]
    t.set_random_state(0)
    assert torch.equal(out, t({"label": label})["label"])
    for value in (0, 3, 4):  # not chosen: unchanged
        assert torch.equal(out[label == value], label[label == value])
    assert set(out[label == 1].unique().tolist()) == {1, 5, 6}  # label 1 -> itself and 5, 6
    assert set(out[label == 2].unique().tolist()) == {2, 7, 8}  # label 2 -> itself and 7, 8


def test_subdivided_parts_are_painted_apart_and_keep_their_labels_task_class():
    label = _head()
    subdivide = RandSubdivideLabelsd(labels=[1], first_label=5, parts=4, scale_range=(2.0, 2.0))
    paint = RandLabelsToImaged(num_labels=8, std_range=(0.0, 0.0), air_prob=0.0)
    data = Compose([subdivide, paint]).set_random_state(3)({"label": label})
    assert len(data["image"][label == 1].unique()) == 4  # one intensity per part: the scalp is no longer flat
    options = {"rotate_degrees": 0.0, "scale_range": 0.0, "fov_prob": 0.0, "flip": False}
    plain = synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1], **options)
    cut = synthesis_transforms(
        num_labels=5, target_labels=[0, 0, 0, 0, 1], subdivide_labels=[1, 4], subdivide_parts=4, **options
    )
    assert sum(isinstance(t, RandSubdivideLabelsd) for t in cut) == 1
    assert not any(isinstance(t, RandSubdivideLabelsd) for t in plain)
    expected = Compose(plain).set_random_state(0)({"label": _head()})["label"]
    # the scalp's parts stay background and the brain's stay brain: the task labels are those of the uncut map
    assert torch.equal(Compose(cut).set_random_state(0)({"label": _head()})["label"], expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float32])
def test_subdivision_writes_new_labels_past_a_small_integer_type_on_a_copy(dtype):
    label = _head().to(dtype)
    before = label.clone()
    out = RandSubdivideLabelsd(labels=[1], first_label=254, parts=4, scale_range=(2.0, 2.0))({"label": label})
    assert set(out["label"][label == 1].unique().tolist()) == {1, 254, 255, 256}  # 256 did not wrap to 0
    assert torch.equal(label, before)  # the caller's (or a cache's) map is left as it was


def test_subdivision_refuses_a_label_it_does_not_know_naming_the_file_and_its_bad_settings():
    t = RandSubdivideLabelsd(labels=[1], first_label=5, prob=0.0)  # also when it draws no cut
    for label, match in (
        (_head() * 2, "head_labels.nii.gz: label 8 is not one of the 5"),
        (_head() + 0.5, "head_labels.nii.gz: the label map must hold integer labels"),
        (_head() * float("nan"), r"head_labels.nii.gz: the label map must hold integer labels \(e.g. \[nan"),
        (_head() * 0, "head_labels.nii.gz: the label map is empty"),
        (MetaTensor(torch.zeros(1, 0, 4, 4), meta={"filename_or_obj": "none.nii.gz"}), "none.nii.gz: .* no voxels"),
    ):
        with pytest.raises(SynthesisError, match=match):
            t({"label": label})
    for options, match in (
        ({"labels": [5]}, "labels must be distinct generation labels in 1..4"),
        ({"labels": [0]}, "not the background 0"),
        ({"labels": [1, 1]}, "labels must be distinct"),
        ({"labels": [1], "parts": 1}, "parts must be an int >= 2"),
        ({"labels": [1], "scale_range": (0.5, 2.0)}, "scale_range must be"),
    ):
        with pytest.raises(ValueError, match=match):
            RandSubdivideLabelsd(first_label=5, **options)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("subdivide_scale", 4),
        ("subdivide_parts", 1),
        ("subdivide_labels", [0]),
        ("subdivide_labels", [1, 1]),
        ("neck_length_mm", 40),
        ("rotate_degrees", "15"),
        ("rotate_degrees", float("nan")),
    ],
)
def test_the_generators_options_are_named_as_the_user_set_them(option, value):
    """The transforms' messages named their own arguments (scale_range, parts, labels, length_mm), and scale_range
    is another option of the generator; rotate_degrees was not checked at all (found by a review)."""
    from medwidit.data.synth import synthesis_transforms

    with pytest.raises(ValueError, match=rf"^{option} must"):
        synthesis_transforms(num_labels=5, target_labels=[0, 1, 1, 0, 0], **{option: value})


def test_ranges_of_the_painting_and_the_cut_are_checked_when_built():
    from medwidit.data.synth import RandFieldOfViewd, RandLabelsToImaged

    with pytest.raises(ValueError, match=r"^mean_range must be \(low, high\)"):
        RandLabelsToImaged(num_labels=3, mean_range=0.5)
    with pytest.raises(ValueError, match=r"^std_range must be \(low, high\)"):
        RandLabelsToImaged(num_labels=3, std_range=(0.0, float("inf")))
    with pytest.raises(ValueError, match=r"^max_fraction must be in \(0, 1\), got '0.3'"):
        RandFieldOfViewd(max_fraction="0.3")
    RandLabelsToImaged(num_labels=3, mean_range=(-1.0, 1.0))  # a negative mean stays allowed


def test_the_partial_volume_blur_keeps_a_uniform_background_uniform_to_the_faces():
    """From a review: the blur was MONAI's, which pads with zeros, so where the background is not painted as air the
    faces of every blurred volume came out darker (0.55 on a face, 0.26 in a corner of a uniform 0.8)."""
    from monai.transforms import RandGaussianSmoothd

    transforms = synthesis_transforms(num_labels=5, target_labels=[0, 0, 0, 0, 1])
    (blur,) = [t for t in transforms if isinstance(getattr(t, "transform", t), RandGaussianSmoothd)]
    getattr(blur, "transform", blur).prob = 1.0
    blur.set_random_state(0)
    image = MetaTensor(torch.full((1, 16, 16, 16), 0.8))
    assert torch.allclose(blur({"image": image})["image"], image, atol=1e-5)
