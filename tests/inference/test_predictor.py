"""inference/predictor: the training pre-transforms, the ensemble and Invertd back to the input's exact grid; every
input kind; files with per-case status, never-overwrite, resume; a bundle; clear errors."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_volumes import (
    SpacingOracle,
    ThresholdOracle,
    oblique_affine,
    random_tiny_segmenter,
    save_itk,
    save_nifti,
)

from medwidit.diffusion import DiffusionSegmenter, save_segmenter
from medwidit.inference import InputError, OutputError, Predictor, options, resolve_device, segment
from medwidit.inference.cases import find_cases
from medwidit.inference.options import autocast_dtype, cpu_has_bf16_matmul

PREPROCESSING = {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "zscore_nonzero"}
FAST = {"steps": 2, "num_samples": 2}


def tiny_segmenter(modalities=1, classes=3, scale=0.05):
    return random_tiny_segmenter(modalities, classes, scale)


def visible(folder):
    """The files a user sees (the hidden .medwidit folder holds the per-case markers)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_segmenter(tiny_segmenter(), path, extra_config={"preprocessing": PREPROCESSING, "roi_size": [16, 16, 16]})
    return path


@pytest.fixture
def volume():
    i, j, k = np.meshgrid(*(np.arange(n) for n in (14, 12, 10)), indexing="ij")
    return (np.sin(i / 3.0) + np.cos(j / 4.0) + k / 10.0 + 2.0).astype(np.float32)


def test_segment_returns_maps_on_the_input_grid(tmp_path, checkpoint, volume):
    source = save_nifti(tmp_path / "case_0000.nii.gz", volume)
    result = Predictor.from_checkpoint(checkpoint, device="cpu").segment(source, **FAST)
    original = nib.load(source)
    for image in (result.labels, result.probabilities, result.uncertainty):
        np.testing.assert_array_equal(image.affine, original.affine)
        np.testing.assert_array_equal(image.header.get_qform(), original.header.get_qform())
        assert image.shape[:3] == volume.shape
    assert result.probabilities.shape == (*volume.shape, 3) and result.labels.get_data_dtype() == np.uint8
    np.testing.assert_allclose(result.probability.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.label_map, result.probability.argmax(0))
    assert 0 <= result.entropy.min() and result.entropy.max() <= np.log(3) + 1e-5
    assert result.probability.std() > 1e-3  # a real, varying map


