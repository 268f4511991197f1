"""medwidit CLI: segment files and folders, one clear stderr line per bad input while the others still run, a
non-zero exit, no partial output; --overwrite/--continue; multi-modal naming; the demo on a fresh folder."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import medwidit
from medwidit.cli import main
from medwidit.diffusion import DiffusionSegmenter, save_segmenter
from medwidit.inference import InputError
from medwidit.nets import WiDiT

FAST = ["--steps", "1", "--samples", "1", "--quiet", "--device", "cpu"]
AFFINE = np.array([[-0.8, 0.0, 0.0, 10.0], [0.0, 1.1, 0.2, -5.0], [0.0, -0.1, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])


def _checkpoint(path, modalities=1):
    net = WiDiT(
        spatial_dim=3,
        in_channels=2,
        cond_channels=modalities,
        hidden_size=32,
        depth=1,
        num_heads=2,
        window_size=4,
        learn_sigma=False,
    )
    generator = torch.Generator().manual_seed(0)  # random weights: at initialisation the net outputs 0 everywhere,
    with torch.no_grad():  # and every label map would be background, so checks of the labels would check nothing
        for parameter in net.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    extra = {"preprocessing": {"spacing": [1.5, 1.5, 1.5], "num_modalities": modalities}, "roi_size": [16, 16, 16]}
    save_segmenter(DiffusionSegmenter(net, num_classes=2), path, extra_config=extra)
    return str(path)


def _nifti(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def visible(folder):
    """The files a user sees but the run records (the hidden .medwidit folder holds the per-case markers)."""
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith((".", "medwidit_run")))


def _volume(shape=(12, 10, 8)):
    return np.random.default_rng(0).random(shape).astype(np.float32)


@pytest.fixture
def setup(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _nifti(inputs / "good_0000.nii.gz", _volume())
    return tmp_path, inputs, _checkpoint(tmp_path / "model.pt")


def _truncated(path):
    _nifti(path, _volume((24, 24, 24)))
    path.write_bytes(path.read_bytes()[:3000])


BAD = {  # problem -> (how to make it under in/, what the error line says)
    "missing file": (None, "missing_0000.nii.gz: no such file"),
    "truncated file": (_truncated, "bad_0000.nii.gz: cannot read the image, the file is truncated or not an image"),
    "not an image": (lambda p: p.write_text("hello"), "bad_0000.nii.gz: cannot read the image"),
    "2D image": (lambda p: _nifti(p, _volume((12, 10))), r"bad_0000.nii.gz: 2D image of shape \(12, 10\) where a 3D"),
    "4D image": (lambda p: _nifti(p, _volume((12, 10, 8, 2))), r"bad_0000.nii.gz: 4D image of shape \(12, 10, 8, 2\)"),
    "NaN voxels": (lambda p: _nifti(p, np.where(_volume() > 0.5, np.nan, 1.0)), "bad_0000.nii.gz: .* NaN or infinite"),
    "inf voxels": (lambda p: _nifti(p, np.where(_volume() > 0.9, -np.inf, 1.0)), "bad_0000.nii.gz: .* NaN or infinite"),
    "blank image": (
        lambda p: _nifti(p, np.zeros((24, 24, 24), np.float32)),
        "bad_0000.nii.gz: every voxel is 0: a blank",
    ),
    "empty folder": ("empty", "empty: no image files in this folder"),  # issue 15 (5): reported, the rest runs
}


@pytest.mark.parametrize("problem", list(BAD))
def test_a_bad_case_gets_one_line_and_the_others_still_run(setup, capsys, problem):
    tmp_path, inputs, checkpoint = setup
    make, message = BAD[problem]
    extra = []
    if make is None:
        extra = [str(inputs / "missing_0000.nii.gz")]
    elif make == "empty":
        (tmp_path / "empty").mkdir()
        extra = [str(tmp_path / "empty")]
    else:
        make(inputs / "bad_0000.nii.gz")
    code = main(["segment", "-i", str(inputs), *extra, "-o", str(tmp_path / "out"), "--checkpoint", checkpoint, *FAST])
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("medwidit: error:")]
    assert code == 1
    assert len(errors) == 1, errors
    # the run's summary is a plain line (it said "warning:" for a run that exits 1)
    assert [line for line in lines if "failed (settings in" in line][0].startswith(f"medwidit: {inputs}")
    assert re.search(message, errors[0]), errors[0]
    assert visible(tmp_path / "out") == ["good.nii.gz"]  # nothing partial, nothing else


def test_unwritable_output_folder_is_one_line(setup, capsys):
    tmp_path, inputs, checkpoint = setup
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out"
    code = main(["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", checkpoint, *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"medwidit: error: {out}: output folder is not writable (Not a directory)."]


def test_segment_writes_labels_and_maps_with_the_input_geometry(setup, capsys):
    tmp_path, inputs, checkpoint = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", checkpoint, *FAST]
    assert main([*args, "--save-probabilities", "--save-uncertainty"]) == 0
    names = visible(out)
    assert names == [
        f"good{s}.nii.gz"
        for s in ("", "_aleatoric", "_disagreement", "_epistemic", "_error_score", "_probabilities", "_uncertainty")
    ]
    for name in names:
        np.testing.assert_array_equal(nib.load(out / name).affine, nib.load(inputs / "good_0000.nii.gz").affine)
    assert main(args) == 1 and "good.nii.gz: already exists" in capsys.readouterr().err
    assert main([*args, "--continue"]) == 0
    assert main([*args, "--overwrite"]) == 0
    assert main([*args, "--overwrite", "--continue"]) == 0  # combinable: finished cases are skipped


def test_save_figure_writes_a_png_beside_the_maps(setup):
    tmp_path, inputs, checkpoint = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", checkpoint, *FAST]
    assert main([*args, "--save-uncertainty", "--save-figure"]) == 0
    assert visible(out) == [
        "good.nii.gz",
        "good_aleatoric.nii.gz",
        "good_disagreement.nii.gz",
        "good_epistemic.nii.gz",
        "good_error_score.nii.gz",
        "good_figure.png",
        "good_uncertainty.nii.gz",
    ]
    assert (out / "good_figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--save-uncertainty", "--save-figure", "--continue"]) == 0  # the figure counts as an output


def test_multimodal_cases_are_named_nnunet_style(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for c in range(2):
        _nifti(inputs / f"case_{c:04d}.nii.gz", _volume() + c)
    checkpoint = _checkpoint(tmp_path / "two.pt", modalities=2)
    files = [str(p) for p in sorted(inputs.iterdir())]  # files, not a folder, this time
    assert main(["segment", "-i", *files, "-o", str(tmp_path / "out"), "--checkpoint", checkpoint, *FAST]) == 0
    assert visible(tmp_path / "out") == ["case.nii.gz"]


def test_bad_model_options_are_one_line(setup, capsys):
    tmp_path, inputs, checkpoint = setup
    base = ["segment", "-i", str(inputs), "-o", str(tmp_path / "out")]
    assert main([*base, "--checkpoint", str(tmp_path / "none.pt"), *FAST]) == 1
    assert capsys.readouterr().err.strip() == f"medwidit: error: {tmp_path / 'none.pt'}: no such checkpoint file."
    assert main([*base, "--bundle", str(tmp_path), *FAST]) == 1
    assert "not a trained bundle" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*base, "--checkpoint", checkpoint, "--steps", "1", "--device", "cuda"]) == 1
        assert "CUDA is not available" in capsys.readouterr().err


def test_demo_segments_the_shipped_example_with_the_shipped_bundle(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--quiet", "--device", "cpu", "--steps", "2", "--samples", "1"]) == 0
    report = capsys.readouterr().out
    names = visible(out)
    assert names == [
        "colin27_head_2mm_image.nii.gz",
        "colin27_head_2mm_image_aleatoric.nii.gz",
        "colin27_head_2mm_image_disagreement.nii.gz",
        "colin27_head_2mm_image_epistemic.nii.gz",
        "colin27_head_2mm_image_error_score.nii.gz",
        "colin27_head_2mm_image_figure.png",
        "colin27_head_2mm_image_uncertainty.nii.gz",
    ]
    dice = float(report.split("Dice")[1].split()[0])
    # a guard on the shipped weights and the whole path (checkpoint config, preprocessing, inversion), not a
    # measurement: the benchmark has 0.897 for 2 steps x 1 sample at 1 mm
    assert dice > 0.85 and "held out from training" in report, report
    labels = nib.load(out / "colin27_head_2mm_image.nii.gz")
    brain_ml = float((np.asanyarray(labels.dataobj) == 1).sum() * np.prod(labels.header.get_zooms()[:3]) / 1000)
    assert f"brain      {brain_ml:.0f} mL" in report  # millilitres from the written label map's voxel spacing
    assert main(["demo", "-o", str(out), "--quiet", "--device", "cpu", "--steps", "1", "--samples", "1"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medwidit: error:")]
    # one line, naming the demo's own option (it was printed twice, naming medwidit segment's --continue)
    assert len(errors) == 1 and "already exists" in errors[0] and "--overwrite" in errors[0], errors
    assert "--continue" not in errors[0] and str(out / "colin27_head_2mm_image") in errors[0]


def test_python_dash_m_is_the_cli():
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "medwidit", "segment", "--help"], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert run.returncode == 0 and "--save-uncertainty" in run.stdout and "case_0000.nii.gz" in run.stdout


######################################################################################################################
# issue 14: the shipped bundle by default, --version, the run record, mps, one source of sampling defaults
######################################################################################################################


def _small_head(path):
    """A 2 mm head-sized ellipsoid, small enough for the shipped model to segment in a second."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 28, 24)], indexing="ij"))
    data = (1000 * ((grid**2).sum(0) < 0.6) + 50 * _volume((24, 28, 24))).astype(np.float32)
    return _nifti(path, data, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_segment_without_a_model_uses_the_shipped_bundle_and_says_so(tmp_path, capsys):
    from medwidit.utils.resources import shipped_path

    image = _small_head(tmp_path / "head.nii.gz")
    assert main(["segment", "-i", str(image), "-o", str(tmp_path / "a"), "--steps", "1", "--samples", "1"]) == 0
    log = capsys.readouterr().err
    first = log.splitlines()[0]
    shipped = shipped_path("bundles", "brain_widit_segmentation")
    assert first.startswith(
        f"medwidit: model: the shipped default bundle brain_widit_segmentation (brain extraction, {shipped})"
    )
    assert "1 step(s) x 1 sample(s) x 2 sets of weights, sampler" in first  # the bundle's weight_sets
    assert visible(tmp_path / "a") == ["head.nii.gz"]
    shared = ["segment", "-i", str(image), "-o", str(tmp_path / "c"), "--steps", "2", "--samples", "2"]
    assert main([*shared, "--shared-steps", "1", "--weight-sets", "1"]) == 0
    assert "2 step(s) x 2 sample(s) (the first 1 shared), sampler" in capsys.readouterr().err.splitlines()[0]
    viewed = ["segment", "-i", str(image), "-o", str(tmp_path / "d"), "--steps", "1", "--samples", "1"]
    assert main([*viewed, "--weight-sets", "1", "--augment", "2"]) == 0
    assert "1 step(s) x 1 sample(s) x 2 test-time views, sampler" in capsys.readouterr().err.splitlines()[0]
    by_name = ["segment", "-i", str(image), "-o", str(tmp_path / "b"), "--bundle", "brain_widit_segmentation"]
    assert main([*by_name, "--steps", "1", "--samples", "1", "-q"]) == 0  # a shipped bundle's name, not a folder
    same = [np.asarray(nib.load(tmp_path / out / "head.nii.gz").dataobj) for out in ("a", "b")]
    np.testing.assert_array_equal(*same)


@pytest.mark.parametrize("hardware, dtype", [(True, "bfloat16"), (False, "float32")])
def test_default_precision_on_a_cpu_follows_its_bf16_hardware_and_the_record_says_which(
    setup, capsys, monkeypatch, hardware, dtype
):
    """``--precision auto`` (the default) on a CPU: bfloat16 autocast where the CPU multiplies bf16 in hardware,
    float32 elsewhere; the first log line and the run record name what ran, and ``--precision float32`` overrides."""
    from medwidit.inference import options

    tmp_path, inputs, checkpoint = setup
    monkeypatch.setattr(options, "cpu_has_bf16_matmul", lambda: hardware)
    for name, extra, expected in (("auto", [], dtype), ("float32", ["--precision", "float32"], "float32")):
        out = tmp_path / name
        loud = [arg for arg in FAST if arg != "--quiet"]
        assert main(["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", checkpoint, *loud, *extra]) == 0
        assert f"on cpu ({expected});" in capsys.readouterr().err.splitlines()[0]
        runtime = json.loads((out / "medwidit_run.json").read_text())["runtime"]
        assert runtime["precision"] == name
        assert runtime["autocast_dtype"] == (None if expected == "float32" else expected)
        assert visible(out) == ["good.nii.gz"]


def test_an_unknown_bundle_is_one_line_naming_it_and_the_shipped_ones(setup, capsys):
    tmp_path, inputs, _ = setup
    code = main(
        ["segment", "-i", str(inputs), "-o", str(tmp_path / "out"), "--bundle", "brain_widit_segmentaton", *FAST]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert re.match(
        r"medwidit: error: bundle 'brain_widit_segmentaton': no such folder and no shipped bundle of that name "
        r"\(shipped: .*brain_widit_segmentation.*, in .*bundles\); give a MONAI bundle folder \(--bundle DIR; bundle= "
        r"in Python\) or a checkpoint \(--checkpoint FILE; Predictor.from_checkpoint\)\.$",
        err,
    ), err
    assert not (tmp_path / "out").exists()  # nothing was written, not even a record
    with pytest.raises(InputError, match=r"bundle= in Python"):  # the Python caller is told its argument too
        medwidit.segment(str(inputs / "good_0000.nii.gz"), bundle="brain_widit_segmentaton")


def test_version_comes_from_the_installed_metadata_or_the_source(capsys, monkeypatch):
    from importlib import metadata

    import medwidit
    from medwidit.cli import package_version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    metadata_file = Path(__file__).resolve().parents[1] / "bundles/brain_widit_segmentation/configs/metadata.json"
    bundle = json.loads(metadata_file.read_text())["version"]
    expected = f"medwidit {metadata.version('medwidit')}; default model: bundle brain_widit_segmentation {bundle}"
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == expected  # the bundle's too, from a review
    from medwidit.cli_parser import DEFAULT_BUNDLE
    from medwidit.inference.options import DEFAULT_BUNDLE as used

    assert DEFAULT_BUNDLE == used

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert package_version() == f"{medwidit.__version__} (source checkout, not installed)"


def test_each_run_records_its_settings_beside_the_outputs_and_never_replaces_a_record(setup):
    import hashlib
    import json

    tmp_path, inputs, checkpoint = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", checkpoint, *FAST, "--seed", "3"]
    assert main([*args, "--eta", "0.5"]) == 0
    first = json.loads((out / "medwidit_run.json").read_text())
    assert first["status"] == "done" and first["command"].startswith("medwidit segment -i ")
    assert first["model"] == {
        "bundle": None,
        "shipped_default": False,
        "weights": str(Path(checkpoint).resolve()),
        "sha256": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest(),
    }
    assert first["sampling"] == {
        "steps": 1,
        "num_samples": 1,
        "sampler": "ddim",
        "eta": 0.5,
        "guidance_scale": 1.0,
        "overlap": 0.5,
        "seed": 3,
        "shared_steps": 0,
        "weight_sets": 1,
        "augment": 1,
        "view_options": {},
        "localization": None,  # a bare checkpoint has none
        "atlas_prior": None,  # nor an atlas prior
        "probability_smoothing": 0.0,
        "quality_calibration": None,  # nor a calibration: the ensemble's own estimate, with its threshold
        "warn_dice": 0.955,
        "bias_retry": False,  # a bare checkpoint segments each case once
    }
    assert first["runtime"]["device"] == "cpu" and first["runtime"]["roi_size"] == [16, 16, 16]
    assert first["runtime"]["max_whole_voxels"] == 4 * 64**3  # the default that applied (it read null)
    assert {"torch", "monai", "python"} <= set(first["environment"]) and first["medwidit"]
    assert first["cases"] == [
        {
            "name": "good",
            "status": "done",
            "outputs": ["good.nii.gz"],
            "seconds": pytest.approx(1, abs=60),
            "message": None,
            "warnings": ["one member (one sample of one set of weights): no estimate of the Dice"],  # the line's
        }
    ]
    assert first["started"] <= first["finished"]
    assert main(args) == 1  # the output exists: the case fails, and the run gets its own record
    assert json.loads((out / "medwidit_run.json").read_text()) == first
    second = json.loads((out / "medwidit_run_2.json").read_text())
    assert second["status"] == "failed" and "already exists" in second["cases"][0]["message"]
    assert main([*args, "--overwrite"]) == 0  # --overwrite replaces outputs, not earlier records
    assert json.loads((out / "medwidit_run_3.json").read_text())["status"] == "done"
    assert json.loads((out / "medwidit_run.json").read_text()) == first


def test_mps_is_accepted_where_torch_has_it_and_a_clear_error_where_not(monkeypatch):
    from medwidit.inference.options import resolve_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(
        ValueError, match=r"^device 'mps' was asked for but MPS is not available .*; use 'cpu' \(--device cpu\)"
    ):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    with pytest.raises(ValueError, match=r"device 'mps:1' does not exist: MPS has one device"):
        resolve_device("mps:1")
    with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda, cuda:N or mps, got 'xpu'"):
        resolve_device("xpu")


def test_one_default_ensemble_size_for_the_cli_the_predictor_the_bundle_and_the_readme():
    from medwidit.inference.options import SAMPLING_DEFAULTS, bundle_options, resolve_bundle, sampling_defaults

    shipped = bundle_options(resolve_bundle())  # the shipped inference.json, read as the CLI reads it
    defaults = sampling_defaults(resolve_bundle())  # the Predictor's (tests/inference/test_defaults)
    assert {key: shipped.get(key) for key in SAMPLING_DEFAULTS} == defaults  # it states every one of them
    evaluation = bundle_options(resolve_bundle(), ["evaluate.json"])  # run evaluating samples as inference does
    assert {key: evaluation.get(key) for key in SAMPLING_DEFAULTS} == defaults
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    steps, samples, overlap, sets, shared = (
        defaults[k] for k in ("steps", "num_samples", "overlap", "weight_sets", "shared_steps")
    )
    shared = "nothing shared" if shared == 0 else f"the first {shared} shared"
    line = f"**{steps} steps × {samples} samples from each of {sets} sets of weights, {shared}, overlap {overlap}**"
    assert line in readme


def test_a_bundles_inference_json_sets_the_cli_defaults(tmp_path):
    import json
    import shutil

    from medwidit.inference.options import resolve_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(resolve_bundle(), bundle, ignore=shutil.ignore_patterns("eval", "runs"))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    settings = {"steps": 1, "num_samples": 2, "sw_batch_size": 1}  # the CLI's own default once replaced the last
    (bundle / "configs" / "inference.json").write_text(json.dumps({**config, **settings}))
    image = _small_head(tmp_path / "head.nii.gz")
    assert main(["segment", "-i", str(image), "-o", str(tmp_path / "out"), "--bundle", str(bundle), "-q"]) == 0
    record = json.loads((tmp_path / "out" / "medwidit_run.json").read_text())
    assert (record["sampling"]["steps"], record["sampling"]["num_samples"]) == (1, 2)
    assert record["runtime"]["sw_batch_size"] == 1
    assert record["model"]["bundle"] == str(bundle.resolve()) and not record["model"]["shipped_default"]


def test_the_license_file_is_the_one_pyproject_names():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    license_text = (root / "LICENSE").read_text()
    assert license_text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"]
    assert (declared.get("text") if isinstance(declared, dict) else declared) == "Apache-2.0"


def test_a_run_refused_before_any_case_leaves_no_record(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _nifti(inputs / "x.nii.gz", _volume())
    _nifti(inputs / "x_uncertainty.nii.gz", _volume())
    checkpoint = _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", checkpoint, *FAST, "--save-uncertainty"]
    assert main(args) == 1 and "also an output of case 'x'" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []


def test_augment_views_replace_the_bundles_views_and_bad_ones_are_named(tmp_path, capsys):
    """--augment-views: the views --augment draws instead of the bundle's augment_views (in the run record too);
    text that is not a JSON object is a usage error, and a bad key an error naming the option and the key."""
    image = _small_head(tmp_path / "head.nii.gz")
    views = {"flip_axes": [], "gamma_range": [1, 1], "spread_shifts": True}
    base = ["segment", "-i", str(image), "--steps", "1", "--samples", "1", "--weight-sets", "1", "--augment", "2"]
    assert main([*base, "-o", str(tmp_path / "a"), "--augment-views", json.dumps(views), "-q"]) == 0
    record = json.loads((tmp_path / "a" / "medwidit_run.json").read_text())
    assert record["sampling"]["view_options"] == {"flip_axes": [], "gamma_range": [1.0, 1.0], "spread_shifts": True}
    assert main([*base, "-o", str(tmp_path / "b"), "-q"]) == 0
    shipped = json.loads((tmp_path / "b" / "medwidit_run.json").read_text())["sampling"]["view_options"]
    assert shipped["flip_axes"] == [0] and "spread_shifts" not in shipped  # the bundle's own
    for text in ("[1]", "{flip_axes: []}"):
        with pytest.raises(SystemExit) as exit_:
            main([*base, "-o", str(tmp_path / "c"), "--augment-views", text])
        assert exit_.value.code == 2 and "argument --augment-views: expected a JSON object" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "d"), "--augment-views", '{"flips": [0]}']) == 1
    assert "--augment-views: unknown key(s) ['flips']" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "e"), "--augment-views", '{"gamma_range": [2, 1]}']) == 1
    assert "--augment-views: gamma_range must be [low, high] with 0 < low <= high" in capsys.readouterr().err
    single = [*base[:-2], "--augment", "1", "-o", str(tmp_path / "f"), "--augment-views", json.dumps(views), "-q"]
    assert main(single) == 0
    assert "--augment-views has no effect with --augment 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_probability_smoothing_reaches_the_run_and_a_bad_value_is_a_usage_error(tmp_path, capsys):
    """--probability-smoothing SIGMA: named on the model line and in the run record, and the labels written are the
    argmax of the probabilities written (post-processed); a negative or non-number value is a usage error."""
    image = _small_head(tmp_path / "head.nii.gz")
    # without the atlas core, which makes the small head's inside one-hot in every member: smoothing shows elsewhere
    base = ["segment", "-i", str(image), "--steps", "1", "--samples", "1", "--weight-sets", "1", "--no-localize",
            "--no-atlas-core"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "a"), "--probability-smoothing", "1.5", "--save-probabilities"]) == 0
    assert "probabilities smoothed (sigma 1.5 voxels)" in capsys.readouterr().err
    record = json.loads((tmp_path / "a" / "medwidit_run.json").read_text())
    assert record["sampling"]["probability_smoothing"] == 1.5
    labels = np.asanyarray(nib.load(tmp_path / "a" / "head.nii.gz").dataobj)
    probability = np.asanyarray(nib.load(tmp_path / "a" / "head_probabilities.nii.gz").dataobj)
    from medwidit.inference.options import resolve_bundle
    from medwidit.inference.postprocess import apply_label_postprocessing, bundle_label_postprocessing

    steps = bundle_label_postprocessing(resolve_bundle())
    np.testing.assert_array_equal(labels, apply_label_postprocessing(np.moveaxis(probability, -1, 0).argmax(0), steps))
    assert main([*base, "-o", str(tmp_path / "b"), "-q", "--save-probabilities"]) == 0
    assert json.loads((tmp_path / "b" / "medwidit_run.json").read_text())["sampling"]["probability_smoothing"] == 0
    plain = np.asanyarray(nib.load(tmp_path / "b" / "head_probabilities.nii.gz").dataobj)
    assert np.abs(plain - probability).max() > 0.01  # the flag reached the probabilities written
    for value in ("-1", "nan", "inf", "wide"):
        with pytest.raises(SystemExit) as exit_:
            main([*base, "-o", str(tmp_path / "c"), "--probability-smoothing", value])
        assert exit_.value.code == 2
        message = f"argument --probability-smoothing: expected a finite number >= 0, got '{value}'"
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--steps", "0", "expected a positive integer, got '0'"),
        ("--steps", "two", "expected a positive integer, got 'two'"),
        ("--max-whole-voxels", "-1", "expected an integer >= 0, got '-1'"),
        ("--max-whole-voxels", "1.5", "expected an integer >= 0, got '1.5'"),
        ("--seed", "-1", "expected an integer in 0..2**64-1, got '-1'"),  # checked after the model loaded, as "seed"
        # from a review: accepted, then every case failed in torch's manual_seed, the message naming the image
        ("--seed", str(2**64), f"expected an integer in 0..2**64-1, got '{2**64}'"),
        ("--shared-steps", "-1", "expected an integer >= 0, got '-1'"),
    ],
)
def test_integer_options_are_usage_errors_naming_the_value(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "-i", "x.nii.gz", "-o", "out", "--bundle", "b", option, value])
    assert exit_.value.code == 2 and f"argument {option}: {message}" in capsys.readouterr().err


