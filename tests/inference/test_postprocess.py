"""inference/postprocess and inferer: the bundle's label post-processing (MONAI KeepLargestConnectedComponent,
FillHoles) and its MONAI pieces (preprocessing -> DiffusionSamplingInferer -> postprocessing) give the predictor's
labels exactly; the predictor applies the steps to labels only."""

import numpy as np
import pytest
import torch
from inference_volumes import SpacingOracle, random_tiny_segmenter, save_nifti
from monai.data import MetaTensor
from monai.transforms import Compose

from medwidit.data.transforms import preprocessing_transforms
from medwidit.inference import DiffusionSamplingInferer, Predictor
from medwidit.inference.postprocess import (
    apply_label_postprocessing,
    check_label_postprocessing,
    check_probability_smoothing,
    postprocessing_transforms,
    run_label_steps,
    smooth_probability,
)

BRAIN = [{"name": "keep_largest_component", "applied_labels": [1]}, {"name": "fill_holes", "applied_labels": [1]}]
PREPROCESSING = {"orientation": "RAS", "spacing": [1.5, 1.5, 1.5], "intensity": "zscore_nonzero"}


def test_steps_keep_the_largest_component_and_fill_its_holes():
    labels = np.zeros((12, 12, 12), dtype=np.int64)
    labels[1:8, 1:8, 1:8] = 1
    labels[4, 4, 4] = 0  # a hole inside the big component
    labels[10:12, 10:12, 10:12] = 1  # a small island
    given = labels.copy()
    out = apply_label_postprocessing(labels, BRAIN)
    np.testing.assert_array_equal(labels, given)  # the caller's map is left alone
    expected = np.zeros_like(labels)
    expected[1:8, 1:8, 1:8] = 1
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(apply_label_postprocessing(labels, []), labels)


SPECS = [
    [{"name": "keep_largest_component", "applied_labels": [1]}, {"name": "fill_holes", "applied_labels": [1]}],
    [{"name": "fill_holes"}],
    [{"name": "fill_holes", "connectivity": 1}],
    [{"name": "fill_holes", "connectivity": 2}, {"name": "keep_largest_component", "connectivity": 2}],
    [{"name": "keep_largest_component", "connectivity": 1}, {"name": "fill_holes", "applied_labels": [2]}],
]


def _shells():
    """Label maps whose labels' box is smaller than the grid: a shell with a cavity (a hole), the same opened by a
    channel at the box's face, a shell cut by the grid's face (its cavity open there), a second label apart, a 2-D
    ring beside the grid's edge."""
    shell = np.zeros((30, 28, 26), np.int64)
    shell[8:20, 9:19, 7:17] = 1
    shell[10:18, 11:17, 9:15] = 0  # the cavity: a hole
    opened = shell.copy()
    opened[13, 13, 7:9] = 0  # a channel from the cavity to the box's face: open, not a hole
    cut = np.zeros((30, 28, 26), np.int64)
    cut[0:10, 9:19, 7:17] = 1
    cut[0:8, 11:17, 9:15] = 0  # the cavity reaches the grid's first face: open
    cut[2, 13, 11] = 2  # another label inside the cavity
    shell[3:5, 3:5, 3:5] = 2  # a second label, a second component
    ring = np.zeros((20, 24), np.int64)
    ring[0:7, 5:12] = 1
    ring[2:5, 7:10] = 0  # a hole in 2-D beside the edge
    ring[1, 18] = 1
    return {"shell": shell, "opened": opened, "cut": cut, "ring": ring}


def test_steps_within_the_labels_box_equal_the_whole_grids():
    """The steps run in the labels' bounding box: the same labels as over the whole grid, for every connectivity,
    on maps whose box is smaller than the grid (holes, holes open at the box's face or the grid's, several labels,
    2-D), on maps that fill the grid and on no labels at all."""
    maps = _shells()
    for name, labels in maps.items():
        assert np.count_nonzero(labels.any(axis=tuple(range(1, labels.ndim)))) < labels.shape[0], name
    rng = np.random.default_rng(7)
    cases = [*maps.values(), np.zeros((9, 9, 9), np.int64), (rng.random((14, 30)) < 0.6) * rng.integers(1, 3, (14, 30))]
    for labels in cases:
        for spec in SPECS:
            if (spec[0].get("connectivity") or 1) <= labels.ndim:
                assert np.array_equal(apply_label_postprocessing(labels, spec), run_label_steps(labels, spec))
    assert apply_label_postprocessing(maps["shell"], SPECS[1])[14, 14, 12] == 1  # the hole is filled ...
    assert apply_label_postprocessing(maps["opened"], SPECS[1])[14, 14, 12] == 0  # ... the open cavity is not
    assert apply_label_postprocessing(maps["cut"], SPECS[1])[4, 13, 11] == 0
    assert apply_label_postprocessing(maps["ring"], SPECS[1])[3, 8] == 1


