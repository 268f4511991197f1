"""The fault catalogue of issue 15, run end to end in a temporary folder: each numbered defect is provoked as a user
(or the machine) would provoke it, and the table says what happened and which files were left.

    python benchmarks/faults.py                      # prints the table, writes benchmarks/results/faults.json

Every case uses a tiny random checkpoint made on the spot (no data, no weights downloaded). Concurrency, the kill
and SIGTERM between commits run real ``medwidit segment`` processes; SIGINT and a full disk are injected in-process
(the commit raises KeyboardInterrupt, the figure writer raises OSError(ENOSPC)). "files left" lists the visible files
of the output folder, plus anything but markers left in its hidden ``.medwidit`` folder (staging folders,
temporaries).
The tests in ``tests/inference/test_faults.py`` and ``test_messages.py`` assert the same behaviours one by one.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import matplotlib.figure  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from _report import environment, write_json  # noqa: E402

from medwidit.cli import main as cli  # noqa: E402
from medwidit.diffusion import DiffusionSegmenter, save_segmenter  # noqa: E402
from medwidit.inference import Predictor  # noqa: E402
from medwidit.inference import files as files_module  # noqa: E402
from medwidit.inference import outputs as outputs_module  # noqa: E402
from medwidit.nets import WiDiT  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
FAST = ["--steps", "1", "--samples", "1", "--quiet", "--device", "cpu"]
BARRIER = """
import os, pathlib, sys, time
import nibabel
barrier, real = pathlib.Path(sys.argv[1]), nibabel.save
def save(*args, **kwargs):
    real(*args, **kwargs)
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 240
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.02)
nibabel.save = save
from medwidit.cli import main
sys.exit(main(sys.argv[2:]))
"""
KILL = """
import os, signal, sys
from medwidit.inference import outputs
real = outputs.commit
def commit(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
outputs.commit = commit
from medwidit.cli import main
sys.exit(main(sys.argv[1:]))
"""

KILL_AFTER_TWO = KILL.replace("real = outputs.commit", "real, calls = outputs.commit, []").replace(
    "    os.kill(os.getpid(), signal.SIGKILL)",
    "    calls.append(args)\n    if len(calls) == 2:  # two files placed\n        os.kill(os.getpid(), signal.SIGKILL)",
)


class Lab:
    """A fresh folder per case, the tiny checkpoint, and helpers that run the CLI and list what is left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoint = root / "model.pt"
        net = WiDiT(
            spatial_dim=3,
            in_channels=2,
            cond_channels=1,
            hidden_size=32,
            depth=1,
            num_heads=2,
            window_size=4,
            learn_sigma=False,
        )
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
        extra = {"preprocessing": {"spacing": [1.5, 1.5, 1.5], "num_modalities": 1}, "roi_size": [16, 16, 16]}
        save_segmenter(DiffusionSegmenter(net, num_classes=2), self.checkpoint, extra_config=extra)
        self.predictor = Predictor.from_checkpoint(self.checkpoint, device="cpu")

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path

    @staticmethod
    def nifti(path: Path, shape=(12, 10, 8), spacing=(1.2, 1.0, 1.5), seed=0) -> Path:
        data = np.random.default_rng(seed).random(shape).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
        return path

    def cli(self, *args: str) -> tuple[int, str]:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = cli(["segment", *args, "--checkpoint", str(self.checkpoint), *FAST])
        return code, stderr.getvalue()

    def process(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    @staticmethod
    def left(folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith((".", "medwidit_run")))  # not records
        state = folder / ".medwidit"
        if state.is_dir():
            names += sorted(f".medwidit/{p.name}" for p in state.iterdir() if p.suffix != ".json" and p.name != "lock")
        return names


def _error(text: str) -> str:
    lines = [line.removeprefix("medwidit: error: ") for line in text.splitlines() if "error:" in line]
    return lines[0] if lines else ""


######################################################################################################################
# the catalogue: each returns (outcome in words, the folder whose files are counted, whether the behaviour held)
######################################################################################################################


def concurrent_runs(lab: Lab):
    inputs, out, barrier = lab.folder("in"), lab.root / "out", lab.folder("barrier")
    lab.nifti(inputs / "scan.nii.gz")
    args = [
        "-c",
        BARRIER,
        str(barrier),
        "segment",
        "-i",
        str(inputs),
        "-o",
        str(out),
        "--checkpoint",
        str(lab.checkpoint),
        "--save-uncertainty",
        *FAST,
    ]
    runs = [lab.process(*args, "--seed", str(seed)) for seed in (1, 2)]
    codes = [run.wait(timeout=600) for run in runs]
    loser = [_error(run.stderr.read()) for run in runs]
    reference = lab.root / "reference"  # one run's set: the label map and every uncertainty map
    lab.cli("-i", str(inputs), "-o", str(reference), "--save-uncertainty")
    ok = sorted(codes) == [0, 1] and lab.left(out) == lab.left(reference)
    return f"exit codes {codes}; the other: {next((m for m in loser if m), 'none')}", out, ok


def header_data_file(suffix: str, data: str, key: str) -> Callable[[Lab], tuple]:
    def run(lab: Lab):
        inputs, out = lab.folder("in"), lab.root / "out"
        image = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 10, 12)).astype(np.float32))
        sitk.WriteImage(image, str(inputs / f"head{suffix}"))
        code, _ = lab.cli("-i", str(inputs / f"head{suffix}"), "-o", str(out))
        header = (out / f"head{suffix}").read_text(errors="replace")
        named = next((line for line in header.splitlines() if line.startswith(key)), "")
        copy = lab.folder("copy")
        for name in lab.left(out):
            (copy / name).write_bytes((out / name).read_bytes())
        readable = sitk.ReadImage(str(copy / f"head{suffix}")).GetSize() == (12, 10, 8)
        ok = code == 0 and named == f"{key}head{data}" and readable
        return f"exit {code}; header says '{named}'; a copy of the folder {'reads' if readable else 'fails'}", out, ok

    return run