def test_save_statistics_volumes_are_voxel_counts_times_the_written_voxel_volume(setup):
    """--save-statistics: per class, voxels and mL of the written label map, on the input's (sheared) grid."""
    tmp_path, inputs, checkpoint = setup
    out = tmp_path / "out"
    assert (
        main(["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", checkpoint, *FAST, "--save-statistics"])
        == 0
    )
    assert visible(out) == ["good.nii.gz", "good_statistics.json"]
    statistics = json.loads((out / "good_statistics.json").read_text())
    written = nib.load(out / "good.nii.gz")
    labels = np.asanyarray(written.dataobj)
    voxel_ml = abs(np.linalg.det(written.affine[:3, :3])) / 1000.0
    assert statistics["voxel_volume_ml"] == pytest.approx(abs(np.linalg.det(AFFINE[:3, :3])) / 1000.0)
    assert set(statistics["classes"]) == {"0", "1"}
    assert set(np.unique(labels)) == {0, 1}  # both classes written: the counts below are of something
    for k, row in statistics["classes"].items():
        assert row["voxels"] == int((labels == int(k)).sum())
        assert row["volume_ml"] == pytest.approx(row["voxels"] * voxel_ml, rel=1e-6)
    assert sum(row["voxels"] for row in statistics["classes"].values()) == labels.size


