"""Several sets of independently trained weights in one ensemble (issue 13): each samples every view as its own
groups, the first weights' members are exactly the run with them alone, the epistemic map is where the weights
disagree; the predictor, a bundle's ``extra_weights``, the CLI's ``--weight-sets`` and their errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from inference_volumes import ThresholdOracle, random_tiny_segmenter, save_nifti

from medwidit.cli import main
from medwidit.diffusion import DiffusionSegmenter, save_segmenter
from medwidit.inference import InputError, Predictor, sample_ensemble
from medwidit.inference.options import bundle_extra_weights
from medwidit.inference.trust import View

PREPROCESSING = {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "none"}
FAST = {"steps": 2, "num_samples": 2}


class LowThresholdOracle(ThresholdOracle):
    """Another "training" of the oracle: it calls foreground from 0.3 on, not 0.5."""

    def forward(self, x, t, conditioned=None):
        return super().forward(x, t, conditioned + 0.2)


def _ball(shape=(20, 16, 12)) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    distance = np.sqrt(sum((g - n / 2) ** 2 for g, n in zip(grid, shape, strict=True)))
    return np.clip(1.5 - distance / 5.0, 0, 1).astype(np.float32)


def test_two_weights_disagree_exactly_where_their_answers_differ():
    first, second = (DiffusionSegmenter(net(), num_classes=2) for net in (ThresholdOracle, LowThresholdOracle))
    image = torch.from_numpy(_ball())[None, None]
    out = sample_ensemble([first, second], image, steps=2, num_samples=2, roi_size=(8, 8, 8), return_members=True,
                          views=[View(), View(flip_axes=(1,))])  # fmt: skip
    members = out["members"]
    assert members.shape == (8, 1, 2, *image.shape[2:])  # 2 weights x 2 views x 2 samples, weights-major
    labels = members.argmax(dim=2)
    assert all(torch.equal(labels[i], labels[0]) for i in range(4))
    assert all(torch.equal(labels[i], labels[4]) for i in range(4, 8))
    ball = image[0, 0]
    between = (ball > 0.3) & (ball < 0.5)  # the first says background, the second foreground
    clear = ((ball - 0.3).abs() > 1e-3) & ((ball - 0.5).abs() > 1e-3)  # not on either threshold (a tie there)
    assert torch.equal((labels[0, 0] != labels[4, 0])[clear], between[clear]) and between.any()
    epistemic = out["epistemic"][0, 0]
    deep = (ball > 0.35) & (ball < 0.45)  # both oracles sure (tanh saturated), and of different answers
    assert deep.any() and float(epistemic[deep].min()) > 0.6  # close to log 2 = 0.69
    assert float(epistemic[between].min()) > 0.3
    far = (ball < 0.2) | (ball > 0.6)  # both oracles sure (saturated) of the same answer
    assert float(epistemic[far].max()) < 1e-5
    assert float(out["estimated_dice"][0, 1]) < 1.0


def test_the_first_weights_members_are_the_run_with_them_alone():
    image = torch.randn(1, 1, 16, 12, 8, generator=torch.Generator().manual_seed(3))
    first, second = random_tiny_segmenter(seed=0), random_tiny_segmenter(seed=1)
    options = {"steps": 2, "num_samples": 2, "roi_size": (8, 8, 8), "return_members": True}
    alone = sample_ensemble(first, image, generator=torch.Generator().manual_seed(5), **options)
    both = sample_ensemble([first, second], image, generator=torch.Generator().manual_seed(5), **options)
    assert torch.equal(both["members"][:2], alone["members"])
    assert both["members"].shape[0] == 4 and float(both["epistemic"].max()) > 0
    torch.testing.assert_close(both["aleatoric"] + both["epistemic"], both["entropy"])
    with pytest.raises(ValueError, match="same classes, got \\[2, 3\\]"):
        sample_ensemble([first, random_tiny_segmenter(classes=3)], image, steps=1, num_samples=1, roi_size=8)
    with pytest.raises(ValueError, match="non-empty sequence"):
        sample_ensemble([], image, steps=1, num_samples=1, roi_size=8)


def test_the_predictor_samples_the_weight_sets_asked_for_and_names_what_does_not_fit(tmp_path):
    first, second = (DiffusionSegmenter(net(), num_classes=2) for net in (ThresholdOracle, LowThresholdOracle))
    predictor = Predictor(first, extra_segmenters=[second], device="cpu", roi_size=8, preprocessing=PREPROCESSING)
    source = save_nifti(tmp_path / "scan.nii.gz", _ball())
    one, two = (predictor.segment(source, weight_sets=n, **FAST) for n in (1, 2))
    assert one.quality["weight_sets"] == 1 and two.quality["weight_sets"] == 2
    assert float(one.epistemic.max()) < 1e-6 < float(two.epistemic.max())
    assert two.quality["predicted_dice"]["1"] < one.quality["predicted_dice"]["1"] == 1.0
    too_many = r"weight_sets must be an int in 1..2 \(this predictor holds 2 set\(s\) of weights; "
    with pytest.raises(ValueError, match=too_many):
        predictor.segment(source, weight_sets=3, **FAST)
    with pytest.raises(ValueError, match="weight_sets"):
        predictor.predict_from_files(source, tmp_path / "out", weight_sets=0, progress=False, **FAST)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ValueError, match=r"extra_segmenters\[0\] has classes 3 where .* has 2"):
        Predictor(first, extra_segmenters=[random_tiny_segmenter(classes=3)], device="cpu", roi_size=8)
    with pytest.raises(TypeError, match=r"extra_segmenters\[0\] must be a DiffusionSegmenter"):
        Predictor(first, extra_segmenters=[ThresholdOracle()], device="cpu", roi_size=8)


def test_extra_checkpoints_must_share_the_preprocessing(tmp_path):
    paths = [tmp_path / f"{name}.pt" for name in ("a", "b", "c")]
    save_segmenter(random_tiny_segmenter(seed=0), paths[0], extra_config={"preprocessing": PREPROCESSING})
    save_segmenter(random_tiny_segmenter(seed=1), paths[1], extra_config={"preprocessing": PREPROCESSING})
    other = {**PREPROCESSING, "spacing": [2.0, 2.0, 2.0]}
    save_segmenter(random_tiny_segmenter(seed=2), paths[2], extra_config={"preprocessing": other})
    predictor = Predictor.from_checkpoint(paths[0], extra_checkpoints=[paths[1]], device="cpu", roi_size=8)
    assert len(predictor.segmenters) == 2 and predictor.extra_weight_files == [paths[1]]
    with pytest.raises(InputError, match=r"c\.pt: its preprocessing differs from .*a\.pt's in spacing"):
        Predictor.from_checkpoint(paths[0], extra_checkpoints=[paths[2]], device="cpu")
    with pytest.raises(InputError, match=r"missing\.pt: no such checkpoint file"):
        Predictor.from_checkpoint(paths[0], extra_checkpoints=[tmp_path / "missing.pt"], device="cpu")


@pytest.fixture
def bundle_with_extra(tmp_path):
    """The shipped bundle's layout with a second set of weights (its own weights under another name)."""
    from medwidit.inference.options import resolve_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(resolve_bundle(), bundle, ignore=shutil.ignore_patterns("eval", "runs"))
    shutil.copy(bundle / "models" / "model.pt", bundle / "models" / "model_second.pt")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["extra_weights"] = ["models/model_second.pt"]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    return bundle


