"""training/bundle: where a bundle lives, the network MONAI's tools see, and case results."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from training_volumes import tiny_segmenter

from medwidit.diffusion import save_segmenter
from medwidit.diffusion.encoding import to_probabilities
from medwidit.training import SegmentationNetwork, find_bundle_root, require_done

NAME = "brain_widit_segmentation"


def _bundle(tmp_path: Path) -> Path:
    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "configs" / "metadata.json").write_text("{}")
    return tmp_path / "b"


@pytest.mark.parametrize(
    "form",
    ["{c}", "['{c}', '{o}']", "[{c},{o}]", "={c}"],
    ids=["path", "list", "bare-list", "equals"],
)
def test_bundle_root_follows_config_file(tmp_path, form):
    bundle = _bundle(tmp_path)
    config, other = bundle / "configs" / "train.json", bundle / "configs" / "multi_gpu_train.json"
    value = form.format(c=config, o=other)
    argv = (
        ["monai.bundle", "run", "training", f"--config_file{value}"]
        if value.startswith("=")
        else ["monai.bundle", "run", "training", "--config_file", value, "--epochs", "2"]
    )
    assert find_bundle_root(NAME, argv) == str(bundle.resolve())


def test_bundle_root_falls_back_to_the_checkout_and_fails_clearly(tmp_path, caplog):
    """The fallback says why: a ConfigParser read by hand from a copied bundle took the shipped bundle's weights and
    output folder without a word."""
    checkout = str(Path(__file__).resolve().parents[2] / "bundles" / NAME)
    with caplog.at_level("WARNING", logger="medwidit.training.bundle"):
        assert find_bundle_root(NAME, ["pytest"]) == checkout
    assert [r.getMessage() for r in caplog.records] == [
        "bundle_root: no MONAI workflow runs this config and no --config_file names a bundle's configs/ file; using "
        f"the shipped bundle {checkout} (to choose another: --bundle_root DIR, or parser['bundle_root'] = DIR for a "
        "ConfigParser)."
    ]
    # a config file outside any bundle's configs/ folder does not count
    assert find_bundle_root(NAME, ["x", "--config_file", str(tmp_path / "a.json")]) == checkout
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        find_bundle_root("no_such_bundle", ["pytest"])


def test_bundle_root_is_the_bundle_a_python_workflow_runs(tmp_path, capsys):
    """monai.bundle.run / load from Python (and ConfigWorkflow, --args_file) put no --config_file in sys.argv: a
    copied bundle's configs read the shipped bundle's weights and wrote into its eval/ folder."""
    import shutil

    import monai.bundle

    shipped = Path(__file__).resolve().parents[2] / "bundles" / NAME
    copy = tmp_path / "copy"
    shutil.copytree(shipped / "configs", copy / "configs")
    monai.bundle.run(
        run_id="show",
        config_file=str(copy / "configs" / "inference.json"),
        show="$print('ROOTS', @bundle_root, @ckpt_path, @output_dir)",
    )
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ROOTS"))
    root = str(copy.resolve())
    assert line.split()[1:] == [root, root + "/models/model.pt", root + "/eval"]


def test_a_workflows_parser_read_first_is_the_workflows_bundle(tmp_path):
    """From a review: ``ConfigWorkflow(...).initialize()`` then ``workflow.parser.get_parsed_content("ckpt_path")``
    (outside the workflow's methods) gave the shipped bundle's weights for a copied bundle, with a warning saying
    that no workflow ran the config, and the shipped folder stayed cached for the run."""
    import shutil

    from monai.bundle import ConfigParser, ConfigWorkflow

    shipped = Path(__file__).resolve().parents[2] / "bundles" / NAME
    copy = tmp_path / "copy"
    shutil.copytree(shipped / "configs", copy / "configs")
    workflow = ConfigWorkflow(config_file=str(copy / "configs" / "inference.json"), workflow_type="infer")
    workflow.initialize()
    assert workflow.parser.get_parsed_content("ckpt_path") == str(copy.resolve() / "models" / "model.pt")
    assert workflow.bundle_root == str(copy.resolve())
    parser = ConfigParser()  # a parser of the user's own falls back to the shipped bundle, as before
    parser.read_config(str(copy / "configs" / "inference.json"))
    assert parser.get_parsed_content("bundle_root") == str(shipped)


def test_bundle_datalist_checks_labels_for_evaluation_and_names_an_empty_split(tmp_path):
    """evaluate.json segmented every case, then failed on a missing "label" (KeyError naming nothing) or label file;
    an empty split was an IndexError inside MONAI."""
    from medwidit.training import MissingDataError, bundle_datalist

    (tmp_path / "scan.nii.gz").write_bytes(b"")
    lists = {
        "nolabel.json": {"test": [{"image": "scan.nii.gz"}]},
        "missing.json": {"test": [{"image": "scan.nii.gz", "label": "gone.nii.gz"}]},
        "empty.json": {"test": []},
    }
    for name, content in lists.items():
        (tmp_path / name).write_text(json.dumps(content))
    assert len(bundle_datalist(tmp_path / "nolabel.json", "test", tmp_path)) == 1  # inference needs no label
    for name, match in (
        ("nolabel.json", r"1 case\(s\) of nolabel.json \[test\] have no \"label\" to evaluate against"),
        ("missing.json", r"1 label file\(s\) of missing.json \[test\] are not in .*gone.nii.gz"),
        ("empty.json", r"split 'test' of data list .*empty.json is empty"),
    ):
        with pytest.raises(MissingDataError, match=match):
            bundle_datalist(tmp_path / name, "test", tmp_path, labels=True)


def test_a_new_run_in_an_earlier_runs_checkpoint_folder_is_refused_unless_asked(tmp_path, caplog):
    """It replaced last.ckpt after an epoch while the old best.ckpt lived on until the first validation, so an export
    in between took the old weights; the bundle's training now refuses, naming --resume, --output_dir and
    --overwrite_run."""
    from medwidit.training import check_run_folder

    folder = tmp_path / "checkpoints"
    check_run_folder(folder, None)  # no folder yet
    folder.mkdir()
    (folder / "notes.txt").write_text("")
    check_run_folder(folder, None)  # no checkpoint in it
    for name in ("best.ckpt", "last.ckpt"):
        (folder / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"earlier run's checkpoints \(best.ckpt, last.ckpt\): .*--resume last"):
        check_run_folder(folder, None, "false")
    check_run_folder(folder, "last")  # resuming that run
    assert (folder / "best.ckpt").exists()
    check_run_folder(folder, None, "true")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and "removed" in caplog.text


def test_a_second_run_into_a_folder_in_use_is_refused_until_the_first_lets_go(tmp_path):
    """From a review: two runs started together into one output folder both passed the check above (the first
    checkpoint comes after an epoch), then wrote each other's last.ckpt / best.ckpt and exported model. The first
    run's check takes the folder's lock for the run; another process holding it refuses the run, naming it."""
    from medwidit.training import check_run_folder, release_run_folder
    from medwidit.utils.files import locked

    folder = tmp_path / "runs" / "checkpoints"
    check_run_folder(folder, None)
    lock = tmp_path / "runs" / ".checkpoints.lock"
    assert f"process {os.getpid()}" in lock.read_text()
    check_run_folder(folder, None)  # the same process again (a notebook training a second time): its own lock
    with locked(lock, blocking=False) as free:  # another holder (another open file: flock takes turns with it)
        assert not free
    release_run_folder(folder)
    with locked(lock, blocking=False) as free:
        assert free
        lock.write_text("process 4242 on elsewhere, since 2026-12-06 20:00:00\n")
        busy = r"checkpoints is in use by another training run \(process 4242 .*--output_dir"
        with pytest.raises(ValueError, match=busy):
            check_run_folder(folder, None)
        with pytest.raises(ValueError, match="in use"):
            check_run_folder(folder, "last")  # resuming, too
    check_run_folder(folder, None)  # the other run ended
    release_run_folder(folder)
    release_run_folder(folder)  # nothing held: nothing to do


def test_only_the_first_rank_locks_the_run_folder_or_removes_earlier_checkpoints(tmp_path, monkeypatch):
    """Every DDP rank runs train.json's check: the lock and overwrite_run's removal are the first rank's."""
    from medwidit.training import check_run_folder

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"")
    monkeypatch.setenv("RANK", "1")
    check_run_folder(folder, None, "true")
    assert (folder / "last.ckpt").exists() and not (tmp_path / ".checkpoints.lock").exists()
    with pytest.raises(ValueError, match="earlier run's checkpoints"):
        check_run_folder(folder, None)  # every rank refuses alike