def test_class_statistics_names_classes_and_refuses_labels_out_of_range():
    from medwidit.inference.statistics import class_statistics

    stats = class_statistics(np.array([[[0, 1, 1]]]), np.diag([2.0, 2.0, 2.5, 1.0]), 2, ["background", "brain"])
    assert stats == {
        "voxel_volume_ml": pytest.approx(0.01),
        "classes": {
            "0": {"name": "background", "voxels": 1, "volume_ml": pytest.approx(0.01)},
            "1": {"name": "brain", "voxels": 2, "volume_ml": pytest.approx(0.02)},
        },
    }
    with pytest.raises(ValueError, match=r"label map values must be in 0..1, got 0..2"):
        class_statistics(np.array([0, 2]), np.eye(4), 2)
    with pytest.raises(ValueError, match="class_names has 1 names for 2 classes"):
        class_statistics(np.array([0, 1]), np.eye(4), 2, ["background"])


def test_bias_correction_reaches_the_predictor_and_the_run_record(setup, capsys):
    """--bias-correction n4 replaces the checkpoint's preprocessing['bias_correction'] for this run (N4 before the
    intensity normalisation) and the record says so; the default keeps the model's; a wrong value names the option."""
    import json

    tmp_path, inputs, checkpoint = setup
    head = np.zeros((24, 24, 24), np.float32)
    head[4:20, 4:20, 4:20] = 100.0 + np.linspace(0, 100, 16)[:, None, None]  # a ramp: a coil field to remove
    _nifti(inputs / "good_0000.nii.gz", head)
    base = ["segment", "-i", str(inputs), "--checkpoint", checkpoint, *FAST]
    assert main([*base, "-o", str(tmp_path / "n4"), "--bias-correction", "n4"]) == 0
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    n4 = json.loads((tmp_path / "n4" / "medwidit_run.json").read_text())
    plain = json.loads((tmp_path / "plain" / "medwidit_run.json").read_text())
    assert n4["preprocessing"]["bias_correction"] == "n4" and plain["preprocessing"]["bias_correction"] is None
    assert n4["preprocessing"]["spacing"] == plain["preprocessing"]["spacing"] == [1.5, 1.5, 1.5]  # the rest kept
    with pytest.raises(SystemExit):
        main([*base, "-o", str(tmp_path / "bad"), "--bias-correction", "N4ITK"])
    assert "--bias-correction: invalid choice: 'N4ITK'" in capsys.readouterr().err