@pytest.mark.parametrize("max_whole_voxels", [None, 0])
def test_oracle_labels_survive_reorientation_resampling_and_inversion(tmp_path, max_whole_voxels):
    """Through RAS reorientation, 1 mm resampling of an oblique 0.7/1.3/2.9 mm grid, the ensemble and Invertd, a
    perfect predictor's labels land back on the input's voxels (only boundary voxels may move by resampling)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in (24, 16, 8)), indexing="ij")
    distance = np.sqrt(((i - 11) * 0.7) ** 2 + ((j - 8) * 1.3) ** 2 + ((k - 4) * 2.9) ** 2)
    image = np.clip(1.5 - distance / 6.0, 0, 1).astype(np.float32)  # a ball, smooth edge at 0.5 (d = 6 mm)
    source = save_nifti(tmp_path / "ball.nii.gz", image)
    predictor = Predictor(
        DiffusionSegmenter(ThresholdOracle(), num_classes=2),
        device="cpu",
        roi_size=8,
        preprocessing={**PREPROCESSING, "intensity": "none"},
        max_whole_voxels=max_whole_voxels,
    )
    result = predictor.segment(source, **FAST)
    expected = image > 0.5
    agreement = float((result.label_map.astype(bool) == expected).mean())
    assert agreement > 0.97, agreement
    assert result.label_map[11, 8, 4] == 1 and result.label_map[0, 0, 0] == 0


def test_the_window_budget_is_checked_when_the_predictor_is_made(checkpoint):
    """max_whole_voxels was stored unchecked: "x" failed every case of a run, one at a time, with a TypeError naming
    the input file instead of the argument."""
    for bad in (-1, "x", 2.5):
        with pytest.raises(ValueError, match=rf"max_whole_voxels must be an int >= 0 or None, got {bad!r}"):
            Predictor.from_checkpoint(checkpoint, device="cpu", max_whole_voxels=bad)
    assert Predictor.from_checkpoint(checkpoint, device="cpu", max_whole_voxels=0).max_whole_voxels == 0


@pytest.mark.parametrize(
    ("bias_correction", "anti_aliasing"),
    [("model", "model"), (None, True), ("none", "false"), ("n4", False), ("retry", "model"), ("retry", True)],
)
def test_one_rule_replaces_the_preprocessing_for_the_predictor_and_the_monai_chain(
    tmp_path, bias_correction, anti_aliasing
):
    """inference.json's MONAI preprocessing (options.inference_preprocessing) and Predictor.from_checkpoint replace
    the checkpoint's settings alike; "retry" is the first pass, without N4."""
    from medwidit.data.transforms import check_preprocessing
    from medwidit.inference.options import inference_preprocessing

    stored = {**PREPROCESSING, "bias_correction": "n4", "num_modalities": 1}
    path = tmp_path / "model.pt"
    save_segmenter(tiny_segmenter(), path, extra_config={"preprocessing": stored, "roi_size": [16, 16, 16]})
    predictor = Predictor.from_checkpoint(
        path, device="cpu", bias_correction=bias_correction, anti_aliasing=anti_aliasing
    )
    chain = check_preprocessing(inference_preprocessing(stored, bias_correction, anti_aliasing))
    assert chain == predictor.preprocessing
    expected_bias = "n4" if bias_correction == "model" else ("n4" if bias_correction == "n4" else None)
    assert chain["bias_correction"] == expected_bias and predictor.bias_retry == (bias_correction == "retry")
    assert chain["anti_aliasing"] is (anti_aliasing is True)
    assert inference_preprocessing(None, "model", "model") == {}  # a checkpoint without settings: the defaults


def test_every_input_kind_gives_the_same_result(tmp_path, checkpoint, volume):
    source = save_nifti(tmp_path / "case_0000.nii.gz", volume)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    reference = predictor.segment(source, **FAST)
    loaded = nib.load(source)
    for image, affine in (
        (loaded, None),
        ([source], None),
        (volume, loaded.affine),
        (torch.from_numpy(volume)[None], loaded.affine),
    ):
        result = predictor.segment(image, affine=affine, generator=torch.Generator().manual_seed(0), **FAST)
        np.testing.assert_array_equal(result.label_map, reference.label_map)
        np.testing.assert_allclose(result.probability, reference.probability, atol=1e-6)
        np.testing.assert_allclose(result.labels.affine, loaded.affine, atol=1e-6)


