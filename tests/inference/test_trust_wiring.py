"""Test-time views through sample_ensemble, Predictor.segment and the files: exact inversion, the identity view is the
run without views, the decomposed maps and the quality estimate on disk and on the result, the low-Dice warning."""

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from inference_volumes import oblique_affine, random_tiny_segmenter, save_nifti

from medwidit.cli import main
from medwidit.diffusion import DiffusionSegmenter, save_segmenter
from medwidit.inference import Predictor, sample_ensemble
from medwidit.inference.trust import View

PREPROCESSING = {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "none"}
FAST = {"steps": 2, "num_samples": 2}


class ThresholdOracle(nn.Module):
    """Predicts x0 = the encoding of (image > 0.5) exactly, whatever the noise: every member is the same map."""

    spatial_dim, cond_channels, size_multiple, alignment = 3, 1, (1, 1, 1), (1, 1, 1)  # the network contract

    def forward(self, x, t, conditioned=None):
        foreground = torch.tanh(50 * (conditioned - 0.5))
        return torch.cat([-foreground, foreground], dim=1)


def _ball(shape=(20, 16, 12)) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    distance = np.sqrt(sum((g - n / 2) ** 2 for g, n in zip(grid, shape, strict=True)))
    return np.clip(1.5 - distance / 5.0, 0, 1).astype(np.float32)  # smooth edge at 0.5 (d = 5 voxels)


def test_flips_and_shifts_are_undone_exactly_so_an_equivariant_model_has_no_epistemic_part():
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    image = torch.from_numpy(_ball())[None, None]
    views = [View(), View(flip_axes=(0, 2), shift=(1, 2, 3)), View(flip_axes=(1,)), View(shift=(3, 0, 1))]
    out = sample_ensemble(segmenter, image, steps=2, num_samples=2, roi_size=(8, 8, 8), views=views,
                          return_members=True)  # fmt: skip
    members = out["members"]
    assert members.shape == (8, 1, 2, *image.shape[2:])
    for m in members[1:]:
        assert torch.equal(m, members[0])
    torch.testing.assert_close(out["epistemic"], torch.zeros_like(out["epistemic"]), atol=1e-6, rtol=0)  # rounding
    torch.testing.assert_close(out["aleatoric"], out["entropy"])
    torch.testing.assert_close(out["estimated_dice"], torch.ones(1, 2))


def test_an_intensity_curve_moves_the_oracle_boundary_and_only_there_is_the_model_unsure():
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    image = torch.from_numpy(_ball())[None, None]
    views = [View(), View(gamma=0.6), View(gamma=1.6)]
    out = sample_ensemble(segmenter, image, steps=2, num_samples=2, roi_size=(8, 8, 8), views=views)
    epistemic, aleatoric = out["epistemic"][0, 0], out["aleatoric"][0, 0]
    ball = image[0, 0]
    assert float(aleatoric[(ball == 0) | (ball == 1)].max()) < 1e-6  # away from the edge every member is sure
    unsure = epistemic > 0.1
    assert unsure.any() and ((ball[unsure] > 0.2) & (ball[unsure] < 0.8)).all()  # only near the 0.5 edge
    assert float(epistemic[ball == 0].max()) < 1e-6 and float(epistemic[ball == 1].max()) < 1e-6
    assert float(out["estimated_dice"][0, 1]) < 1.0


def test_the_identity_view_is_exactly_the_run_without_views():
    segmenter = random_tiny_segmenter()
    image = torch.randn(1, 1, 16, 12, 8, generator=torch.Generator().manual_seed(3))
    options = {"steps": 2, "num_samples": 2, "roi_size": (8, 8, 8), "return_members": True}
    plain = sample_ensemble(segmenter, image, generator=torch.Generator().manual_seed(5), **options)
    views = [View(), View(flip_axes=(0,), gamma=1.3, shift=(1, 0, 2))]
    viewed = sample_ensemble(segmenter, image, generator=torch.Generator().manual_seed(5), views=views, **options)
    assert torch.equal(viewed["members"][:2], plain["members"])
    assert not torch.equal(viewed["members"][2:], plain["members"])
    assert torch.equal(plain["epistemic"], torch.zeros_like(plain["epistemic"]))
    assert float(viewed["epistemic"].max()) > 0
    torch.testing.assert_close(viewed["aleatoric"] + viewed["epistemic"], viewed["entropy"])
    with pytest.raises(ValueError, match="views must hold at least one View"):
        sample_ensemble(segmenter, image, steps=1, num_samples=1, roi_size=(8, 8, 8), views=[])