def test_the_predictor_refuses_an_unknown_bias_correction_by_name(setup):
    from medwidit.inference import Predictor
    from medwidit.inference.io import InputError

    _, _, checkpoint = setup
    assert Predictor.from_checkpoint(checkpoint, bias_correction="n4").preprocessing["bias_correction"] == "n4"
    assert Predictor.from_checkpoint(checkpoint).preprocessing["bias_correction"] is None
    with pytest.raises(InputError, match=r"bias_correction: preprocessing\['bias_correction'\] must be one of"):
        Predictor.from_checkpoint(checkpoint, bias_correction="N4ITK")


def _image_reading_checkpoint(path):
    """The tiny checkpoint with its zero output layer drawn at random, so that its labels follow the image."""
    from medwidit.diffusion import load_segmenter

    segmenter, config = load_segmenter(_checkpoint(path))
    generator = torch.Generator().manual_seed(0)
    for parameter in segmenter.net.final_layer.parameters():
        torch.nn.init.normal_(parameter, std=0.5, generator=generator)
    save_segmenter(segmenter, path, extra_config={k: config[k] for k in ("preprocessing", "roi_size")})
    return str(path)


def test_bias_retry_segments_a_warned_case_again_with_n4_and_keeps_the_higher_estimate(tmp_path, monkeypatch):
    """bias_correction="retry": no N4 first; where the predicted Dice is below warn_dice the case is segmented again
    with N4 from the same random state, and the result with the higher minimum predicted Dice is kept, both estimates
    recorded. Each pass is exactly what a predictor with that preprocessing gives; a case that does not warn is the
    plain run's, with nothing recorded."""
    from medwidit.inference import Predictor

    checkpoint = _image_reading_checkpoint(tmp_path / "model.pt")
    head = np.zeros((48, 48, 48), np.float32)
    head[8:40, 8:40, 8:40] = 100.0 * np.exp(np.linspace(0, 1.5, 32))[:, None, None]  # a strong coil field
    image = _nifti(tmp_path / "head.nii.gz", head, np.eye(4))
    fast = {"steps": 1, "num_samples": 2}
    # every case below warn_dice 1: each one is retried; the coarse pass on a 3 mm grid runs under each preprocessing
    options = {"device": "cpu", "warn_dice": 1.0, "localization": {"spacing": 3.0, "margin_mm": 0.0, "min_kept": 0.0}}
    plain = Predictor.from_checkpoint(checkpoint, **options).segment(image, **fast)
    n4 = Predictor.from_checkpoint(checkpoint, bias_correction="n4", **options).segment(image, **fast)
    assert not np.array_equal(plain.label_map, n4.label_map)  # the correction changes the answer here
    assert plain.quality["localization"]["applied"] and n4.quality["localization"]["applied"]
    first, second = plain.quality["min_predicted_dice"], n4.quality["min_predicted_dice"]
    assert first < 1.0 and first != second

    predictor = Predictor.from_checkpoint(checkpoint, bias_correction="retry", **options)
    assert predictor.bias_retry and predictor.preprocessing["bias_correction"] is None
    coarse, original = [], Predictor._coarse_pass
    monkeypatch.setattr(  # the localization pass of each try runs under that try's preprocessing
        Predictor, "_coarse_pass", lambda self, a, g, pre, *rest: coarse.append(pre) or original(self, a, g, pre, *rest)
    )
    result = predictor.segment(image, **fast)
    assert [pre["bias_correction"] for pre in coarse] == [None, "n4"]
    better = n4 if second > first else plain
    np.testing.assert_array_equal(result.label_map, better.label_map)
    np.testing.assert_array_equal(result.probability, better.probability)
    kept = {k: v for k, v in result.quality.items() if k not in ("bias_retry", "warnings")}
    assert kept == {k: v for k, v in better.quality.items() if k != "warnings"}  # its coarse pass too
    assert result.quality["warnings"][-1].startswith("retried with N4 (predicted Dice ")  # the verdict says so
    assert result.quality["bias_retry"] == {
        "correction": "n4",
        "first_predicted_dice": first,
        "retry_predicted_dice": second,
        "kept": "retry" if second > first else "first",
    }

    for threshold in (None, first / 2):  # none, or one the first pass's estimate clears: never retried
        quiet = Predictor.from_checkpoint(checkpoint, bias_correction="retry", **{**options, "warn_dice": threshold})
        unwarned = quiet.segment(image, **fast)
        np.testing.assert_array_equal(unwarned.probability, plain.probability)
        assert "bias_retry" not in unwarned.quality
    own = Predictor.from_checkpoint(checkpoint, bias_correction="retry", bias_retry=False, **options)
    assert not own.bias_retry  # a caller's own bias_retry wins over the "retry" a bundle hands over


