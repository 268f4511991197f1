"""MONAI's own checks on the bundle, as the model zoo's unit tests run them: metadata against the schema (offline),
the network's input/output, checkpoint export, and ConfigWorkflow in train, infer and eval mode with
check_properties() on a few random 32^3 NIfTI files."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_data import (
    BUNDLE,
    LOGGING,
    META,
    NUM_CLASSES,
    TINY_INFER,
    TINY_NET,
    TINY_TRAIN,
    config,
    run_evaluating,
    write_random_cases,
)
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from medwidit.inference.calibration import bundle_calibration, bundle_warn_dice, check_calibration
from medwidit.inference.localize import bundle_localization, check_localization
from medwidit.inference.trust import bundle_view_options, check_view_options

SCHEMA = BUNDLE / "docs" / "metadata_schema.json"


def _workflow(files, workflow_type, run_id="run", **overrides):
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=META,
        logging_file=LOGGING,
        workflow_type=workflow_type,
        run_id=run_id,
        **overrides,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    assert missing == [], f"check_properties: {missing}"
    return workflow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train one epoch into a copy of the bundle (``--bundle_root`` moves every output there)."""
    root = tmp_path_factory.mktemp("bundle")
    data_list = write_random_cases(root / "data")
    bundle = root / "bundle_copy"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("runs", "eval", "models"))
    data = {"dataset_dir": str(root / "data"), "data_list": str(data_list)}
    workflow = _workflow(config("train"), "train", run_id="training", bundle_root=str(bundle), **data, **TINY_TRAIN)
    workflow.run()
    workflow.finalize()
    return {"root": root, "bundle": bundle, "data": data, "model": bundle / "runs" / "models" / "model.pt"}


def test_metadata_verifies_offline_against_the_kept_schema(tmp_path, monkeypatch):
    import monai.bundle.scripts as scripts

    def no_download(url, filepath, **kwargs):
        raise AssertionError(f"verify_metadata tried to download {url}")

    monkeypatch.setattr("monai.apps.utils.urlretrieve", no_download)
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    scripts.verify_metadata(meta_file=META, filepath=str(schema))  # the file exists: MONAI skips the download
    metadata = json.loads(Path(META).read_text())
    assert metadata["version"] in metadata["changelog"]
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == NUM_CLASSES
    del metadata["task"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="task"):
        verify_metadata(meta_file=str(broken), filepath=str(schema))


def test_network_in_out():
    # image (1, 1, 16, 16, 16) -> class probabilities (1, 5, 16, 16, 16) float32, as metadata.json declares
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=config("train"), device="cpu", **TINY_NET)


@pytest.mark.slow
def test_train_workflow_writes_checkpoints_logs_and_export(trained):
    checkpoints = trained["bundle"] / "runs" / "checkpoints"
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(checkpoints / name, weights_only=True)
        assert checkpoint["global_step"] == 2 and "optimizer_states" in checkpoint
    assert not (trained["bundle"] / "models").exists()  # training never writes the shipped weights' folder
    exported = torch.load(trained["model"], weights_only=True)  # the run folder's export: a bare state dict
    assert all(isinstance(v, torch.Tensor) for v in exported.values())
    config = json.loads((trained["model"].parent / "medwidit.json").read_text())["config"]
    assert config["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]
    assert config["roi_size"] == [16, 16, 16]
    assert len(config["class_names"]) == NUM_CLASSES
    assert list((trained["bundle"] / "runs" / "tensorboard").rglob("events.out.tfevents.*"))  # under bundle_root


@pytest.mark.slow
def test_infer_workflow_segments_the_data_list_with_input_geometry(trained, tmp_path):
    out = tmp_path / "out"
    overrides = {**trained["data"], **TINY_INFER, "ckpt_path": str(trained["model"]), "output_dir": str(out)}
    workflow = _workflow(config("inference"), "infer", **overrides)
    workflow.run()
    workflow.finalize()
    source = nib.load(trained["root"] / "data" / "case3_image.nii.gz")
    for name in ("case3_image.nii.gz", "case3_image_uncertainty.nii.gz"):
        written = nib.load(out / name)
        assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-5)
    labels = np.asarray(nib.load(out / "case3_image.nii.gz").dataobj)
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    assert not (out / "case3_image_quality.json").exists()  # the --save-* outputs are off by default