@pytest.mark.parametrize(
    "env, first",
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # an interactive srun: Lightning's launcher's child
        ({"SLURM_PROCID": "0"}, True),
        ({"NODE_RANK": "1"}, False),  # Lightning's launcher's main process on the second node
        ({"OMPI_COMM_WORLD_RANK": "2"}, False),
        ({"PMI_RANK": "0"}, True),
        ({"LOCAL_RANK": "0", "SLURM_NODEID": "1"}, False),  # an sbatch exporting LOCAL_RANK only, second node
        ({"SLURM_PROCID": "0", "SLURM_NODEID": "0"}, True),
    ],
)
def test_the_first_rank_is_read_as_lightning_reads_it(monkeypatch, env, first):
    """From a review: SLURM_PROCID was read before LOCAL_RANK (Lightning reads it after: an interactive srun sets it
    where Lightning's launcher runs the ranks, whose children then each took the lock and were refused); a second
    node's main process and MPI's ranks each counted as the first."""
    from medwidit.training.bundle import RANK_VARIABLES, _first_rank

    for name in (*RANK_VARIABLES, "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _first_rank() is first


def test_the_run_folders_lock_is_one_through_any_path_and_never_stops_a_run_it_cannot_take(tmp_path, monkeypatch):
    """From a review: a folder named through a link had a lock of its own (a second run through it was accepted); a
    parent folder where no lock file can be written (/scratch with --output_dir /scratch/$USER) failed the run, and so
    did a system without fcntl (Windows): they train without a lock, with a warning, as before."""
    import errno
    import io
    import sys

    import medwidit.utils.files as files
    from medwidit.training import check_run_folder, release_run_folder

    (tmp_path / "runs" / "checkpoints").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    check_run_folder(tmp_path / "runs" / "checkpoints", None)
    with files.locked(tmp_path / "runs" / ".checkpoints.lock", blocking=False) as free:
        assert not free
    release_run_folder(tmp_path / "link" / "checkpoints")  # the same folder's lock
    with files.locked(tmp_path / "runs" / ".checkpoints.lock", blocking=False) as free:
        assert free
        with pytest.raises(ValueError, match="in use by another training run"):
            check_run_folder(tmp_path / "link" / ".." / "runs" / "checkpoints", None)

    real_open, real_io_open = files.os.open, io.open

    def refused(opener):  # the lock file's folder is not writable by this user (the tests run as root)
        def open_(path, *args, **kwargs):
            if str(path).endswith(".lock"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return opener(path, *args, **kwargs)

        return open_

    monkeypatch.setattr(files.os, "open", refused(real_open))
    monkeypatch.setattr(io, "open", refused(real_io_open))
    check_run_folder(tmp_path / "ro" / "checkpoints", None)  # a warning, no lock, the run goes on
    release_run_folder(tmp_path / "ro" / "checkpoints")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "fcntl", None)  # no fcntl here
    check_run_folder(tmp_path / "win" / "checkpoints", None)
    release_run_folder(tmp_path / "win" / "checkpoints")


def test_resuming_lightnings_skewed_epoch_counters_warns(tmp_path, caplog):
    """From a review's repro: a run resumed from a stop at max_steps on an epoch's last batch saves epoch counters
    with more epochs processed than started (Lightning issue 19617; seen on 2.6: a run stopped at 4 steps, resumed to
    12, saved started 3 / processed 4), and resuming that checkpoint again trained no step, silently."""
    from medwidit.training import check_run_folder, release_run_folder

    folder = tmp_path / "checkpoints"
    folder.mkdir()

    def save(started, processed):
        total = {"ready": started, "started": started, "processed": processed, "completed": processed - 1}
        torch.save({"loops": {"fit_loop": {"epoch_progress": {"total": total}}}}, folder / "last.ckpt")

    save(3, 3)  # Lightning's usual end-of-epoch counters
    with caplog.at_level("WARNING", logger="medwidit.training.bundle"):
        check_run_folder(folder, "last")
        assert "Lightning issue 19617" not in caplog.text
        save(3, 4)
        check_run_folder(folder, "last")
    assert f"{folder / 'last.ckpt'}: its epoch counters are Lightning's skewed ones" in caplog.text
    assert f"(medwidit export {folder / 'last.ckpt'} BUNDLE_COPY;" in (caplog.text)
    (folder / "last.ckpt").write_bytes(b"not a checkpoint")
    check_run_folder(folder, "last")  # unreadable: Lightning's own load says so
    release_run_folder(folder)


def test_resume_needs_a_checkpoint_to_continue(tmp_path):
    """From a review: --resume last into a folder without last.ckpt trained from scratch with only Lightning's
    warning (whose hint does not apply here); a missing file failed inside fit, in a 104-line traceback; a checkpoint
    from another folder continued into a folder of other checkpoints."""
    from medwidit.training import check_run_folder, release_run_folder

    folder = tmp_path / "checkpoints"
    with pytest.raises(ValueError, match=r"--resume last: .*checkpoints holds no last.ckpt"):
        check_run_folder(folder, "last")
    with pytest.raises(ValueError, match=r"--resume .*missing.ckpt: no such checkpoint file"):
        check_run_folder(folder, str(tmp_path / "missing.ckpt"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "last.ckpt").write_bytes(b"")
    check_run_folder(folder, str(other / "last.ckpt"))  # into an empty folder: a continued run of its own
    folder.mkdir()
    (folder / "best.ckpt").write_bytes(b"")
    (folder / "last-v1.ckpt").write_bytes(b"")
    check_run_folder(folder, "last")  # Lightning's last-v1
    check_run_folder(folder, str(folder / "best.ckpt"))  # the folder's own
    check_run_folder(folder, "best")  # Lightning's own keys are Lightning's to resolve
    with pytest.raises(ValueError, match="continues another folder's checkpoint"):  # a remote one is another's too
        check_run_folder(folder, "s3://bucket/run/last.ckpt")
    with pytest.raises(ValueError, match="no such checkpoint file"):
        check_run_folder(folder, f"file://{tmp_path}/missing.ckpt")
    check_run_folder(folder, f"file://{folder}/best.ckpt")
    with pytest.raises(ValueError, match=r"continues another folder's checkpoint into .*best.ckpt, last-v1.ckpt"):
        check_run_folder(folder, str(other / "last.ckpt"))
    check_run_folder(folder, str(other / "last.ckpt"), True)
    assert not list(folder.glob("*.ckpt")) and (other / "last.ckpt").exists()
    release_run_folder(folder)
    check_run_folder(tmp_path / "empty", "s3://bucket/run/last.ckpt")  # remote files are Lightning's (fsspec)
    release_run_folder(tmp_path / "empty")
    check_run_folder("s3://bucket/run/checkpoints", None)  # a remote folder takes no lock (it made a local "s3:")
    assert not (Path.cwd() / "s3:").exists()


def test_missing_training_data_is_one_line_before_fit(tmp_path):
    """The data module's check ran inside trainer.fit, inside MONAI's config expression: an 88-line traceback with
    the useful line in its middle. train.json's first training step now raises it before fit (``monai.bundle run``
    prints it as one line)."""
    from training_volumes import PREPROCESSING_3D, write_dataset

    from medwidit.training import MissingDataError, SegmentationDataModule, check_training_data

    data_list = write_dataset(tmp_path, shape=(16, 16, 16), num_classes=2)
    module = SegmentationDataModule(data_list=data_list, preprocessing=PREPROCESSING_3D, roi_size=[8, 8, 8])
    check_training_data(module)  # all there
    next(tmp_path.glob("*_image.nii.gz")).unlink()
    module = SegmentationDataModule(data_list=data_list, preprocessing=PREPROCESSING_3D, roi_size=[8, 8, 8])
    with pytest.raises(MissingDataError, match=r"^medwidit: error: data_list .* which does not exist\.$"):
        check_training_data(module)
    parser_training = json.loads((Path(__file__).resolve().parents[2] / "bundles" / NAME / "configs" / "train.json")
                                 .read_text())["training"]  # fmt: skip
    assert parser_training == [
        "$medwidit.training.run_training(@train#trainer, @lightning_module, @datamodule, ckpt_dir=@ckpt_dir, "
        "resume=@resume, overwrite_run=@overwrite_run)"
    ]  # which checks the folder, then the data, then fits


def test_run_training_lets_the_folder_go_however_the_fit_ends(tmp_path):
    """From a review: the lock's release was train.json's last expression, skipped when the data check or the fit
    raised; in a notebook every other process was then refused the folder while nothing trained."""
    from medwidit.training import MissingDataError, run_training
    from medwidit.utils.files import locked

    class Failing:
        def fit(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    class Data:  # a data module whose check passes
        data_list, dataset_dir = None, None

        def check_files(self):
            pass

    folder = tmp_path / "checkpoints"
    with pytest.raises(RuntimeError, match="out of memory"):
        run_training(Failing(), None, Data(), ckpt_dir=folder)
    with locked(tmp_path / ".checkpoints.lock", blocking=False) as free:
        assert free
    Data.check_files = lambda self: (_ for _ in ()).throw(FileNotFoundError("data_list 'x': gone"))
    folder.mkdir(exist_ok=True)
    (folder / "last.ckpt").write_bytes(b"")  # an earlier run's
    with pytest.raises(MissingDataError, match="gone"):
        run_training(Failing(), None, Data(), ckpt_dir=folder, overwrite_run=True)
    with locked(tmp_path / ".checkpoints.lock", blocking=False) as free:
        assert free
    # from a second review: a run refused for its data removed the earlier checkpoints that overwrite_run would
    # replace; the data is checked first now
    assert (folder / "last.ckpt").exists()


def test_the_build_hint_is_for_the_shipped_lists_files_only(tmp_path, monkeypatch):
    """From a review: with train.json's default synth_data_list (the shipped list, even at synth_ratio 0) every error
    about a user's own list ended with "build the shipped data", a missing file, a wrong label or grid alike; a
    user's list whose paths resolved against the default dataset_dir (the shipped data's cache) was sent to build
    brain data. A user's missing file now names where its paths resolve; a wrong label gets no hint."""
    from training_volumes import PREPROCESSING_3D, write_dataset

    import medwidit.training.bundle as bundle
    from medwidit.training import MissingDataError, SegmentationDataModule, check_training_data
    from medwidit.utils.resources import shipped_path

    data_list = write_dataset(tmp_path, shape=(16, 16, 16), num_classes=2)
    options = {"preprocessing": PREPROCESSING_3D, "roi_size": [8, 8, 8], "synth_ratio": 0.0,
               "synth_data_list": shipped_path("data_lists", "head_labels.json")}  # fmt: skip
    elsewhere = tmp_path / "cache"
    module = SegmentationDataModule(data_list=data_list, dataset_dir=elsewhere, **options)
    with pytest.raises(MissingDataError, match=r"which does not exist; a data list's relative paths resolve against "
                       r"--dataset_dir, here .*cache\.$") as error:  # fmt: skip
        check_training_data(module)
    assert "shipped data" not in str(error.value)
    listing = json.loads(Path(data_list).read_text())  # an absolute path outside dataset_dir: no such hint
    listing["training"][0]["image"] = str(tmp_path / "elsewhere" / "scan.nii.gz")
    absolute = tmp_path / "absolute.json"
    absolute.write_text(json.dumps(listing))
    module = SegmentationDataModule(data_list=absolute, dataset_dir=elsewhere, **options)
    with pytest.raises(MissingDataError, match=r"elsewhere/scan.nii.gz', which does not exist\.$"):
        check_training_data(module)
    label = next(tmp_path.glob("*_label.nii.gz"))
    image = nib.load(label)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 3, image.affine), label)
    module = SegmentationDataModule(data_list=data_list, num_classes=2, **options)
    with pytest.raises(MissingDataError, match=r"label .* holds \[3\], outside the class indices") as error:
        check_training_data(module)
    assert "shipped data" not in str(error.value) and "resolve against" not in str(error.value)
    monkeypatch.setattr(bundle, "_is_shipped_list", lambda path: Path(path) == Path(data_list))
    next(tmp_path.glob("*_image.nii.gz")).unlink()  # a missing file of a shipped list gets the build command
    module = SegmentationDataModule(data_list=data_list, num_classes=2, **options)
    with pytest.raises(MissingDataError, match=r"does not exist; build the shipped data with"):
        check_training_data(module)


def test_a_bad_option_of_the_bundles_training_is_one_line_from_monai_bundle_run(tmp_path):
    """From a review: an option medwidit refuses (here synth_ratio 1.5) was the middle of an 85-line traceback
    ending in MONAI's "Failed to instantiate component"; so was the refusal of a folder in use. ``python -m
    monai.bundle run`` now prints medwidit's checks as their one line, exit status 1; MEDWIDIT_TRACEBACK=1 gives
    the whole traceback back."""
    config = Path(__file__).resolve().parents[2] / "bundles" / NAME / "configs" / "train.json"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config),
               "--output_dir", str(tmp_path / "run"), "--synth_ratio", "1.5"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(config.parents[3]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "medwidit: error: synth_ratio must be in [0, 1] (the fraction of synthetic training volumes), got 1.5."
    )
    done = subprocess.run(command, cwd=tmp_path, env={**env, "MEDWIDIT_TRACEBACK": "1"}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1 and "Traceback" in done.stderr and "Failed to instantiate" in done.stderr


def test_only_medwidits_own_checks_are_cut_to_one_line(tmp_path, monkeypatch):
    """The outermost ValueError / FileNotFoundError that medwidit's code raised, through MONAI's wrapping; anything
    else (a ValueError from another library, a bug's TypeError) keeps its traceback. MissingDataError is an
    ordinary exception now (a SystemExit went through a caller's ``except Exception`` and ended the process)."""
    from medwidit.training import MissingDataError, check_run_folder
    from medwidit.training.bundle import _medwidit_check

    def wrapped(call):
        try:
            try:
                call()
            except Exception as e:
                raise RuntimeError("Failed to evaluate ConfigExpression") from e
        except RuntimeError as e:
            return e

    ours = wrapped(lambda: check_run_folder(tmp_path / "checkpoints", "last"))
    assert isinstance(_medwidit_check(ours), ValueError) and "holds no last.ckpt" in str(_medwidit_check(ours))
    assert _medwidit_check(wrapped(lambda: int("x"))) is None  # Python's own ValueError
    # from a review: a second evaluation into one report (evaluate.json's check_report) was a 53-line traceback
    from medwidit.inference.metrics import check_report

    (tmp_path / "dice.json").write_text("{}")
    refused = _medwidit_check(wrapped(lambda: check_report(tmp_path / "dice.json", "false")))
    assert isinstance(refused, FileExistsError) and "dice.json: already exists; pass overwrite" in str(refused)
    assert _medwidit_check(wrapped(lambda: torch.zeros(2).view(3))) is None
    # from a review: a ValueError raised by C code under a medwidit line (a bug: numpy's broadcasting in a check of
    # ours) kept no traceback; nor did another error raised while one of ours was being handled (its context)
    import importlib.util

    import medwidit.training.bundle as bundle

    (tmp_path / "code.py").write_text(
        'def check(v):\n    raise ValueError(f"bad {v}")\n\n\ndef bug(v):\n    return int(v)\n'
    )
    spec = importlib.util.spec_from_file_location("code_under_test", tmp_path / "code.py")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    monkeypatch.setattr(bundle, "PACKAGE", tmp_path.resolve())  # as if medwidit's
    assert str(_medwidit_check(wrapped(lambda: code.check("x")))) == "bad x"
    assert _medwidit_check(wrapped(lambda: code.bug("x"))) is None  # int()'s ValueError under a line of ours
    monkeypatch.undo()

    def cleanup_bug():
        try:
            check_run_folder(tmp_path / "checkpoints", "last")
        except ValueError:
            {}["missing"]

    assert _medwidit_check(wrapped(cleanup_bug)) is None
    assert issubclass(MissingDataError, Exception)


class _WorkerDataset(torch.utils.data.Dataset):
    """One item whose transform (inside MONAI's Compose, as a training pipeline runs it) calls ``call``."""

    def __init__(self, call):
        self.call = call

    def __len__(self):
        return 1

    def __getitem__(self, index):
        from monai.transforms import Compose, Lambdad

        return Compose([Lambdad("x", lambda value: self.call())])({"x": index})


def _worker_error(call):
    try:
        next(iter(torch.utils.data.DataLoader(_WorkerDataset(call), num_workers=1)))
    except Exception as e:
        return e
    raise AssertionError("the worker raised nothing")


def _empty_label_map():
    from medwidit.data.synth import _label_index

    _label_index({"label": torch.zeros(0)}, "label", 3)


def _unknown_label():
    from medwidit.data.synth import _label_index

    _label_index({"label": torch.tensor([0, 5])}, "label", 3)  # a raise statement over several lines


def _own_check_then_bug():
    from medwidit.utils import check_int

    try:
        check_int("crop_count", -1)
    except ValueError:
        {}["missing"]


def test_a_check_failing_in_a_dataloader_worker_is_one_line(capsys):
    """A check of medwidit's raised in a DataLoader worker (a generator's check of a label map mid-training) came
    back as torch's re-raised RuntimeError, its message the worker's whole traceback as text: monai.bundle run
    printed both tracebacks (found by a review; left alone then)."""
    from medwidit.training.bundle import _medwidit_check, one_line_errors
    from medwidit.utils import check_int

    error = _worker_error(lambda: check_int("crop_count", -1))
    assert type(error) is RuntimeError and "Original Traceback" in str(error)
    check = _medwidit_check(error)
    assert type(check) is ValueError and str(check) == "crop_count must be an int >= 1, got -1."
    synthesis = _medwidit_check(_worker_error(_empty_label_map))  # one of medwidit's own classes, by its name
    assert type(synthesis).__name__ == "SynthesisError" and "the label map has no voxels" in str(synthesis)
    # Python 3.13 prints a statement of several lines whole, "...<N lines>..." in its middle (from a review: the
    # exception's line was then read from the code's); the text of 3.11 rewritten as 3.13 prints that frame
    text = str(_worker_error(_unknown_label))
    as_313 = re.sub(r"(    raise SynthesisError\(\n)(?:    \^+\n)?", r"\1    ...<2 lines>...\n    )\n", text)
    assert as_313 != text and "...<2 lines>..." in as_313
    for version in (text, as_313):
        assert "label 5 is not one of the 3 generation labels" in str(_medwidit_check(RuntimeError(version)))
    assert _medwidit_check(_worker_error(lambda: int("x"))) is None  # Python's own ValueError: a bug's traceback
    assert _medwidit_check(_worker_error(_own_check_then_bug)) is None  # a KeyError while ours was handled
    previous = sys.excepthook
    try:
        one_line_errors()
        sys.excepthook(type(error), error, error.__traceback__)
    finally:
        sys.excepthook = previous
    assert capsys.readouterr().err == "medwidit: error: crop_count must be an int >= 1, got -1.\n"


def test_a_worker_traceback_is_one_line_only_for_a_raise_of_medwidits_read_whole():
    """From a mutation review: a worker's bug on a line of medwidit's (int(text)) must keep its traceback, and a
    check's message of several lines is read whole."""
    from medwidit.training.bundle import PACKAGE, _raised_check

    frame = f'Traceback (most recent call last):\n  File "{PACKAGE}/training/synthetic.py", line 10, in f\n'
    block = frame + "    n = int(text)\n        ^^^^^^^^^\nValueError: invalid literal for int() with base 10: 'a'\n"
    assert _raised_check(block) is None
    assert isinstance(_raised_check(block.replace("n = int(text)", "raise ValueError(text)")), ValueError)
    lines = frame + "    raise ValueError(text)\nValueError: first line\nsecond line\n"
    assert str(_raised_check(lines)) == "first line\nsecond line"


def test_segmentation_network_shares_the_net_weights_under_their_own_names(tmp_path):
    segmenter = tiny_segmenter(num_classes=3)
    network = SegmentationNetwork(segmenter, steps=2, num_samples=2, seed=3)
    assert list(network.state_dict()) == list(segmenter.net.state_dict())
    # a medwidit checkpoint's state_dict loads into it as is (ckpt_export --key_in_ckpt state_dict)
    other = tiny_segmenter(num_classes=3)
    torch.nn.init.normal_(other.net.final_layer.linear.weight)
    save_segmenter(other, tmp_path / "model.pt")
    network.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"])
    assert torch.equal(segmenter.net.final_layer.linear.weight, other.net.final_layer.linear.weight)
    image = torch.randn(1, 1, 8, 8, 8)
    out = network(image)
    assert out.shape == (1, 3, 8, 8, 8) and torch.allclose(out.sum(1), torch.ones(1, 8, 8, 8), atol=1e-5)
    assert torch.equal(out, network(image))  # seeded: one call is one deterministic segmentation


def test_segmentation_network_shares_steps_as_the_segmenter_does():
    """inference.json's network_def (monai.bundle.load, MONAI Label) samples with the CLI's shared_steps: the same
    probabilities as DiffusionSegmenter.sample(shared_steps=...) from the same seed, not independent samples."""
    segmenter = tiny_segmenter(num_classes=2)
    torch.nn.init.normal_(segmenter.net.final_layer.linear.weight, std=0.5)  # a network that reads its input
    image = torch.randn(1, 1, 8, 8, 8)
    network = SegmentationNetwork(segmenter, steps=3, num_samples=2, shared_steps=2, seed=5)
    samples = segmenter.sample(
        image, steps=3, num_samples=2, shared_steps=2, generator=torch.Generator().manual_seed(5)
    )
    expected = to_probabilities(samples, dim=2).mean(dim=0)
    assert torch.allclose(network(image), expected)
    independent = SegmentationNetwork(segmenter, steps=3, num_samples=2, seed=5)(image)
    assert not torch.allclose(independent, expected)  # the option reaches the sampler
    with pytest.raises(ValueError, match=r"shared_steps must be in 0..2 \(fewer than steps\), got 3"):
        SegmentationNetwork(segmenter, steps=3, num_samples=2, shared_steps=3)


def test_require_done_names_failed_cases_in_one_line(capsys):
    """From a review: an inference.json run with a missing image printed its useful error line, then a 58-line
    traceback of require_done's RuntimeError. It is one of the one-line errors now."""
    from medwidit.training.bundle import CasesFailedError, _medwidit_check, one_line_errors

    done = SimpleNamespace(name="a", status="done", message=None)
    failed = SimpleNamespace(name="b", status="failed", message="b.nii.gz: truncated file")
    assert require_done([done]) == [done]
    with pytest.raises(CasesFailedError, match=r"(?s)1 of 2 case.*b: b.nii.gz: truncated file") as raised:
        require_done([done, failed])
    assert isinstance(raised.value, RuntimeError) and _medwidit_check(raised.value) is raised.value
    previous = sys.excepthook
    try:
        one_line_errors()
        sys.excepthook(type(raised.value), raised.value, raised.value.__traceback__)
    finally:
        sys.excepthook = previous
    assert capsys.readouterr().err == "medwidit: error: 1 of 2 case(s) failed: b: b.nii.gz: truncated file\n"
    with pytest.raises(CasesFailedError, match="empty"):
        require_done([])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("seed", "abc", r"seed must be an int in 0\.\.2\*\*32-1 .*, got 'abc'"),
        ("seed", 2**32, r"seed must be an int in 0\.\.2\*\*32-1"),
        ("epochs", "abc", r"epochs must be an int >= 1, or -1 for no limit, got 'abc'"),
        ("max_steps", 0, r"max_steps must be an int >= 1, or -1 for no limit, got 0"),
        ("val_interval", 0, r"val_interval must be an int >= 1 \(validate every that many epochs\), got 0"),
        ("device", "gpu", r"device must be cpu, cuda or cuda:N, got 'gpu'"),
        ("num_classes", 3.5, r"num_classes must be an int >= 2 \(background and at least one class\), got 3.5"),
        # a later review: each failed only at the first validation, after the training before it, naming the
        # sampler's argument (and max_time: Lightning's message inside an 89-line traceback)
        ("val_samples", 0, r"val_samples must be an int >= 1, got 0"),
        ("sw_batch_size", 0, r"sw_batch_size must be an int >= 1, got 0"),
        ("overlap", 1.5, r"overlap must be in \[0.0, 1.0\), got 1.5"),
        ("max_time", "abc", r"max_time must be a duration 'DD:HH:MM:SS' .*got 'abc'"),
        ("max_time", 5, r"max_time must be a duration"),
    ],
)
def test_run_options_lightning_reads_first_are_checked_by_name(option, value, message):
    """From a review: each was a traceback from Lightning or torch (a ZeroDivisionError for val_interval 0)."""
    from medwidit.training import check_run_options

    good = {"seed": 0, "epochs": 1200, "max_steps": 1080, "val_interval": 90, "device": torch.device("cpu")}
    check_run_options(**good)
    check_run_options(**{**good, "epochs": None, "max_steps": -1, "val_interval": None, "device": "cuda:1"})
    validation = {"val_samples": 1, "overlap": 0.25, "sw_batch_size": 4}
    check_run_options(**good, **validation, max_time="00:12:00:00")
    check_run_options(**good, **validation, max_time={"hours": 12})
    with pytest.raises(ValueError, match=message):
        check_run_options(**{**good, option: value})