def test_a_retry_that_only_ties_the_first_estimate_keeps_the_first_result(tmp_path, monkeypatch):
    """From a mutation review: the retry replaces the first result only where its predicted Dice is higher; a tie
    keeps the first (a ``>=`` kept the N4 pass, which the user did not ask for, for no gain)."""
    from types import SimpleNamespace

    from medwidit.inference import Predictor

    checkpoint = _image_reading_checkpoint(tmp_path / "model.pt")
    image = _nifti(tmp_path / "head.nii.gz", _volume((24, 24, 24)))
    passes = []

    def fake(self, preprocessing, *case):
        passes.append(preprocessing["bias_correction"])
        quality = {"min_predicted_dice": 0.5, "predicted_dice": {"1": 0.5}, "empty_classes": []}
        return SimpleNamespace(quality=quality, which=preprocessing["bias_correction"])

    monkeypatch.setattr(Predictor, "_segment_case", fake)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", warn_dice=0.9, bias_correction="retry")
    result = predictor.segment(image, steps=1, num_samples=1)
    assert passes == [None, "n4"] and result.which is None
    assert result.quality["bias_retry"]["kept"] == "first"


def test_a_given_warn_dice_is_the_retrys_threshold_as_the_warning_lines_on_an_uncalibrated_case(tmp_path, monkeypatch):
    """From a review: with ``--warn-dice 0.9`` a case whose calibration was skipped (the template did not register)
    was retried with N4 below 0.955, the ensemble's threshold, while its warning line judged it by 0.9. A given
    threshold now judges both as it is; without one, such a case is judged by the ensemble's threshold in both."""
    from types import SimpleNamespace

    from medwidit.inference import Predictor
    from medwidit.inference.calibration import ENSEMBLE_WARN_DICE

    checkpoint = _image_reading_checkpoint(tmp_path / "model.pt")
    image = _nifti(tmp_path / "head.nii.gz", _volume((24, 24, 24)))
    passes = []
    uncalibrated = {"min_predicted_dice": 0.93, "predicted_dice": {"1": 0.93}, "empty_classes": []}
    uncalibrated["calibration"] = {"skipped": ["log_atlas_dice"]}

    def fake(self, preprocessing, *case):
        passes.append(preprocessing["bias_correction"])
        return SimpleNamespace(quality=dict(uncalibrated))

    monkeypatch.setattr(Predictor, "_segment_case", fake)
    given = Predictor.from_checkpoint(checkpoint, device="cpu", warn_dice=0.9, bias_correction="retry")
    # a second review: a bundle's inference.json passes its own warn_dice to from_checkpoint, which judged its
    # uncalibrated cases at 0.8 then; a number there stays the calibration's, only --warn-dice is taken as it is
    assert not given.warn_dice_given and given.case_warn_dice(uncalibrated) == ENSEMBLE_WARN_DICE
    # as medwidit segment --warn-dice 0.9 builds it
    given = Predictor.from_checkpoint(checkpoint, device="cpu", warn_dice=0.9, warn_dice_given=True,
                                      bias_correction="retry")  # fmt: skip
    given.segment(image, steps=1, num_samples=1)
    assert passes == [None]  # 0.93 clears the given 0.9: not retried
    assert given.case_warn_dice(uncalibrated) == 0.9  # the warning line's threshold (files.py asks the predictor)
    passes.clear()
    default = Predictor.from_checkpoint(checkpoint, device="cpu", bias_correction="retry")
    default.segment(image, steps=1, num_samples=1)
    assert passes == [None, "n4"] and default.case_warn_dice(uncalibrated) == ENSEMBLE_WARN_DICE


