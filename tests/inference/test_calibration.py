"""The calibrated per-case Dice estimate: its settings, its features from a quality report, the least-squares fit,
and the predictor, the bundle and the CLI's warning line using it."""

import json
import logging
import math

import nibabel as nib
import numpy as np
import pytest
from inference_volumes import ThresholdOracle, save_nifti

from medwidit.diffusion import DiffusionSegmenter
from medwidit.inference import InputError, Predictor
from medwidit.inference.calibration import (
    BOUNDARY_KNEE,
    FEATURE_SIGNS,
    FEATURES,
    PRODUCT_RULE,
    apply_calibration,
    calibrated_dice,
    case_features,
    check_calibration,
    check_warn_dice,
    fit_calibration,
)
from medwidit.inference.predictor import DEFAULT_WARN_DICE
from medwidit.inference.trust import boundary_overlap

PREPROCESSING = {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "intensity": "none"}
FAST = {"steps": 2, "num_samples": 2}


def _quality(
    predicted=0.97, volume=1000.0, kept=0.6, epistemic=0.02, total=0.1, expected=(900.0, 2200.0), overlap=None
):
    return {
        "boundary_overlap": {} if overlap is None else {"1": overlap},
        "predicted_dice": {"0": 0.99, "1": predicted},
        "min_predicted_dice": predicted,
        "volume_ml": {"0": 5000.0, "1": volume},
        "expected_volume_ml": {} if expected is None else {"1": list(expected)},
        "uncertainty": {
            "total": {"mean_foreground_nats": total, "mean_volume_nats": 0.01},
            "epistemic": {"mean_foreground_nats": epistemic, "mean_volume_nats": 0.001},
        },
        "localization": None if kept is None else {"kept": kept, "applied": True},
    }


def test_a_boundary_the_image_does_not_show_lowers_the_feature_past_the_knee():
    """0 while the outside shell differs from the inside as much as at an edge (up to the knee, 0.8), then the log of
    how much less of it differs; a class without a boundary (None) is no evidence."""
    assert case_features(_quality(overlap=0.4), 1)["log_boundary"] == 0.0
    assert case_features(_quality(overlap=BOUNDARY_KNEE), 1)["log_boundary"] == pytest.approx(0.0)
    assert case_features(_quality(overlap=0.9), 1)["log_boundary"] == pytest.approx(math.log(0.1 / 0.2))
    assert case_features(_quality(overlap=1.0), 1)["log_boundary"] == pytest.approx(math.log(1e-3 / 0.2))  # finite
    assert case_features(_quality(overlap=None), 1)["log_boundary"] == 0.0
    quality = _quality(overlap=0.95)
    quality["boundary_overlap"]["1"] = None  # an empty class
    assert case_features(quality, 1)["log_boundary"] == 0.0
    assert case_features(_quality(overlap=0.9), 1, boundary_knee=0.5)["log_boundary"] == pytest.approx(math.log(0.2))
    for bad in (1.0, 1.2, -0.1, math.nan, True):
        with pytest.raises(ValueError, match=r"boundary_knee must be a share in \[0, 1\)"):
            case_features(_quality(overlap=0.9), 1, boundary_knee=bad)
    model = {"intercept": 0.0, "weights": {"log_ensemble_dice": 1.0, "log_boundary": 0.5}}
    assert calibrated_dice(case_features(_quality(overlap=0.95), 1), model) == pytest.approx(0.97 * 0.25**0.5)