def test_two_modalities_are_stacked_in_order_and_checked(tmp_path, volume):
    path = tmp_path / "two.pt"
    save_segmenter(tiny_segmenter(modalities=2), path, extra_config={"preprocessing": {"num_modalities": 2}})
    predictor = Predictor.from_checkpoint(path, device="cpu", roi_size=16)
    a, b = save_nifti(tmp_path / "c_0000.nii.gz", volume), save_nifti(tmp_path / "c_0001.nii.gz", volume[::-1].copy())
    given = predictor.segment([a, b], generator=torch.Generator().manual_seed(0), **FAST)
    assert given.probability.shape == (3, *volume.shape)
    # in order: the files are the channels of the stacked array, in the order given (the shape alone held either way)
    stacked = np.stack([volume, volume[::-1]])
    direct = predictor.segment(stacked, affine=nib.load(a).affine, generator=torch.Generator().manual_seed(0), **FAST)
    np.testing.assert_allclose(given.probability, direct.probability, atol=1e-6)
    swapped = predictor.segment([b, a], generator=torch.Generator().manual_seed(0), **FAST)
    assert np.abs(swapped.probability - given.probability).max() > 1e-3  # the network tells the channels apart
    # a folder of a case's modalities gives them by their _NNNN index, whatever the order they are listed in
    for listed in ([tmp_path], [b, a]):  # a folder, or the files named in the other order
        (case,) = find_cases(listed, num_modalities=2)
        assert [f.name for f in case.files] == ["c_0000.nii.gz", "c_0001.nii.gz"]
    with pytest.raises(InputError, match="c_0000.nii.gz: 1 modality.* where the model expects 2"):
        predictor.segment(a, **FAST)
    other = save_nifti(tmp_path / "d_0001.nii.gz", volume, affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InputError, match="d_0001.nii.gz: grid differs from the first modality"):
        predictor.segment([a, other], **FAST)
    # cases of one name in two folders are named apart (p1_T1): the message names the files' own name (from a
    # review: it asked for p1/p1_T1_0001, where the file to add is p1/T1_0001)
    for patient in ("p1", "p2"):
        (tmp_path / patient).mkdir()
        save_nifti(tmp_path / patient / "T1_0000.nii.gz", volume)
    case = next(c for c in find_cases([tmp_path / "p1", tmp_path / "p2"], num_modalities=2) if c.name == "p1_T1")
    expected = f"{tmp_path / 'p1' / 'T1'}: 1 modality file(s) (T1_0000.nii.gz) where the model expects 2 (T1_0000, "
    with pytest.raises(InputError, match=re.escape(expected)):
        case.check_modalities(2)


def test_nrrd_in_nrrd_out_with_its_geometry(tmp_path, checkpoint, volume):
    source = save_itk(tmp_path / "scan.nrrd", volume)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    (result,) = predictor.predict_from_files(source, tmp_path / "out", save_uncertainty=True, progress=False, **FAST)
    assert result.status == "done" and [p.name for p in result.outputs] == [
        "scan.nrrd",
        "scan_uncertainty.nrrd",
        "scan_aleatoric.nrrd",
        "scan_epistemic.nrrd",
        "scan_disagreement.nrrd",
        "scan_error_score.nrrd",
    ]
    original = sitk.ReadImage(str(source))
    for path in result.outputs:
        written = sitk.ReadImage(str(path))
        assert written.GetSize() == original.GetSize() and written.GetOrigin() == original.GetOrigin()
        np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), rtol=1e-14)
        np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-14)


def test_files_statuses_overwrite_and_resume(tmp_path, checkpoint, volume):
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_nifti(inputs / "good_0000.nii.gz", volume)
    (inputs / "bad_0000.nii.gz").write_bytes(b"not an image at all")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    out = tmp_path / "out"
    run = lambda **kw: {r.name: r for r in predictor.predict_from_files(inputs, out, progress=False, **FAST, **kw)}  # noqa: E731
    first = run(save_probabilities=True)
    assert first["good"].status == "done" and first["bad"].status == "failed"
    assert "bad_0000.nii.gz: cannot read the image" in first["bad"].message
    assert visible(out) == ["good.nii.gz", "good_probabilities.nii.gz"]  # nothing partial
    again = run()
    assert again["good"].status == "failed" and "good.nii.gz: already exists" in again["good"].message
    # each caller's spelling: a bundle run has no --continue (it took it for an unused key and failed again)
    assert "monai.bundle run: --overwrite true or --resume true" in again["good"].message
    assert "medwidit segment: --overwrite or --continue" in again["good"].message
    assert run(resume=True)["good"].status == "skipped"
    # inference.json's options arrive from a bundle's command line as words: "false" must not overwrite (it did)
    assert run(overwrite="false", save_uncertainty="false")["good"].status == "failed"
    assert run(resume="true")["good"].status == "skipped"
    with pytest.raises(ValueError, match="overwrite must be true or false, got 'no'"):
        run(overwrite="no")
    partial = run(resume=True, save_uncertainty=True)["good"]  # uncertainty missing: nothing is replaced
    assert partial.status == "failed" and "good.nii.gz: already exists and the case was finished with other" in (
        partial.message
    )
    assert run(overwrite=True, resume=True, save_uncertainty=True)["good"].status == "done"
    assert visible(out) == [  # the earlier run's probabilities went with its labels: a case is one set
        f"good{s}.nii.gz" for s in ("", "_aleatoric", "_disagreement", "_epistemic", "_error_score", "_uncertainty")
    ]
    assert run(overwrite=True, resume=True, save_uncertainty=True)["good"].status == "skipped"