def test_a_retry_whose_n4_fails_keeps_the_first_result(tmp_path, monkeypatch, capsys):
    from medwidit.data import transforms
    from medwidit.inference import Predictor

    checkpoint = _image_reading_checkpoint(tmp_path / "model.pt")
    image = _nifti(tmp_path / "head.nii.gz", _volume((24, 24, 24)))
    options = {"device": "cpu", "warn_dice": 1.0}
    plain = Predictor.from_checkpoint(checkpoint, **options).segment(image, steps=1, num_samples=2)

    def fail(*args, **kwargs):
        raise RuntimeError("N4 could not fit")

    monkeypatch.setattr(transforms, "n4_bias_correct", fail)
    result = Predictor.from_checkpoint(checkpoint, bias_correction="retry", **options).segment(
        image, steps=1, num_samples=2
    )
    np.testing.assert_array_equal(result.probability, plain.probability)
    assert result.quality["bias_retry"] == {"correction": "n4", "failed": "N4 could not fit"}
    base = ["segment", "-i", str(image), "--checkpoint", checkpoint, *FAST, "--samples", "2", "--warn-dice", "1"]
    assert main([*base, "-o", str(tmp_path / "out"), "--bias-correction", "retry"]) == 0
    assert "the retry with N4 failed (N4 could not fit)" in capsys.readouterr().err
    assert (tmp_path / "out" / "head.nii.gz").is_file()  # the first result written