def test_settings_are_checked_and_name_what_is_wrong():
    assert check_calibration(None) is None
    spec = {"intercept": 0.1, "weights": {"log_kept": 0.3, "log_ensemble_dice": 0.8}, "chosen_on": "17 cases"}
    assert check_calibration(spec) == {
        "intercept": 0.1, "weights": {"log_ensemble_dice": 0.8, "log_kept": 0.3}, "chosen_on": "17 cases",
    }  # fmt: skip
    assert check_calibration(PRODUCT_RULE) == PRODUCT_RULE
    assert check_calibration({"weights": {"log_kept": np.float32(0.5)}})["weights"] == {"log_kept": 0.5}
    assert check_warn_dice(np.float64(0.9)) == 0.9 and check_warn_dice(0) is None and check_warn_dice(None) is None
    with pytest.raises(ValueError, match=r"^warn_dice must be in \[0, 1\] or None, got 1.5"):
        check_warn_dice(1.5)
    bad = [
        ({"intercept": 0.1}, r"must be null or a mapping with intercept and weights"),
        ({"weights": {"log_ensemble_dice": 1}, "slope": 2}, r"must be null or a mapping with intercept and weights"),
        ({"intercept": "0.1", "weights": {"log_ensemble_dice": 1}}, r"intercept must be a finite number, got '0.1'"),
        ({"weights": {}}, r"weights must map features"),
        ({"weights": {"dice": 1.0}}, r"unknown feature\(s\) \['dice'\]; known: " + ", ".join(FEATURES)),
        ({"weights": {"log_kept": math.inf}}, r"weights must be finite numbers, got \{'log_kept': inf\}"),
        ({"weights": {"log_kept": True}}, r"weights must be finite numbers"),
    ]
    for entry, message in bad:
        with pytest.raises(ValueError, match=rf"^here:? {message}"):
            check_calibration(entry, source="here")


def test_the_features_come_from_the_quality_report():
    features = case_features(_quality(volume=450.0, kept=0.6), 1)
    assert features == {
        "log_ensemble_dice": pytest.approx(math.log(0.97)),
        "log_kept": pytest.approx(math.log(0.6)),
        "volume_outside": pytest.approx(math.log(2.0)),  # half the low end of the range
        "epistemic_foreground": 0.02,
        "total_foreground": 0.1,
        "log_boundary": 0.0,  # no boundary_overlap in the report: no evidence either way
        "log_atlas_kept": 0.0,  # no atlas prior: no evidence either way
        "log_atlas_dice": 0.0,
    }
    atlas = {"margin_mm": 5.0, "min_kept": 0.5}
    for entry, expected in [
        ({**atlas, "kept": 0.7, "applied": True}, math.log(0.7)),
        ({**atlas, "kept": 0.2, "applied": False}, math.log(0.5)),  # not cut: at least min_kept
        # cut, the guard within kept_margin_mm holding min_kept: the 2 mm region's own share (from a review: 0.5)
        ({**atlas, "kept": 0.3, "guard_kept": 0.6, "applied": True}, math.log(0.3)),
        ({**atlas, "kept": None, "applied": False}, 0.0),
    ]:  # did not register: no evidence
        assert case_features({**_quality(), "atlas_prior": entry}, 1)["log_atlas_kept"] == pytest.approx(expected)
    for dice, expected in [(0.9, math.log(0.9)), (0.0, math.log(1e-3)), (None, 0.0)]:  # floored; None: no evidence
        entry = {**atlas, "kept": 0.7, "template_dice": dice, "applied": True}
        assert case_features({**_quality(), "atlas_prior": entry}, 1)["log_atlas_dice"] == pytest.approx(expected)
    older = {**atlas, "kept": 0.7, "applied": True}  # a report written before template_dice: no evidence
    assert case_features({**_quality(), "atlas_prior": older}, 1)["log_atlas_dice"] == 0.0
    assert case_features(_quality(volume=4400.0), "1")["volume_outside"] == pytest.approx(math.log(2.0))
    assert case_features(_quality(volume=1500.0), 1)["volume_outside"] == 0.0  # inside the range
    assert case_features(_quality(volume=0.0), 1)["volume_outside"] == pytest.approx(math.log(1e3))  # capped
    assert case_features(_quality(volume=50.0, expected=None), 1)["volume_outside"] == 0.0  # no range declared
    assert case_features(_quality(volume=50.0, expected=(0.0, 100.0)), 1)["volume_outside"] == 0.0  # a range from 0
    assert case_features(_quality(volume=200.0, expected=(0.0, 100.0)), 1)["volume_outside"] == pytest.approx(
        math.log(2)
    )
    assert case_features(_quality(volume=0.0, expected=(0.0, 100.0)), 1)["volume_outside"] == 0.0
    assert case_features(_quality(kept=None), 1)["log_kept"] == 0.0  # no localization pass: no evidence
    not_cut = _quality(kept=0.01)
    not_cut["localization"]["min_kept"] = 0.5  # below it the region cut nothing: the passes disagree, by how much not
    assert case_features(not_cut, 1)["log_kept"] == pytest.approx(math.log(0.5))
    assert case_features(_quality(predicted=0.0), 1)["log_ensemble_dice"] == pytest.approx(math.log(1e-3))