def test_train_json_checks_its_run_options_before_seeding(tmp_path):
    """The bundle's initialize runs the check before Lightning's seed_everything, and passes on the shipped values
    (monai.bundle.load runs initialize too)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[2] / "bundles" / NAME / "configs" / "train.json"))
    parser["bundle_root"] = str(tmp_path)
    steps = parser["initialize"]
    assert "check_run_options" in steps[1] and "seed_everything" in steps[2]
    parser.get_parsed_content("initialize")  # the shipped values pass
    parser["val_interval"] = 0
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("initialize", lazy=False)
    from medwidit.training.bundle import _medwidit_check

    assert "val_interval must be an int >= 1" in str(_medwidit_check(raised.value))
    parser["val_interval"], parser["val_samples"] = 1, 0  # passed on too: refused before any training
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("initialize", lazy=False)
    assert "val_samples must be an int >= 1, got 0" in str(_medwidit_check(raised.value))


def test_refuse_renamed_names_the_new_key_and_knows_its_keys():
    from medwidit.training import refuse_renamed

    refuse_renamed(steps=None)
    with pytest.raises(ValueError, match="'steps' is now 'val_steps'"):
        refuse_renamed(steps=3)
    with pytest.raises(ValueError, match="knows"):
        refuse_renamed(stpes=3)
    # Lightning's name for train.json's "epochs": `--max_epochs 1` ran all 1080 steps without a word
    with pytest.raises(ValueError, match=r"'max_epochs' is now 'epochs' \(--epochs 1\)"):
        refuse_renamed(steps=None, max_epochs=1)


def test_a_run_exporting_into_a_bundles_models_or_over_an_earlier_export_is_refused(tmp_path, caplog):
    """From a review: ``--output_dir`` pointed at a bundle folder trained into it and exported over the bundle's
    ``models/model.pt`` (the shipped one: ``medwidit segment``'s default model) without a word, and a new run into a
    folder whose checkpoints were gone replaced the earlier run's export. A bundle's models folder is refused whatever
    the options, before anything is removed; an earlier export is the run's own when it resumes, else refused unless
    --overwrite_run, which removes it at the start."""
    from medwidit.training.bundle import check_export_folder, run_training
    from medwidit.training.module import ExportSegmenter

    bundle = tmp_path / "my_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text("{}")
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"shipped")
    (bundle / "checkpoints").mkdir()
    (bundle / "checkpoints" / "last.ckpt").write_bytes(b"")

    class Trainer:
        callbacks = [ExportSegmenter(bundle / "models")]

        def fit(self, *args, **kwargs):
            raise AssertionError("trained into a bundle's models folder")

    for resume, overwrite in ((None, False), (None, True), ("last", False)):
        with pytest.raises(ValueError, match=r"my_bundle/models is a bundle's models folder .*medwidit export"):
            run_training(Trainer(), None, type("Data", (), {"check_files": lambda self: None})(),
                         ckpt_dir=bundle / "checkpoints", resume=resume, overwrite_run=overwrite)  # fmt: skip
    assert (bundle / "models" / "model.pt").read_bytes() == b"shipped"
    assert (bundle / "checkpoints" / "last.ckpt").exists()  # overwrite_run removed nothing

    run = tmp_path / "runs" / "models"
    check_export_folder(run, None)  # no folder yet
    run.mkdir(parents=True)
    check_export_folder(run, None)  # nothing exported in it
    (run / "model.pt").write_bytes(b"earlier")
    (run / "medwidit.json").write_text("{}")
    with pytest.raises(
        ValueError, match=r"earlier run's exported weights \(model.pt, medwidit.json\).*--overwrite_run"
    ):
        check_export_folder(run, None, "false")
    check_export_folder(run, "last")  # resuming: the run's own export
    assert (run / "model.pt").exists()
    check_export_folder(run, None, "true")
    assert list(run.iterdir()) == [] and "removed the earlier run's exported weights" in caplog.text


def test_a_run_stopped_by_sigterm_exits_143_and_says_how_to_continue(tmp_path, caplog):
    """From a review: Lightning ends a fit on SIGTERM (a scheduler's time limit) with its SIGTERMException, a
    SystemExit without a code, so `monai.bundle run training` exited 0 with nothing exported, and a job chain on
    success went on to export and evaluate an unfinished run. The run now exits 143, as `medwidit segment` does, with
    one line naming --resume last; the folder's lock is let go."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from medwidit.training.bundle import _run_lock_path, run_training
    from medwidit.utils.files import locked

    class Trainer:
        callbacks, global_step = [], 7

        def fit(self, *args, **kwargs):
            raise SIGTERMException()

    data = type("Data", (), {"check_files": lambda self: None})()
    with pytest.raises(SystemExit) as stopped:
        run_training(Trainer(), None, data, ckpt_dir=tmp_path / "checkpoints")
    assert stopped.value.code == 143
    assert "training stopped by SIGTERM at step 7" in caplog.text and "--resume last" in caplog.text
    with locked(_run_lock_path(tmp_path / "checkpoints"), blocking=False) as free:
        assert free


def test_a_resume_with_nothing_left_to_train_is_refused_or_named(tmp_path, caplog):
    """From a review: a run stopped at max_steps on an epoch's last batch, resumed with --max_steps 4 --epochs 2,
    trained no step (Lightning counts that epoch again) and exited 0 with its export rewritten, without a word. A
    max_steps the checkpoint has reached is refused before fit; a fit that trains no step is named after it."""
    from lightning.pytorch.callbacks import Timer

    from medwidit.training.bundle import run_training

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"global_step": 2, "state_dict": {}}, folder / "last.ckpt")
    data = type("Data", (), {"check_files": lambda self: None})()

    class Trainer:
        callbacks, global_step, max_epochs = [], 2, 2

        def __init__(self, max_steps, trains):
            self.max_steps, self.trains, self.fitted = max_steps, trains, False

        def fit(self, *args, **kwargs):
            self.fitted = True
            self.global_step += self.trains

    stopped = Trainer(max_steps=2, trains=0)
    with pytest.raises(ValueError, match=r"last.ckpt is at step 2 and max_steps is 2: nothing to train"):
        run_training(stopped, None, data, ckpt_dir=folder, resume="last")
    assert not stopped.fitted
    with caplog.at_level("WARNING", logger="medwidit.training.bundle"):
        run_training(Trainer(max_steps=4, trains=2), None, data, ckpt_dir=folder, resume="last")
        assert "trained no step" not in caplog.text
        timed = Trainer(max_steps=4, trains=0)  # a run stopped by max_time, resumed with it: Lightning's Timer stops
        timed.callbacks = [Timer(duration="00:00:01:00")]
        run_training(timed, None, data, ckpt_dir=folder, resume="last")
    assert "the run trained no step: " in caplog.text and "at step 2, had already reached" in caplog.text
    assert "epochs (2) " in caplog.text and "or max_time (60 s); raise it" in caplog.text