def test_bias_retry_needs_a_first_pass_without_n4(setup):
    from medwidit.inference import Predictor
    from medwidit.inference.io import InputError

    _, _, checkpoint = setup
    with pytest.raises(ValueError, match="bias_retry retries a case with 'n4' bias correction, but the preprocessing"):
        Predictor(Predictor.from_checkpoint(checkpoint).segmenter, preprocessing={"bias_correction": "n4"},
                  bias_retry=True)  # fmt: skip
    message = r"must be one of \[None, 'n4'\], got 'Retry'. It also takes 'retry' \(N4 only where a case warns\)"
    with pytest.raises(InputError, match=message):
        Predictor.from_checkpoint(checkpoint, bias_correction="Retry")


def test_only_the_command_lines_warn_dice_is_taken_as_given(setup, monkeypatch):
    """--warn-dice D judges every case at D, the retry too; without it a bundle's own warn_dice (which inference.json
    passes to from_checkpoint) stays its calibration's, and an uncalibrated case is judged at 0.955."""
    from medwidit.inference import Predictor

    tmp_path, inputs, _ = setup
    checkpoint = _image_reading_checkpoint(tmp_path / "random.pt")
    seen, original = [], Predictor.case_warn_dice
    monkeypatch.setattr(
        Predictor, "case_warn_dice", lambda self, q: seen.append(self.warn_dice_given) or original(self, q)
    )
    base = ["segment", "-i", str(inputs), "--checkpoint", checkpoint, *FAST, "--samples", "2"]
    assert main([*base, "-o", str(tmp_path / "given"), "--warn-dice", "0.9"]) == 0
    given, seen[:] = list(seen), []
    assert main([*base, "-o", str(tmp_path / "own")]) == 0
    assert given and all(given) and seen and not any(seen)


def test_a_cases_warning_is_kept_in_its_quality_json_and_the_run_record(setup, capsys):
    """From a review: the warning line was only printed, so a batch's warned cases could not be found afterwards
    (each record entry read "done", the quality JSON had no verdict). Both now hold the line's causes; [] for a case
    that does not warn, and nothing where no warning is judged (--warn-dice 0)."""
    import json

    tmp_path, inputs, _ = setup
    checkpoint = _image_reading_checkpoint(tmp_path / "random.pt")
    base = ["segment", "-i", str(inputs), "--checkpoint", checkpoint, *FAST, "--samples", "2", "--save-quality"]
    for name, threshold in (("warned", "1"), ("quiet", "0.001"), ("off", "0")):
        assert main([*base, "-o", str(tmp_path / name), "--warn-dice", threshold]) == 0
    line = capsys.readouterr().err
    warned = json.loads((tmp_path / "warned" / "good_quality.json").read_text())["warnings"]
    assert warned and warned[0].startswith("predicted Dice below 1.00 (class 1 ")
    assert f"good: {'; '.join(warned)}: check this case before using it." in line  # the same words
    record = json.loads((tmp_path / "warned" / "medwidit_run.json").read_text())
    assert record["cases"][0]["warnings"] == warned
    quiet = json.loads((tmp_path / "quiet" / "medwidit_run.json").read_text())
    assert quiet["cases"][0]["warnings"] == []
    assert json.loads((tmp_path / "quiet" / "good_quality.json").read_text())["warnings"] == []
    off = json.loads((tmp_path / "off" / "medwidit_run.json").read_text())
    assert "warnings" not in off["cases"][0]
    assert json.loads((tmp_path / "off" / "good_quality.json").read_text())["warnings"] is None