def test_the_product_rule_scales_the_ensembles_estimate_by_the_share_kept_and_the_volume_outside():
    features = case_features(_quality(predicted=0.96, volume=450.0, kept=0.8), 1)
    assert calibrated_dice(features, PRODUCT_RULE) == pytest.approx(0.96 * 0.8 / 2)  # half the range's low end


def test_a_fit_recovers_a_multiplicative_model_exactly_and_needs_more_cases_than_parameters():
    rng = np.random.default_rng(0)
    features = [{"log_ensemble_dice": np.log(rng.uniform(0.9, 1)), "log_kept": np.log(rng.uniform(0.5, 1)),
                 "volume_outside": rng.uniform(0, 0.5) * (i % 2)} for i in range(12)]  # fmt: skip
    true = [math.exp(-0.05 + 0.8 * f["log_ensemble_dice"] + 1.5 * f["log_kept"]) for f in features]
    model = fit_calibration(features, true, ["log_ensemble_dice", "log_kept", "volume_outside"])
    assert model["intercept"] == pytest.approx(-0.05, abs=1e-6) and model["weights"] == {
        "log_ensemble_dice": pytest.approx(0.8, abs=1e-5), "log_kept": pytest.approx(1.5, abs=1e-6),
        "volume_outside": pytest.approx(0.0, abs=1e-6),
    }  # fmt: skip
    assert [calibrated_dice(f, model) for f in features] == pytest.approx(true)
    with pytest.raises(ValueError, match=r"need more cases \(3\) than parameters \(3\)"):
        fit_calibration(features[:3], true[:3], ["log_ensemble_dice", "log_kept"])
    with pytest.raises(ValueError, match=r"one per case, got 10 and 9"):  # it said "need more cases (10) than (2)"
        fit_calibration(features[:10], true[:9], ["log_ensemble_dice"])
    with pytest.raises(ValueError, match=r"names must be a non-empty subset of"):
        fit_calibration(features, true, ["dice"])


def test_a_monotone_fit_holds_every_weight_to_its_features_sign_where_a_free_fit_crosses_it():
    """Two correlated features whose truth weighs one negatively (0.9.0's validation fit: the ensemble's own estimate
    at -0.49): the free fit recovers the negative weight; the monotone fit keeps it at 0, so a case with better
    evidence on every feature never gets a lower estimate."""
    assert set(FEATURE_SIGNS) == set(FEATURES) and set(FEATURE_SIGNS.values()) == {-1, 1}
    # the fit starts from the product rule, which must lie within the monotone bounds
    assert all(w * FEATURE_SIGNS[name] > 0 for name, w in PRODUCT_RULE["weights"].items())
    rng = np.random.default_rng(0)
    atlas = np.log(rng.uniform(0.7, 1.0, 16))
    own = 0.5 * atlas + np.log(rng.uniform(0.97, 1.0, 16))  # agrees with the atlas, up to noise
    features = [{"log_ensemble_dice": o, "log_atlas_dice": a, "total_foreground": 0.1 * i % 0.3}
                for i, (o, a) in enumerate(zip(own, atlas, strict=True))]  # fmt: skip
    true = [math.exp(-0.02 - 0.5 * f["log_ensemble_dice"] + 1.2 * f["log_atlas_dice"]) for f in features]
    names = ["log_ensemble_dice", "log_atlas_dice", "total_foreground"]
    free = fit_calibration(features, true, names)
    assert free["weights"]["log_ensemble_dice"] == pytest.approx(-0.5, abs=1e-4)
    monotone = fit_calibration(features, true, names, monotone=True)
    weights = monotone["weights"]
    assert weights["log_ensemble_dice"] >= 0 and weights["log_atlas_dice"] > 0 and weights["total_foreground"] <= 0
    assert weights["log_ensemble_dice"] == pytest.approx(0.0, abs=1e-6)  # held at its bound
    worse, better = dict(features[0]), dict(features[0])
    better["log_ensemble_dice"] += 0.05  # more agreement, all else equal
    assert calibrated_dice(better, monotone) >= calibrated_dice(worse, monotone)
    assert calibrated_dice(better, free) < calibrated_dice(worse, free)  # what the free fit does with it


