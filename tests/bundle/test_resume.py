"""Faults: a training run killed (SIGKILL) in the middle of an epoch resumes from its last checkpoint and loses at
most that epoch. The killed run is the bundle's own command line, started from an unrelated working directory on a
copy of the bundle, so it also shows that bundle_root follows --config_file and not the working directory."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from bundle_data import BUNDLE, REPOSITORY, TINY_TRAIN, write_random_cases
from lightning.pytorch.callbacks import Callback
from monai.bundle import ConfigWorkflow

KILLER = """
import os, signal
from lightning.pytorch.callbacks import Callback

class KillAt(Callback):
    '''SIGKILL this process after training batch `batch` of epoch `epoch`: no handler, no checkpoint, a real crash.'''

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
"""


class Steps(Callback):
    def __init__(self):
        self.global_steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.global_steps.append((trainer.current_epoch, trainer.global_step))


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    data_list = write_random_cases(tmp_path / "data", num_train=4, num_val=1)  # batch 1: 4 steps per epoch
    bundle = tmp_path / "bundle_copy"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("runs", "eval", "models"))
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "killer.py").write_text(textwrap.dedent(KILLER))
    settings = {**TINY_TRAIN, "epochs": 3, "val_interval": 2, "max_steps": -1}
    args = [f"--{key}={value}" for key, value in settings.items() if key != "roi_size"]
    args += ["--roi_size=[16,16,16]", f"--dataset_dir={tmp_path / 'data'}", f"--data_list={data_list}"]
    args += ["--extra_callbacks=$[__import__('killer').KillAt(epoch=1, batch=1)]"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "helpers"), str(REPOSITORY)])}
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    command = [sys.executable, "-m", "monai.bundle", "run", "training",
               "--config_file", str(bundle / "configs" / "train.json"), *args]  # fmt: skip
    killed = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-3000:]

    # the outputs went to the copy's runs/ (bundle_root found from --config_file), nothing to the working directory
    last = bundle / "runs" / "checkpoints" / "last.ckpt"
    assert last.is_file() and not list(workdir.iterdir())
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 4  # epoch 0 complete; the 2 batches of epoch 1 are lost with the process

    steps = Steps()
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        workflow_type="train",
        run_id="training",
        bundle_root=str(bundle),
        dataset_dir=str(tmp_path / "data"),
        data_list=str(data_list),
        resume="last",
        extra_callbacks=[steps],
        **settings,
    )
    workflow.initialize()
    workflow.run()
    # resumed at the start of epoch 1 with the optimizer step count of the checkpoint: only the killed epoch reruns
    assert steps.global_steps[0] == (1, 4) and len(steps.global_steps) == 8
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == 12 and (bundle / "runs" / "models" / "model.pt").is_file()
