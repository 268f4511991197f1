"""Issue 15 (9): every message names the file and the problem; options are checked once, before any case is read;
and the sampler options reach the sampler (defaults unchanged)."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_volumes import random_tiny_segmenter

import medwidit
from medwidit.cli import main
from medwidit.diffusion import DiffusionSegmenter, save_segmenter
from medwidit.inference import InputError, Predictor
from medwidit.inference import predictor as predictor_module
from medwidit.inference.io import read_image

FAST = {"steps": 1, "num_samples": 1}
CLI_FAST = ["--steps", "1", "--samples", "1", "--device", "cpu"]


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    extra = {"preprocessing": {"spacing": [1.5, 1.5, 1.5]}, "roi_size": [16, 16, 16]}
    save_segmenter(random_tiny_segmenter(), path, extra_config=extra)
    return path


def nifti(path, seed=0):
    nib.save(nib.Nifti1Image(np.random.default_rng(seed).random((12, 10, 8)).astype(np.float32), np.eye(4)), str(path))
    return path


def nifti_with_sform_row(path, row):
    """A NIfTI whose header's sform (the affine readers use) has ``row`` as its first row."""
    header = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).header.copy()
    header.set_qform(None, code=0)
    header["sform_code"], header["srow_x"] = 1, row
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None, header=header), str(path))
    return path


######################################################################################################################
# files
######################################################################################################################


@pytest.mark.parametrize(("row", "problem"), [([np.nan, 0, 0, 0], "NaN or infinite"), ([0, 0, 0, 0], "singular")])
def test_a_nan_or_singular_affine_is_named_up_front(tmp_path, row, problem):
    path = nifti_with_sform_row(tmp_path / "odd.nii.gz", row)
    with pytest.raises(InputError, match=f"odd.nii.gz: the header's voxel-to-world affine .*{problem}"):
        read_image(path)


def test_an_all_zero_affine_is_singular(tmp_path):
    """The singularity test scaled by max|A| ** 3, which underflowed to 0 for an all-zero matrix: 0 < 0 passed it, and
    a model without spacing then failed inside MONAI's Orientationd, naming no file."""
    header = nib.Nifti1Header()
    header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)  # a valid qform beside it
    header.set_sform(np.diag([0.0, 0.0, 0.0, 1.0]), code=1)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None, header=header), str(tmp_path / "zero.nii.gz"))
    with pytest.raises(InputError, match="zero.nii.gz: the header's voxel-to-world affine is singular"):
        read_image(tmp_path / "zero.nii.gz")


def test_itk_errors_keep_the_part_that_says_what_is_wrong(tmp_path):
    path = tmp_path / "bad.nrrd"
    path.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n")
    with pytest.raises(InputError) as error:
        read_image(path)
    message = str(error.value)
    assert message.startswith(f"{path}: cannot read the image") and "require endian info" in message, message
    assert ".cxx" not in message and "0x" not in message


def test_a_permission_error_is_not_called_a_truncated_file(tmp_path, monkeypatch):
    path = nifti(tmp_path / "locked.nii.gz")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(nib, "load", denied)
    with pytest.raises(InputError, match="locked.nii.gz: cannot read the file, permission denied"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_a_4d_singleton_itk_image_is_read_as_3d_like_nifti(tmp_path, suffix):
    volume = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 10, 12)).astype(np.float32))
    volume.SetSpacing((0.5, 0.7, 1.3))
    four = sitk.JoinSeries([volume])  # (12, 10, 8, 1)
    assert four.GetDimension() == 4
    sitk.WriteImage(four, str(tmp_path / f"four{suffix}"))
    data, geometry = read_image(tmp_path / f"four{suffix}")
    assert data.shape == (12, 10, 8) and np.allclose(geometry.spacing, (0.5, 0.7, 1.3))


######################################################################################################################
# checkpoints and bundles
######################################################################################################################