def test_infer_workflow_writes_the_outputs_the_cli_flags_write(trained, tmp_path):
    """--save_quality, --save_statistics and --save_figure were read by nothing: the run wrote none of them."""
    out = tmp_path / "out"
    overrides = {**trained["data"], **TINY_INFER, "ckpt_path": str(trained["model"]), "output_dir": str(out)}
    saves = {"save_quality": True, "save_statistics": True, "save_figure": True}
    workflow = _workflow(config("inference"), "infer", **overrides, **saves)
    workflow.run()
    workflow.finalize()
    for name in ("case3_image_quality.json", "case3_image_statistics.json", "case3_image_figure.png"):
        assert (out / name).is_file(), sorted(p.name for p in out.iterdir())


@pytest.mark.slow
def test_the_bundle_and_the_cli_replace_the_preprocessing_alike(trained, tmp_path, monkeypatch):
    """``monai.bundle run --bias_correction n4 --anti_aliasing false`` replaces the bundle's preprocessing as the
    CLI's ``--bias-correction n4 --anti-aliasing off`` does (neither could be set on the bundle path); an
    inference.json that sets them is what the CLI reads too; a bad value names the file and the key."""
    from medwidit.inference import Predictor
    from medwidit.inference.io import InputError

    overrides = {**trained["data"], **TINY_INFER, "ckpt_path": str(trained["model"]), "output_dir": str(tmp_path)}
    plain = _workflow(config("inference"), "infer", **overrides).parser.get_parsed_content("predictor")
    # the checkpoint has no blur; inference.json turns it on (0.9.1's default)
    assert (plain.preprocessing["bias_correction"], plain.preprocessing["anti_aliasing"]) == (None, True)
    assert (plain.atlas_prior["margin_mm"], plain.atlas_prior["core_mm"]) == (2.0, 1.0)  # the bundle's own prior
    assert plain.atlas_prior["image"].is_file()
    # MONAI's own chain (preprocessing -> inferer -> postprocessing) pre-processes as the predictor: its preprocessing
    # read the checkpoint's settings and left out inference.json's anti-aliasing
    from medwidit.data.transforms import AntiAliasd, N4BiasFieldCorrectiond

    def steps(workflow):
        return [type(t) for t in workflow.parser.get_parsed_content("preprocessing").transforms]

    parser = ConfigParser()
    parser.read_config(config("inference"))
    for key, value in overrides.items():
        parser[key] = value
    with monkeypatch.context() as patch:  # the chain's preprocessing builds no predictor (it loaded both sets again)
        patch.setattr(Predictor, "from_checkpoint", classmethod(lambda *a, **k: pytest.fail("built the predictor")))
        shipped = [type(t) for t in parser.get_parsed_content("preprocessing").transforms]
    assert AntiAliasd in shipped and N4BiasFieldCorrectiond not in shipped  # "retry": its first pass, without N4
    changed = _workflow(config("inference"), "infer", **overrides, bias_correction="n4", anti_aliasing="false")
    predictor = changed.parser.get_parsed_content("predictor")
    assert (predictor.preprocessing["bias_correction"], predictor.preprocessing["anti_aliasing"]) == ("n4", False)
    assert AntiAliasd not in steps(changed) and N4BiasFieldCorrectiond in steps(changed)
    assert not predictor.bias_retry  # n4 on every case: nothing to retry
    changed.run()
    changed.finalize()
    assert (tmp_path / "case3_image.nii.gz").is_file()
    assert plain.bias_retry  # 0.9.2's inference.json: none first, N4 where a case warns
    once = _workflow(config("inference"), "infer", **overrides, bias_correction="none")
    assert not once.parser.get_parsed_content("predictor").bias_retry  # --bias_correction none: each case once

    bundle = trained["bundle"]
    (bundle / "models").mkdir(exist_ok=True)
    shutil.copy(trained["model"], bundle / "models" / "model.pt")
    shutil.copy(trained["model"].parent / "medwidit.json", bundle / "models" / "medwidit.json")
    path = bundle / "configs" / "inference.json"
    original = path.read_text()
    try:
        # anti_aliasing false: not the shipped file's value, so reading it shows the file is what is read
        declared = {**json.loads(original), "bias_correction": "n4", "anti_aliasing": False, "extra_weights": []}
        declared["probability_smoothing"] = 1.5
        declared["atlas_prior"] = {**declared["atlas_prior"], "margin_mm": 7.0}
        path.write_text(json.dumps(declared))
        read = Predictor.from_bundle(bundle, weight_sets=1)
        assert (read.preprocessing["bias_correction"], read.preprocessing["anti_aliasing"]) == ("n4", False)
        assert read.probability_smoothing == 1.5 and read.atlas_prior["margin_mm"] == 7.0
        given = Predictor.from_bundle(bundle, weight_sets=1, anti_aliasing=True)  # the caller's own wins
        assert given.preprocessing["anti_aliasing"] is True
        # the zoo's evaluation (train.json + evaluate.json) scores what inference.json samples
        evaluation = _workflow(
            [config("train"), config("evaluate")], None, bundle_root=str(bundle), **trained["data"], **TINY_INFER
        )
        scored = evaluation.parser.get_parsed_content("predictor")
        assert (scored.preprocessing["bias_correction"], scored.preprocessing["anti_aliasing"]) == ("n4", False)
        assert scored.probability_smoothing == 1.5  # evaluate.json reads inference.json's, as from_bundle does
        assert scored.atlas_prior == read.atlas_prior
        path.write_text(json.dumps({**declared, "bias_correction": "retry"}))
        assert Predictor.from_bundle(bundle, weight_sets=1).bias_retry  # the CLI reads inference.json's retry too
        path.write_text(json.dumps({**declared, "anti_aliasing": "yes"}))
        with pytest.raises(InputError, match=r"inference.json: anti_aliasing: preprocessing\['anti_aliasing'\] must"):
            Predictor.from_bundle(bundle, weight_sets=1)
    finally:
        path.write_text(original)
        shutil.rmtree(bundle / "models")


