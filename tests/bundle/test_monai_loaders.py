"""The shipped bundle as MONAI's own loaders see it: ``monai.bundle.load`` with default arguments, MONAI Label's
``checkpoint.get("model", checkpoint)``, and inference.json's MONAI vocabulary (preprocessing, inferer, postprocessing,
network_def); a run without the built data ends with one line saying how to build it."""

import os
import subprocess
import sys
from pathlib import Path

import monai.bundle
import torch
from bundle_data import BUNDLE, REPOSITORY, config, run_evaluating, write_random_cases
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from monai.transforms import Compose, FillHolesd, KeepLargestConnectedComponentd

from medwidit.diffusion import load_segmenter

WEIGHTS = BUNDLE / "models" / "model.pt"


def _shipped_weights() -> dict:
    segmenter, _ = load_segmenter(WEIGHTS)
    return segmenter.net.state_dict()


def _assert_all_weights(network, expected):
    loaded = network.state_dict()
    assert loaded.keys() == expected.keys() and len(expected) == 80  # every weight of the shipped WiDiT (0.9.0)
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in expected.items())


def test_monai_bundle_load_with_default_arguments_gets_every_weight():
    expected = _shipped_weights()
    network = monai.bundle.load(BUNDLE.name, bundle_dir=str(BUNDLE.parent))  # default workflow_type="train"
    _assert_all_weights(network, expected)
    network = monai.bundle.load(BUNDLE.name, bundle_dir=str(BUNDLE.parent), workflow_type="inference")
    _assert_all_weights(network, expected)


def test_monai_bundle_load_works_beside_an_earlier_training_run(tmp_path):
    """``load`` builds train.json's workflow and runs its ``initialize``: the check that a new run does not reuse an
    earlier run's checkpoint folder was there, so every bundle that had been trained failed to load. It runs with
    ``training`` now, and still refuses such a folder there."""
    import shutil

    copy = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("runs", "eval"))
    (copy / "runs" / "checkpoints").mkdir(parents=True)
    (copy / "runs" / "checkpoints" / "last.ckpt").write_bytes(b"")
    _assert_all_weights(monai.bundle.load(BUNDLE.name, bundle_dir=str(tmp_path)), _shipped_weights())
    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "train.json"))
    parser["bundle_root"] = str(copy)
    # data of its own: the data's check comes before the folder's, and a fresh machine has no built cache
    parser["data_list"] = str(write_random_cases(tmp_path / "data"))
    parser["dataset_dir"] = str(tmp_path / "data")
    parser["synth_ratio"] = 0.0  # the shipped recipe also paints volumes from the cache's head label maps
    assert parser["training"][0].startswith("$medwidit.training.run_training(")  # check_run_folder first
    try:
        parser.get_parsed_content("training#0")
    except RuntimeError as failed:  # MONAI wraps the expression's error
        assert "holds an earlier run's checkpoints (last.ckpt)" in str(failed.__cause__)
    else:
        raise AssertionError("a new run in an earlier run's checkpoint folder was not refused")


def test_monai_label_style_loading_is_strict():
    """MONAI Label's BundleInferTask: ``network.load_state_dict(checkpoint.get("model", checkpoint))``."""
    parser = ConfigParser()
    parser.read_config(config("inference"))
    network = parser.get_parsed_content("network_def")
    checkpoint = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=True)
    _assert_all_weights(network, _shipped_weights())


def test_inference_config_loads_the_extra_weights_that_weight_sets_asks_for():
    """The shipped inference.json's expressions as MONAI evaluates them: extra_weights up to weight_sets reach the
    predictor and the inferer (both sets by default), none with weight_sets 1."""
    parser = ConfigParser()
    parser.read_config(config("inference"))
    bundle = Path(parser.get_parsed_content("bundle_root"))
    assert [Path(f) for f in parser.get_parsed_content("extra_checkpoints")] == [bundle / "models" / "model_b.pt"]
    assert len(parser.get_parsed_content("inferer").extra_segmenters) == 1
    assert len(parser.get_parsed_content("predictor").segmenters) == 2
    parser = ConfigParser()
    parser.read_config(config("inference"))
    parser["weight_sets"] = 1
    assert parser.get_parsed_content("extra_checkpoints") == []
    assert len(parser.get_parsed_content("predictor").segmenters) == 1
    # another ckpt_path: its weights alone, not mixed with the bundle's second set (from a review: evaluate.json
    # scored a run's --ckpt_path ensembled with the shipped model_b.pt, 0.888 where the weights alone scored 0.449)
    for name in ("inference", "evaluate"):
        parser = ConfigParser()
        parser.read_config([config("train"), config(name)] if name == "evaluate" else config(name))
        parser["ckpt_path"] = str(bundle / "models" / "model_b.pt")
        assert parser.get_parsed_content("extra_checkpoints") == [], name


def test_inference_config_speaks_monai():
    parser = ConfigParser()
    parser.read_config(config("inference"))
    assert isinstance(parser.get_parsed_content("preprocessing"), Compose)
    assert isinstance(parser.get_parsed_content("inferer"), Inferer)
    post = parser.get_parsed_content("postprocessing")
    kinds = [type(t) for t in post.transforms]
    assert KeepLargestConnectedComponentd in kinds  # on by default for brain extraction, with the fill: MONAI's
    assert any(issubclass(k, FillHolesd) for k in kinds)  # FillHolesd, whose holes of a class are its background
    assert parser.get_parsed_content("label_postprocessing")[0]["name"] == "keep_largest_component"


def test_default_inference_without_built_data_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "MEDWIDIT_CACHE": str(tmp_path / "no_cache")}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config("inference")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("medwidit: error: 2 of 2 image(s) of brain_extraction.json [test] are not in")
    assert "python -m medwidit.datasets.brain build" in last and "--images" in last


def test_zoo_evaluation_runs_on_the_shipped_example_without_built_data(tmp_path):
    """``run evaluating`` with train.json + evaluate.json (the zoo's combination) on ``data_lists/example.json``:
    the shipped weights, their post-processing and the example give a real brain Dice (1 step, 1 sample here)."""
    report = run_evaluating(
        tmp_path,
        data_list=str(REPOSITORY / "data_lists" / "example.json"),
        dataset_dir=str(REPOSITORY / "medwidit" / "data" / "examples"),
        steps=1,
        num_samples=1,
        device="cpu",
    )
    assert report["num_cases"] == 1 and report["mean"]["brain"] > 0.85
    assert (tmp_path / "predictions" / "colin27_head_2mm_image.nii.gz").is_file()