def test_steps_within_the_box_equal_the_whole_grids_on_random_maps_in_a_corner():
    """A seeded search: random labels (1-3, several densities, blocks with cavities) in a random sub-box of a larger
    grid, possibly touching its faces, every spec and connectivity: the box gives the whole grid's labels."""
    rng = np.random.default_rng(11)
    for trial in range(150):
        ndim = 2 if trial % 3 == 0 else 3
        shape = tuple(int(n) for n in rng.integers(6, 14, ndim))
        labels = np.zeros(shape, np.int64)
        lo = [int(rng.integers(0, n - 3)) for n in shape]
        hi = [int(rng.integers(a + 2, n + 1)) for a, n in zip(lo, shape, strict=True)]
        inner = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        block = labels[inner]
        block[...] = (rng.random(block.shape) < rng.uniform(0.3, 0.95)) * rng.integers(1, 4, block.shape)
        for spec in SPECS:
            if all((step.get("connectivity") or 1) <= ndim for step in spec):
                assert np.array_equal(apply_label_postprocessing(labels, spec), run_label_steps(labels, spec)), trial


def test_connectivity_is_checked_in_the_spec_and_against_the_maps_axes():
    with pytest.raises(ValueError, match=r"\[0\] \(fill_holes\): connectivity must be null or .* got 4"):
        check_label_postprocessing([{"name": "fill_holes", "connectivity": 4}])
    with pytest.raises(ValueError, match="connectivity must be"):
        check_label_postprocessing([{"name": "fill_holes", "connectivity": True}])
    with pytest.raises(ValueError, match="connectivity 3 exceeds the map's 2 axes"):  # an empty map too
        apply_label_postprocessing(np.zeros((5, 5), np.int64), [{"name": "fill_holes", "connectivity": 3}])
    with pytest.raises(ValueError, match="unknown option"):  # MONAI's other options are not passed through
        apply_label_postprocessing(np.ones((5, 5), np.int64), [{"name": "keep_largest_component", "independent": 0}])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "fill_holes"}, "must be a list"),
        # look_up_option suggests the nearest name; the line once did not say where (the file, the step)
        ([{"name": "fill_holes"}, {"name": "fill_hols"}], r"^label_postprocessing\[1\]: .*fill_holes"),
        ([{"applied_labels": [1]}], "with a 'name'"),
        ([{"name": "fill_holes", "applied_label": [1]}], "unknown option"),
        ([{"name": "keep_largest_component", "applied_labels": [0]}], "ints > 0"),
        (
            [{"name": "fill_holes", "applied_labels": 1.5}],
            r"\[0\] \(fill_holes\): applied_labels .* got 1.5",
        ),  # TypeError
        ([{"name": "fill_holes", "applied_labels": True}], "ints > 0"),
        ([{"name": "fill_holes", "applied_labels": []}], r"non-empty list .* got \[\]"),  # MONAI did nothing
    ],
)
def test_bad_specs_name_the_step(spec, match):
    with pytest.raises(ValueError, match=match):
        check_label_postprocessing(spec)


def test_applied_labels_must_be_the_models_classes():
    """From a review: a class the model lacks was accepted and MONAI cleaned nothing, where expected_volume_ml refuses
    the same class; the predictor checks them against its model's classes."""
    steps = [{"name": "keep_largest_component", "applied_labels": [2]}]
    assert check_label_postprocessing(steps, num_classes=3) == steps
    with pytest.raises(
        ValueError, match=r"\[0\] \(keep_largest_component\): .*foreground classes \(1 to 1\).* got \[2\]"
    ):
        check_label_postprocessing(steps, num_classes=2)
    with pytest.raises(ValueError, match=r"label_postprocessing\[0\] .* got \[2\]"):
        Predictor(random_tiny_segmenter(classes=2), device="cpu", label_postprocessing=steps)