@pytest.mark.slow
def test_infer_workflow_samples_the_extra_weights_it_is_given(trained, tmp_path):
    """inference.json's ``extra_weights`` (files in the bundle) reach the predictor; ``weight_sets`` 2 samples both
    as the CLI's ``--weight-sets 2`` does, and a count above what the bundle holds fails naming it."""
    overrides = {**trained["data"], **TINY_INFER, "ckpt_path": str(trained["model"]), "output_dir": str(tmp_path)}
    overrides |= {"extra_checkpoints": [str(trained["model"])], "weight_sets": 2}
    workflow = _workflow(config("inference"), "infer", **overrides)
    assert len(workflow.parser.get_parsed_content("predictor").segmenters) == 2
    views = check_view_options(json.loads(Path(config("inference")).read_text())["augment_views"], 3)
    assert views and workflow.parser.get_parsed_content("predictor").view_options == views  # as the CLI's bundle
    localization = check_localization(json.loads(Path(config("inference")).read_text())["localization"], 3)
    assert localization and workflow.parser.get_parsed_content("predictor").localization == localization
    declared = json.loads(Path(config("inference")).read_text())
    predictor = workflow.parser.get_parsed_content("predictor")
    assert predictor.quality_calibration == check_calibration(declared["quality_calibration"]) is not None
    assert predictor.warn_dice == declared["warn_dice"]  # the calibrated estimate's threshold, as the CLI's
    workflow.run()
    workflow.finalize()
    assert (tmp_path / "case3_image_epistemic.nii.gz").is_file()
    overrides |= {"weight_sets": 3, "output_dir": str(tmp_path / "three")}
    workflow = _workflow(config("inference"), "infer", **overrides)
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the evaluator's error
        workflow.run()
    assert "weight_sets must be an int in 1..2" in str(failure.value.__cause__)


@pytest.mark.slow
def test_evaluate_workflow_writes_dice_per_class(trained, tmp_path):
    overrides = {**trained["data"], **TINY_INFER, "ckpt_path": str(trained["model"]), "output_dir": str(tmp_path)}
    workflow = _workflow([config("inference"), config("evaluate")], "eval", **overrides)
    predictor = workflow.parser.get_parsed_content("predictor")
    assert predictor.view_options == bundle_view_options(trained["bundle"])  # the bundle's test-time views
    assert predictor.localization == bundle_localization(trained["bundle"]) and predictor.localization is not None
    assert predictor.quality_calibration == bundle_calibration(trained["bundle"]) is not None
    declared = json.loads((trained["bundle"] / "configs" / "inference.json").read_text())["warn_dice"]
    assert predictor.warn_dice == declared == bundle_warn_dice(trained["bundle"], None)
    workflow.run()
    workflow.finalize()
    report = json.loads((tmp_path / "dice.json").read_text())
    assert report["num_cases"] == 1 and len(report["mean"]) == NUM_CLASSES
    assert all(0.0 <= v <= 1.0 for v in report["mean"].values())
    assert (tmp_path / "predictions" / "case2_image.nii.gz").is_file()  # the validation split by default