def test_the_estimate_is_clipped_to_a_dice():
    model = {"intercept": 0.5, "weights": {"log_ensemble_dice": 1.0}}
    assert calibrated_dice({"log_ensemble_dice": math.log(0.9)}, model) == 1.0
    assert 0.0 <= calibrated_dice({"log_ensemble_dice": -1e6}, model) < 1e-300
    assert calibrated_dice({"log_ensemble_dice": math.nan}, model) == 0.0  # an unreadable report: check the case
    assert calibrated_dice({"log_ensemble_dice": math.inf}, model) == 0.0


def test_applied_to_a_report_it_replaces_the_foreground_estimate_and_keeps_the_ensembles_own():
    quality = _quality(kept=0.5)
    assert apply_calibration(quality, None) is quality
    model = check_calibration({"intercept": -0.1, "weights": {"log_ensemble_dice": 0.8, "log_kept": 0.5}})
    out = apply_calibration(quality, model)
    expected = math.exp(-0.1) * 0.97**0.8 * 0.5**0.5
    assert out["predicted_dice"] == {"0": 0.99, "1": pytest.approx(expected)}  # the background keeps its own
    assert out["min_predicted_dice"] == pytest.approx(expected)
    assert out["ensemble_dice"] == quality["predicted_dice"] and quality["predicted_dice"]["1"] == 0.97
    assert out["calibration"]["weights"] == model["weights"]
    assert out["calibration"]["features"]["1"] == case_features(quality, 1)
    assert json.loads(json.dumps(out)) == out  # written beside the outputs as it is
    assert apply_calibration(out, model) == out  # applied to its own output: the same report


def _ball(tmp_path):
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (24, 24, 24)), indexing="ij"))
    image = (((grid - 12) ** 2).sum(0) < 36).astype(np.float32)
    return save_nifti(tmp_path / "scan.nii.gz", image, affine=np.eye(4))