def test_a_bundle_declares_its_extra_weights_in_inference_json(bundle_with_extra):
    predictor = Predictor.from_bundle(bundle_with_extra, device="cpu")
    assert len(predictor.segmenters) == 2
    assert predictor.extra_weight_files == [bundle_with_extra / "models" / "model_second.pt"]
    inference = bundle_with_extra / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    for bad, message in ((["models/none.pt"], "none.pt, which does not exist"),
                         ("models/model_second.pt", "must be a list of files relative to the bundle"),
                         (["/abs/model.pt"], "must be a list of files relative to the bundle")):  # fmt: skip
        inference.write_text(json.dumps({**config, "extra_weights": bad}))
        with pytest.raises(InputError, match=message):
            bundle_extra_weights(bundle_with_extra)
    inference.write_text(json.dumps({k: v for k, v in config.items() if k != "extra_weights"}))
    assert bundle_extra_weights(bundle_with_extra) == []
    inference.write_text(json.dumps({**config, "weight_sets": 3}))
    with pytest.raises(InputError, match=r"inference.json: weight_sets is 3 but there are 2 set\(s\) of weights"):
        Predictor.from_bundle(bundle_with_extra, device="cpu")
    inference.write_text(json.dumps({**config, "weight_sets": 2}))
    assert len(Predictor.from_bundle(bundle_with_extra, device="cpu").select_weights(None)) == 2


def test_the_cli_samples_two_weight_sets_and_records_both_files(tmp_path, bundle_with_extra, capsys):
    from medwidit.utils.files import sha256_file

    source = save_nifti(tmp_path / "scan.nii.gz", _ball((24, 24, 24)))
    base = ["segment", "-i", str(source), "--bundle", str(bundle_with_extra), "--steps", "1", "--samples", "1",
            "--quiet", "--device", "cpu", "--save-quality", "--warn-dice", "0"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "a"), "--weight-sets", "2"]) == 0
    quality = json.loads((tmp_path / "a" / "scan_quality.json").read_text())
    assert quality["weight_sets"] == 2
    record = json.loads((tmp_path / "a" / "medwidit_run.json").read_text())
    second = bundle_with_extra / "models" / "model_second.pt"
    assert record["extra_weights"] == [{"weights": str(second.resolve()), "sha256": sha256_file(second)}]
    assert record["arguments"]["weight_sets"] == 2
    assert main([*base, "-o", str(tmp_path / "b"), "--weight-sets", "3"]) != 0
    assert "weight_sets is 3 but there are 2 set(s) of weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "-o", str(tmp_path / "c"), "--weight-sets", "0"])
    assert "expected" in capsys.readouterr().err