def test_an_override_of_a_key_no_config_has_is_refused_naming_the_closest(tmp_path):
    """From a review: `--learning_rate 1e-5 --synth_ration 0.5` trained with the defaults without a word (MONAI adds
    a key nothing reads). Every override's first part must be a key of the run's configs; monai.bundle run's own
    arguments pass; nothing is checked where the configs cannot be read."""
    from medwidit.training.bundle import refuse_unknown_overrides

    configs = Path(__file__).resolve().parents[2] / "bundles" / NAME / "configs"
    train, evaluate = str(configs / "train.json"), str(configs / "evaluate.json")
    base = ["__main__.py", "run", "training", "--config_file", train]
    refuse_unknown_overrides([*base, "--lr", "1e-5", "--preprocessing#air_threshold", "$None", "--meta_file", "m"])
    refuse_unknown_overrides(["__main__.py", "run", f"--config_file=['{train}', '{evaluate}']", "--metrics_file", "x"])
    closest = r"'synth_ration', so nothing would read it \(did you mean --synth_ratio\?\)"
    with pytest.raises(ValueError, match=r"--synth_ration: the run's configs \(.*train.json\) have no key " + closest):
        refuse_unknown_overrides([*base, "--synth_ration", "0.5"])
    with pytest.raises(ValueError, match=r"--metrics_file: .* no key 'metrics_file'"):  # evaluate.json's key
        refuse_unknown_overrides([*base, "--metrics_file", "x"])
    # from a second review: MONAI's workflow keywords, Fire's "--" separator and the metadata's keys pass
    refuse_unknown_overrides([*base, "--workflow_type", "train", "--properties_path", "p.json", "--workflow_name", "w"])
    refuse_unknown_overrides([*base, "--lr", "1e-5", "--", "--verbose"])
    refuse_unknown_overrides([*base, "--_meta_#version", "1.0"])
    refuse_unknown_overrides([*base, "--args_file", str(tmp_path / "absent.json")])  # MONAI's run says why
    refuse_unknown_overrides(["__main__.py", "run", "--config_file", str(tmp_path / "none.json"), "--x", "1"])
    refuse_unknown_overrides(["__main__.py", "verify_metadata", "--config_file", train, "--x", "1"])