def test_an_output_never_replaces_an_input(tmp_path, checkpoint, volume):
    save_nifti(tmp_path / "scan.nii.gz", volume)
    with pytest.raises(OutputError, match="scan.nii.gz: this output of case 'scan' is also the input"):
        Predictor.from_checkpoint(checkpoint, device="cpu").predict_from_files(
            tmp_path, tmp_path, overwrite=True, progress=False, **FAST
        )


def test_bundle_and_checkpoint_loading(tmp_path, checkpoint):
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "models" / "model.pt").write_bytes(checkpoint.read_bytes())
    (bundle / "configs" / "inference.json").write_text(json.dumps({"roi_size": [24, 24, 24], "steps": "@x"}))
    (bundle / "configs" / "train.json").write_text(json.dumps({"roi_size": [8, 8, 8], "sw_batch_size": 2}))
    predictor = Predictor.from_bundle(bundle, device="cpu")
    assert predictor.roi_size == [24, 24, 24] and predictor.sw_batch_size == 2
    assert predictor.preprocessing["spacing"] == [1.0, 1.0, 1.0] and predictor.num_modalities == 1
    assert Predictor.from_checkpoint(checkpoint, device="cpu").roi_size == [16, 16, 16]
    with pytest.raises(InputError, match="not a trained bundle"):
        Predictor.from_bundle(tmp_path, device="cpu")
    with pytest.raises(InputError, match="no such checkpoint"):
        Predictor.from_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.pt: not a readable medwidit checkpoint"):
        Predictor.from_checkpoint(tmp_path / "junk.pt")


def test_options_are_checked(tmp_path, checkpoint):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="bfloat16"):
        Predictor.from_checkpoint(checkpoint, device="cpu", precision="half")
    with pytest.raises(ValueError, match="divisible by the network's patch_size"):
        Predictor.from_checkpoint(checkpoint, device="cpu", roi_size=15)
    with pytest.raises(ValueError, match="not both"):
        segment(tmp_path / "x.nii.gz", checkpoint=checkpoint, bundle="brain_widit_segmentation")


def test_segment_convenience_is_the_predictor(tmp_path, checkpoint, volume):
    source = save_nifti(tmp_path / "case.nii.gz", volume)
    result = segment(source, checkpoint=checkpoint, device="cpu", **FAST)
    reference = Predictor.from_checkpoint(checkpoint, device="cpu").segment(source, **FAST)
    np.testing.assert_array_equal(result.label_map, reference.label_map)
    with pytest.raises(OutputError, match="output folder is not writable"):
        Predictor.from_checkpoint(checkpoint, device="cpu").predict_from_files(source, source / "out")
    np.testing.assert_allclose(oblique_affine(), nib.load(source).affine, atol=1e-6)