@pytest.mark.slow
def test_train_and_evaluate_compose_as_in_the_model_zoo(trained, tmp_path):
    """``monai.bundle run evaluating --config_file "['train.json','evaluate.json']"``: evaluate.json brings its own
    predictor (the zoo's combination failed with "@predictor is not defined")."""
    overrides = {**trained["data"], **TINY_INFER, "ckpt_path": str(trained["model"])}
    report = run_evaluating(tmp_path, bundle_root=str(trained["bundle"]), **overrides)
    assert report["num_cases"] == 1 and len(report["mean"]) == NUM_CLASSES

    def files():
        return {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and ".medwidit" not in p.parts}

    # again into the same report, the same split or the test split: refused before it samples (evaluate.json
    # replaced the predictions and dice.json; then, the test split's cases were segmented before dice.json refused)
    before = files()
    for split in ("validation", "test"):
        with pytest.raises(RuntimeError) as refused:
            run_evaluating(tmp_path, bundle_root=str(trained["bundle"]), **overrides, data_list_key=split)
        assert re.search(r"dice.json: already exists; pass overwrite", repr(refused.value.__cause__))
        assert files() == before  # nothing sampled, nothing replaced
    again = run_evaluating(tmp_path, bundle_root=str(trained["bundle"]), **overrides, overwrite="true")
    assert again["num_cases"] == 1


@pytest.mark.slow
def test_evaluate_names_the_classes_of_the_model_it_scores(trained, tmp_path):
    """A model of other classes than the bundle's two (the documented tissue training) is scored under its own
    names: evaluate.json's fixed [background, brain] failed with "class_names has 2 names for num_classes=3"."""
    from medwidit.diffusion import DiffusionSegmenter, load_segmenter, save_segmenter
    from medwidit.nets import WiDiT

    _, config_of_trained = load_segmenter(trained["model"])
    names = ["background", "brain", "scalp"]
    net = WiDiT(**{**config_of_trained["net"], "in_channels": 3, "out_channels": 3})  # the trained net, 3 classes
    extra = {"preprocessing": config_of_trained["preprocessing"], "roi_size": [16, 16, 16], "class_names": names}
    checkpoint = save_segmenter(DiffusionSegmenter(net, num_classes=3), tmp_path / "three.pt", extra_config=extra)
    overrides = {**trained["data"], **TINY_INFER, "ckpt_path": str(checkpoint)}
    report = run_evaluating(tmp_path / "eval", bundle_root=str(trained["bundle"]), **overrides)
    assert report["class_names"] == names and list(report["mean"]) == names


def test_inference_without_a_trained_model_says_so(tmp_path):
    workflow = ConfigWorkflow(
        config_file=config("inference"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="infer",
        ckpt_path=str(tmp_path / "models" / "model.pt"),
        device="cpu",
    )
    workflow.initialize()
    with pytest.raises(RuntimeError) as error:
        workflow.run()
    assert "no such checkpoint file" in repr(error.value.__cause__)


@pytest.mark.slow
def test_checkpoint_export(trained, tmp_path):
    """TorchScript by tracing (scripting fails on the sampler's Python control flow): the traced file replays one
    fixed input shape and step count; the denoiser network itself exports exactly with torch.export."""
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(trained["model"]),
        meta_file=META,
        config_file=config("train"),
        use_trace=True,
        input_shape=[1, 1, 16, 16, 16],
        converter_kwargs={"check_trace": False},
        **TINY_NET,  # the documented command (the check fails at depth 4)
    )
    extra = {"metadata.json": "", "train.json": ""}
    module = torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] and "network_def" in json.loads(extra["train.json"])
    weights = torch.load(trained["model"], weights_only=True)  # the zoo's layout: no key_in_ckpt needed
    assert all(torch.equal(module.state_dict()[k], v) for k, v in weights.items())  # the weights did load
    probabilities = module(torch.randn(1, 1, 16, 16, 16))
    assert probabilities.shape == (1, NUM_CLASSES, 16, 16, 16)
    assert torch.allclose(probabilities.sum(1), torch.ones(1, 16, 16, 16), atol=1e-5)

    parser = ConfigParser()
    parser.read_config(config("train"))
    parser.update(TINY_NET)
    net = parser.get_parsed_content("net").eval()
    net.load_state_dict(weights)
    x, t, image = torch.randn(1, NUM_CLASSES, 16, 16, 16), torch.full((1,), 500.0), torch.randn(1, 1, 16, 16, 16)
    program = torch.export.export(net, (x, t), {"conditioned": image})
    torch.export.save(program, tmp_path / "net.pt2")
    with torch.no_grad():
        reloaded = torch.export.load(tmp_path / "net.pt2").module()
        assert torch.allclose(reloaded(x, t, conditioned=image), net(x, t, conditioned=image))