def kill_between_commits(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    args = [
        "segment",
        "-i",
        str(inputs),
        "-o",
        str(out),
        "--checkpoint",
        str(lab.checkpoint),
        "--save-uncertainty",
        *FAST,
    ]
    code = lab.process("-c", KILL, *args).wait(timeout=600)
    after_kill = lab.left(out)  # the visible half, and the staging folder no process could remove
    again, err = lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty", "--continue")
    reference = lab.root / "reference"  # what an uninterrupted run writes (the label map and every uncertainty map)
    lab.cli("-i", str(inputs), "-o", str(reference), "--save-uncertainty")
    ok = (
        code == -9
        and after_kill[0] == "scan.nii.gz"
        and len(after_kill) == 2
        and again == 0
        and lab.left(out) == lab.left(reference)
    )
    shown = ", ".join(
        name.split(".staging")[0].rsplit(".", 1)[0] + ".*.staging" if "staging" in name else name for name in after_kill
    )
    return f"killed (signal {-code}) leaving {shown}, no marker; --continue exit {again}, finished the commit", out, ok


def sigterm_between_commits(lab: Lab):
    """A scheduler's time limit: SIGTERM right after the case's first file is committed."""
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(lab.checkpoint), "--save-uncertainty"]
    run = lab.process("-c", KILL.replace("signal.SIGKILL", "signal.SIGTERM"), *args, *FAST)
    code = run.wait(timeout=600)
    said = _error(run.stderr.read())
    record_file = out / "medwidit_run.json"
    record = json.loads(record_file.read_text()).get("status") if record_file.is_file() else None
    ok = code == 143 and lab.left(out) == [] and record == "interrupted"
    return f"exit {code}; record {record}; said '{said}'", out, ok


@contextlib.contextmanager
def _second_commit_interrupted():
    """Ctrl-C at a case's second file commit: ``outputs.commit`` raises KeyboardInterrupt at its second call."""
    real, calls = outputs_module.commit, []

    def commit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    outputs_module.commit = commit
    try:
        yield
    finally:
        outputs_module.commit = real