def test_segment_convenience_takes_the_predictors_settings_and_names_what_it_does_not_know(tmp_path, checkpoint):
    """From a review: ``medwidit.segment(path, precision=...)`` (or bias_correction, anti_aliasing) failed in
    Predictor.segment's TypeError, naming a function the caller had not called; the CLI passes them."""
    source = save_nifti(tmp_path / "case.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    result = segment(source, checkpoint=checkpoint, device="cpu", precision="float32", anti_aliasing=False, **FAST)
    reference = Predictor.from_checkpoint(checkpoint, device="cpu", precision="float32", anti_aliasing=False)
    np.testing.assert_array_equal(result.label_map, reference.segment(source, **FAST).label_map)
    unknown = r"medwidit.segment\(\) got unknown option\(s\) stepz; it takes the predictor's \(.*precision.*\) and "
    with pytest.raises(TypeError, match=unknown + r"Predictor.segment's \(.*steps"):
        segment(source, checkpoint=checkpoint, device="cpu", stepz=2)
    with pytest.raises(TypeError, match="unknown option\\(s\\) preprocessing"):  # the weights' own (a TypeError
        segment(source, checkpoint=checkpoint, device="cpu", preprocessing={})  # of multiple values, from a review)


def test_python_errors_speak_python(tmp_path, checkpoint):
    """From a review: a device error in Python advised a CLI flag only, "CPU" was refused, a MONAI LoadImaged dict
    was "got dict" without a word on its entries, and weight_sets beyond a predictor loaded with fewer sets said
    "this model has 1 set(s)" of a bundle that ships 2."""
    assert resolve_device("CPU") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"CUDA is not available; use 'cpu' \(--device cpu\)"):
            resolve_device("cuda")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(TypeError, match=r"got dict; pass one of its entries \('image'\), e.g. d\['image'\]"):
        predictor.segment({"image": np.zeros((8, 8, 8), np.float32)})
    with pytest.raises(TypeError, match=r"got dict; pass one of its entries \('t1', 'label'\), e.g. d\['t1'\]"):
        predictor.segment({"t1": np.zeros((8, 8, 8), np.float32), "label": None})
    with pytest.raises(ValueError, match=r"this predictor holds 1 set\(s\) of weights; "
                                         r"Predictor.from_bundle\(weight_sets=N\) loads N of a bundle's, "
                                         r"from_checkpoint\(path, extra_checkpoints="):  # fmt: skip
        predictor.segment(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), weight_sets=2, **FAST)


@pytest.mark.parametrize(
    "precision, bf16, expected",
    [
        ("auto", True, torch.bfloat16),
        ("auto", False, torch.float16),
        ("float32", True, None),
        ("bfloat16", True, torch.bfloat16),
        ("float16", True, torch.float16),
    ],
)
def test_precision_names_map_to_autocast_dtypes_on_cuda(monkeypatch, precision, bf16, expected):
    """Regression (first GPU run): on CUDA every name raised KeyError, because MONAI's look_up_option returns a dict's
    value (the dtype), which was then used as a key. Only torch.cuda.is_bf16_supported is faked; no GPU is needed."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert autocast_dtype(torch.device("cuda"), precision) == expected
    with pytest.raises(ValueError, match="bfloat16"):
        autocast_dtype(torch.device("cuda"), "half")
    with pytest.raises(ValueError, match="^precision: Unsupported option 'fp32'"):  # MONAI's line named no argument
        autocast_dtype(torch.device("cpu"), "fp32")


EMULATED = "precision bfloat16 on a CPU without bf16 matmul hardware: emulated, likely slower than float32."


@pytest.mark.parametrize(
    "device, precision, hardware, expected, said",
    [
        ("cpu", "auto", True, torch.bfloat16, None),
        ("cpu", "auto", False, None, None),
        ("cpu", "bfloat16", True, torch.bfloat16, None),
        ("cpu", "bfloat16", False, torch.bfloat16, EMULATED),
        ("cpu", "float32", True, None, None),
        ("cpu", "float16", True, None, "precision float16 is not used on cpu; running float32."),
        ("cpu", "float16", False, None, "precision float16 is not used on cpu; running float32."),
        ("mps", "auto", True, None, None),
        ("mps", "bfloat16", True, None, "precision bfloat16 is not used on mps; running float32."),
        ("mps", "float16", True, None, "precision float16 is not used on mps; running float32."),
    ],
)
def test_cpu_autocasts_to_bfloat16_only_with_bf16_matmul_hardware_or_when_asked(
    monkeypatch, caplog, device, precision, hardware, expected, said
):
    """``auto`` on a CPU: bfloat16 where it multiplies bf16 in hardware (AMX or AVX512-BF16), float32 otherwise;
    ``bfloat16`` is honoured on any CPU, saying so where it is emulated (slower); float16 autocast is CUDA's only and
    MPS runs float32, each saying so. Only the hardware query is faked."""
    monkeypatch.setattr(options, "cpu_has_bf16_matmul", lambda: hardware)
    with caplog.at_level("WARNING", logger=options.__name__):
        assert autocast_dtype(torch.device(device), precision) == expected
    assert [r.getMessage() for r in caplog.records] == ([said] if said else [])


def test_cpu_bf16_hardware_query_reads_the_capabilities_and_never_raises(monkeypatch):
    """The query reads ``torch.cpu.get_capabilities()`` (AMX-BF16 or AVX512-BF16; AMX tiles alone do not multiply
    bf16), else torch.cpu's older private queries; no oneDNN, no query or a failing one reads as False (float32),
    never an error. (The name imported at collection is the real query; conftest fakes the module's.)"""
    assert isinstance(cpu_has_bf16_matmul(), bool)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    for capabilities, expected in (
        ({"amx_tile": True, "amx_bf16": False, "avx512_bf16": False}, False),
        ({"amx_tile": True, "amx_bf16": True}, True),
        ({"avx512_bf16": True}, True),
        ({}, False),
    ):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda c=capabilities: c, raising=False)
        assert cpu_has_bf16_matmul() is expected, capabilities

    def broken():
        raise RuntimeError("cpuinfo failed")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken, raising=False)
    assert cpu_has_bf16_matmul() is False
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # an older torch: the private queries
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_has_bf16_matmul() is True
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, name)
    assert cpu_has_bf16_matmul() is False
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True}, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert cpu_has_bf16_matmul() is False  # bf16 matmuls on a CPU are oneDNN's