def test_a_shifted_view_samples_the_scans_own_grid_where_its_far_faces_are_air(monkeypatch):
    """``sample_ensemble`` fits each view to the scan (``trust.fit_view``): with air at the far faces a shift rolls
    the grid, so the network sees grids of the scan's size (no extra windows), and a voxel-wise network's result is
    the padded view's, exactly (the roll's direction itself: test_trust.py)."""
    from inference_volumes import ThresholdOracle

    import medwidit.inference.sliding as sliding

    image = torch.zeros(1, 1, 12, 10, 8)
    image[:, :, 2:8, 3:7, 1:5] = 1.0
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    shapes = []

    def record(denoiser):
        def model_fn(x, t, cond, **kw):
            shapes.append(tuple(x.shape[2:]))
            return denoiser(x, t, cond, **kw)

        return model_fn

    views = [View(), View(shift=(2, 2, 2))]
    options = {"steps": 2, "num_samples": 1, "roi_size": (8, 8, 8), "views": views, "wrap_model_fn": record}
    rolled = sample_ensemble(segmenter, image, generator=torch.Generator().manual_seed(0), **options)
    assert set(shapes) == {(12, 10, 8)}
    shapes.clear()
    monkeypatch.setattr(sliding, "fit_view", lambda image, view: view)  # padding, as before views were fitted
    padded = sample_ensemble(segmenter, image, generator=torch.Generator().manual_seed(0), **options)
    assert set(shapes) == {(12, 10, 8), (14, 12, 10)}
    assert torch.equal(rolled["mean_probability"], padded["mean_probability"])
    assert rolled["mean_probability"][0, 1, 4, 5, 2] > 0.99 and rolled["mean_probability"][0, 1, 0, 0, 0] < 0.01


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_segmenter(random_tiny_segmenter(), path, extra_config={"preprocessing": PREPROCESSING, "roi_size": [8] * 3})
    return path


def test_files_hold_the_decomposed_maps_and_the_quality_of_the_result(tmp_path, checkpoint, caplog):
    source = save_nifti(tmp_path / "scan.nii.gz", _ball())
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        (result,) = predictor.predict_from_files(
            source, tmp_path / "out", save_uncertainty=True, save_quality=True, progress=False, augment=2,
            warn_dice=1.0, **FAST,
        )  # fmt: skip
    names = [p.name for p in result.outputs]
    assert names == ["scan.nii.gz", "scan_uncertainty.nii.gz", "scan_aleatoric.nii.gz", "scan_epistemic.nii.gz",
                     "scan_disagreement.nii.gz", "scan_error_score.nii.gz", "scan_quality.json"]  # fmt: skip
    maps = {k: np.asarray(nib.load(tmp_path / "out" / f"scan_{k}.nii.gz").dataobj)
            for k in ("uncertainty", "aleatoric", "epistemic")}  # fmt: skip
    assert all(m.shape == _ball().shape and m.dtype == np.float32 for m in maps.values())
    np.testing.assert_allclose(maps["aleatoric"] + maps["epistemic"], maps["uncertainty"], atol=1e-5)
    assert maps["epistemic"].max() > 0
    quality = json.loads((tmp_path / "out" / "scan_quality.json").read_text())
    assert quality == result.quality and quality["views"] == 2 and quality["samples_per_view"] == 2
    segmentation = predictor.segment(source, augment=2, **FAST)
    # the Python API returns the same dict, its warnings judged at the predictor's own threshold (the run's was 1.0)
    assert {k: v for k, v in segmentation.quality.items() if k != "warnings"} == {
        k: v for k, v in quality.items() if k != "warnings"
    }
    assert quality["warnings"][0].startswith("predicted Dice below 1.00 (class 1 ")
    assert segmentation.quality["warnings"][0].startswith("predicted Dice below 0.955 (class 1 ")
    voxel_ml = abs(np.linalg.det(oblique_affine()[:3, :3])) / 1000
    assert sum(quality["volume_ml"].values()) == pytest.approx(_ball().size * voxel_ml)
    assert quality["volume_ml"]["1"] == pytest.approx(int(segmentation.label_map.sum()) * voxel_ml)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("scan: predicted Dice below 1.00 (class 1 ")