def test_an_empty_checkpoint_says_so(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.pt: not a readable medwidit checkpoint \(the file is empty\)\.$"):
        Predictor.from_checkpoint(tmp_path / "empty.pt")


def test_a_file_that_is_no_checkpoint_says_so_for_segment_and_export(tmp_path, capsys):
    """The text file once gave "(105)" (torch's KeyError) to segment and a traceback to export."""
    (tmp_path / "notes.txt").write_text("hi\n")
    expected = "notes.txt: not a readable {}checkpoint (not a PyTorch file: neither a zip archive nor a pickle"
    with pytest.raises(InputError, match=re.escape(expected.format("medwidit "))):
        Predictor.from_checkpoint(tmp_path / "notes.txt")
    for name in ("notes.txt", "empty.ckpt"):
        (tmp_path / "empty.ckpt").write_bytes(b"")
        assert main(["export", str(tmp_path / name), str(tmp_path / "bundle")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"medwidit: error: {tmp_path / name}: not a readable checkpoint (")
        assert "Traceback" not in err
    assert "(the file is empty)." in err and not (tmp_path / "bundle").exists()


def test_export_into_a_folder_that_is_not_a_bundle_says_so(tmp_path, capsys):
    """A mistyped BUNDLE_DIR exited 0 and created it (the real bundle never got the weights); a file gave a traceback
    (NotADirectoryError)."""
    import torch

    torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
    (tmp_path / "list.json").write_text("{}")
    for target in (tmp_path / "no_such_bundle", tmp_path / "list.json"):
        assert main(["export", str(tmp_path / "x.ckpt"), str(target)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"medwidit: error: BUNDLE_DIR {target}: not a bundle folder (no configs/ in it)"), err
        assert "Traceback" not in err
    assert not (tmp_path / "no_such_bundle").exists()


class NotATensor:
    pass


def test_the_weights_only_refusal_names_the_object_and_the_caveat(tmp_path):
    torch.save({"state_dict": {}, "config": {}, "payload": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(InputError) as error:
        Predictor.from_checkpoint(tmp_path / "pickled.pt")
    message = str(error.value)
    assert "pickled.pt: not a readable medwidit checkpoint (refused: it holds Python objects" in message, message
    assert "NotATensor" in message and "source you trust" in message, message


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"roi_size": "64"}, r"inference.json: roi_size must be an int >= 1, got '64'"),
        ({"sw_batch_size": 0}, r"inference.json: sw_batch_size must be an int >= 1, got 0"),
        ([1, 2], r"inference.json: a bundle config must be a JSON object"),
    ],
)
def test_bundle_config_errors_name_the_file(tmp_path, checkpoint, config, message):
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "models" / "model.pt").write_bytes(checkpoint.read_bytes())
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=message):
        Predictor.from_bundle(bundle, device="cpu")