def test_autocast_runs_the_network_in_low_precision_and_the_sampler_in_float32(tmp_path, checkpoint, volume):
    """``precision="bfloat16"`` on a CPU (what ``auto`` picks on a CPU with bf16 hardware or a bf16-capable GPU): the
    network's matmuls run in bf16, the windows blend and the scheduler steps in float32, and the maps stay close to a
    float32 run."""
    source = save_nifti(tmp_path / "case.nii.gz", volume)
    reference = Predictor.from_checkpoint(checkpoint, device="cpu", max_whole_voxels=0).segment(source, **FAST)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", max_whole_voxels=0, precision="bfloat16")
    assert predictor.autocast_dtype == torch.bfloat16
    seen = []
    net_forward = predictor.segmenter.net.forward

    def spy(*args, **kwargs):
        out = net_forward(*args, **kwargs)
        seen.append(out.dtype)
        return out

    predictor.segmenter.net.forward = spy
    result = predictor.segment(source, **FAST)
    assert set(seen) == {torch.bfloat16}
    assert result.probability.dtype == np.float32
    np.testing.assert_allclose(result.probability, reference.probability, atol=0.05)


def test_public_wrap_and_invert_compose_to_segment(tmp_path):
    """``segment`` is ``sample_ensemble(**predictor.window_options, wrap_model_fn=predictor.wrap_model_fn)`` then
    ``predictor.invert``: a caller that reads the file with MONAI's LoadImaged (as the benchmarks do) gets the
    Predictor's maps on the input grid, through reorientation, resampling and Invertd; under autocast the wrapped
    model function runs in bfloat16."""
    from monai.transforms import Compose

    from medwidit.data.transforms import preprocessing_transforms
    from medwidit.inference import sample_ensemble

    predictor = Predictor(tiny_segmenter(classes=2), preprocessing={**PREPROCESSING, "spacing": [2.0, 2.0, 2.0]},
                          roi_size=16, device="cpu")  # fmt: skip
    image = torch.rand(20, 18, 16, generator=torch.Generator().manual_seed(6)).numpy()
    path = save_nifti(tmp_path / "case.nii.gz", image, affine=np.diag([-1.5, 1.5, 1.25, 1.0]))  # LAS, anisotropic
    expected = predictor.segment(path, **FAST, generator=torch.Generator().manual_seed(7))
    pre = Compose(preprocessing_transforms(predictor.preprocessing, image_key="image"))
    data = pre({"image": str(path)})
    summary = sample_ensemble(predictor.segmenter, data["image"].as_tensor()[None], **predictor.window_options,
                              wrap_model_fn=predictor.wrap_model_fn, generator=torch.Generator().manual_seed(7),
                              **FAST)  # fmt: skip
    probability, entropy = predictor.invert(data, pre, summary["mean_probability"][0])
    assert probability.shape == (2, *image.shape) and entropy.shape == (1, *image.shape)
    np.testing.assert_allclose(probability, expected.probability, atol=1e-5)
    np.testing.assert_allclose(entropy[0], expected.entropy, atol=1e-5)

    def model_fn(x, t, cond):
        return torch.ones(1, 1) @ torch.ones(1, 1)

    assert predictor.wrap_model_fn(model_fn) is model_fn  # float32 (conftest's CPU has no bf16 hardware): no wrap
    predictor.autocast_dtype = torch.bfloat16
    assert predictor.wrap_model_fn(model_fn)(None, None, None).dtype == torch.bfloat16