def test_the_cli_options_and_a_quiet_case(tmp_path, checkpoint, capsys):
    source = save_nifti(tmp_path / "scan.nii.gz", _ball())
    base = ["segment", "-i", str(source), "--checkpoint", str(checkpoint), "--steps", "1", "--samples", "1",
            "--quiet", "--device", "cpu"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "a"), "--save-quality", "--warn-dice", "0"]) == 0
    assert capsys.readouterr().err == ""  # 0 never warns
    assert (tmp_path / "a" / "scan_quality.json").is_file() and not (tmp_path / "a" / "scan_epistemic.nii.gz").exists()
    assert main([*base, "-o", str(tmp_path / "b"), "--augment", "2", "--warn-dice", "1"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medwidit: warning: scan: predicted Dice below 1.00")
    for bad in (["--augment", "0"], ["--warn-dice", "1.5"]):
        with pytest.raises(SystemExit):
            main([*base, "-o", str(tmp_path / "c"), *bad])
        assert "expected" in capsys.readouterr().err


def test_a_case_where_nothing_is_found_is_warned_about_though_every_member_agrees(tmp_path, caplog):
    source = save_nifti(
        tmp_path / "empty.nii.gz", np.linspace(0, 0.4, 960, dtype=np.float32).reshape(12, 10, 8)
    )  # below 0.5
    predictor = Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=2), device="cpu", roi_size=8,
                          preprocessing=PREPROCESSING)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        (result,) = predictor.predict_from_files(source, tmp_path / "out", progress=False, **FAST)
    assert result.quality["predicted_dice"]["1"] == 1.0 and result.quality["empty_classes"] == [1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["empty: no voxel of class 1: check this case before using it."]
    caplog.clear()
    predictor.predict_from_files(source, tmp_path / "quiet", progress=False, warn_dice=None, **FAST)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_the_predictor_samples_the_views_its_options_allow(tmp_path, checkpoint, monkeypatch):
    """``view_options`` (a bundle's ``augment_views``) reach the views ``segment(augment=N)`` samples: only left-right
    flips, from the second view on, and gammas in the range; a bundle declaring them hands them to its predictor, and
    a bad one is an error naming its inference.json."""
    import medwidit.inference.predictor as predictor_module
    from medwidit.inference import InputError

    seen = []

    def recording(*args, views=None, **kwargs):
        seen.append(views)
        return sample_ensemble(*args, views=views, **kwargs)

    monkeypatch.setattr(predictor_module, "sample_ensemble", recording)
    source = save_nifti(tmp_path / "scan.nii.gz", _ball())
    options = {"flip_axes": [0], "gamma_range": [1.0, 1.35]}
    Predictor.from_checkpoint(checkpoint, device="cpu", view_options=options).segment(source, augment=4, **FAST)
    assert [v.flip_axes for v in seen[0]] == [(), (0,), (), (0,)] and all(1 <= v.gamma <= 1.35 for v in seen[0])
    Predictor.from_checkpoint(checkpoint, device="cpu").segment(source, augment=4, **FAST)
    assert any(set(v.flip_axes) - {0} for v in seen[1])  # without options: any axis may flip
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "models" / "model.pt").write_bytes(checkpoint.read_bytes())
    (bundle / "configs" / "inference.json").write_text(json.dumps({"augment_views": options}))
    assert Predictor.from_bundle(bundle, device="cpu").view_options == options
    assert Predictor.from_bundle(bundle, device="cpu", view_options={}).view_options == {}  # the caller's win
    (bundle / "configs" / "inference.json").write_text(json.dumps({"augment_views": options, "augment": 2}))
    cli = ["--steps", "1", "--samples", "1", "--quiet", "--device", "cpu"]  # --augment: the bundle's 2
    assert main(["segment", "-i", str(source), "-o", str(tmp_path / "out"), "--bundle", str(bundle), *cli]) == 0
    record = json.loads((tmp_path / "out" / "medwidit_run.json").read_text())["sampling"]
    assert (record["augment"], record["view_options"]) == (2, options)
    assert [v.flip_axes for v in seen[-1]] == [(), (0,)]  # the views the bundle allows
    (bundle / "configs" / "inference.json").write_text(json.dumps({"augment_views": {"flip_axes": [5]}}))
    with pytest.raises(InputError, match=r"inference.json: augment_views: flip_axes must be distinct spatial axes"):
        Predictor.from_bundle(bundle, device="cpu")
    with pytest.raises(ValueError, match=r"view_options: gamma_range must be \[low, high\]"):
        Predictor.from_checkpoint(checkpoint, device="cpu", view_options={"gamma_range": [2, 1]})


def test_a_single_member_says_its_dice_is_no_estimate(tmp_path, caplog):
    """From a review: one member agrees with itself, so its predicted Dice was 1.0 whatever the case, and the Dice
    warning could never fire (a model at 0.687 of 0.693 nats of mean entropy passed silently). Its line says there is
    no estimate; two members say nothing of it."""
    source = save_nifti(tmp_path / "ball.nii.gz", _ball())
    predictor = Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=2), device="cpu", roi_size=8,
                          preprocessing=PREPROCESSING)  # fmt: skip
    lines = {}
    for samples in (1, 2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medwidit"):
            predictor.predict_from_files(source, tmp_path / f"out{samples}", progress=False, steps=2,
                                         num_samples=samples)  # fmt: skip
        lines[samples] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines[2] == []
    assert lines[1] == [
        "ball: one member (one sample of one set of weights): no estimate of the Dice: check this case before using it."
    ]