def test_one_applied_label_may_be_an_int_as_monai_takes_it():
    """It once raised TypeError ('int' object is not iterable), which no caller turned into a line naming the file."""
    (step,) = check_label_postprocessing([{"name": "keep_largest_component", "applied_labels": 1}])
    assert step == {"name": "keep_largest_component", "applied_labels": [1]}


@pytest.mark.parametrize("anti_aliasing", [False, True])
def test_monai_pipeline_gives_the_predictor_labels(tmp_path, anti_aliasing):
    """The bundle's MONAI pieces, chained as a MONAI evaluator would, reproduce ``Predictor.segment`` exactly; with
    the blur before a coarser grid too (the shipped inference.json's anti_aliasing; its voxels are 1 mm here)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in (20, 18, 16)), indexing="ij")
    volume = (np.sin(i / 3.0) + np.cos(j / 4.0) + k / 10.0 + 2.0).astype(np.float32)
    source = save_nifti(tmp_path / "case.nii.gz", volume)
    segmenter = random_tiny_segmenter(classes=2)
    options = {"steps": 2, "num_samples": 2, "overlap": 0.5}
    settings = {**PREPROCESSING, "anti_aliasing": anti_aliasing}
    predictor = Predictor(segmenter, preprocessing=settings, roi_size=16, device="cpu", label_postprocessing=BRAIN)
    expected = predictor.segment(source, generator=torch.Generator().manual_seed(3), **options)
    plain = Predictor(segmenter, preprocessing=settings, roi_size=16, device="cpu").segment(
        source, generator=torch.Generator().manual_seed(3), **options
    )
    np.testing.assert_array_equal(expected.probability, plain.probability)  # post-processing leaves these alone
    np.testing.assert_array_equal(expected.entropy, plain.entropy)
    np.testing.assert_array_equal(expected.label_map, apply_label_postprocessing(plain.label_map, BRAIN))

    preprocessing = Compose(preprocessing_transforms(predictor.preprocessing))  # as inference.json builds it
    inferer = DiffusionSamplingInferer(16, seed=3, **options)
    data = preprocessing({"image": str(source)})
    data["pred"] = inferer(data["image"][None], segmenter)[0]  # (K, *S')
    labels = postprocessing_transforms(BRAIN, preprocessing=preprocessing)(data)["pred"]  # (1, *S)
    np.testing.assert_array_equal(np.asarray(labels[0]), expected.label_map)


def test_inferer_gives_a_spacing_conditioned_net_each_items_spacing(tmp_path):
    """The MONAI path (preprocessing -> DiffusionSamplingInferer) gives a spacing-conditioned network the grid's and
    the acquisition's spacing, as the predictor does (the same rows in the same calls); a plain tensor is refused
    with what it lacks."""
    image = np.zeros((12, 12, 6), np.float32)
    image[3:9, 3:9, 2:5] = 1.0
    source = save_nifti(tmp_path / "thick.nii.gz", image, np.diag([1.5, 1.5, 3.0, 1.0]))
    preprocessing = {**PREPROCESSING, "intensity": "none", "num_modalities": 1}
    options = {"steps": 2, "num_samples": 2}
    from medwidit.diffusion import DiffusionSegmenter

    segmenter = DiffusionSegmenter(SpacingOracle(), num_classes=2)
    predictor = Predictor(segmenter, device="cpu", roi_size=8, preprocessing=preprocessing)
    expected = predictor.segment(source, generator=torch.Generator().manual_seed(3), **options)
    seen = torch.cat(segmenter.net.seen)
    segmenter.net.seen.clear()
    data = Compose(preprocessing_transforms(preprocessing))({"image": str(source)})
    probability = DiffusionSamplingInferer(8, seed=3, **options)(data["image"][None], segmenter)[0]
    assert torch.equal(torch.cat(segmenter.net.seen), seen)
    assert torch.equal(seen[0], torch.tensor([1.5, 1.5, 1.5, 1.5, 1.5, 3.0]))
    assert probability.shape == (2, 12, 12, 11) and expected.label_map.shape == image.shape  # 1.5 mm vs the input
    with pytest.raises(ValueError, match="needs its inputs as MetaTensors .* got Tensor"):
        DiffusionSamplingInferer(8, seed=3, **options)(torch.zeros(1, 1, 8, 8, 8), segmenter)


def test_inferer_checks_its_network():
    inferer = DiffusionSamplingInferer(16, steps=1, num_samples=1)
    with pytest.raises(TypeError, match="DiffusionSegmenter"):
        inferer(torch.zeros(1, 1, 16, 16, 16), torch.nn.Identity())
    with pytest.raises(ValueError, match="num_samples"):
        DiffusionSamplingInferer(16, num_samples=0)
    for bad in (-1, "x"):  # stored unchecked: it failed per batch, at the first call
        with pytest.raises(ValueError, match=rf"max_whole_voxels must be an int >= 0 or None, got {bad!r}"):
            DiffusionSamplingInferer(16, max_whole_voxels=bad)


def test_the_inferer_samples_extra_weights_as_the_predictor_does(tmp_path):
    """``DiffusionSamplingInferer(extra_segmenters=...)`` (a bundle's extra_weights) gives the probabilities of
    ``Predictor.segment(weight_sets=2)``: the network's own weights first, then the others, one generator."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in (20, 18, 16)), indexing="ij")
    volume = (np.sin(i / 3.0) + np.cos(j / 4.0) + k / 10.0 + 2.0).astype(np.float32)
    source = save_nifti(tmp_path / "case.nii.gz", volume)
    first, second = random_tiny_segmenter(seed=0), random_tiny_segmenter(seed=1)
    options = {"steps": 2, "num_samples": 2, "overlap": 0.5}
    predictor = Predictor(first, extra_segmenters=[second], preprocessing=PREPROCESSING, roi_size=16, device="cpu")
    expected = predictor.segment(source, generator=torch.Generator().manual_seed(3), weight_sets=2, **options)
    preprocessing = Compose(preprocessing_transforms({**PREPROCESSING, "num_modalities": 1}))
    data = preprocessing({"image": str(source)})
    inferer = DiffusionSamplingInferer(16, seed=3, extra_segmenters=[second], **options)
    data["pred"] = inferer(data["image"][None], first)[0]
    labels = postprocessing_transforms([], preprocessing=preprocessing)(data)["pred"]
    np.testing.assert_array_equal(np.asarray(labels[0]), expected.label_map)
    alone = DiffusionSamplingInferer(16, seed=3, **options)(data["image"][None], first)[0]
    assert not torch.equal(alone.as_tensor(), data["pred"].as_tensor())
    with pytest.raises(TypeError, match=r"extra_segmenters\[0\] must be a DiffusionSegmenter"):
        DiffusionSamplingInferer(16, extra_segmenters=[torch.nn.Identity()])


def test_the_inferers_result_for_a_case_does_not_depend_on_its_batch():
    """One generator drew the noise of the whole batch: the second case of a batch of two differed from its own run by
    up to 0.4 in probability, so a MONAI pipeline's results depended on its batch size."""
    segmenter = random_tiny_segmenter().eval()
    inferer = DiffusionSamplingInferer(16, steps=2, num_samples=2, seed=5)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1, 1, 16, 16, 16, generator=generator) for _ in range(2))
    together = inferer(torch.cat([a, b]), segmenter)
    assert torch.equal(together[0:1], inferer(a, segmenter)) and torch.equal(together[1:2], inferer(b, segmenter))