@pytest.mark.parametrize("max_whole_voxels", [None, 0])
def test_spacing_conditioned_net_gets_the_grid_and_the_scans_own_spacing(tmp_path, max_whole_voxels):
    """A 1 x 1 x 6 mm acquisition stored z-first and resampled to 2 mm RAS: every network call, whole volume or
    window, gets (2, 2, 2) for the grid and (2, 2, 6) mm along the RAS axes for the acquisition (1 mm is no finer
    than the grid once resampled); the labels are still right."""
    affine = np.array([[0, 0, 1.0, -8], [0, 1.0, 0, -8], [6.0, 0, 0, -12], [0, 0, 0, 1]])
    i, j, k = np.meshgrid(np.arange(5) * 6.0 - 12, np.arange(16.0) - 8, np.arange(16.0) - 8, indexing="ij")
    image = (np.sqrt(i**2 + j**2 + k**2) < 7).astype(np.float32)  # a ball in the scan's own axes (z, y, x)
    source = save_nifti(tmp_path / "thick.nii.gz", image, affine)
    net = SpacingOracle()
    predictor = Predictor(
        DiffusionSegmenter(net, num_classes=2),
        device="cpu",
        roi_size=4,
        preprocessing={**PREPROCESSING, "spacing": [2.0, 2.0, 2.0], "intensity": "none"},
        max_whole_voxels=max_whole_voxels,
    )
    assert predictor.segmenter.spacing_conditioning
    result = predictor.segment(source, **FAST)
    seen = torch.cat(net.seen)
    assert len(net.seen) >= 2 and seen.shape[1] == 6
    assert torch.equal(seen, torch.tensor([[2.0, 2.0, 2.0, 2.0, 2.0, 6.0]]).expand_as(seen))
    assert result.label_map[2, 8, 8] == 1 and result.label_map[0, 0, 0] == 0


def test_shared_steps_reach_the_sampler_through_segment(tmp_path):
    """``segment(shared_steps=2)`` with 4 steps x 3 samples: 2 trunk calls on one member, then 2 calls on all 3
    (whole volume); the oracle's labels are unchanged."""
    image = np.zeros((12, 12, 12), np.float32)
    image[3:9, 3:9, 3:9] = 1.0
    source = save_nifti(tmp_path / "cube.nii.gz", image, np.eye(4))
    net = ThresholdOracle()
    batches = []
    net.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    predictor = Predictor(
        DiffusionSegmenter(net, num_classes=2), device="cpu", roi_size=12,
        preprocessing={**PREPROCESSING, "intensity": "none"},
    )  # fmt: skip
    result = predictor.segment(source, steps=4, num_samples=3, shared_steps=2)
    assert batches == [1, 1, 3, 3]
    np.testing.assert_array_equal(result.label_map, image.astype(np.uint8))