def test_bias_retry_from_the_cli_is_recorded_and_named_in_the_warning_line(setup, capsys):
    """--bias-correction retry: the run record says so, and a case still warned after the retry says it was retried
    and which result it kept."""
    import json

    tmp_path, inputs, _ = setup
    checkpoint = _image_reading_checkpoint(tmp_path / "random.pt")
    # two members: one alone agrees with itself (predicted Dice 1), so nothing falls below --warn-dice 1
    base = ["segment", "-i", str(inputs), "--checkpoint", checkpoint, *FAST, "--samples", "2", "--save-quality"]
    assert main([*base, "-o", str(tmp_path / "retry"), "--bias-correction", "retry", "--warn-dice", "1"]) == 0
    warned = capsys.readouterr().err
    record = json.loads((tmp_path / "retry" / "medwidit_run.json").read_text())
    assert record["sampling"]["bias_retry"] is True and record["preprocessing"]["bias_correction"] is None
    quality = json.loads((tmp_path / "retry" / "good_quality.json").read_text())
    retry = quality["bias_retry"]
    assert retry["kept"] in ("first", "retry")
    kept = "N4's" if retry["kept"] == "retry" else "the first"
    first, second = retry["first_predicted_dice"], retry["retry_predicted_dice"]
    assert f"retried with N4 (predicted Dice {first:.3f} without, {second:.3f} with; {kept} kept)" in warned
    assert record["cases"][0]["bias_retry"] == retry  # the record names a retried case without --save-quality too
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "medwidit_run.json").read_text())
    assert plain["sampling"]["bias_retry"] is False and "bias_retry" not in plain["cases"][0]
    assert main([*base, "-o", str(tmp_path / "never"), "--bias-correction", "retry", "--warn-dice", "0"]) == 0
    never = json.loads((tmp_path / "never" / "medwidit_run.json").read_text())
    assert never["sampling"]["bias_retry"] is False  # no threshold: nothing is retried, and the record says so


def test_anti_aliasing_reaches_the_predictor_and_the_run_record(setup, capsys, monkeypatch):
    """--anti-aliasing on|off replaces the checkpoint's preprocessing['anti_aliasing'] for this run (the blur runs
    on the case's image before the 1.5 mm grid); the default keeps the model's (off); a wrong value is named, from
    the CLI and from Python."""
    import json

    from medwidit.data import transforms
    from medwidit.inference import Predictor
    from medwidit.inference.io import InputError

    blurred = []
    original = transforms.anti_alias
    monkeypatch.setattr(
        transforms, "anti_alias", lambda image, pixdim: blurred.append(pixdim) or original(image, pixdim)
    )
    tmp_path, inputs, checkpoint = setup
    base = ["segment", "-i", str(inputs), "--checkpoint", checkpoint, *FAST]
    runs, calls = {}, {}
    for name, extra in (("on", ["--anti-aliasing", "on"]), ("off", ["--anti-aliasing", "off"]), ("plain", [])):
        blurred.clear()
        assert main([*base, "-o", str(tmp_path / name), *extra]) == 0
        runs[name] = json.loads((tmp_path / name / "medwidit_run.json").read_text())["preprocessing"]
        calls[name] = list(blurred)
    assert (
        runs["on"]["anti_aliasing"] is True and runs["off"]["anti_aliasing"] is runs["plain"]["anti_aliasing"] is False
    )
    assert runs["on"]["spacing"] == runs["plain"]["spacing"] == [1.5, 1.5, 1.5]  # the rest kept
    assert calls == {"on": [[1.5, 1.5, 1.5]], "off": [], "plain": []}
    with pytest.raises(SystemExit):
        main([*base, "-o", str(tmp_path / "bad"), "--anti-aliasing", "yes"])
    assert "--anti-aliasing: invalid choice: 'yes'" in capsys.readouterr().err
    assert Predictor.from_checkpoint(checkpoint, anti_aliasing=True).preprocessing["anti_aliasing"] is True
    with pytest.raises(InputError, match=r"anti_aliasing: preprocessing\['anti_aliasing'\] must be true or false"):
        Predictor.from_checkpoint(checkpoint, anti_aliasing="on")


def test_a_part_that_holds_no_case_ends_well_and_says_so(setup, capsys):
    """From a review: --num-parts 3 --part-id 2 over one case exited 1 saying "no cases", so an array job with more
    tasks than cases showed failed tasks where nothing failed. It exits 0, saying the cases went to other parts; the
    part that holds the case segments it."""
    tmp_path, inputs, checkpoint = setup
    base = ["segment", "-i", str(inputs), "-o", str(tmp_path / "out"), "--checkpoint", checkpoint, *FAST]
    assert main([*base, "--num-parts", "3", "--part-id", "2"]) == 0
    assert "no cases in part 2 of 3 (the cases went to other parts)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "good.nii.gz").exists()
    assert main([*base, "--num-parts", "3", "--part-id", "0"]) == 0
    assert (tmp_path / "out" / "good.nii.gz").exists()


def test_input_given_twice_segments_both(setup):
    """From a review: -i a -i b kept the last list alone: b was segmented, a dropped, exit 0."""
    tmp_path, inputs, checkpoint = setup
    other = tmp_path / "other"
    other.mkdir()
    _nifti(other / "second.nii.gz", _volume())
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-i", str(other / "second.nii.gz"), "-o", str(out), "--checkpoint"]
    assert main([*args, checkpoint, "--steps", "1", "--samples", "1", "--quiet"]) == 0
    assert visible(out) == ["good.nii.gz", "second.nii.gz"]


def test_an_explicit_none_window_is_the_models_and_a_bad_one_is_named(setup):
    """From a review: Predictor.from_checkpoint(roi_size=None) ran 96-voxel windows where the CLI ran the training
    crop; roi_size 16.0 failed as 'float object is not iterable', [16.9, 16, 16] was cut to 16 and "16" read [1, 6]."""
    from medwidit.inference import Predictor

    _, _, checkpoint = setup
    default = Predictor.from_checkpoint(checkpoint, device="cpu").roi_size
    assert Predictor.from_checkpoint(checkpoint, device="cpu", roi_size=None).roi_size == default != [96, 96, 96]
    assert Predictor.from_checkpoint(checkpoint, device="cpu", roi_size=[16]).roi_size == [16, 16, 16]  # one size
    for bad, message in (
        (16.0, "roi_size must be an int or have 3 entries"),
        ([16.9, 16, 16], "roi_size must hold ints"),
        ("16", "roi_size must be an int or have 3 entries"),
    ):
        with pytest.raises(ValueError, match=message):
            Predictor.from_checkpoint(checkpoint, device="cpu", roi_size=bad)