def test_export_into_a_bundle_with_other_weight_sets_says_they_will_be_ensembled(bundle_with_extra, caplog):
    """``medwidit export`` replaces models/model.pt only; a bundle that samples its extra_weights by default would
    ensemble the new weights with ones trained apart from them, and the command says so."""
    import logging

    from medwidit.cli import _warn_other_weight_sets

    inference = bundle_with_extra / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    inference.write_text(json.dumps({**config, "weight_sets": 2}))
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        _warn_other_weight_sets(bundle_with_extra)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "also samples models/model_second.pt by default (weight_sets 2)" in warning
    caplog.clear()
    inference.write_text(json.dumps({**config, "weight_sets": 1}))
    _warn_other_weight_sets(bundle_with_extra)
    assert not caplog.records


def test_a_second_set_that_does_not_fit_is_left_unloaded_when_one_set_is_asked_for(bundle_with_extra, tmp_path, capsys):
    """After exporting weights of another preprocessing into a bundle, ``weight_sets`` 1 (argument, flag or
    inference.json) still runs it: only the sets asked for are loaded and checked; the default names the file."""
    other = {**PREPROCESSING, "spacing": [3.0, 3.0, 3.0]}
    save_segmenter(random_tiny_segmenter(), bundle_with_extra / "models" / "model_second.pt",
                   extra_config={"preprocessing": other})  # fmt: skip
    with pytest.raises(InputError, match=r"model_second\.pt: its preprocessing differs from .*model\.pt's"):
        Predictor.from_bundle(bundle_with_extra, device="cpu", weight_sets=2)
    predictor = Predictor.from_bundle(bundle_with_extra, device="cpu", weight_sets=1)
    assert len(predictor.segmenters) == 1 and predictor.sampling_defaults["weight_sets"] == 1
    source = save_nifti(tmp_path / "scan.nii.gz", _ball((24, 24, 24)))
    base = ["segment", "-i", str(source), "--bundle", str(bundle_with_extra), "--steps", "1", "--samples", "1",
            "--quiet", "--device", "cpu", "--warn-dice", "0"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "one"), "--weight-sets", "1"]) == 0
    assert main([*base, "-o", str(tmp_path / "two"), "--weight-sets", "2"]) != 0
    assert "model_second.pt: its preprocessing differs" in capsys.readouterr().err
    with pytest.raises(InputError, match="weight_sets is 3 but there are 2 set"):
        Predictor.from_bundle(bundle_with_extra, device="cpu", weight_sets=3)


def test_an_unrelated_error_is_not_blamed_on_the_extra_weights(bundle_with_extra):
    with pytest.raises(ValueError) as failure:
        Predictor.from_bundle(bundle_with_extra, device="cpu", weight_sets=2, sw_batch_size=0)
    assert "model_second" not in str(failure.value) and "sw_batch_size" in str(failure.value)


def test_a_bundle_whose_further_weights_are_missing_runs_with_one_set_and_the_cli_names_inference_json(
    tmp_path, bundle_with_extra, capsys
):
    """From a review: export's warning says 'set weight_sets to 1 in inference.json, or add that file', but a
    missing extra file was refused whatever weight_sets said; and the CLI, which passed the bundle's own weight_sets
    on as if typed, named no file in its refusal."""
    inference = bundle_with_extra / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    (bundle_with_extra / "models" / "model_second.pt").unlink()
    inference.write_text(json.dumps({**config, "weight_sets": 1}))
    assert len(Predictor.from_bundle(bundle_with_extra, device="cpu").segmenters) == 1
    with pytest.raises(InputError, match="model_second.pt, which does not exist"):
        Predictor.from_bundle(bundle_with_extra, device="cpu", weight_sets=2)
    inference.write_text(json.dumps({**config, "extra_weights": [], "weight_sets": 2}))
    source = save_nifti(tmp_path / "scan.nii.gz", _ball((24, 24, 24)))
    args = ["segment", "-i", str(source), "-o", str(tmp_path / "out"), "--bundle", str(bundle_with_extra), "--quiet"]
    assert main([*args, "--device", "cpu"]) != 0
    assert "configs/inference.json: weight_sets is 2 but there are 1 set(s) of weights" in capsys.readouterr().err