def test_the_entropy_on_a_resampled_input_is_that_of_the_probabilities_written(tmp_path):
    """Resampled back to an oblique, anisotropic input, the entropy map was interpolated apart from the probabilities:
    between two confident voxels of different classes it read 0 nats where they read 0.5 / 0.5. It is H(p) of the
    written probabilities now, the epistemic map stays below it and the aleatoric map is the rest."""
    predictor = Predictor(tiny_segmenter(classes=2), preprocessing={**PREPROCESSING, "spacing": [2.0, 2.0, 2.0]},
                          roi_size=16, device="cpu")  # fmt: skip
    image = torch.rand(20, 18, 16, generator=torch.Generator().manual_seed(6)).numpy()
    affine = oblique_affine() @ np.diag([1.7, 1.2, 2.6, 1.0])
    path = save_nifti(tmp_path / "case.nii.gz", image, affine=affine)
    result = predictor.segment(path, steps=2, num_samples=4, augment=2, generator=torch.Generator().manual_seed(3))
    p = torch.from_numpy(result.probability).double()
    expected = -(p * p.clamp_min(1e-12).log()).sum(0).numpy()
    np.testing.assert_allclose(result.entropy, expected, atol=1e-5)
    assert (result.epistemic >= 0).all() and (result.aleatoric >= 0).all()
    np.testing.assert_allclose(result.aleatoric + result.epistemic, result.entropy, atol=1e-6)
    assert result.entropy.shape == image.shape and result.entropy.max() > 0.1  # a map with something in it


def test_output_settings_name_the_weights_by_content_and_leave_out_where_it_runs(tmp_path):
    """The settings a case's marker keeps for --continue to compare: one set of weights gives one digest however it
    was loaded, one changed weight another; the precision (a property of the machine under "auto") is left out."""
    from medwidit.inference.options import sampling_options

    segmenter = tiny_segmenter()
    save_segmenter(segmenter, tmp_path / "model.pt")
    options = sampling_options(2, 2, 0.25, None, 0.0, 1.0)
    loaded = Predictor.from_checkpoint(tmp_path / "model.pt", device="cpu", precision="bfloat16")
    built = Predictor(segmenter, device="cpu", precision="float32")
    settings = loaded.output_settings(options, seed=0, augment=1, weight_sets=1)
    assert settings == built.output_settings(options, seed=0, augment=1, weight_sets=1)
    assert settings["sampler"] == "ddim" and json.loads(json.dumps(settings)) == settings
    with torch.no_grad():
        next(segmenter.parameters()).view(-1)[0] += 1e-3
    changed = Predictor(segmenter, device="cpu").output_settings(options, seed=0, augment=1, weight_sets=1)
    assert changed["weights"] != settings["weights"] and {k for k in settings if settings[k] != changed[k]} == {
        "weights"
    }


def test_output_settings_hold_views_only_when_sampled_and_the_calibration_by_its_numbers():
    """From a mutation review: unused view options (augment 1) must not refuse finished cases, and a calibration
    that differs only in its note (chosen_on) is the same one, where another intercept is not."""
    from medwidit.inference.options import sampling_options

    segmenter, options, one = tiny_segmenter(), sampling_options(1, 1, 0.25, None, 0.0, 1.0), {"seed": 0}
    one |= {"augment": 1, "weight_sets": 1}
    plain = Predictor(segmenter, device="cpu").output_settings(options, **one)
    assert Predictor(segmenter, device="cpu", view_options={"max_shift": 3}).output_settings(options, **one) == plain
    calibration = {"intercept": 0.1, "weights": {"log_ensemble_dice": 1.0}, "chosen_on": "a"}

    def settings(**changes):
        predictor = Predictor(segmenter, device="cpu", quality_calibration={**calibration, **changes})
        return predictor.output_settings(options, **one)["quality_calibration"]

    assert settings() == settings(chosen_on="b") != settings(intercept=0.2)