def sigint_between_commits(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    with _second_commit_interrupted():
        code, err = lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty", "--save-figure")
    said = _error(err)
    ok = code == 130 and lab.left(out) == [] and "removed the 1 output file(s)" in said
    return f"exit {code}; said '{said}'", out, ok


def disk_full(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    real = matplotlib.figure.Figure.savefig

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    matplotlib.figure.Figure.savefig = full
    try:
        code, err = lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty", "--save-figure")
    finally:
        matplotlib.figure.Figure.savefig = real
    said = _error(err)
    ok = code == 1 and lab.left(out) == [] and "scan_figure.png: cannot write (No space left on device)" in said
    return f"exit {code}; said '{Path(said.split(':')[0]).name}:{said.split(':', 1)[1]}'", out, ok


def sigint_during_overwrite(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty")
    before = {name: (out / name).read_bytes() for name in lab.left(out)}
    with _second_commit_interrupted():
        code, _ = lab.cli("-i", str(inputs), "-o", str(out), "--overwrite", "--save-probabilities", "--seed", "1")
    after = {name: (out / name).read_bytes() for name in lab.left(out)}
    again, _ = lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty", "--continue")
    ok = code == 130 and after == before and again == 0 and lab.left(out) == sorted(before)
    return f"exit {code}; the earlier {len(before)} files back, byte for byte; --continue skips the case", out, ok


def same_seed_runs(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    real, first = files_module.save_image, []

    def save_image(*args, **kwargs):  # run A, start to finish, while run B stages its first file
        if not first:
            first.append(None)  # A's own writes go straight through
            first[0] = lab.cli("-i", str(inputs), "-o", str(out), "--save-probabilities")[0]
        return real(*args, **kwargs)

    files_module.save_image = save_image
    try:
        code, err = lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty")
    finally:
        files_module.save_image = real
    again, _ = lab.cli("-i", str(inputs), "-o", str(out), "--save-probabilities", "--continue")
    said = _error(err)
    ok = first == [0] and code == 1 and "already exists" in said and again == 0
    return (
        f"A exit {first[0]}, B exit {code}: '{Path(said.split(':')[0]).name}: already exists'; "
        f"A's --continue exit {again}",
        out,
        ok,
    )


def overwrite_continue(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "a.nii.gz")
    lab.nifti(inputs / "b.nii.gz", seed=1)
    lab.cli("-i", str(inputs / "a.nii.gz"), "-o", str(out))
    (out / "b.nii.gz").write_bytes(b"half-written by an older run")
    code, err = lab.cli("-i", str(inputs), "-o", str(out), "--overwrite", "--continue")
    ok = code == 0 and nib.load(out / "b.nii.gz").shape == (12, 10, 8)
    return f"exit {code}: finished case a skipped, unfinished case b redone", out, ok


def one_name_two_formats(lab: Lab):
    first, second, out = lab.folder("in1"), lab.folder("in2"), lab.root / "out"
    lab.nifti(first / "scan.nii")
    lab.nifti(second / "scan.nii.gz", seed=1)
    lab.cli("-i", str(first), "-o", str(out), "--save-uncertainty")
    earlier = lab.left(out)
    refused, err = lab.cli("-i", str(second), "-o", str(out))
    kept = lab.left(out) == earlier
    replaced, _ = lab.cli("-i", str(second), "-o", str(out), "--overwrite")
    ok = refused == 1 and kept and "written by an earlier run" in err and lab.left(out) == ["scan.nii.gz"]
    outcome = f"exit {refused}, the earlier set kept; --overwrite exit {replaced}, one set left"
    return outcome, out, ok


def overwrite_keeps_another_cases_files(lab: Lab):
    inputs, other, out = lab.folder("in"), lab.folder("in2"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    lab.nifti(other / "scan_uncertainty.nii.gz", seed=1)
    lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty")
    lab.cli("-i", str(other), "-o", str(out), "--overwrite")  # case scan_uncertainty takes scan's map's name
    labels = (out / "scan_uncertainty.nii.gz").stat()  # a redone case is a new file: a new inode
    code, _ = lab.cli("-i", str(inputs), "-o", str(out), "--overwrite")  # scan again, without maps
    skipped, _ = lab.cli("-i", str(other), "-o", str(out), "--continue")  # finished: nothing to redo
    after = (out / "scan_uncertainty.nii.gz").stat()
    kept = (after.st_ino, after.st_mtime_ns) == (labels.st_ino, labels.st_mtime_ns)
    ok = code == 0 and skipped == 0 and kept and lab.left(out) == ["scan.nii.gz", "scan_uncertainty.nii.gz"]
    return f"exit {code}; case scan_uncertainty's labels kept: {kept}; its --continue exit {skipped}", out, ok


def overwrite_takes_another_cases_file(lab: Lab):
    """Case scan's --overwrite with maps writes over case scan_uncertainty's labels: that case's marker drops them."""
    inputs, other, out = lab.folder("in"), lab.folder("in2"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    lab.nifti(other / "scan_uncertainty.nii.gz", seed=1)
    lab.cli("-i", str(other), "-o", str(out))
    code, _ = lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty", "--overwrite")
    again, err = lab.cli("-i", str(other), "-o", str(out), "--continue")  # not skipped as finished
    ok = code == 0 and again == 1 and "was replaced by case 'scan''s output" in err
    return f"exit {code}; case scan_uncertainty's --continue exit {again}, naming the replaced file", out, ok


def input_folder_is_output_folder(lab: Lab):
    """-i d -o d, then a scan added and --continue: the earlier outputs are not cases."""
    folder = lab.folder("d")
    lab.nifti(folder / "scan_0000.nii.gz")
    first, _ = lab.cli("-i", str(folder), "-o", str(folder), "--save-uncertainty")
    lab.nifti(folder / "new_0000.nii.gz", seed=2)
    again, err = lab.cli("-i", str(folder), "-o", str(folder), "--save-uncertainty", "--continue")
    ok = first == 0 and again == 0 and (folder / "new.nii.gz").is_file() and not err.count("error")
    return f"exit {first}; a scan added, --continue exit {again}: the new case done, the earlier skipped", folder, ok


def killed_commit_then_another_format(lab: Lab):
    """A run killed after two of its files' commits, then the case from scan.nii: refused; --overwrite: one set."""
    first, second, out = lab.folder("in1"), lab.folder("in2"), lab.root / "out"
    lab.nifti(first / "scan.nii.gz")
    lab.nifti(second / "scan.nii", seed=1)
    args = ["segment", "-i", str(first), "-o", str(out), "--checkpoint", str(lab.checkpoint), "--save-uncertainty",
            *FAST]  # fmt: skip
    killed = lab.process("-c", KILL_AFTER_TWO, *args).wait(timeout=600)
    refused, err = lab.cli("-i", str(second), "-o", str(out))
    replaced, _ = lab.cli("-i", str(second), "-o", str(out), "--overwrite")
    ok = killed == -9 and refused == 1 and "would leave behind" in err and lab.left(out) == ["scan.nii"]
    return f"killed; exit {refused}, naming what it left; --overwrite exit {replaced}, one set left", out, ok


def continue_other_settings(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    lab.cli("-i", str(inputs), "-o", str(out))
    before = (out / "scan.nii.gz").read_bytes()
    refused, err = lab.cli("-i", str(inputs), "-o", str(out), "--continue", "--seed", "1")
    kept = (out / "scan.nii.gz").read_bytes() == before
    redone, _ = lab.cli("-i", str(inputs), "-o", str(out), "--continue", "--overwrite", "--seed", "1")
    said = _error(err)
    ok = refused == 1 and kept and "seed 1 (then 0)" in said and redone == 0
    outcome = said.split(": ", 1)[1].split(";")[0] if ": " in said else said
    return f"exit {refused}, files kept: '{outcome}'; --overwrite --continue exit {redone}", out, ok


def output_is_another_input(lab: Lab):
    inputs, source = lab.folder("in"), lab.folder("src")
    lab.nifti(source / "scan.nii.gz")
    victim = lab.nifti(inputs / "scan_uncertainty.nii.gz", seed=5)
    before = victim.read_bytes()
    code, err = lab.cli(
        "-i", str(source / "scan.nii.gz"), str(victim), "-o", str(inputs), "--overwrite", "--save-uncertainty"
    )
    ok = code == 1 and victim.read_bytes() == before and "is also the input" in err
    return f"exit {code}, input untouched: {victim.read_bytes() == before}; refused before any case ran", inputs, ok


def cross_case_collision(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    lab.nifti(inputs / "x.nii.gz")
    lab.nifti(inputs / "x_uncertainty.nii.gz", seed=1)
    code, err = lab.cli("-i", str(inputs), "-o", str(out), "--save-uncertainty")
    ok = code == 1 and lab.left(out) == [] and "also an output of case 'x'" in err
    return f"exit {code}; refused before any case ran", out, ok


def empty_folder(lab: Lab):
    inputs, empty, out = lab.folder("in"), lab.folder("empty"), lab.root / "out"
    lab.nifti(inputs / "scan.nii.gz")
    code, err = lab.cli("-i", str(empty), str(inputs), "-o", str(out))
    ok = code == 1 and lab.left(out) == ["scan.nii.gz"] and "no image files in this folder" in err
    return f"exit {code}; the empty folder reported, scan segmented", out, ok


def id_like_names(lab: Lab):
    inputs, out = lab.folder("in"), lab.root / "out"
    for i in (1, 2, 3):
        lab.nifti(inputs / f"patient_{i:04d}.nii.gz", seed=i)
    code, err = lab.cli("-i", str(inputs), "-o", str(out))
    ok = code == 0 and lab.left(out) == [f"patient_{i:04d}.nii.gz" for i in (1, 2, 3)]
    return f"exit {code}; three single-modality cases", out, ok


def grid(spacing: float, expect: str) -> Callable[[Lab], tuple]:
    def run(lab: Lab):
        inputs, out = lab.folder("in"), lab.root / "out"
        lab.nifti(inputs / "scan.nii.gz", spacing=(spacing,) * 3)
        code, err = lab.cli("-i", str(inputs), "-o", str(out))
        said = _error(err)
        return f"exit {code}; '{said.split(': ', 1)[-1][:110]}...'", out, code == 1 and expect in said

    return run


def array_without_affine(lab: Lab):
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("medwidit").addHandler(handler)
    try:
        image = np.random.default_rng(0).random((12, 10, 8), dtype=np.float32)  # a constant one is refused as blank
        lab.predictor.segment(image, steps=1, num_samples=1)
    finally:
        logging.getLogger("medwidit").removeHandler(handler)
    said = next((r.getMessage() for r in records if "affine" in r.getMessage()), "")
    return f"warned: '{said}'", lab.root / "none", bool(said)


def batch_size_independence(lab: Lab):
    checkpoint = lab.root / "model.pt"
    volume = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    maps = [
        Predictor.from_checkpoint(checkpoint, device="cpu", sw_batch_size=b)
        .segment(volume, affine=np.diag([1.5, 1.5, 1.5, 1.0]), steps=2, num_samples=2)
        .probability
        for b in (1, 4)
    ]
    difference = float(np.abs(maps[0] - maps[1]).max())
    return f"max |p(batch 1) - p(batch 4)| = {difference:g}", lab.root / "none", difference == 0.0


def message(make: Callable[[Lab], tuple[int, str]], expect: str) -> Callable[[Lab], tuple]:
    def run(lab: Lab):
        code, err = make(lab)
        said = _error(err)
        shown = said if len(said) < 150 else said[:147] + "..."
        return f"exit {code}; '{shown}'", lab.root / "out", code == 1 and expect in said and "\n" not in said

    return run


def _nifti_with_sform_row(lab: Lab, row) -> tuple[int, str]:
    header = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).header.copy()
    header.set_qform(None, code=0)
    header["sform_code"], header["srow_x"] = 1, row
    nib.save(nib.Nifti1Image(np.ones((12, 10, 8), np.float32), None, header=header), str(lab.root / "odd.nii.gz"))
    return lab.cli("-i", str(lab.root / "odd.nii.gz"), "-o", str(lab.root / "out"))


def _checkpoint_file(content: Callable[[Path], object]) -> Callable[[Lab], tuple[int, str]]:
    def make(lab: Lab):
        content(lab.root / "bad.pt")
        lab.nifti(lab.root / "scan.nii.gz")
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = cli(
                [
                    "segment",
                    "-i",
                    str(lab.root / "scan.nii.gz"),
                    "-o",
                    str(lab.root / "out"),
                    "--checkpoint",
                    str(lab.root / "bad.pt"),
                    *FAST,
                ]
            )
        return code, stderr.getvalue()

    return make


def _bundle_roi(lab: Lab) -> tuple[int, str]:
    bundle = lab.folder("bundle")
    (bundle / "models").mkdir()
    (bundle / "configs").mkdir()
    (bundle / "models" / "model.pt").write_bytes(lab.checkpoint.read_bytes())
    (bundle / "configs" / "inference.json").write_text(json.dumps({"roi_size": "64"}))
    lab.nifti(lab.root / "scan.nii.gz")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli(
            [
                "segment",
                "-i",
                str(lab.root / "scan.nii.gz"),
                "-o",
                str(lab.root / "out"),
                "--bundle",
                str(bundle),
                *FAST,
            ]
        )
    return code, stderr.getvalue()


def _four_d_nrrd(lab: Lab) -> tuple[int, str]:
    volume = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 10, 12)).astype(np.float32))
    sitk.WriteImage(sitk.JoinSeries([volume]), str(lab.root / "four.nrrd"))
    return lab.cli("-i", str(lab.root / "four.nrrd"), "-o", str(lab.root / "out"))


def _permission(lab: Lab) -> tuple[int, str]:
    path = lab.nifti(lab.root / "locked.nii.gz")
    real = nib.load

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    nib.load = denied  # the checker runs as root here, where chmod 000 would not stop a read
    try:
        return lab.cli("-i", str(path), "-o", str(lab.root / "out"))
    finally:
        nib.load = real


class _Thing:
    pass


CATALOGUE: list[tuple[str, str, Callable[[Lab], tuple]]] = [
    ("1", "two runs, one folder, no --overwrite", concurrent_runs),
    ("2", ".mhd output names its data file", header_data_file(".mhd", ".zraw", "ElementDataFile = ")),
    ("2", ".nhdr output names its data file", header_data_file(".nhdr", ".raw.gz", "data file: ")),
    ("3", "kill between the commits of a case", kill_between_commits),
    ("3", "SIGINT between the commits of a case", sigint_between_commits),
    ("3", "SIGTERM between the commits of a case", sigterm_between_commits),
    ("3", "disk full while the figure is written", disk_full),
    ("3", "--overwrite --continue", overwrite_continue),
    ("3", "SIGINT during an --overwrite's commit", sigint_during_overwrite),
    ("3", "--continue with another --seed", continue_other_settings),
    ("3", "one case name in two formats (.nii, then .nii.gz)", one_name_two_formats),
    ("3", "--overwrite beside another case's listed file", overwrite_keeps_another_cases_files),
    ("3", "--overwrite over another case's listed file", overwrite_takes_another_cases_file),
    ("3", "a killed commit's files, then the case in another format", killed_commit_then_another_format),
    ("4", "-i and -o one folder, a scan added, --continue", input_folder_is_output_folder),
    ("1", "two runs of one seed, other outputs beside the labels", same_seed_runs),
    ("4", "an output is another case's input", output_is_another_input),
    ("4", "cases x and x_uncertainty collide", cross_case_collision),
    ("5", "an empty folder among the inputs", empty_folder),
    ("6", "patient_0001..0003, one-channel model", id_like_names),
    ("7", "0.01 mm spacing (grid collapses)", grid(0.01, "too small to segment")),
    ("7", "20 mm spacing (grid explodes)", grid(20.0, "times as many voxels")),
    ("7", "numpy array without an affine", array_without_affine),
    ("8", "--sw-batch-size 1 vs 4", batch_size_independence),
    ("9", "NaN affine", message(lambda lab: _nifti_with_sform_row(lab, [np.nan, 0, 0, 0]), "NaN or infinite")),
    ("9", "singular affine", message(lambda lab: _nifti_with_sform_row(lab, [0, 0, 0, 0]), "singular")),
    ("9", "empty checkpoint", message(_checkpoint_file(lambda p: p.write_bytes(b"")), "the file is empty")),
    (
        "9",
        "checkpoint holding a pickled object",
        message(
            _checkpoint_file(lambda p: torch.save({"state_dict": {}, "config": {}, "x": _Thing()}, p)),
            "source you trust",
        ),
    ),
    ("9", 'bundle "roi_size": "64"', message(_bundle_roi, "inference.json: roi_size must be an int")),
    (
        "9",
        "unreadable NRRD header (ITK error)",
        message(
            lambda lab: (
                (lab.root / "bad.nrrd").write_text(
                    "NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n"
                ),
                lab.cli("-i", str(lab.root / "bad.nrrd"), "-o", str(lab.root / "out")),
            )[1],
            "require endian info",
        ),
    ),
    ("9", "permission denied", message(_permission, "permission denied")),
    (
        "9",
        "4D singleton NRRD",
        lambda lab: (lambda r: (f"exit {r[0]}", lab.root / "out", r[0] == 0))(_four_d_nrrd(lab)),
    ),
    (
        "9",
        "--overlap 1.5 with two cases",
        message(
            lambda lab: (
                lab.nifti(lab.root / "a.nii.gz"),
                lab.nifti(lab.root / "b.nii.gz"),
                lab.cli(
                    "-i",
                    str(lab.root / "a.nii.gz"),
                    str(lab.root / "b.nii.gz"),
                    "-o",
                    str(lab.root / "out"),
                    "--overlap",
                    "1.5",
                ),
            )[2],
            "overlap must be in",
        ),
    ),
    ("9", '-i ""', message(lambda lab: lab.cli("-i", "", "-o", str(lab.root / "out")), "an input path is empty")),
]


def run_catalogue(root: Path) -> list[dict]:
    rows = []
    for number, (defect, name, case) in enumerate(CATALOGUE):
        lab_root = root / f"case{number:02d}"
        lab_root.mkdir()
        start = time.perf_counter()
        try:
            outcome, folder, ok = case(Lab(lab_root))
        except Exception as e:  # a crash is an outcome too: it goes in the table, the catalogue goes on
            outcome, folder, ok = f"crashed: {type(e).__name__}: {e}", lab_root / "out", False
        outcome = outcome.replace(f"{lab_root}/", "")
        rows.append(
            {
                "defect": int(defect),
                "case": name,
                "outcome": outcome,
                "files_left": Lab.left(folder),
                "ok": bool(ok),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| # | case | outcome | files left | ok |", "|---|---|---|---|---|"]
    for row in rows:
        left = ", ".join(row["files_left"]) or "none"
        ok = "yes" if row["ok"] else "NO"
        lines.append(f"| {row['defect']} | {row['case']} | {row['outcome']} | {left} | {ok} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="medwidit-faults-") as root:
        rows = run_catalogue(Path(root))
    print(table(rows))
    held = sum(row["ok"] for row in rows)
    print(f"\n{held} of {len(rows)} faults handled as issue 15 asks")
    result = {"environment": environment(torch.device("cpu"), __file__), "held": held, "cases": len(rows), "rows": rows}
    write_json(result, args.output)
    return 0 if held == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