def test_the_predictor_reports_the_boundary_overlap_of_its_labels_on_the_inputs_grid_and_a_fit_reads_it(tmp_path):
    """The report's share is the image's own, from the written labels on the input's (oblique) grid; a calibration
    that names log_boundary turns it into the estimate."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (24, 22, 20)), indexing="ij"))
    path = save_nifti(tmp_path / "oblique.nii.gz", (((grid - 11) ** 2).sum(0) < 36).astype(np.float32))  # oblique
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    options = {"preprocessing": PREPROCESSING, "roi_size": 16, "device": "cpu"}
    result = Predictor(segmenter, **options).segment(path, **FAST)
    image = nib.load(str(path))
    assert not np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine[:3, :3])))
    expected = boundary_overlap(np.asarray(image.dataobj)[None], result.label_map == 1, image.affine)
    assert expected is not None and result.quality["boundary_overlap"] == {"1": pytest.approx(expected)}
    calibration = {"intercept": 0.0, "weights": {"log_ensemble_dice": 1.0, "log_boundary": 1.0}}
    calibrated = Predictor(segmenter, **options, quality_calibration=calibration).segment(path, **FAST)
    feature = calibrated.quality["calibration"]["features"]["1"]["log_boundary"]
    assert feature == pytest.approx(min(0.0, math.log(max(1 - expected, 1e-3) / (1 - BOUNDARY_KNEE))))


def test_the_predictor_reports_the_calibrated_estimate_and_the_warning_line_uses_it(tmp_path, caplog):
    path = _ball(tmp_path)
    segmenter = DiffusionSegmenter(ThresholdOracle(), num_classes=2)
    options = {"preprocessing": PREPROCESSING, "roi_size": 16, "device": "cpu"}
    plain = Predictor(segmenter, **options).segment(path, **FAST)
    assert "ensemble_dice" not in plain.quality and plain.quality["predicted_dice"]["1"] == 1.0  # the oracle agrees
    calibration = {"intercept": math.log(0.7), "weights": {"log_ensemble_dice": 1.0}}
    predictor = Predictor(segmenter, **options, quality_calibration=calibration, warn_dice=0.75)
    calibrated = predictor.segment(path, **FAST)
    assert calibrated.quality["predicted_dice"]["1"] == pytest.approx(0.7)
    assert calibrated.quality["ensemble_dice"]["1"] == 1.0
    assert np.array_equal(calibrated.label_map, plain.label_map)  # the estimate changes, the segmentation does not
    with caplog.at_level(logging.WARNING, logger="medwidit"):
        (result,) = predictor.predict_from_files(path, tmp_path / "out", progress=False, **FAST)  # its own 0.75
        predictor.predict_from_files(path, tmp_path / "low", progress=False, warn_dice=0.6, **FAST)
        predictor.warn_dice = None
        predictor.predict_from_files(path, tmp_path / "never", progress=False, **FAST)
    assert result.quality == calibrated.quality
    assert result.quality["warnings"] == ["predicted Dice below 0.75 (class 1 0.700)"]  # the verdict is kept
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["scan: predicted Dice below 0.75 (class 1 0.700): check this case before using it."]
    with pytest.raises(ValueError, match=r"quality_calibration: unknown feature"):
        Predictor(segmenter, **options, quality_calibration={"weights": {"x": 1.0}})
    with pytest.raises(ValueError, match=r"warn_dice must be in \[0, 1\] or None, got 1.5"):
        Predictor(segmenter, **options, warn_dice=1.5)
    with pytest.raises(ValueError, match=r"warn_dice must be a number in \[0, 1\], None or 'predictor', got 'bundle'"):
        predictor.predict_from_files(path, tmp_path / "bad", progress=False, warn_dice="bundle", **FAST)


def test_a_predicted_dice_at_warn_dice_is_not_below_it(caplog):
    """From a mutation review: the line warns of a predicted Dice *below* warn_dice; a Dice equal to it warned too
    with ``<=`` and no test saw it. At the threshold: no line; just under it: one."""
    from medwidit.inference.files import case_warnings

    at, below = ({**_quality(predicted=dice, kept=None), "empty_classes": []} for dice in (0.9, 0.8999))
    assert case_warnings(at, 0.9) == []
    assert case_warnings(below, 0.9) == ["predicted Dice below 0.90 (class 1 0.900)"]
    assert case_warnings(below, None) is None  # no threshold: nothing judged


def test_a_bundle_declares_it_and_a_caller_or_a_bad_entry_overrides_or_stops_it(bundle):
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    shipped = check_calibration(config["quality_calibration"])
    assert shipped is not None and "chosen_on" in shipped  # the shipped bundle has one, fitted on validation
    assert Predictor.from_bundle(bundle, device="cpu", weight_sets=1).quality_calibration == shipped
    assert (
        Predictor.from_bundle(bundle, device="cpu", weight_sets=1, quality_calibration=None).quality_calibration is None
    )
    assert Predictor.from_bundle(bundle, device="cpu", weight_sets=1).warn_dice == config["warn_dice"]
    assert Predictor.from_bundle(bundle, device="cpu", weight_sets=1, warn_dice=None).warn_dice is None
    for key, value, message in (
        ("quality_calibration", {"intercept": 1.0, "weights": {"dice": 1.0}}, r"unknown feature\(s\) \['dice'\]"),
        ("warn_dice", 90, r"must be in \[0, 1\] or None, got 90"),
    ):
        path.write_text(json.dumps({**config, key: value}))
        with pytest.raises(InputError, match=rf"inference\.json: {key}:? {message}"):
            Predictor.from_bundle(bundle, device="cpu", weight_sets=1)
    del config["warn_dice"], config["quality_calibration"]
    path.write_text(json.dumps(config))
    bare = Predictor.from_bundle(bundle, device="cpu", weight_sets=1)  # a bundle without them: the ensemble's own
    assert bare.quality_calibration is None and bare.warn_dice == DEFAULT_WARN_DICE


def test_turning_the_calibration_off_also_leaves_its_threshold(tmp_path):
    """The bundle's warn_dice was chosen for its calibrated estimate: a caller (or --no-calibration) who replaces the
    calibration gets the ensemble's own estimate with the ensemble's threshold, and the run record says which."""
    from medwidit.cli import main
    from medwidit.inference.options import resolve_bundle

    off = Predictor.from_bundle(device="cpu", weight_sets=1, quality_calibration=None)
    assert off.quality_calibration is None and off.warn_dice == DEFAULT_WARN_DICE
    assert Predictor.from_bundle(device="cpu", weight_sets=1, quality_calibration=None, warn_dice=0.5).warn_dice == 0.5
    source = save_nifti(
        tmp_path / "scan.nii.gz", np.linspace(1, 2, 24**3, dtype=np.float32).reshape((24,) * 3), affine=np.eye(4) * 2
    )
    base = ["segment", "-i", str(source), "--steps", "1", "--samples", "1", "--weight-sets", "1", "--no-localize",
            "--quiet", "--device", "cpu", "--save-quality"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "on")]) == 0
    assert main([*base, "-o", str(tmp_path / "off"), "--no-calibration"]) == 0
    for out, calibrated in (("on", True), ("off", False)):
        quality = json.loads((tmp_path / out / "scan_quality.json").read_text())
        record = json.loads((tmp_path / out / "medwidit_run.json").read_text())["sampling"]
        assert ("ensemble_dice" in quality) == calibrated == (record["quality_calibration"] is not None)
        shipped = json.loads((resolve_bundle() / "configs" / "inference.json").read_text())["warn_dice"]
        assert record["warn_dice"] == (shipped if calibrated else DEFAULT_WARN_DICE)


def test_a_calibration_that_reads_the_template_dice_is_not_applied_without_it():
    """Read as 0 ("no evidence"), a missing template Dice would pass for perfect agreement: the shipped calibration,
    made mostly of it, then predicted about 0.99 for an ensemble estimate of 0.80 and its warn_dice 0.84 never fired.
    Without it the report keeps the ensemble's own estimate and says why."""
    calibration = check_calibration({"intercept": 0.0, "weights": {"log_ensemble_dice": 0.05, "log_atlas_dice": 1.0}})
    atlas = {"margin_mm": 5.0, "min_kept": 0.5, "kept": 0.9, "applied": True}
    for entry in (None, {**atlas, "kept": None, "template_dice": None, "applied": False}):  # off; not registered
        report = apply_calibration({**_quality(predicted=0.8), "atlas_prior": entry}, calibration)
        assert report["predicted_dice"]["1"] == report["min_predicted_dice"] == pytest.approx(0.8)
        assert report["calibration"] == {"skipped": ["log_atlas_dice"]}
    held = apply_calibration({**_quality(predicted=0.8), "atlas_prior": {**atlas, "template_dice": 0.6}}, calibration)
    assert held["predicted_dice"]["1"] == pytest.approx(0.8**0.05 * 0.6) and held["ensemble_dice"]["1"] == 0.8


