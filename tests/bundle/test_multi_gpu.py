"""multi_gpu_train.json merged on train.json runs DDP through Lightning when launched with torchrun, as the model
zoo launches its bundles; here on two CPU processes (gloo) with --device cpu, so that it runs without GPUs."""

import os
import subprocess
import sys

import pytest
import torch
from bundle_data import LOGGING, META, REPOSITORY, TINY_TRAIN, config, write_random_cases


@pytest.mark.slow
def test_torchrun_ddp_on_two_processes(tmp_path):
    data_list = write_random_cases(tmp_path / "data", num_train=4, num_val=2)
    outputs = {"output_dir": tmp_path / "runs", "export_dir": tmp_path / "models"}
    settings = {**TINY_TRAIN, "epochs": 1, "device": "cpu", **outputs}
    args = [f"--{key}={value}" for key, value in settings.items() if key != "roi_size"]
    args += ["--roi_size=[16,16,16]", f"--dataset_dir={tmp_path / 'data'}", f"--data_list={data_list}"]
    args += ["--train#trainer#enable_progress_bar=False"]
    files = f"['{config('train')}','{config('multi_gpu_train')}']"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        files,
        "--meta_file",
        META,
        "--logging_file",
        LOGGING,
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    last = torch.load(tmp_path / "runs" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2  # 4 training volumes over 2 processes at batch size 1: 2 steps each
    assert (tmp_path / "models" / "model.pt").is_file()  # exported once, by rank 0