######################################################################################################################
# probability smoothing: the mean class probabilities smoothed on the model's grid before the argmax
######################################################################################################################


def _faces_on_grid(labels: np.ndarray, patch: int) -> float:
    """Fraction of a map's boundary faces at each axis' most frequent phase of a ``patch`` grid (as boundary.py)."""
    on_grid = total = 0
    for axis in range(labels.ndim):
        position = np.nonzero(np.diff(labels, axis=axis) != 0)[axis] + 1
        counts = np.bincount(position % patch, minlength=patch)
        on_grid, total = on_grid + int(counts.max()), total + int(counts.sum())
    return on_grid / total


def test_smoothing_keeps_a_uniform_map_up_to_the_faces_and_the_classes_sum_to_one():
    """GaussianSmooth pads with zeros; renormalising over the classes makes that the kernel's mean over the grid's
    voxels, so a uniform map stays uniform at the faces too; sigma 0 is the input itself."""
    uniform = torch.tensor([0.2, 0.5, 0.3])[:, None, None, None].expand(3, 9, 8, 7).contiguous()
    torch.testing.assert_close(smooth_probability(uniform, 1.5), uniform)
    random = torch.rand(3, 9, 8, 7, generator=torch.Generator().manual_seed(0))
    random /= random.sum(0, keepdim=True)
    smoothed = smooth_probability(random, 1.0)
    torch.testing.assert_close(smoothed.sum(0), torch.ones(9, 8, 7))
    assert smoothed.std() < random.std() / 2  # it does smooth
    assert smooth_probability(random, 0) is random


