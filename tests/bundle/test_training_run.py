"""The documented training command, as a user runs it (``python -m monai.bundle run training``) on a copy of the
bundle: each Lightning line printed once, the export in the run folder and the shipped weights untouched, the old
``--model_path`` refused, and the Lightning checkpoint pointed at ``medwidit export`` when given to ``segment``."""

import os
import shutil
import subprocess
import sys

import pytest
from bundle_data import BUNDLE, REPOSITORY, TINY_TRAIN, write_random_cases

from medwidit.cli import main
from medwidit.diffusion.checkpoint import EXPORT_LOCK


def _override(value) -> str:
    return str(value).replace(" ", "") if isinstance(value, list) else str(value)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data_list = write_random_cases(root / "data")
    bundle = root / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("runs", "eval"))
    shipped = {p.name: p.read_bytes() for p in (bundle / "models").iterdir()}
    overrides = {**TINY_TRAIN, "epochs": 2, "dataset_dir": root / "data", "data_list": data_list}
    args = [a for k, v in overrides.items() for a in (f"--{k}", _override(v))]
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json", *args]
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"bundle": bundle, "shipped": shipped, "output": done.stdout + done.stderr, "command": command, "env": env}


@pytest.mark.slow
def test_each_lightning_line_is_printed_once(run):
    assert run["output"].count("GPU available") == 1
    assert run["output"].count("`Trainer.fit` stopped") == 1


@pytest.mark.slow
def test_training_exports_into_its_run_folder_and_leaves_the_shipped_weights(run):
    bundle = run["bundle"]
    assert {p.name: p.read_bytes() for p in (bundle / "models").iterdir()} == run["shipped"]
    assert {p.name for p in (bundle / "runs" / "models").iterdir()} == {"model.pt", "medwidit.json", EXPORT_LOCK}


@pytest.mark.slow
def test_old_model_path_override_is_refused(run):
    command = [*run["command"], "--model_path", str(run["bundle"] / "models" / "model.pt")]
    done = subprocess.run(command, cwd=run["bundle"], env=run["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "'model_path' is now 'export_dir'" in done.stdout + done.stderr


@pytest.mark.slow
def test_segment_with_a_lightning_checkpoint_says_how_to_export_it(run, tmp_path, capsys):
    best = run["bundle"] / "runs" / "checkpoints" / "best.ckpt"
    image = next((run["bundle"].parent / "data").glob("case0_image.nii.gz"))
    status = main(["segment", "-i", str(image), "-o", str(tmp_path / "out"), "--checkpoint", str(best), "-q"])
    assert status == 1
    assert f"medwidit export {best} BUNDLE_DIR" in capsys.readouterr().err