######################################################################################################################
# options, once and up front
######################################################################################################################


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--overlap", "1.5"], r"overlap must be in \[0.0, 1.0\), got 1.5"),
        (["--sampler", "ddmi"], "sampler: By .ddmi., did you mean .ddim.?"),  # once without the argument's name
        (["--eta", "0.5", "--sampler", "ddpm"], r"eta is an option of \[.ddim.\] only"),
        (["--guidance-scale", "-1"], "guidance_scale must be a number >= 0"),
        (["--steps", "3", "--shared-steps", "3"], r"shared_steps must be an int in 0..2 \(fewer than steps\), got 3"),
        (["--modality-pattern", "abc"], "modality_pattern must hold exactly one group"),
    ],
)
def test_option_errors_are_one_line_before_any_case_is_read(tmp_path, checkpoint, capsys, monkeypatch, option, message):
    for name in ("a", "b"):
        nifti(tmp_path / f"{name}.nii.gz")
    monkeypatch.setattr(predictor_module, "read_input", lambda *a, **k: pytest.fail("a case was read"))
    code = main(
        [
            "segment",
            "-i",
            str(tmp_path / "a.nii.gz"),
            str(tmp_path / "b.nii.gz"),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            str(checkpoint),
            "--quiet",
            *CLI_FAST,
            *option,
        ]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 1 and len(errors) == 1 and re.search(message, errors[0]), errors
    assert not (tmp_path / "out").exists()  # from an audit: a bad --modality-pattern left an empty output folder


def test_an_empty_input_path_is_an_error(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nifti(tmp_path / "here.nii.gz")
    assert main(["segment", "-i", "", "-o", "out", "--checkpoint", str(checkpoint), "--quiet", *CLI_FAST]) == 1
    assert "an input path is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="an input path is empty"):
        Predictor.from_checkpoint(checkpoint, device="cpu").predict_from_files("", tmp_path / "out2")


@pytest.mark.parametrize("output", ["", " "])
@pytest.mark.parametrize("command", ["segment", "demo"])
def test_an_empty_output_path_is_an_error_not_this_folder(tmp_path, checkpoint, capsys, monkeypatch, command, output):
    """``-o ''`` (a script's unset variable) wrote the case, its record and .medwidit/ into the current folder."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    nifti(here / "here.nii.gz")
    args = ["-i", "here.nii.gz", "--checkpoint", str(checkpoint)] if command == "segment" else []
    assert main([command, *args, "-o", output, "--quiet"]) == 1  # as -i '' is
    expected = f"-o/--output: the output folder is empty ({output!r}); give one ('.' for this folder)."
    assert capsys.readouterr().err.strip().endswith(expected)
    assert sorted(p.name for p in here.iterdir()) == ["here.nii.gz"]


def test_an_error_line_never_lands_on_the_progress_bar_line(tmp_path, checkpoint, capsys, monkeypatch):
    nifti(tmp_path / "a.nii.gz")

    def fails_mid_sampling(*args, progress=None, **kwargs):
        progress({"i": 0})  # one step shown, then the case fails
        raise RuntimeError("the network broke")

    monkeypatch.setattr(predictor_module, "sample_ensemble", fails_mid_sampling)
    assert (
        main(
            [
                "segment",
                "-i",
                str(tmp_path / "a.nii.gz"),
                "-o",
                str(tmp_path / "out"),
                "--checkpoint",
                str(checkpoint),
                "--steps",
                "4",
                "--samples",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "the network broke" in err
    assert not re.search(r"[^\r\n]medwidit: ", err), repr(err)  # every line of ours starts a (cleared) line


######################################################################################################################
# the Python API
######################################################################################################################


def test_segment_takes_a_seed(tmp_path, checkpoint):
    path = nifti(tmp_path / "a.nii.gz")
    one = medwidit.segment(path, checkpoint=checkpoint, device="cpu", seed=1, steps=2, num_samples=2)
    two = medwidit.segment(path, checkpoint=checkpoint, device="cpu", seed=2, steps=2, num_samples=2)
    again = Predictor.from_checkpoint(checkpoint, device="cpu").segment(
        path, generator=torch.Generator().manual_seed(1), steps=2, num_samples=2
    )
    np.testing.assert_array_equal(one.probability, again.probability)
    assert not np.array_equal(one.probability, two.probability)
    with pytest.raises(ValueError, match="seed= or generator="):
        medwidit.segment(path, checkpoint=checkpoint, seed=1, generator=torch.Generator())


def test_segment_takes_the_probability_smoothing_as_the_cli_does(tmp_path, checkpoint):
    """``medwidit.segment(..., probability_smoothing=s)`` builds the predictor with it (it is not a sampling option)."""
    path = nifti(tmp_path / "a.nii.gz")
    smoothed = medwidit.segment(
        path, checkpoint=checkpoint, device="cpu", steps=2, num_samples=2, probability_smoothing=1
    )
    again = Predictor.from_checkpoint(checkpoint, device="cpu", probability_smoothing=1).segment(
        path, steps=2, num_samples=2
    )
    plain = medwidit.segment(path, checkpoint=checkpoint, device="cpu", steps=2, num_samples=2)
    np.testing.assert_array_equal(smoothed.probability, again.probability)
    assert not np.array_equal(smoothed.probability, plain.probability)


def test_sampler_options_reach_the_sampler_and_defaults_are_unchanged(tmp_path, checkpoint, monkeypatch):
    path = nifti(tmp_path / "a.nii.gz")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    default = predictor.segment(path, steps=3, num_samples=2)
    explicit = predictor.segment(path, steps=3, num_samples=2, sampler="ddim", eta=0.0, guidance_scale=1.0)
    np.testing.assert_array_equal(default.probability, explicit.probability)
    assert not np.array_equal(default.probability, predictor.segment(path, steps=3, num_samples=2, eta=1.0).probability)
    seen = []
    sample = DiffusionSegmenter.sample

    def spy(self, *args, **kwargs):
        seen.append({k: kwargs[k] for k in ("sampler", "eta", "guidance_scale")})
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(DiffusionSegmenter, "sample", spy)
    assert (
        main(
            [
                "segment",
                "-i",
                str(path),
                "-o",
                str(tmp_path / "out"),
                "--checkpoint",
                str(checkpoint),
                "--quiet",
                *CLI_FAST,
                "--sampler",
                "ddpm",
                "--guidance-scale",
                "1.5",
            ]
        )
        == 0
    )
    assert seen == [{"sampler": "ddpm", "eta": 0.0, "guidance_scale": 1.5}]