def test_without_the_atlas_prior_the_bundle_falls_back_to_the_ensembles_estimate_and_threshold(tmp_path):
    """``--no-atlas-prior`` (``from_bundle(atlas_prior=None)``) takes away the evidence the shipped calibration reads:
    the predictor then reports the ensemble's own estimate with its threshold, as ``--no-calibration`` does, and the
    run record says so; a caller's own calibration or threshold still wins."""
    from medwidit.cli import main

    bare = Predictor.from_bundle(device="cpu", weight_sets=1, atlas_prior=None)
    assert bare.quality_calibration is None and bare.warn_dice == DEFAULT_WARN_DICE
    assert Predictor.from_bundle(device="cpu", weight_sets=1, atlas_prior=None, warn_dice=0.7).warn_dice == 0.7
    own = {"intercept": 0.0, "weights": {"log_ensemble_dice": 1.0}}
    kept = Predictor.from_bundle(device="cpu", weight_sets=1, atlas_prior=None, quality_calibration=own)
    assert kept.quality_calibration == check_calibration(own)
    shipped = Predictor.from_bundle(device="cpu", weight_sets=1)
    assert "log_atlas_dice" in shipped.quality_calibration["weights"] and shipped.warn_dice < DEFAULT_WARN_DICE
    source = save_nifti(
        tmp_path / "scan.nii.gz", np.linspace(1, 2, 24**3, dtype=np.float32).reshape((24,) * 3), affine=np.eye(4) * 2
    )
    args = ["segment", "-i", str(source), "-o", str(tmp_path / "out"), "--steps", "1", "--samples", "1",
            "--weight-sets", "1", "--quiet", "--device", "cpu", "--save-quality", "--no-atlas-prior"]  # fmt: skip
    assert main(args) == 0
    record = json.loads((tmp_path / "out" / "medwidit_run.json").read_text())["sampling"]
    assert record["quality_calibration"] is None and record["warn_dice"] == DEFAULT_WARN_DICE
    assert "ensemble_dice" not in json.loads((tmp_path / "out" / "scan_quality.json").read_text())