def test_smoothing_lets_a_blocky_edge_leave_the_patch_grid():
    """A patch head's output: an oblique plane's half-space written block by block (each 4^3 block one value, the
    plane's side at the block's centre, softened). Its argmax is a staircase whose every face lies on the 4-voxel
    grid; smoothed by 1.5 voxels the edge crosses between the blocks and follows the plane more closely."""
    n, p = 32, 4
    i, j, k = np.meshgrid(*(np.arange(n) + 0.5 for _ in range(3)), indexing="ij")
    truth = (i + 0.6 * j + 0.3 * k > 28.0).astype(np.int64)
    centre = [(np.floor(a / p) * p + p / 2) for a in (i, j, k)]
    signed = centre[0] + 0.6 * centre[1] + 0.3 * centre[2] - 28.0
    foreground = torch.as_tensor(1 / (1 + np.exp(-signed / 2.0)), dtype=torch.float32)
    probability = torch.stack([1 - foreground, foreground])
    blocky = probability.argmax(0).numpy()
    smoothed = smooth_probability(probability, 1.5).argmax(0).numpy()
    assert _faces_on_grid(blocky, p) == 1.0
    assert _faces_on_grid(smoothed, p) < 0.6
    assert (smoothed != truth).sum() < (blocky != truth).sum()


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "1.5", [1.0]])
def test_bad_probability_smoothing_is_named(value):
    with pytest.raises(ValueError, match=r"inference.json: probability_smoothing must be a Gaussian's sigma in voxels"):
        check_probability_smoothing(value, "inference.json: probability_smoothing")
    with pytest.raises(ValueError, match="probability_smoothing must be"):
        Predictor(random_tiny_segmenter(classes=2), device="cpu", probability_smoothing=value)
    assert check_probability_smoothing(None) == 0.0 and check_probability_smoothing(2) == 2.0


def test_monai_pipeline_smooths_as_the_predictor_does(tmp_path):
    """With probability_smoothing the predictor writes the smoothed probabilities and their argmax (post-processed)
    as the labels, the members' entropy as sampled; the bundle's MONAI pieces give the same labels."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in (20, 18, 16)), indexing="ij")
    volume = (np.sin(i / 3.0) + np.cos(j / 4.0) + k / 10.0 + 2.0).astype(np.float32)
    source = save_nifti(tmp_path / "case.nii.gz", volume)
    segmenter = random_tiny_segmenter(classes=2)
    options = {"steps": 2, "num_samples": 2, "overlap": 0.5}
    common = {"preprocessing": PREPROCESSING, "roi_size": 16, "device": "cpu", "label_postprocessing": BRAIN}
    smoothed = Predictor(segmenter, probability_smoothing=1.5, **common).segment(
        source, generator=torch.Generator().manual_seed(3), **options
    )
    plain = Predictor(segmenter, **common).segment(source, generator=torch.Generator().manual_seed(3), **options)
    np.testing.assert_array_equal(smoothed.entropy, plain.entropy)  # the members, as sampled
    assert np.abs(smoothed.probability - plain.probability).max() > 0.01
    np.testing.assert_array_equal(smoothed.label_map, apply_label_postprocessing(smoothed.probability.argmax(0), BRAIN))

    preprocessing = Compose(preprocessing_transforms({**PREPROCESSING, "num_modalities": 1}))
    inferer = DiffusionSamplingInferer(16, seed=3, **options)
    data = preprocessing({"image": str(source)})
    data["pred"] = inferer(data["image"][None], segmenter)[0]  # (K, *S')
    post = postprocessing_transforms(BRAIN, preprocessing=preprocessing, probability_smoothing=1.5)
    np.testing.assert_array_equal(np.asarray(post(data)["pred"][0]), smoothed.label_map)


def test_smoothing_keeps_the_tensor_type():
    """A plain tensor stays plain (the predictor wraps it in a MetaTensor with the grid's affine itself), a
    MetaTensor keeps its affine (the bundle's MONAI chain inverts it)."""
    probability = torch.full((2, 6, 6, 6), 0.5)
    assert type(smooth_probability(probability, 1.0)) is torch.Tensor
    meta = smooth_probability(MetaTensor(probability, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))), 1.0)
    assert isinstance(meta, MetaTensor) and float(meta.affine[0, 0]) == 2.0