def test_multi_gpu_config_merges_on_train(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    parser = ConfigParser()
    parser.read_config([config("train"), config("multi_gpu_train")])
    assert parser.get_parsed_content("train#trainer#strategy") == "ddp"
    assert parser.get_parsed_content("train#trainer#devices") == 2
    assert parser.get_parsed_content("train#trainer#num_nodes") == 2
    if torch.cuda.is_available():
        assert parser.get_parsed_content("device") == torch.device("cuda", 1)
    assert parser.get("training") and parser.get("train#trainer#max_epochs") == "@epochs"


def test_the_training_device_is_the_one_named(tmp_path):
    """--device cuda:1 trained on GPU 0 without a word (the trainer's devices were 1, whatever the index)."""
    for device, expected in (("cuda:1", ("gpu", [1])), ("cuda", ("gpu", [0])), ("cpu", ("cpu", 1))):
        parser = ConfigParser()
        parser.read_config(config("train"))
        parser["device"] = device
        found = tuple(parser.get_parsed_content(f"train#trainer#{key}") for key in ("accelerator", "devices"))
        assert found == expected


def test_an_override_of_a_renamed_key_fails_naming_the_new_key(tmp_path):
    """train.json's validation ``steps`` is ``val_steps``: an old ``--steps 2`` must not be ignored without a word."""
    parser = ConfigParser()
    parser.read_config(config("train"))
    assert parser.get_parsed_content("network_def#steps") == parser["val_steps"]
    assert (
        "$medwidit.training.refuse_renamed(steps=@steps, model_path=@model_path, max_epochs=@max_epochs)"
        in parser["initialize"]
    )
    parser["steps"] = 2
    with pytest.raises(RuntimeError) as failed:  # MONAI wraps the expression's error; the traceback shows both
        parser.get_parsed_content("initialize")
    assert "'steps' is now 'val_steps' (--val_steps 2)" in str(failed.value.__cause__)
    parser["steps"] = None
    parser["model_path"] = "bundles/brain_widit_segmentation/models/model.pt"  # training no longer writes there
    with pytest.raises(RuntimeError) as failed:
        parser.get_parsed_content("initialize")
    assert "'model_path' is now 'export_dir'" in str(failed.value.__cause__)
    parser["model_path"] = None
    parser["max_epochs"] = 1  # Lightning's name: it was ignored, and the run took its 1080 steps
    with pytest.raises(RuntimeError) as failed:
        parser.get_parsed_content("initialize")
    assert "'max_epochs' is now 'epochs' (--epochs 1)" in str(failed.value.__cause__)
    parser["max_epochs"] = None
    parser.get_parsed_content("initialize")  # the defaults pass


def test_one_override_turns_spacing_conditioning_on_in_net_and_data(tmp_path):
    """``--spacing_conditioning true`` reaches both the network and the data module (each would fail without the
    other), ``--thickness_prob`` the real crops' thick slices; the defaults leave both off."""
    parser = ConfigParser()
    parser.read_config(config("train"))
    assert parser.get_parsed_content("net").config["spacing_conditioning"] is False
    parser["spacing_conditioning"], parser["thickness_prob"] = True, 0.5
    parser["dataset_dir"] = str(tmp_path)
    assert parser.get_parsed_content("net").config["spacing_conditioning"] is True
    datamodule = parser.get_parsed_content("datamodule", lazy=False)
    assert datamodule.spacing_conditioning and datamodule.thickness_prob == 0.5
    assert datamodule.contrast_prob == 0.0  # the contrast remap is its own override
    parser["contrast_prob"] = 0.3
    assert parser.get_parsed_content("datamodule", lazy=False).contrast_prob == 0.3
    assert datamodule.coil_prob == 0.0 and datamodule.coil_coeff_range == (0.0, 0.8)  # and so is the coil field
    parser["coil_prob"], parser["coil_coeff_range"] = 0.25, [0.0, 0.5]
    datamodule = parser.get_parsed_content("datamodule", lazy=False)
    assert datamodule.coil_prob == 0.25 and datamodule.coil_coeff_range == (0.0, 0.5)
    parser["spacing_conditioning"] = "false"  # how a command-line override may arrive: it turned conditioning on
    assert parser.get_parsed_content("net", lazy=False).config["spacing_conditioning"] is False
    assert parser.get_parsed_content("datamodule", lazy=False).spacing_conditioning is False


def test_the_x0_activation_override_reaches_the_segmenter():
    """``--x0_activation softmax`` trains an x0 model of softmax logits; the default keeps the shipped weights'
    meaning (their medwidit.json predates the key and reads as "none")."""
    parser = ConfigParser()
    parser.read_config(config("train"))
    assert parser.get_parsed_content("segmenter").x0_activation == "none"
    parser["x0_activation"] = "softmax"
    assert parser.get_parsed_content("segmenter", lazy=False).x0_activation == "softmax"
    parser["x0_activation"] = "sigmoid"
    with pytest.raises(RuntimeError, match="DiffusionSegmenter") as error:  # MONAI wraps the constructor's error
        parser.get_parsed_content("segmenter", lazy=False)
    assert "x0_activation: " in str(error.value.__cause__) and "'sigmoid'" in str(error.value.__cause__)


def test_synth_options_reach_the_generator(tmp_path):
    """``--synth_options`` (top level) reaches the data module, which hands it to the label-to-image generator."""
    parser = ConfigParser()
    parser.read_config(config("train"))
    parser["dataset_dir"] = str(tmp_path)
    assert parser.get_parsed_content("datamodule", lazy=False).synth_options == {}
    parser["synth_options"] = {"neck_prob": 0.8, "neck_label": 6}
    datamodule = parser.get_parsed_content("datamodule", lazy=False)
    assert datamodule.synth_options == {"neck_prob": 0.8, "neck_label": 6}
    from medwidit.data.synth import RandNeckExtensiond

    (neck,) = [t for t in datamodule._synthetic() if isinstance(t, RandNeckExtensiond)]  # the generator built with it
    assert neck.prob == 0.8


def test_the_bundles_classes_reach_the_data_module(tmp_path):
    """Its ``num_classes`` bounds the data lists' label values at setup (a 0/255 mask failed at the first step, in a
    ConfigExpression, naming no file) and the generator's task labels."""
    parser = ConfigParser()
    parser.read_config(config("train"))
    parser["dataset_dir"] = str(tmp_path)
    assert parser.get_parsed_content("datamodule", lazy=False).num_classes == parser["num_classes"] == 2
    parser["num_classes"] = 3
    with pytest.raises(RuntimeError) as failed:  # the brain-only painted heads cannot train a 3-class task
        parser.get_parsed_content("datamodule", lazy=False)
    assert "but the task has num_classes=3" in str(failed.value.__cause__)
    parser["synth_ratio"] = 0
    assert parser.get_parsed_content("datamodule", lazy=False).num_classes == 3


def test_a_resumed_run_keeps_the_best_checkpoint_it_had(tmp_path):
    """Validating every epoch, the "best" checkpoint saved at the training epoch's end, after "last" had saved: the
    last.ckpt of each epoch held the best score of the epoch before, so a run resumed from it took a worse later
    epoch for an improvement and replaced best.ckpt (and the export) with it. train.json's callbacks, on a module
    whose validation Dice is 0.1 then 0.3 then 0.2: the checkpoints agree on 0.3 at every step."""
    import lightning as L

    parser = ConfigParser()
    parser.read_config(config("train"))
    parser["ckpt_dir"] = str(tmp_path)
    checkpoints = [c for c in parser.get_parsed_content("callbacks") if type(c).__name__ == "ModelCheckpoint"]
    assert [c.filename for c in checkpoints] == ["last", "best"]

    class Scored(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/mean_dice", (0.1, 0.3, 0.2)[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=1)
    for epochs in (2, 3):  # the third epoch resumes from the second's last.ckpt, as --resume last does
        trainer = L.Trainer(max_epochs=epochs, callbacks=checkpoints, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, check_val_every_n_epoch=1)  # fmt: skip
        resume = str(tmp_path / "last.ckpt") if epochs == 3 else None
        trainer.fit(Scored(), data, data, ckpt_path=resume, weights_only=False)
        states = {name: torch.load(tmp_path / f"{name}.ckpt", weights_only=False) for name in ("last", "best")}
        assert states["best"]["epoch"] == 1  # the 0.3 epoch
        for state in states.values():
            (best,) = [v for k, v in state["callbacks"].items() if "val/mean_dice" in k]
            assert float(best["best_model_score"]) == pytest.approx(0.3)