def test_an_args_file_key_no_config_has_is_refused_like_an_override(tmp_path):
    """From a review: an ``--args_file`` (MONAI's defaults for ``config_file`` and override pairs) was not checked,
    so a misspelt key in it (``synth_ration``) trained with the default without a word. Its keys are overrides of
    the configs it or the command line names; the command line's own keys still are."""
    from medwidit.training.bundle import refuse_unknown_overrides

    train = str(Path(__file__).resolve().parents[2] / "bundles" / NAME / "configs" / "train.json")
    good, bad = tmp_path / "good.json", tmp_path / "bad.yaml"
    good.write_text(
        json.dumps({"config_file": train, "run_id": "training", "lr": 1e-5, "preprocessing#air_threshold": 0.2})
    )
    bad.write_text(f"config_file: [{train}]\nsynth_ration: 0.5\n")
    refuse_unknown_overrides(["__main__.py", "run", "--args_file", str(good)])
    with pytest.raises(
        ValueError,
        match=r"--args_file .*bad.yaml: key 'synth_ration': the run's configs \(.*train"
        r".json\) have no key 'synth_ration', so nothing would read it \(did you mean synth_ratio\?\)",
    ):
        refuse_unknown_overrides(["__main__.py", "run", "--args_file", str(bad)])
    with pytest.raises(ValueError, match=r"^--learning_rate: .*train.json\) have no key 'learning_rate'"):
        refuse_unknown_overrides(["__main__.py", "run", "--args_file", str(good), "--learning_rate", "1e-5"])
    with pytest.raises(ValueError, match=r"key 'synth_ration'"):  # a command line's config_file, the file's keys
        refuse_unknown_overrides(["__main__.py", "run", "--config_file", train, "--args_file=" + str(bad)])