def test_numpy_numbers_are_sigmas_and_the_predictor_smooths_in_the_probabilities_dtype():
    """A sigma read from numpy (a config built in Python) passes as a number; ``Predictor.smooth`` gives back the
    dtype it was given (the sampler's mean may be bfloat16 on a GPU) and the input itself without smoothing."""
    assert check_probability_smoothing(np.float32(1.5)) == 1.5 and check_probability_smoothing(np.int64(2)) == 2.0
    with pytest.raises(ValueError, match="a finite number >= 0"):
        check_probability_smoothing(np.float64("inf"))
    probability = torch.rand(2, 8, 8, 8, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    smoothed = Predictor(random_tiny_segmenter(classes=2), device="cpu", probability_smoothing=1.0).smooth(probability)
    assert smoothed.dtype == torch.bfloat16 and not torch.equal(smoothed, probability)
    assert Predictor(random_tiny_segmenter(classes=2), device="cpu").smooth(probability) is probability


def test_filling_a_class_keeps_the_classes_it_encloses():
    """From a review: MONAI's fill_holes fills every region a class encloses, so fill_holes on class 1 turned a class 2
    inside it (a ventricle, a tumour inside brain) into class 1, with or without applied_labels. A hole of a class
    is now the background it alone encloses, in the CLI's steps and in the bundle chain."""
    from medwidit.inference.postprocess import FillClassHolesd

    m = np.zeros((12, 12, 12), np.uint8)
    m[1:11, 1:11, 1:11] = 1
    m[5:8, 5:8, 5:8] = 2
    m[6, 6, 6] = 0  # a hole of class 2
    m[2, 2, 2] = 0  # a hole of class 1
    for spec in ([{"name": "fill_holes", "applied_labels": [1]}], [{"name": "fill_holes"}]):
        out = apply_label_postprocessing(m, spec)
        assert out[2, 2, 2] == 1 and (out == 2).sum() == (m == 2).sum() + (spec[0].get("applied_labels") is None)
        assert out[6, 6, 6] == (0 if "applied_labels" in spec[0] else 2)  # class 2's, never class 1's
    chain = FillClassHolesd("label", applied_labels=[1])({"label": MetaTensor(torch.as_tensor(m[None]))})["label"]
    expected = apply_label_postprocessing(m, [{"name": "fill_holes", "applied_labels": [1]}])
    assert isinstance(chain, MetaTensor) and np.array_equal(chain[0].numpy(), expected)
    (step,) = postprocessing_transforms([{"name": "fill_holes", "applied_labels": [1]}], key="label").transforms[-1:]
    assert isinstance(step, FillClassHolesd)


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_on_one_foreground_class_the_fill_is_monais(connectivity):
    from monai.transforms import FillHoles

    rng = np.random.default_rng(connectivity)
    for _ in range(10):
        m = (rng.random((10, 9, 8)) < 0.6).astype(np.int64)
        ours = apply_label_postprocessing(m, [{"name": "fill_holes", "connectivity": connectivity}])
        monai = FillHoles(connectivity=connectivity)(torch.as_tensor(m[None]))[0].numpy()
        assert np.array_equal(ours, monai)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.uint32, ">i2"])
def test_the_steps_take_any_integer_label_dtype_and_keep_it(dtype):
    """From a review: uint16 and uint32 maps failed in torch ('masked_fill' not implemented), big-endian ones
    (nibabel's dataobj) on their byte order."""
    m = np.zeros((10, 10, 10), np.int64)
    m[2:8, 2:8, 2:8], m[4, 4, 4], m[0, 0, 9], m[9, 9, 9] = 1, 0, 1, 2
    spec = [{"name": "keep_largest_component", "applied_labels": [1]}, {"name": "fill_holes", "applied_labels": [1]}]
    out = apply_label_postprocessing(m.astype(dtype), spec)
    assert out.dtype == np.dtype(dtype) and (out == 1).sum() == 216 and out[9, 9, 9] == 2
