"""benchmarks/trust.py: its shifts are graded and keep the label a label, and its quick mode (the shipped bundle on a
cropped example, one step) writes every summary number, the per-case scores and both figures."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from benchmark_scripts import BENCHMARKS, load_benchmark, sphere_head

# the maps trust.py scores where the bundle localizes; the last two: the error score without and with its surface term
LOCALIZED_MAPS = {"total", "aleatoric", "epistemic", "disagreement", "total_and_disagreement", "error_score"}


@pytest.fixture(scope="module")
def trust():
    return load_benchmark("trust")


@pytest.mark.parametrize("family", ["thick", "fov", "contrast", "noise", "bias"])
def test_each_family_grows_with_its_strength_and_keeps_the_label(trust, family):
    image, label = sphere_head()
    clean = image / np.percentile(image, 99.5)
    change = []
    for level in (1, 2, 3):
        shifted, truth = trust.acquisition_shift(image, label, family, level, seed=0)
        assert shifted.shape == image.shape and shifted.dtype == np.float32 and set(np.unique(truth)) <= {0, 1}
        assert (truth == label).all() or family == "fov"  # only a cut field of view changes the truth
        change.append(float(np.abs(shifted - clean).mean()))
    assert change[0] < change[1] < change[2], change
    with pytest.raises(ValueError, match="unknown shift family"):
        trust.acquisition_shift(image, label, "blur", 1, seed=0)


def test_the_head_mask_fills_the_skull(trust):
    image, label = sphere_head()
    mask = trust.head_mask(image)
    assert mask[label == 1].all() and not mask[0, 0, 0]


def test_unset_sampling_options_are_the_bundles_as_the_cli_samples_it(trust):
    from medwidit.inference import Predictor
    from medwidit.inference.options import resolve_bundle, sampling_defaults

    predictor = Predictor.from_bundle(device="cpu")
    shipped = sampling_defaults(resolve_bundle())
    args = trust.parse_args([])
    trust.resolve_sampling(args, predictor)
    assert (args.steps, args.samples, args.shared_steps) == (
        shipped["steps"],
        shipped["num_samples"],
        shipped["shared_steps"],
    )
    args = trust.parse_args(["--steps", "7", "--samples", "3", "--shared-steps", "2"])
    trust.resolve_sampling(args, predictor)
    assert (args.steps, args.samples, args.shared_steps) == (7, 3, 2)  # given: kept


@pytest.mark.slow
def test_quick_mode_reports_every_ensemble_and_writes_the_figures(tmp_path):
    out = tmp_path / "trust.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "trust.py"), "--quick", "--shared-steps", "1", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"1x1", "1x2", "2x1", "2x2"} and len(report["cases"]) == 3  # the bundle's 2 sets
    for key, s in report["summary"].items():
        assert s["cost_ratio"] == s["weight_sets"] * s["views"] and key == f"{s['weight_sets']}x{s['views']}"
        assert s["cases"] == 3 and 0 <= s["expected_dice"]["mae"] <= 1
        assert (
            0 <= s["mae"] <= 1
            and math.isfinite(s["ece_mean"])
            and set(s["auroc_mean"]) == LOCALIZED_MAPS  # the bundle localizes
            and set(s["auroc_written_mean"]) == {"total_and_disagreement", "error_score"}
        )
        assert 0 <= s["calibrated_dice"]["mae"] <= 1  # the bundle's calibration, scored beside its own estimate
    for case in report["cases"]:
        for e in case["ensembles"].values():
            assert 0 <= e["true_dice"] <= 1 and 0 <= e["predicted_dice"] <= 1 and 0 <= e["calibrated_dice"] <= 1
            assert set(e["auroc"]) == LOCALIZED_MAPS
            assert set(e["auroc_written"]) == {"total_and_disagreement", "error_score"}
            assert e["volume_flag"] == (not 900 <= e["volume_ml"] <= 2200)  # the shipped bundle's expected volume
            assert e["boundary_overlap"] is None or 0 <= e["boundary_overlap"] <= 1  # None: no brain in the crop
            assert set(e["calibration_features"]) >= {"log_ensemble_dice", "log_kept", "volume_outside"}
    for s in report["summary"].values():  # the warning line's rule flags at least what the Dice estimate flags
        flags = sum(e["volume_flag"] for c in report["cases"] for k, e in c["ensembles"].items() if s is report[
            "summary"][k])  # fmt: skip
        assert s["with_volume"]["volume_flags"] == flags
        assert s["with_volume"]["flagged_of_those"] >= s["flagged_of_those"]
        assert s["with_volume"]["false_flags"] >= s["false_flags"]
    assert report["summary"]["1x1"]["auroc_mean"]["epistemic"] == 0.5  # one group: no epistemic part, no ranking
    assert report["summary"]["2x1"]["auroc_mean"]["epistemic"] != 0.5  # two sets of weights disagree somewhere
    assert len(report["weights_sha256"]) == 2
    # the bundle's localization pass ran first, as in Predictor.segment, and its brain is one more estimate
    assert report["config"]["localization"] == {
        "spacing": [4.0, 4.0, 4.0], "margin_mm": 6.0, "min_kept": 0.5, "warn_kept": 0.85,
    }  # fmt: skip
    for case in report["cases"]:
        assert 0 <= case["localization"]["kept"] <= 1 and isinstance(case["localization"]["applied"], bool)
        assert all(0 <= e["scale_dice"] <= 1 for e in case["ensembles"].values())
    assert all(0 <= s["scale_dice"]["mae"] <= 1 for s in report["summary"].values())
    assert (report["config"]["steps"], report["config"]["shared_steps"]) == (1, 0)  # one step: nothing to share
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("trust_reliability.png", "trust_dice.png"))
    again = tmp_path / "again.json"  # --rescore: the same members scored by the script again, no sampling
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "trust.py"), "--rescore", str(out), "--output", str(again)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rescored = json.loads(again.read_text())
    assert rescored["summary"] == report["summary"] and rescored["cases"] == report["cases"]
    assert rescored["rescored"]["from"] == str(out) and (tmp_path / "again_dice.png").is_file()


def test_bad_view_options_are_an_argparse_error_naming_the_flag_and_the_key(trust, capsys):
    assert trust.parse_args(["--view-options", '{"flip_axes": [0]}']).view_options == {"flip_axes": [0]}
    for text, message in (
        ('{"flip_axes": [4]}', "argument --view-options: augment_views: flip_axes must be distinct spatial axes"),
        ("{flip", "argument --view-options: not JSON"),
    ):
        with pytest.raises(SystemExit):
            trust.parse_args(["--view-options", text])
        assert message in capsys.readouterr().err


def test_trust_scores_the_labels_the_predictor_writes_with_probability_smoothing(trust):
    """trust.py rebuilds the predictor's path by hand: with a bundle's probability_smoothing its labels must be the
    smoothed ones the predictor writes (it scored the unsmoothed argmax: 0.9446 against 0.9515 on this crop)."""
    import argparse

    import nibabel as nib
    import torch

    from medwidit.data.example import example_case
    from medwidit.inference import Predictor
    from medwidit.inference.metrics import dice_per_class

    example = example_case()
    box = (slice(0, 48), slice(20, 68), slice(30, 78))  # a corner of the 2 mm example the brain's edge runs through
    image_file = nib.load(example["image"])
    image = np.asarray(image_file.dataobj, dtype=np.float32)[box]
    truth = (np.asarray(nib.load(example["label"]).dataobj)[box] > 0).astype(np.int64)
    scores = []
    for sigma in (0.0, 1.5):
        predictor = Predictor.from_bundle(device="cpu", weight_sets=1, localization=None, probability_smoothing=sigma)
        args = argparse.Namespace(steps=1, samples=1, shared_steps=0, views=1)
        case = ("crop", image, truth, image_file.affine, np.ones(truth.shape, dtype=bool))
        scored = trust.evaluate(predictor, case, args)["ensembles"]["1x1"]["true_dice"]
        written = predictor.segment(image, affine=image_file.affine, steps=1, num_samples=1, weight_sets=1)
        labels = torch.from_numpy(written.probability.argmax(0))
        dice = float(dice_per_class(labels[None, None], torch.from_numpy(truth)[None, None], 2)[0, 1])
        assert scored == pytest.approx(dice, abs=1e-6)
        scores.append(scored)
    assert scores[0] != scores[1]  # the smoothing changes the labels on this crop


def test_trust_cuts_with_the_atlas_prior_as_the_predictor_does_on_a_grid_other_than_the_models(trust):
    """With the atlas prior and no localization pass, trust.py left the prior on the input grid: on a 1 mm case its
    mask did not match the 2 mm members (a shape error), and on another orientation it would have cut the wrong side.
    Its labels, Dice and the prior's share must be the predictor's."""
    import argparse

    import nibabel as nib
    import torch

    from medwidit.data.example import example_case
    from medwidit.inference import Predictor
    from medwidit.inference.metrics import dice_per_class

    example = example_case()
    box = (slice(0, 56), slice(24, 80), slice(20, 76))
    image = np.asarray(nib.load(example["image"]).dataobj, dtype=np.float32)[box]
    truth = (np.asarray(nib.load(example["label"]).dataobj)[box] > 0).astype(np.int64)
    image, truth = (np.repeat(np.repeat(np.repeat(a, 2, 0), 2, 1), 2, 2)[::-1] for a in (image, truth))
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # 1 mm, the first axis flipped: LAS
    predictor = Predictor.from_bundle(device="cpu", weight_sets=1, localization=None)
    assert predictor.atlas_prior is not None
    args = argparse.Namespace(steps=1, samples=1, shared_steps=0, views=1)
    case = ("crop", np.ascontiguousarray(image), np.ascontiguousarray(truth), affine, np.ones(truth.shape, bool))
    scored = trust.evaluate(predictor, case, args)
    written = predictor.segment(case[1], affine=affine, steps=1, num_samples=1, weight_sets=1)
    dice = dice_per_class(torch.from_numpy(written.probability.argmax(0))[None, None],
                          torch.from_numpy(case[2])[None, None], 2)  # fmt: skip
    assert scored["ensembles"]["1x1"]["true_dice"] == pytest.approx(float(dice[0, 1]), abs=1e-6)
    assert written.quality["atlas_prior"]["kept"] is not None  # registered
    assert scored["atlas_prior"] == pytest.approx(written.quality["atlas_prior"])
    assert scored["ensembles"]["1x1"]["template_dice"] == pytest.approx(written.quality["atlas_prior"]["template_dice"])


def test_trust_segments_a_case_whose_template_does_not_register_as_the_predictor_does(trust, monkeypatch):
    """Without a localization pass, a failed registration left trust.py's pre-processing waiting for a region label
    that was never given (MONAI's KeyError inside Orientationd): each case's pre-processing now resamples a region
    only where one was given, as the predictor's does."""
    import argparse

    import nibabel as nib

    from medwidit.data.example import example_case
    from medwidit.inference import Predictor

    example = example_case()
    box = (slice(0, 40), slice(30, 70), slice(30, 70))
    image = np.asarray(nib.load(example["image"]).dataobj, dtype=np.float32)[box]
    truth = (np.asarray(nib.load(example["label"]).dataobj)[box] > 0).astype(np.int64)
    predictor = Predictor.from_bundle(device="cpu", weight_sets=1, localization=None)
    monkeypatch.setattr(predictor, "register_prior", lambda array, affine, name=None: (None, True))
    args = argparse.Namespace(steps=1, samples=1, shared_steps=0, views=1)
    case = ("crop", image, truth, nib.load(example["image"]).affine, np.ones(truth.shape, bool))
    scored = trust.evaluate(predictor, case, args)
    assert scored["atlas_prior"] == {
        "margin_mm": 2.0, "min_kept": 0.5, "kept": None, "template_dice": None, "applied": False, "core_mm": 1.0,
        "core_filled": None, "warn_filled": 0.25, "kept_margin_mm": 5.0, "guard_kept": None,
        "template_information": None, "warn_information": 0.149,
    }  # fmt: skip
    assert trust._kept_flag(scored)  # the warning line names it


def test_no_atlas_prior_builds_the_predictor_the_cli_builds_without_the_calibration_that_reads_it(trust):
    """``trust.py --no-atlas-prior`` set the predictor's prior to None after ``from_bundle``: it kept the bundle's
    calibration (then skipped case by case) and its warn_dice 0.84, so the summary judged the ensemble's own estimate
    at the calibration's threshold. It now builds what ``medwidit segment --no-atlas-prior`` builds."""
    from medwidit.inference.calibration import ENSEMBLE_WARN_DICE

    off = trust.build_predictor(trust.parse_args(["--no-atlas-prior", "--no-localize"]))
    assert off.atlas_prior is None and off.localization is None
    assert off.quality_calibration is None and off.warn_dice == ENSEMBLE_WARN_DICE
    on = trust.build_predictor(trust.parse_args([]))
    assert on.atlas_prior is not None and "log_atlas_dice" in on.quality_calibration["weights"]


def test_rescoring_a_missing_record_is_one_line(trust, tmp_path):
    """``--rescore`` of a path that is not there was a FileNotFoundError traceback."""
    with pytest.raises(SystemExit, match=r"--rescore .*none.json: no such file"):
        trust.main(["--rescore", str(tmp_path / "none.json"), "--output", str(tmp_path / "out.json")])