@pytest.mark.slow
def test_monai_bundle_run_with_a_misspelt_override_stops_in_one_line(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               str(Path(__file__).resolve().parents[2] / "bundles" / NAME / "configs" / "train.json"),
               "--learning_rate", "1e-5", "--output_dir", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("medwidit: error: --learning_rate: the run's configs (")
    assert not (tmp_path / "runs").exists()


def test_evaluation_checks_each_labels_grid_and_values_before_sampling(tmp_path):
    """From a review: evaluate.json segmented every case, then refused a label off its image's grid (blaming the
    prediction: "predictions must keep the input's geometry") or a 0/255 mask, and the next run found the failed
    run's predictions in its way. bundle_datalist checks both when it reads the list, with the model's classes;
    a label on its image's lattice in another voxel order is scored, so it passes."""
    from medwidit.training import bundle_datalist

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), affine), str(tmp_path / "scan.nii.gz"))
    labels = {
        "good": (np.zeros((8, 8, 8), np.uint8), affine),
        "las": (np.zeros((8, 8, 8), np.uint8), np.diag([-2.0, 2.0, 2.0, 1.0]) + np.eye(4) * 0),
        "short": (np.zeros((6, 8, 8), np.uint8), affine),
        "mask255": (np.full((8, 8, 8), 255, np.uint8), affine),
    }
    labels["las"][1][0, 3] = 14.0  # the same lattice, x stored the other way
    for name, (data, grid) in labels.items():
        nib.save(nib.Nifti1Image(data, grid), str(tmp_path / f"{name}.nii.gz"))
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"test": [{"image": "scan.nii.gz", "label": f"{name}.nii.gz"}]})
        )
    for name in ("good", "las"):
        assert len(bundle_datalist(tmp_path / f"{name}.json", "test", tmp_path, labels=True, num_classes=2)) == 1
    with pytest.raises(
        ValueError, match=r"test\[0\]: label .*short.nii.gz' \(shape \(6, 8, 8\).*is not on the grid of image"
    ):
        bundle_datalist(tmp_path / "short.json", "test", tmp_path, labels=True, num_classes=2)
    with pytest.raises(
        ValueError, match=r"mask255.nii.gz' holds \[255\], outside the class indices 0..1 \(num_classes=2\)"
    ):
        bundle_datalist(tmp_path / "mask255.json", "test", tmp_path, labels=True, num_classes=2)
    evaluate = json.loads(
        (Path(__file__).resolve().parents[2] / "bundles" / NAME / "configs" / "evaluate.json").read_text()
    )
    assert "labels=True, num_classes=@predictor.num_classes" in evaluate["dataset_data"]