def test_a_case_whose_calibration_was_skipped_is_judged_at_the_ensembles_threshold(tmp_path, monkeypatch):
    """A predictor built with a calibration that reads the template Dice but no atlas prior (``monai.bundle run`` with
    ``atlas_prior`` null passes the bundle's calibration and its warn_dice 0.84 straight to ``from_checkpoint``): each
    case keeps the ensemble's own estimate, and the warning line judges it at ``ENSEMBLE_WARN_DICE``, not at the
    calibration's 0.84, below which the ensemble's estimate never falls. A caller's own threshold still wins."""
    import medwidit.inference.files as files
    import medwidit.inference.predictor as predictor_module
    from medwidit.inference.calibration import ENSEMBLE_WARN_DICE, case_warn_dice

    assert case_warn_dice({"calibration": {"skipped": ["log_atlas_dice"]}}, 0.84) == ENSEMBLE_WARN_DICE
    assert case_warn_dice({"calibration": {"skipped": ["log_atlas_dice"]}}, None) is None  # warnings off stay off
    assert case_warn_dice({"calibration": {"intercept": 0.0, "weights": {}}}, 0.84) == 0.84
    assert case_warn_dice({}, 0.84) == 0.84 and case_warn_dice(None, 0.84) == 0.84
    path = _ball(tmp_path)
    calibration = {"intercept": 0.0, "weights": {"log_ensemble_dice": 0.05, "log_atlas_dice": 1.0}}
    predictor = Predictor(DiffusionSegmenter(ThresholdOracle(), num_classes=2), preprocessing=PREPROCESSING,
                          roi_size=16, device="cpu", quality_calibration=calibration, warn_dice=0.84)  # fmt: skip
    judged = []
    original = files.case_warnings
    for module in (files, predictor_module):  # the predictor judges each case; a run's own threshold judges again
        monkeypatch.setattr(
            module, "case_warnings", lambda quality, warn_dice: judged.append(warn_dice) or original(quality, warn_dice)
        )
    (result,) = predictor.predict_from_files(path, tmp_path / "a", progress=False, **FAST)
    predictor.predict_from_files(path, tmp_path / "b", progress=False, warn_dice=0.5, **FAST)
    assert result.quality["calibration"] == {"skipped": ["log_atlas_dice"]}
    assert judged == [ENSEMBLE_WARN_DICE, ENSEMBLE_WARN_DICE, 0.5]
