"""Issue 15: no lost, mixed-up or half-written output. One test (or more) per numbered defect: concurrent runs (two
real processes), multi-file formats, a kill between the commits of a case, SIGINT, a full disk, collisions, empty
folders, ID-like names, grid checks, batch-size independence; the messages of defect 9 are in test_messages.py."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from inference_volumes import random_tiny_segmenter, save_itk

from medwidit.diffusion import save_segmenter
from medwidit.inference import InputError, OutputError, Predictor
from medwidit.inference.cases import find_cases
from medwidit.inference.io import OutputImage, read_image

ROOT = Path(__file__).resolve().parents[2]
FAST = {"steps": 1, "num_samples": 1}
# float32: the in-process references these runs are compared with see a CPU without bf16 hardware (conftest)
CLI_FAST = ["--steps", "1", "--samples", "1", "--quiet", "--device", "cpu", "--precision", "float32"]
AFFINE = np.diag([1.2, 1.0, 1.5, 1.0])

UNCERTAINTY_OUTPUTS = ["scan.nii.gz", "scan_aleatoric.nii.gz", "scan_disagreement.nii.gz", "scan_epistemic.nii.gz",
                       "scan_error_score.nii.gz", "scan_uncertainty.nii.gz"]  # fmt: skip


def tiny_checkpoint(path, spacing=(1.5, 1.5, 1.5)):
    extra = {"preprocessing": {"spacing": list(spacing), "num_modalities": 1}, "roi_size": [16, 16, 16]}
    save_segmenter(random_tiny_segmenter(), path, extra_config=extra)
    return path


def nifti(path, shape=(12, 10, 8), affine=AFFINE, seed=0):
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def visible(folder):
    """The outputs a user sees; the CLI's run records (medwidit_run*.json, one per run) are not outputs."""
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith((".", "medwidit_run")))


def hidden_leftovers(folder):
    """Anything under the hidden state folder besides markers and the lock: staging folders, temporaries."""
    state = Path(folder) / ".medwidit"
    return sorted(p.name for p in state.iterdir() if p.suffix != ".json" and p.name != "lock") if state.is_dir() else []


@pytest.fixture
def setup(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    nifti(inputs / "scan.nii.gz")
    return tmp_path, inputs, Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "model.pt"), device="cpu")


def run_cli(args, env_extra=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


######################################################################################################################
# 1. concurrent runs never both win
######################################################################################################################


BOTH_WRITING_BEFORE_EITHER_COMMITS = """
import os, pathlib, sys, time
import nibabel
barrier, real = pathlib.Path(sys.argv[1]), nibabel.save
def save(*args, **kwargs):
    real(*args, **kwargs)
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 240
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:  # the other run is writing too
        time.sleep(0.02)
nibabel.save = save
from medwidit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_two_processes_into_one_folder_one_wins_the_other_fails_cleanly(setup):
    """Both runs pass every check and write their first file before either commits (a barrier in the writer makes
    the race certain): the link-based commit lets exactly one win."""
    tmp_path, inputs, predictor = setup
    out, barrier = tmp_path / "out", tmp_path / "barrier"
    barrier.mkdir()
    base = [
        "-c",
        BOTH_WRITING_BEFORE_EITHER_COMMITS,
        str(barrier),
        "segment",
        "-i",
        str(inputs),
        "-o",
        str(out),
        "--checkpoint",
        str(tmp_path / "model.pt"),
        "--save-uncertainty",
        *CLI_FAST,
    ]
    runs = [run_cli([*base, "--seed", str(seed)]) for seed in (1, 2)]
    codes = [run.wait(timeout=300) for run in runs]
    errors = [run.stderr.read() for run in runs]
    assert len(list(barrier.iterdir())) == 2
    assert sorted(codes) == [0, 1], (codes, errors)
    loser = codes.index(1)
    assert "scan.nii.gz: already exists" in errors[loser], errors[loser]
    winner_seed = (1, 2)[codes.index(0)]
    reference = tmp_path / "reference"
    predictor.predict_from_files(inputs, reference, save_uncertainty=True, progress=False, seed=winner_seed, **FAST)
    assert visible(out) == UNCERTAINTY_OUTPUTS and hidden_leftovers(out) == []
    marker = json.loads((out / ".medwidit" / "scan.json").read_text())  # the loser left the winner's marker
    assert sorted(marker["files"]) == UNCERTAINTY_OUTPUTS
    records = sorted(json.loads(p.read_text())["status"] for p in out.glob("medwidit_run*.json"))
    assert records == ["done", "failed"]  # each process its own record, neither replaced
    for name in visible(out):  # both files are the winner's: nothing mixed
        np.testing.assert_array_equal(nib.load(out / name).get_fdata(), nib.load(reference / name).get_fdata())


def test_the_commit_refuses_what_another_writer_committed_first(tmp_path):
    """Two writers staged at once (the race window of defect 1): the second commit fails and leaves the first's."""
    from medwidit.inference.io import save_image
    from medwidit.inference.outputs import CaseWriter, is_finished, plan_case

    geometry = read_image(nifti(tmp_path / "x.nii.gz"))[1]
    plan = plan_case(tmp_path / "out", "x", [tmp_path / "out" / "x.nii.gz", tmp_path / "out" / "x_uncertainty.nii.gz"])
    (tmp_path / "out").mkdir()
    with CaseWriter(plan, overwrite=False) as first, CaseWriter(plan, overwrite=False) as second:
        for writer, value in ((first, 1), (second, 2)):
            for path in plan.files:
                item = OutputImage(np.full(geometry.shape, value), geometry, path, "labels")
                writer.write(path, lambda staged, item=item: save_image(item, staged))
        first.commit()
        with pytest.raises(OutputError, match="x.nii.gz: already exists"):
            second.commit()
    assert visible(tmp_path / "out") == ["x.nii.gz", "x_uncertainty.nii.gz"]
    assert {int(nib.load(p).get_fdata().max()) for p in plan.files} == {1}
    assert hidden_leftovers(tmp_path / "out") == []
    assert is_finished(plan)  # the refused commit left the first writer's marker: its case still reads as finished


def test_a_second_writer_with_the_same_bytes_is_refused_too_and_keeps_the_first_ones_marker(tmp_path):
    """Two runs of one seed into one folder at once, writing other kinds of output beside the same labels: the
    second's labels have the first's bytes, and its commit took them as its own, wrote its other map and replaced
    the first's marker (found by a review)."""
    from medwidit.inference.io import save_image
    from medwidit.inference.outputs import CaseWriter, is_finished, plan_case

    geometry = read_image(nifti(tmp_path / "x.nii.gz"))[1]
    out = tmp_path / "out"
    out.mkdir()
    first = plan_case(out, "x", [out / "x.nii.gz", out / "x_probabilities.nii.gz"])
    second = plan_case(out, "x", [out / "x.nii.gz", out / "x_uncertainty.nii.gz"])
    with CaseWriter(first, overwrite=False) as a, CaseWriter(second, overwrite=False) as b:
        for writer, plan in ((a, first), (b, second)):
            for path in plan.files:
                item = OutputImage(np.ones(geometry.shape), geometry, path, "labels")
                writer.write(path, lambda staged, item=item: save_image(item, staged))
        a.commit()
        with pytest.raises(OutputError, match="x.nii.gz: already exists"):
            b.commit()
    assert visible(out) == ["x.nii.gz", "x_probabilities.nii.gz"]
    assert is_finished(first) and not is_finished(second)
    assert hidden_leftovers(out) == []


def test_a_second_writer_of_the_case_in_another_format_is_refused_and_keeps_the_first_ones_marker(tmp_path):
    """From a review: two runs at once, of a/scan.nii.gz and b/scan.nii, into one folder both exited 0; the folder
    held both label maps and the marker listed the last committer's alone (run one after the other, the second was
    refused). The commit checks again, under the folder's lock, what it would leave behind."""
    from medwidit.inference.io import save_image
    from medwidit.inference.outputs import CaseWriter, is_finished, plan_case

    geometry = read_image(nifti(tmp_path / "x.nii.gz"))[1]
    out = tmp_path / "out"
    out.mkdir()
    first, second = plan_case(out, "x", [out / "x.nii.gz"]), plan_case(out, "x", [out / "x.nii"])
    with CaseWriter(first, overwrite=False) as a, CaseWriter(second, overwrite=False) as b:
        for writer, plan in ((a, first), (b, second)):
            item = OutputImage(np.ones(geometry.shape), geometry, plan.files[0], "labels")
            writer.write(plan.files[0], lambda staged, item=item: save_image(item, staged))
        a.commit()
        with pytest.raises(OutputError, match=r"x.nii.gz: case 'x' was written by another run \(x.nii.gz\), which"):
            b.commit()
    assert visible(out) == ["x.nii.gz"] and is_finished(first) and hidden_leftovers(out) == []


######################################################################################################################
# 2. multi-file formats name their final data file
######################################################################################################################


@pytest.mark.parametrize(
    ("suffix", "data", "line"), [(".mhd", ".zraw", "ElementDataFile = "), (".nhdr", ".raw.gz", "data file: ")]
)
def test_header_formats_point_at_their_final_data_file(setup, suffix, data, line):
    tmp_path, inputs, predictor = setup
    save_itk(inputs / f"head{suffix}", np.random.default_rng(1).random((12, 10, 8)).astype(np.float32))
    out = tmp_path / "out"
    results = {r.name: r for r in predictor.predict_from_files(inputs / f"head{suffix}", out, progress=False, **FAST)}
    assert results["head"].status == "done" and results["head"].outputs == [out / f"head{suffix}"]
    assert visible(out) == sorted([f"head{data}", f"head{suffix}"])
    assert f"{line}head{data}" in (out / f"head{suffix}").read_text(errors="replace")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in visible(out):  # a copy of the visible files is a readable image
        (copy / name).write_bytes((out / name).read_bytes())
    assert sitk.ReadImage(str(copy / f"head{suffix}")).GetSize() == (12, 10, 8)


######################################################################################################################
# 3. a case is all or nothing: kill, SIGINT, full disk; --continue finishes; --overwrite --continue
######################################################################################################################

KILL_AFTER_FIRST_COMMIT = """
import os, signal, sys
from medwidit.inference import outputs
real = outputs.commit
def commit(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the power goes off between the commits of a case
outputs.commit = commit
from medwidit.cli import main
sys.exit(main(sys.argv[1:]))
"""


KILL_AT_THE_MARKER = """
import os, signal, sys
from medwidit.inference import outputs
outputs._write_marker = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # every file placed, no marker yet
from medwidit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_between_commits_is_unfinished_and_continue_finishes_it(setup):
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    args = [
        "segment",
        "-i",
        str(inputs),
        "-o",
        str(out),
        "--checkpoint",
        str(tmp_path / "model.pt"),
        "--save-uncertainty",
        *CLI_FAST,
    ]
    run = run_cli(["-c", KILL_AFTER_FIRST_COMMIT, *args])
    assert run.wait(timeout=300) == -9, run.stderr.read()
    assert visible(out) == ["scan.nii.gz"]  # one file committed, no marker: the case is unfinished
    assert not (out / ".medwidit" / "scan.json").exists()
    options = {"progress": False, "save_uncertainty": True, **FAST}
    (refused,) = predictor.predict_from_files(inputs, out, **options)  # exists, no --continue
    assert refused.status == "failed"
    # it said only "already exists", as for a finished case: now that an interrupted run left it, and how to finish it
    assert "scan.nii.gz: already exists, but an interrupted run left this case unfinished" in refused.message
    assert "pass resume to finish it (Python: resume=True; medwidit segment: --continue;" in refused.message
    (result,) = predictor.predict_from_files(inputs, out, resume=True, **options)
    assert result.status == "done" and result.message == "finished an interrupted commit"
    assert visible(out) == UNCERTAINTY_OUTPUTS and hidden_leftovers(out) == []
    reference = tmp_path / "reference"
    predictor.predict_from_files(inputs, reference, **options)
    for name in visible(out):
        np.testing.assert_array_equal(nib.load(out / name).get_fdata(), nib.load(reference / name).get_fdata())
    assert predictor.predict_from_files(inputs, out, resume=True, **options)[0].status == "skipped"


KILL_AT_SECOND_COMMIT = """
import os, signal, sys
from medwidit.inference import outputs
real, calls = outputs.commit, []
def commit(*args, **kwargs):
    calls.append(args)
    if len(calls) == 2:  # the staged file's commit link is made, the file not yet committed
        os.kill(os.getpid(), signal.SIGKILL)
    real(*args, **kwargs)
outputs.commit = commit
from medwidit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_continue_finishes_a_commit_killed_between_its_link_and_its_file(setup):
    """From a kill campaign: a kill -9 after a file's commit link was made in the staging folder, before the file was
    committed, left that link; --continue then failed on it with "already exists (written by another run
    meanwhile?)", naming the output, and the case stayed half-written until a second --continue."""
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"),
            "--save-uncertainty", *CLI_FAST]  # fmt: skip
    run = run_cli(["-c", KILL_AT_SECOND_COMMIT, *args])
    assert run.wait(timeout=300) == -9, run.stderr.read()
    assert len(visible(out)) == 1  # one file committed, the second's link left in the staging folder
    options = {"progress": False, "save_uncertainty": True, **FAST}
    (result,) = predictor.predict_from_files(inputs, out, resume=True, **options)
    assert (result.status, result.message) == ("done", "finished an interrupted commit")
    assert visible(out) == UNCERTAINTY_OUTPUTS and hidden_leftovers(out) == []


def test_a_folder_given_as_input_and_output_reads_its_earlier_outputs_as_outputs(setup, tmp_path):
    """From a review: after -i d -o d, every later run in d took the earlier outputs for inputs: --continue failed on
    "one modality given twice (scan.nii.gz, scan_0000.nii.gz)", and with the maps the whole run was refused (an output
    of case 'scan_aleatoric' is also the input). Files that a marker there lists are outputs, not cases."""
    _, _, predictor = setup
    folder = tmp_path / "d"
    folder.mkdir()
    nifti(folder / "scan_0000.nii.gz")
    options = {"save_uncertainty": True, "progress": False, **FAST}
    (result,) = predictor.predict_from_files(folder, folder, **options)
    assert result.status == "done"
    nifti(folder / "new_0000.nii.gz", seed=3)  # a scan added later
    results = predictor.predict_from_files(folder, folder, resume=True, **options)
    assert [(r.name, r.status) for r in results] == [("new", "done"), ("scan", "skipped")]


def test_a_folder_given_as_input_and_output_recovers_from_a_killed_overwrite(setup, tmp_path):
    """A second review: after a kill -9 of an overwrite into a folder given as -i and -o, the killed run's marker was
    gone, so its outputs read as cases and every later run there was refused ("this output of case 'scan_aleatoric'
    is also the input"); the earlier set never came back. The staging folder's lists count as outputs too."""
    folder = tmp_path / "d"
    folder.mkdir()
    nifti(folder / "scan_0000.nii.gz")
    _, _, predictor = setup
    options = {"save_uncertainty": True, "progress": False, **FAST}
    predictor.predict_from_files(folder, folder, **options)
    earlier = {name: (folder / name).read_bytes() for name in visible(folder) if name != "scan_0000.nii.gz"}
    args = ["segment", "-i", str(folder), "-o", str(folder), "--checkpoint", str(tmp_path / "model.pt"),
            "--save-uncertainty", "--overwrite", "--seed", "5", *CLI_FAST]  # fmt: skip
    run = run_cli(["-c", KILL_AT_SECOND_COMMIT, *args])
    assert run.wait(timeout=300) == -9, run.stderr.read()
    results = predictor.predict_from_files(folder, folder, resume=True, **options)
    assert [(r.name, r.status) for r in results] == [("scan", "skipped")]  # its earlier set, back and finished
    assert {name: (folder / name).read_bytes() for name in earlier} == earlier


def test_an_overwrite_killed_after_taking_its_marker_leaves_the_other_cases_marker_whole(setup, tmp_path):
    """A second review: the other case's marker was edited before the case's own marker was removed, and a kill
    between the two left it without its file for good (the own marker stood, so nothing was put back). The own
    marker goes first: a kill there is an overwrite cut short, whose restore leaves the other marker as it was."""
    _, inputs, predictor = setup
    other, out = tmp_path / "in2", tmp_path / "out"
    other.mkdir()
    nifti(other / "scan_uncertainty.nii.gz", seed=1)
    predictor.predict_from_files(other, out, progress=False, **FAST)
    predictor.predict_from_files(inputs, out, progress=False, **FAST)
    kill_at_release = KILL_AT_SECOND_COMMIT.replace(
        "real, calls = outputs.commit, []", "real = outputs._release"
    ).replace(
        "outputs.commit = commit",
        "outputs._release = lambda *a, **k: (real(*a, **k), os.kill(os.getpid(), signal.SIGKILL))",
    )  # the other marker edited, then the kill
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"),
            "--save-uncertainty", "--overwrite", *CLI_FAST]  # fmt: skip
    run = run_cli(["-c", kill_at_release, *args])
    assert run.wait(timeout=300) == -9, run.stderr.read()
    (result,) = predictor.predict_from_files(inputs, out, resume=True, progress=False, **FAST)
    assert result.status == "skipped"  # its earlier set back
    assert json.loads((out / ".medwidit" / "scan_uncertainty.json").read_text())["files"] == ["scan_uncertainty.nii.gz"]
    (result,) = predictor.predict_from_files(other, out, resume=True, progress=False, **FAST)
    assert result.status == "skipped"


def test_a_case_that_lost_a_file_to_another_cases_overwrite_says_so_on_continue(setup, tmp_path):
    """A second review: where the case kept other files, --continue said it was "finished with other outputs",
    not which file another case's overwrite had replaced."""
    _, inputs, predictor = setup
    other, out = tmp_path / "in2", tmp_path / "out"
    other.mkdir()
    nifti(other / "scan_uncertainty.nii.gz", seed=1)
    options = {"save_uncertainty": True, "progress": False, **FAST}
    predictor.predict_from_files(inputs, out, **options)
    (result,) = predictor.predict_from_files(other, out, overwrite=True, progress=False, **FAST)
    assert result.status == "done"
    (result,) = predictor.predict_from_files(inputs, out, resume=True, **options)
    assert result.status == "failed"
    assert "scan_uncertainty.nii.gz was replaced by case 'scan_uncertainty''s output" in result.message


def test_a_commit_sweeps_what_a_run_killed_meanwhile_had_placed(tmp_path):
    """A second review: a run killed while an --overwrite of the case was segmenting left a file placed; the
    overwrite's commit swept that run's staging folder and left the file, listed by no marker."""
    import os as os_module

    out = tmp_path / "out"
    out.mkdir()
    _commit_case(_case(out, "x", ["x.nii.gz"]), "old", overwrite=False)
    staging = out / ".medwidit" / "x.abcd1234.staging"
    staging.mkdir()
    (staging / "manifest.json").write_text(json.dumps({"case": "x", "files": ["x.nii.gz", "x_uncertainty.nii.gz"]}))
    (staging / "x_uncertainty.nii.gz").write_text("killed x_uncertainty.nii.gz")
    os_module.link(staging / "x_uncertainty.nii.gz", out / "x_uncertainty.nii.gz")  # placed, then the kill
    _commit_case(_case(out, "x", ["x.nii.gz"]), "new", overwrite=True)
    assert visible(out) == ["x.nii.gz"] and hidden_leftovers(out) == []


def test_what_a_killed_commit_placed_is_not_left_beside_a_later_set(setup, tmp_path, caplog):
    """From a review: a run killed after two of its files' commits left them and its staging folder; a later
    --overwrite of the labels alone removed the staging folder (the only record of them) and left the killed run's
    uncertainty map beside the new labels, listed by no marker; a later run from scan.nii (another format, no flags)
    committed beside the killed run's scan.nii.gz. The first is now refused, naming them; the overwrite removes them."""
    _, inputs, predictor = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"),
            "--save-uncertainty", *CLI_FAST]  # fmt: skip
    run = run_cli(["-c", KILL_AT_SECOND_COMMIT.replace("len(calls) == 2", "len(calls) == 3"), *args])
    assert run.wait(timeout=300) == -9, run.stderr.read()
    placed = visible(out)
    assert len(placed) == 2 and "scan.nii.gz" in placed
    extra = next(name for name in placed if name != "scan.nii.gz")
    other = tmp_path / "other"
    other.mkdir()
    nib.save(nib.load(inputs / "scan.nii.gz"), other / "scan.nii")
    (refused,) = predictor.predict_from_files(other, out, progress=False, **FAST)
    assert refused.status == "failed" and "which this run would leave behind" in refused.message
    assert "scan.nii.gz" in refused.message and extra in refused.message
    (result,) = predictor.predict_from_files(inputs, out, overwrite=True, progress=False, **FAST)
    assert result.status == "done" and visible(out) == ["scan.nii.gz"] and hidden_leftovers(out) == []
    assert f"removed {extra}, placed by an interrupted run's commit" in caplog.text


@pytest.mark.parametrize("staging", [None, "stale", "live"])
def test_a_file_of_the_same_name_from_elsewhere_is_not_called_an_interrupted_run(setup, staging):
    """Only a gone run's commit that --continue can finish gets the hint to finish it: a file put there by hand or by
    another tool, beside no staging folder or beside one of a run killed while it wrote (before its commit began),
    gets the plain message (the hint sent the user to --continue in vain); a live run writing the case is named."""
    from medwidit.inference.outputs import CaseWriter, plan_case

    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan.nii.gz").write_bytes((inputs / "scan.nii.gz").read_bytes())
    writer = None
    if staging is not None:
        writer = CaseWriter(plan_case(out, "scan", [out / "scan.nii.gz"]), overwrite=False).__enter__()
        if staging == "stale":
            writer._lock.__exit__(None, None, None)  # its process is gone: the flock is released
    try:
        (refused,) = predictor.predict_from_files(inputs, out, progress=False, **FAST)
    finally:
        if staging == "live":
            writer.__exit__(None, None, None)
    assert refused.status == "failed" and "interrupted" not in refused.message
    if staging == "live":
        assert "scan.nii.gz: already exists: another run is writing this case now" in refused.message
    else:
        assert "scan.nii.gz: already exists; pass overwrite to replace it or resume to skip" in refused.message


SIGTERM_AFTER_FIRST_COMMIT = KILL_AFTER_FIRST_COMMIT.replace("signal.SIGKILL", "signal.SIGTERM")


def test_sigterm_is_handled_as_an_interrupt(setup):
    """A scheduler's time limit (SIGTERM) ended the process at once: its record stayed "running" and no line said
    why. It now ends as Ctrl-C does, with status 143: the case's committed file removed, the record interrupted. (The
    signal arrives just after the first file's commit, before the writer listed it: that file was left behind.)"""
    tmp_path, inputs, _ = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"), *CLI_FAST]
    run = run_cli(["-c", SIGTERM_AFTER_FIRST_COMMIT, *args, "--save-uncertainty"])
    assert run.wait(timeout=300) == 143
    err = run.stderr.read()
    assert "interrupted during case scan (what this run had written of it is removed)" in err, err
    assert err.strip().endswith("terminated (SIGTERM)."), err
    assert visible(out) == [] and hidden_leftovers(out) == []
    record = json.loads((out / "medwidit_run.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "terminated by SIGTERM"


SIGNAL_DURING_START = """
import os, signal, sys, torch
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (a background job inherits it ignored)
torch.set_num_threads = lambda n: os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # while the CLI starts
from medwidit.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("name", "status", "line"), [("SIGTERM", 143, "terminated (SIGTERM)."),
                                                      ("SIGINT", 130, "interrupted.")])  # fmt: skip
def test_a_signal_while_the_cli_starts_ends_it_as_during_a_case(setup, name, status, line):
    """Ctrl-C while the CLI imported torch and set its threads printed Python's traceback, and SIGTERM there ended
    the process with a raw signal status (-15): the handlers and the one-line report only began after start-up."""
    tmp_path, inputs, _ = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"), *CLI_FAST]
    run = run_cli(["-c", SIGNAL_DURING_START, name, *args, "--threads", "1"])
    assert run.wait(timeout=300) == status
    err = run.stderr.read()
    assert err.strip().splitlines() == [f"medwidit: error: {line}"], err
    assert not out.exists()


def test_the_cli_puts_back_the_sigterm_handler_it_found(setup, monkeypatch):
    """``main`` handles SIGTERM only while it runs: a notebook's or a caller's own handler comes back, and an
    ignored SIGTERM stays ignored throughout (no handler is set over it, as Python leaves an ignored SIGINT)."""
    import signal

    from medwidit.cli import main

    tmp_path, inputs, _ = setup
    args = ["segment", "-i", str(inputs), "--checkpoint", str(tmp_path / "model.pt"), "--quiet", *CLI_FAST]
    real, set_while_ignored = signal.signal, []

    def spy(signum, handler):
        if signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
            set_while_ignored.append(handler)
        return real(signum, handler)

    seen = []
    own = lambda signum, frame: None  # noqa: E731
    previous = real(signal.SIGTERM, own)
    try:
        for handler, out in ((own, "a"), (signal.SIG_IGN, "b")):
            real(signal.SIGTERM, handler)
            monkeypatch.setattr(signal, "signal", spy)
            assert main([*args, "-o", str(tmp_path / out)]) == 0
            monkeypatch.setattr(signal, "signal", real)
            seen.append(signal.getsignal(signal.SIGTERM))
    finally:
        real(signal.SIGTERM, previous)
    assert seen == [own, signal.SIG_IGN] and set_while_ignored == []


def test_overwrite_after_a_kill_redoes_the_case_and_clears_the_stale_staging(setup, tmp_path):
    from medwidit.inference.outputs import CaseWriter, plan_case

    _, inputs, predictor = setup
    out = tmp_path / "out"
    out.mkdir()
    plan = plan_case(out, "scan", [out / "scan.nii.gz"])
    writer = CaseWriter(plan, overwrite=False).__enter__()  # a run that staged and then vanished (no __exit__)
    writer._lock.__exit__(None, None, None)  # its process is gone: the flock is released
    assert len(hidden_leftovers(out)) == 1
    (result,) = predictor.predict_from_files(inputs, out, overwrite=True, progress=False, **FAST)
    assert result.status == "done" and result.message is None and hidden_leftovers(out) == []


def test_overwrite_replaces_a_case_as_one_set_and_removes_no_file_of_the_user(setup, tmp_path, caplog):
    """A run that saved the maps and the quality, then one with --overwrite and labels only: the earlier maps and
    report (its marker lists them) went with the old labels; they once stayed, beside labels they did not describe.
    A file of such a name the earlier run did not write stays."""
    _, inputs, predictor = setup
    out = tmp_path / "out"
    predictor.predict_from_files(inputs, out, save_uncertainty=True, save_quality=True, progress=False, **FAST)
    assert visible(out) == sorted([*UNCERTAINTY_OUTPUTS, "scan_quality.json"])
    (out / "scan_statistics.json").write_text("{}")  # the user's, not in the marker
    (result,) = predictor.predict_from_files(inputs, out, overwrite=True, progress=False, seed=1, **FAST)
    assert result.status == "done"
    assert visible(out) == ["scan.nii.gz", "scan_statistics.json"]
    assert json.loads((out / ".medwidit" / "scan.json").read_text())["files"] == ["scan.nii.gz"]
    assert "removed the earlier run's scan_uncertainty.nii.gz, scan_aleatoric.nii.gz" in caplog.text


def test_a_case_of_one_name_in_another_format_is_refused_then_replaced_as_one_set(setup, tmp_path, caplog):
    """From a review: the case's marker is keyed by its name, and its files by name and format. `in1/scan.nii` then
    `in2/scan.nii.gz` into one folder, without --overwrite, took scan.nii's marker and left scan.nii behind, unlisted
    (a later --continue of in1 then failed a finished case); with --overwrite the earlier set stayed beside the new
    labels. The second run is refused; with --overwrite it replaces the earlier set whole."""
    _, _, predictor = setup
    first, second, out = tmp_path / "in1", tmp_path / "in2", tmp_path / "out"
    first.mkdir(), second.mkdir()
    nifti(first / "scan.nii"), nifti(second / "scan.nii.gz", seed=1)
    predictor.predict_from_files(first, out, save_uncertainty=True, progress=False, **FAST)
    earlier = [name.replace(".nii.gz", ".nii") for name in UNCERTAINTY_OUTPUTS]
    (result,) = predictor.predict_from_files(second, out, progress=False, **FAST)
    assert result.status == "failed" and "case 'scan' was written by an earlier run (scan.nii, " in result.message
    listed = json.loads((out / ".medwidit" / "scan.json").read_text())["files"]
    assert visible(out) == earlier and sorted(listed) == earlier  # the earlier set, still listed by its marker
    (result,) = predictor.predict_from_files(first, out, resume=True, save_uncertainty=True, progress=False, **FAST)
    assert result.status == "skipped"  # still its own, finished
    (result,) = predictor.predict_from_files(second, out, overwrite=True, progress=False, **FAST)
    assert result.status == "done" and visible(out) == ["scan.nii.gz"]
    assert "removed the earlier run's scan.nii, " in caplog.text


def test_an_overwrite_removes_no_output_that_another_cases_marker_lists(setup, tmp_path):
    """From a review: case scan's uncertainty map, scan_uncertainty.nii.gz, was replaced (--overwrite) by the labels
    of another scan named scan_uncertainty; a later --overwrite of scan without maps removed them as scan's earlier
    map, though case scan_uncertainty's marker lists them."""
    _, inputs, predictor = setup
    other, out = tmp_path / "in2", tmp_path / "out"
    other.mkdir()
    nifti(other / "scan_uncertainty.nii.gz", seed=1)
    predictor.predict_from_files(inputs, out, save_uncertainty=True, progress=False, **FAST)
    (result,) = predictor.predict_from_files(other, out, overwrite=True, progress=False, **FAST)
    assert result.status == "done"
    (result,) = predictor.predict_from_files(inputs, out, overwrite=True, progress=False, **FAST)
    assert result.status == "done" and visible(out) == ["scan.nii.gz", "scan_uncertainty.nii.gz"]
    (result,) = predictor.predict_from_files(other, out, resume=True, progress=False, **FAST)
    assert result.status == "skipped"  # case scan_uncertainty is still finished


def test_an_overwrite_that_replaces_another_cases_output_takes_it_out_of_that_cases_marker(setup, tmp_path, caplog):
    """From a review: case scan_uncertainty's labels, written by an earlier run, were replaced by case scan's
    uncertainty map (--overwrite), and scan_uncertainty's marker still listed them: --continue skipped that case as
    finished on an entropy map. Its marker now drops the file and says which case replaced it; an overwrite cut short
    puts the file and the marker's list back."""
    _, inputs, predictor = setup
    other, out = tmp_path / "in2", tmp_path / "out"
    other.mkdir()
    nifti(other / "scan_uncertainty.nii.gz", seed=1)
    predictor.predict_from_files(other, out, progress=False, **FAST)
    labels = (out / "scan_uncertainty.nii.gz").read_bytes()
    marker = out / ".medwidit" / "scan_uncertainty.json"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from medwidit.inference import outputs as outputs_module

    real = outputs_module._stale
    outputs_module._stale = interrupted  # after the files are committed, before the marker
    try:
        with pytest.raises(KeyboardInterrupt):
            predictor.predict_from_files(inputs, out, overwrite=True, save_uncertainty=True, progress=False, **FAST)
    finally:
        outputs_module._stale = real
    assert (out / "scan_uncertainty.nii.gz").read_bytes() == labels
    assert json.loads(marker.read_text())["files"] == ["scan_uncertainty.nii.gz"]
    assert "replaced" not in json.loads(marker.read_text())
    (result,) = predictor.predict_from_files(inputs, out, overwrite=True, save_uncertainty=True, progress=False, **FAST)
    assert result.status == "done" and (out / "scan_uncertainty.nii.gz").read_bytes() != labels
    assert "replaced scan_uncertainty.nii.gz, case 'scan_uncertainty''s output from an earlier run" in caplog.text
    content = json.loads(marker.read_text())
    assert content["files"] == [] and content["replaced"] == {"scan_uncertainty.nii.gz": "scan"}
    (result,) = predictor.predict_from_files(other, out, resume=True, progress=False, **FAST)
    assert result.status == "failed"  # not skipped as finished
    assert "scan_uncertainty.nii.gz was replaced by case 'scan''s output" in result.message


def test_what_a_run_would_leave_behind_excludes_what_another_case_lists(tmp_path):
    """A second review: the refusal without --overwrite named a file that another case's marker lists, which the
    overwrite it asks for then keeps; both read the same exclusion."""
    from medwidit.inference.outputs import left_behind, plan_case

    out, state = tmp_path / "out", tmp_path / "out" / ".medwidit"
    state.mkdir(parents=True)
    for name in ("scan.nii", "scan_uncertainty.nii.gz"):
        (out / name).write_bytes(b"x")
    (state / "scan.json").write_text(json.dumps({"case": "scan", "files": ["scan.nii", "scan_uncertainty.nii.gz"]}))
    assert left_behind(plan_case(out, "scan", [out / "scan.nii.gz"])) == ["scan.nii", "scan_uncertainty.nii.gz"]
    other = {"case": "scan_uncertainty", "files": ["scan_uncertainty.nii.gz"]}
    (state / "scan_uncertainty.json").write_text(json.dumps(other))
    assert left_behind(plan_case(out, "scan", [out / "scan.nii.gz"])) == ["scan.nii"]


def test_an_output_that_cannot_be_kept_before_an_overwrite_is_named(setup, tmp_path):
    """From a review: a folder under the uncertainty map's name stopped an overwrite (good: nothing replaced), with a
    line naming the labels file instead of the folder in the way."""
    _, inputs, predictor = setup
    out = tmp_path / "out"
    (out / "scan_uncertainty.nii.gz").mkdir(parents=True)
    (result,) = predictor.predict_from_files(inputs, out, overwrite=True, save_uncertainty=True, progress=False, **FAST)
    assert result.status == "failed"
    assert result.message.startswith(f"{out / 'scan_uncertainty.nii.gz'}: cannot keep the earlier outputs to replace")
    assert visible(out) == ["scan_uncertainty.nii.gz"] and hidden_leftovers(out) == []


def test_overwrite_removes_no_output_of_another_case_of_the_same_run(setup, tmp_path):
    """Case "scan_uncertainty"'s labels are case "scan"'s uncertainty map by name: an --overwrite run, labels only,
    that writes both cases once removed the first's labels as "scan"'s earlier map (the earlier run's marker lists
    that name), leaving a case reported done without its output."""
    _, inputs, predictor = setup
    other, reference = tmp_path / "other", tmp_path / "reference"
    other.mkdir()
    nifti(other / "scan_uncertainty.nii.gz", seed=1)
    predictor.predict_from_files(other, reference, progress=False, **FAST)
    for k, order in enumerate(([other, inputs], [inputs, other])):  # either case first
        out = tmp_path / f"out{k}"
        predictor.predict_from_files(inputs, out, save_uncertainty=True, progress=False, **FAST)
        results = predictor.predict_from_files(order, out, overwrite=True, progress=False, **FAST)
        assert sorted(r.name for r in results if r.status == "done") == ["scan", "scan_uncertainty"]
        assert visible(out) == ["scan.nii.gz", "scan_uncertainty.nii.gz"]
        for name in ("scan", "scan_uncertainty"):
            marker = json.loads((out / ".medwidit" / f"{name}.json").read_text())
            assert marker["files"] == [f"{name}.nii.gz"]
        np.testing.assert_array_equal(  # the file is the second case's labels, not the first's removed map
            nib.load(out / "scan_uncertainty.nii.gz").get_fdata(),
            nib.load(reference / "scan_uncertainty.nii.gz").get_fdata(),
        )


def _interrupt_second_commit(monkeypatch, error):
    from medwidit.inference import outputs as outputs_module

    calls = []
    real = outputs_module.commit

    def commit(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise error
        real(*args, **kwargs)

    monkeypatch.setattr(outputs_module, "commit", commit)
    return calls


def test_sigint_between_commits_leaves_nothing_and_says_so(setup, monkeypatch, capsys):
    from medwidit.cli import main

    tmp_path, inputs, _ = setup
    out = tmp_path / "out"
    calls = _interrupt_second_commit(monkeypatch, KeyboardInterrupt())
    code = main(
        [
            "segment",
            "-i",
            str(inputs),
            "-o",
            str(out),
            "--checkpoint",
            str(tmp_path / "model.pt"),
            "--save-uncertainty",
            "--save-figure",
            *CLI_FAST,
        ]
    )
    err = capsys.readouterr().err
    assert code == 130 and len(calls) == 2
    assert visible(out) == [] and hidden_leftovers(out) == []  # what the message says below is true
    assert "scan: removed the 1 output file(s) this run had committed (scan.nii.gz)" in err, err
    assert "interrupted during case scan (what this run had written of it is removed); the 0 case(s)" in err, err


def test_an_interrupted_runs_record_lists_the_cases_it_finished(setup, monkeypatch):
    """Interrupted in its second case: the record said "interrupted" with no case, though the first was complete
    (the message said so, the README says the record holds each case's status and outputs)."""
    from medwidit.cli import main

    tmp_path, inputs, _ = setup
    nifti(inputs / "zeta.nii.gz", seed=3)  # after "scan" by name
    out = tmp_path / "out"
    calls = _interrupt_second_commit(monkeypatch, KeyboardInterrupt())
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"), *CLI_FAST]
    assert main(args) == 130 and [Path(c).name for c in calls] == ["scan.nii.gz", "zeta.nii.gz"]
    record = json.loads((out / "medwidit_run.json").read_text())
    assert record["status"] == "interrupted"
    assert [(c["name"], c["status"], c["outputs"]) for c in record["cases"]] == [("scan", "done", ["scan.nii.gz"])]
    assert visible(out) == ["scan.nii.gz"]


def test_a_full_disk_while_the_figure_is_written_leaves_no_part_of_the_case(setup, monkeypatch):
    tmp_path, inputs, predictor = setup
    nifti(inputs / "other.nii.gz", seed=3)
    out = tmp_path / "out"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    results = predictor.predict_from_files(inputs, out, save_uncertainty=True, save_figure=True, progress=False, **FAST)
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[1].message == f"{out / 'scan_figure.png'}: cannot write (No space left on device)."
    assert visible(out) == [] and hidden_leftovers(out) == []


def test_continue_redoes_a_finished_case_whose_output_was_deleted(setup):
    """From a mutation review: a case counts as finished when its marker lists every planned file *and* each exists;
    trusting the marker alone skipped a case whose label file had since been deleted, leaving it missing."""
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    assert [r.status for r in predictor.predict_from_files(inputs, out, progress=False, **FAST)] == ["done"]
    (out / "scan.nii.gz").unlink()  # the marker still lists it
    (result,) = predictor.predict_from_files(inputs, out, resume=True, progress=False, **FAST)
    assert result.status == "done" and visible(out) == ["scan.nii.gz"]


def test_overwrite_with_continue_redoes_unfinished_and_skips_finished(setup):
    tmp_path, inputs, predictor = setup
    nifti(inputs / "other.nii.gz", seed=3)
    out = tmp_path / "out"
    predictor.predict_from_files(inputs / "other.nii.gz", out, progress=False, **FAST)
    (out / "scan.nii.gz").write_bytes(b"left by an older run, no marker")
    marker = (out / ".medwidit" / "other.json").stat().st_mtime_ns
    results = {
        r.name: r.status
        for r in predictor.predict_from_files(inputs, out, overwrite=True, resume=True, progress=False, **FAST)
    }
    assert results == {"other": "skipped", "scan": "done"}
    assert (out / ".medwidit" / "other.json").stat().st_mtime_ns == marker
    assert nib.load(out / "scan.nii.gz").shape == (12, 10, 8)


######################################################################################################################
# 4. the plan: no output replaces an input or another case's output
######################################################################################################################


def test_an_output_that_is_another_cases_input_stops_the_run_before_anything(setup):
    tmp_path, inputs, predictor = setup
    source = tmp_path / "src"
    source.mkdir()
    nifti(source / "scan.nii.gz")
    nifti(inputs / "scan_uncertainty.nii.gz", seed=5)  # case "scan" writes its uncertainty map here: an input
    before = (inputs / "scan_uncertainty.nii.gz").read_bytes()
    with pytest.raises(OutputError, match="scan_uncertainty.nii.gz: this output of case 'scan' is also the input"):
        predictor.predict_from_files(
            [source / "scan.nii.gz", inputs / "scan_uncertainty.nii.gz"],
            inputs,
            overwrite=True,
            save_uncertainty=True,
            progress=False,
            **FAST,
        )
    assert (inputs / "scan_uncertainty.nii.gz").read_bytes() == before


def test_two_cases_whose_outputs_collide_are_an_error_before_the_first_runs(setup):
    tmp_path, inputs, predictor = setup
    nifti(inputs / "scan_uncertainty.nii.gz", seed=5)  # case "scan_uncertainty" and case "scan"'s uncertainty map
    out = tmp_path / "out"
    with pytest.raises(
        OutputError,
        match="scan_uncertainty.nii.gz: this output of case 'scan_uncertainty' is also an output of case 'scan'",
    ):
        predictor.predict_from_files(inputs, out, save_uncertainty=True, progress=False, **FAST)
    assert visible(out) == []


def test_cases_of_one_name_in_two_folders_are_named_apart_by_their_folders(setup, caplog):
    """From a review: ``p1/scan`` and ``p2/scan`` (two patients' series of one name) were refused, with no way to name
    their outputs apart; each output now carries its folder's name, and each map is its own case's."""
    tmp_path, _, predictor = setup
    for patient, seed in (("p1", 1), ("p2", 2)):
        (tmp_path / patient).mkdir()
        nifti(tmp_path / patient / "scan.nii.gz", seed=seed)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="medwidit.inference.cases"):
        results = predictor.predict_from_files([tmp_path / "p1", tmp_path / "p2"], out, progress=False, **FAST)
    assert [(r.name, r.status) for r in results] == [("p1_scan", "done"), ("p2_scan", "done")]
    assert visible(out) == ["p1_scan.nii.gz", "p2_scan.nii.gz"]
    assert f"{tmp_path / 'p1' / 'scan'} -> p1_scan" in caplog.text
    for patient in ("p1", "p2"):
        alone = predictor.predict_from_files(tmp_path / patient, tmp_path / f"alone_{patient}", progress=False, **FAST)
        assert alone[0].name == "scan"
        written = nib.load(str(out / f"{patient}_scan.nii.gz")).get_fdata()
        assert np.array_equal(written, nib.load(str(tmp_path / f"alone_{patient}" / "scan.nii.gz")).get_fdata())


def test_folders_named_apart_go_up_until_they_differ_and_never_take_another_cases_name(tmp_path, monkeypatch):
    for folder in ("a/x", "b/x", "c"):
        (tmp_path / folder).mkdir(parents=True)
    for path in ("a/x/scan.nii.gz", "b/x/scan.nii.gz", "c/x_scan.nii.gz", "c/y.nii.gz"):
        nifti(tmp_path / path)
    cases = {case.name: case for case in find_cases([tmp_path / "a/x", tmp_path / "b/x", tmp_path / "c"])}
    assert sorted(cases) == ["a_x_scan", "b_x_scan", "x_scan", "y"]
    assert all(case.problem is None for case in cases.values())
    (tmp_path / "d").mkdir()
    nifti(tmp_path / "d/y.nii.gz")
    nifti(tmp_path / "c/d_y.nii.gz")  # "d/y" named apart would be "d_y": another case's name
    problems = {c.files[0]: c.problem for c in find_cases([tmp_path / "c", tmp_path / "d"]) if c.problem}
    assert list(problems) == [tmp_path / "d/y.nii.gz"]
    assert (
        "its folder's name for it, d_y, is another case's; outputs would collide" in problems[tmp_path / "d/y.nii.gz"]
    )
    monkeypatch.chdir(tmp_path)
    twice = find_cases(["c", tmp_path / "c"])  # one folder, given as two paths: its files once (refused before)
    assert sorted(case.name for case in twice) == ["d_y", "x_scan", "y"]
    assert all(case.problem is None and case.files[0].parent == Path("c") for case in twice)


######################################################################################################################
# 5, 6. empty folders; ID-like names
######################################################################################################################


def test_an_empty_folder_is_reported_and_the_rest_runs(setup):
    tmp_path, inputs, predictor = setup
    (tmp_path / "empty").mkdir()
    results = predictor.predict_from_files([tmp_path / "empty", inputs], tmp_path / "out", progress=False, **FAST)
    assert [r.status for r in results] == ["done", "failed"]
    assert results[1].message.startswith(f"{tmp_path / 'empty'}: no image files in this folder")


def test_id_like_names_are_single_cases_for_a_one_channel_model(setup, caplog):
    tmp_path, inputs, predictor = setup
    ids = tmp_path / "ids"
    ids.mkdir()
    for i in (1, 2, 3):
        nifti(ids / f"patient_{i:04d}.nii.gz", seed=i)
    results = predictor.predict_from_files(ids, tmp_path / "out", progress=False, **FAST)
    assert [(r.name, r.status) for r in results] == [(f"patient_{i:04d}", "done") for i in (1, 2, 3)]
    assert "patient_0001.nii.gz, patient_0002.nii.gz, patient_0003.nii.gz are 3 cases" in caplog.text
    (one,) = predictor.predict_from_files(
        inputs / "scan.nii.gz", tmp_path / "x", modality_pattern=None, progress=False, **FAST
    )
    assert one.outputs == [tmp_path / "x" / "scan.nii.gz"]
    with pytest.raises(ValueError, match="exactly one group"):
        predictor.predict_from_files(ids, tmp_path / "y", modality_pattern="_\\d{4}", progress=False, **FAST)
    with pytest.raises(ValueError, match=r"'\(' is not a regular expression .*at position 0\)"):  # once 14
        predictor.predict_from_files(ids, tmp_path / "y", modality_pattern="(", progress=False, **FAST)


def test_an_id_split_that_meets_a_case_of_its_name_fails_that_case_and_drops_no_file(tmp_path):
    """scan_0001 / scan_0002 split into their own cases, beside scan_0001_0000 (case scan_0001's channel 0): the
    split once replaced that case, so a file was never segmented nor named."""
    for name in ("scan_0001", "scan_0002", "scan_0001_0000"):
        nifti(tmp_path / f"{name}.nii.gz")
    cases = {c.name: c for c in find_cases(tmp_path, num_modalities=1)}
    assert sorted(cases) == ["scan_0001", "scan_0002"]
    assert cases["scan_0002"].problem is None
    assert cases["scan_0001"].problem == (
        f"{tmp_path / 'scan_0001'}: one modality given twice (scan_0001_0000.nii.gz, scan_0001.nii.gz)."
    )


def test_one_file_given_twice_is_one_case_and_two_files_of_one_name_are_named_as_such(tmp_path):
    """From a review: a folder and a file in it (as a shell glob gives) or ./a and a failed the case as "one modality
    given twice (a.nii.gz, a.nii.gz)"; one file is one input. Two different files of one case name (scan.nii.gz and
    scan.nrrd, with or without modality numbers) are refused as what they are."""
    nifti(tmp_path / "a.nii.gz")
    for inputs in ([tmp_path, tmp_path / "a.nii.gz"], [tmp_path / "a.nii.gz", tmp_path / "." / "a.nii.gz"]):
        (case,) = find_cases(inputs, num_modalities=1)
        assert case.problem is None and case.files == (tmp_path / "a.nii.gz",)
    # from a second review: two names linked to one file are two cases (merged by real path, one vanished)
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("patA.nii.gz", "patB.nii.gz"):
        (linked / name).symlink_to(tmp_path / "a.nii.gz")
    assert sorted(c.name for c in find_cases(linked, num_modalities=1) if c.problem is None) == ["patA", "patB"]
    other = tmp_path / "b"
    other.mkdir()
    nifti(other / "scan.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32)), str(other / "scan.nrrd"))
    for pattern in ("default", None):
        options = {} if pattern == "default" else {"modality_pattern": None}
        (case,) = find_cases(other, num_modalities=1, **options)
        assert case.problem == (
            f"{other / 'scan'}: two files of one case name (scan.nii.gz, scan.nrrd); their outputs would share names."
        )


def test_a_lone_id_like_file_is_its_own_case_for_a_one_channel_model(tmp_path):
    """From a mutation review: one ``patient_0001`` file alone (no ``_0000``) must still split into case
    ``patient_0001``; a split only of groups of several files left it case ``patient`` with a gap in its channels."""
    nifti(tmp_path / "patient_0001.nii.gz")
    nifti(tmp_path / "scan_0000.nii.gz")
    cases = {c.name: c for c in find_cases(tmp_path, num_modalities=1)}
    assert sorted(cases) == ["patient_0001", "scan"]
    assert all(case.problem is None for case in cases.values())
    (two,) = find_cases(tmp_path / "patient_0001.nii.gz", num_modalities=2)  # several channels: a modality, kept
    assert two.name == "patient" and two.problem is not None


def test_hidden_files_of_a_folder_are_not_cases(tmp_path):
    """From a mutation review: a folder's hidden files (macOS ``._scan.nii.gz`` resource forks) are skipped; read as
    images they became failed cases, or a case ``._scan`` whose output ``._scan.nii.gz`` is hidden itself."""
    nifti(tmp_path / "scan.nii.gz")
    (tmp_path / "._scan.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    assert [(c.name, c.problem) for c in find_cases(tmp_path, num_modalities=1)] == [("scan", None)]


######################################################################################################################
# 7. grid sanity; an array without an affine
######################################################################################################################


def test_a_grid_that_resampling_collapses_or_explodes_is_refused(tmp_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint(tmp_path / "model.pt", spacing=(1.0, 1.0, 1.0)), device="cpu")
    tiny = nifti(tmp_path / "tiny.nii.gz", affine=np.diag([0.01, 0.01, 0.01, 1.0]))
    with pytest.raises(InputError, match=r"tiny.nii.gz: resampling .* leaves 1 voxel\(s\) along an axis, too small"):
        predictor.segment(tiny, **FAST)
    # one 8 mm slice: MONAI's Spacing keeps it one voxel (first to last voxel centre, plus one); counted as 8 voxels
    # it passed, and the case came out empty, as done
    slab = nifti(tmp_path / "slab.nii.gz", shape=(12, 10, 1), affine=np.diag([1.0, 1.0, 8.0, 1.0]))
    with pytest.raises(InputError, match=r"slab.nii.gz: resampling .* leaves 1 voxel\(s\) along an axis"):
        predictor.segment(slab, **FAST)
    from medwidit.inference.options import check_grid

    check_grid((6, 6, 6), np.eye(4), (2.0, 2.0, 2.0), "six")  # MONAI makes 4 voxels (round(2.5 + 1)), not 3
    huge = nifti(tmp_path / "huge.nii.gz", affine=np.diag([20.0, 20.0, 20.0, 1.0]))
    with pytest.raises(InputError, match="huge.nii.gz: resampling .* makes 8000 times as many voxels .*--force-grid"):
        predictor.segment(huge, **FAST)
    five = nifti(tmp_path / "five.nii.gz", shape=(8, 6, 6), affine=np.diag([5.0, 5.0, 5.0, 1.0]))  # 125x
    with pytest.raises(InputError, match="125 times"):
        predictor.segment(five, **FAST)
    assert predictor.segment(five, force_grid=True, **FAST).label_map.shape == (8, 6, 6)


def test_a_channel_last_array_is_named_as_such(setup):
    """(X, Y, Z, 1) reads as X channels of (Y, Z, 1): "90 channel(s) where the model expects 1" left the user to
    guess why."""
    _, _, predictor = setup
    with pytest.raises(InputError, match=r"12 channel\(s\) .* expects 1; shape \(12, 10, 8, 1\) looks channel-last"):
        predictor.segment(np.random.default_rng(0).random((12, 10, 8, 1), dtype=np.float32), **FAST)


def test_an_array_without_an_affine_warns(setup, caplog):
    _, _, predictor = setup
    predictor.segment(np.linspace(0, 1, 960, dtype=np.float32).reshape(12, 10, 8), **FAST)
    assert "array: no affine given, assuming 1 mm voxels" in caplog.text


######################################################################################################################
# 8. results do not depend on --sw-batch-size
######################################################################################################################


def test_results_do_not_depend_on_the_window_batch_size(tmp_path):
    """20^3 = 8000 voxels at 1 mm with 16^3 windows: the old budget (batch x window) ran windows with one window per
    call and the whole volume with four; the budget is now voxels, so both give the same maps."""
    checkpoint = tiny_checkpoint(tmp_path / "model.pt", spacing=(1.0, 1.0, 1.0))
    volume = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    maps = [
        Predictor.from_checkpoint(checkpoint, device="cpu", sw_batch_size=batch)
        .segment(volume, affine=np.eye(4), steps=2, num_samples=2)
        .probability
        for batch in (1, 4)
    ]
    np.testing.assert_array_equal(maps[0], maps[1])


######################################################################################################################
# markers
######################################################################################################################


def test_the_marker_lists_the_case_files_and_is_written_last(setup, monkeypatch):
    from medwidit.inference import outputs as outputs_module

    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    order = []
    real_commit, real_marker = outputs_module.commit, outputs_module._write_marker
    monkeypatch.setattr(outputs_module, "commit", lambda *a, **k: (order.append(Path(a[1]).name), real_commit(*a, **k)))
    monkeypatch.setattr(outputs_module, "_write_marker", lambda *a: (order.append("marker"), real_marker(*a)))
    predictor.predict_from_files(inputs, out, save_probabilities=True, progress=False, **FAST)
    assert order == ["scan.nii.gz", "scan_probabilities.nii.gz", "marker"]
    marker = json.loads((out / ".medwidit" / "scan.json").read_text())
    settings = marker.pop("settings")  # what the outputs depend on, for --continue to compare
    assert marker == {"case": "scan", "files": ["scan.nii.gz", "scan_probabilities.nii.gz"]}
    assert settings["seed"] == 0 and settings["steps"] == FAST["steps"] and len(settings["weights"]) == 1


######################################################################################################################
# 6. an overwrite cut short puts the earlier set back (found by a review)
######################################################################################################################


def _case(out, name, files, others=()):
    from medwidit.inference.outputs import plan_case

    return plan_case(out, name, [out / f for f in files], [out / f for f in others])


def _commit_case(plan, content, *, overwrite):
    from medwidit.inference.outputs import CaseWriter

    with CaseWriter(plan, overwrite=overwrite) as writer:
        for path in plan.files:
            writer.write(path, lambda staged, path=path: staged.write_text(f"{content} {path.name}"))
        writer.commit()


def _contents(out):
    return {name: (out / name).read_text() for name in visible(out)}


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(errno.ENOSPC, "No space left on device")])
@pytest.mark.parametrize("calls", [1, 2, 3])
def test_an_overwrite_cut_short_puts_the_earlier_set_back(tmp_path, monkeypatch, failure, calls):
    """The earlier run wrote labels and uncertainty; an overwrite of labels and probabilities is interrupted (or the
    disk fills) at its first or second file's commit or at its marker: the earlier labels and uncertainty came back
    neither, and the earlier marker was gone (so --continue called the complete earlier case unfinished)."""
    from medwidit.inference import outputs
    from medwidit.inference.outputs import is_finished

    out = tmp_path / "out"
    out.mkdir()
    earlier = _case(out, "x", ["x.nii.gz", "x_uncertainty.nii.gz"], others=["x_probabilities.nii.gz"])
    _commit_case(earlier, "old", overwrite=False)
    before = _contents(out)
    real, count = outputs.commit, []

    def failing(source, target, *, overwrite):
        count.append(target)
        if len(count) == calls:
            raise failure
        return real(source, target, overwrite=overwrite)

    def marker(plan, *args, real_marker=outputs._write_marker):  # the third step: after the uncertainty's removal
        count.append(plan.marker)
        if len(count) == calls:
            raise failure
        real_marker(plan, *args)

    monkeypatch.setattr(outputs, "commit", failing)
    monkeypatch.setattr(outputs, "_write_marker", marker)
    new = _case(out, "x", ["x.nii.gz", "x_probabilities.nii.gz"], others=["x_uncertainty.nii.gz"])
    with pytest.raises((KeyboardInterrupt, OSError)):
        _commit_case(new, "new", overwrite=True)
    assert _contents(out) == before
    assert is_finished(earlier)
    assert hidden_leftovers(out) == []


def _killed_overwrite(out, monkeypatch, after_files):
    """An overwrite of x's labels and probabilities that dies (no cleanup at all) after committing ``after_files``
    of its files, the earlier run's labels and uncertainty in place before it."""
    earlier = _case(out, "x", ["x.nii.gz", "x_uncertainty.nii.gz"], others=["x_probabilities.nii.gz"])
    _commit_case(earlier, "old", overwrite=False)
    new = _case(out, "x", ["x.nii.gz", "x_probabilities.nii.gz"], others=["x_uncertainty.nii.gz"])
    _kill_overwrite(new, monkeypatch, after_files)
    return earlier, new


def _kill_overwrite(plan, monkeypatch, after_files, overwrite=True):
    """An overwriting commit of ``plan`` (a plain one with ``overwrite`` False) that dies after committing
    ``after_files`` of its files: no cleanup, and its flock gone with its process."""
    from medwidit.inference import outputs
    from medwidit.inference.outputs import CaseWriter

    real, count = outputs.commit, []

    class Killed(BaseException):
        pass

    def dying(source, target, *, overwrite):
        if len(count) == after_files:
            raise Killed
        count.append(target)
        return real(source, target, overwrite=overwrite)

    with monkeypatch.context() as patch:
        patch.setattr(outputs, "commit", dying)
        patch.setattr(outputs, "_write_marker", lambda *a: dying(None, None, overwrite=overwrite))
        patch.setattr(outputs, "_restore", lambda *args: None, raising=False)  # a SIGKILL runs no cleanup
        writer = CaseWriter(plan, overwrite=overwrite).__enter__()
        for path in plan.files:
            writer.write(path, lambda staged, path=path: staged.write_text(f"new {path.name}"))
        with pytest.raises(Killed):
            writer.commit()
        writer._lock.__exit__(None, None, None)


def test_a_killed_overwrite_is_put_back_by_the_next_overwrite_sweep(tmp_path, monkeypatch):
    from medwidit.inference.outputs import finish_interrupted, is_finished

    out = tmp_path / "out"
    out.mkdir()
    earlier, new = _killed_overwrite(out, monkeypatch, after_files=1)  # new labels in place, the old marker gone
    assert not is_finished(earlier)
    assert not finish_interrupted(new, overwrite=True, finish=False)
    assert _contents(out) == {"x.nii.gz": "old x.nii.gz", "x_uncertainty.nii.gz": "old x_uncertainty.nii.gz"}
    assert is_finished(earlier) and hidden_leftovers(out) == []
    _commit_case(new, "new", overwrite=True)  # the redone overwrite replaces the set, the uncertainty removed
    assert _contents(out) == {"x.nii.gz": "new x.nii.gz", "x_probabilities.nii.gz": "new x_probabilities.nii.gz"}


def test_continue_after_an_overwrite_killed_before_its_marker_removes_the_earlier_extras(tmp_path, monkeypatch):
    """The overwrite had committed all its files; --continue finished it but kept the earlier run's uncertainty
    beside the new labels, under a marker that listed only the new files."""
    from medwidit.inference.outputs import finish_interrupted, is_finished

    out = tmp_path / "out"
    out.mkdir()
    _, new = _killed_overwrite(out, monkeypatch, after_files=2)
    assert finish_interrupted(new, overwrite=False, finish=True)
    assert _contents(out) == {"x.nii.gz": "new x.nii.gz", "x_probabilities.nii.gz": "new x_probabilities.nii.gz"}
    assert is_finished(new) and hidden_leftovers(out) == []


def test_a_commit_sweeps_what_killed_runs_left_of_its_case(tmp_path):
    """A run killed while staging left its staging folder (full-size maps) through every later run of the case; so
    did one killed before it wrote its manifest."""
    from medwidit.inference.outputs import CaseWriter, is_finished

    out = tmp_path / "out"
    out.mkdir()
    plan = _case(out, "x", ["x.nii.gz"])
    other = _case(out, "x2", ["x2.nii.gz"])
    killed = CaseWriter(plan, overwrite=False).__enter__()
    killed.write(out / "x.nii.gz", lambda staged: staged.write_text("half"))
    killed._lock.__exit__(None, None, None)
    bare = out / ".medwidit" / "x.abcd_123.staging"
    bare.mkdir()
    os.utime(bare, (1e9, 1e9))  # long ago: not a run that is starting now
    young = out / ".medwidit" / "x.young123.staging"
    young.mkdir()
    live = CaseWriter(other, overwrite=False).__enter__()  # another case's live run is not touched
    _commit_case(plan, "new", overwrite=False)
    assert is_finished(plan) and (out / "x.nii.gz").read_text() == "new x.nii.gz"
    assert sorted(p.name for p in (out / ".medwidit").glob("*.staging")) == sorted([young.name, live.staging.name])
    live.__exit__(None, None, None)


def test_continue_after_an_overwrite_killed_midway_skips_the_earlier_case_it_puts_back(setup, monkeypatch):
    """The sweep put the earlier set back, but the case had been judged unfinished just before: --continue said
    to pass --overwrite for a case that was complete again."""
    from medwidit.inference.outputs import is_finished, plan_case

    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    out.mkdir()
    earlier = plan_case(out, "scan", [out / "scan.nii.gz"], [out / "scan_probabilities.nii.gz"])
    _commit_case(earlier, "old", overwrite=False)  # a finished case of labels only
    new = plan_case(out, "scan", [out / "scan.nii.gz", out / "scan_probabilities.nii.gz"])
    _kill_overwrite(new, monkeypatch, after_files=1)
    assert not is_finished(earlier)
    result = predictor.predict_from_files(inputs, out, resume=True, **FAST)[0]
    assert result.status == "skipped", result.message
    assert (out / "scan.nii.gz").read_text() == "old scan.nii.gz" and hidden_leftovers(out) == []


def test_an_error_after_a_complete_commit_removes_nothing(tmp_path, monkeypatch):
    """An interrupt in the sweep that follows the marker made the writer's cleanup remove every file just committed,
    the marker left listing files that no longer existed (found by a review of the change)."""
    from medwidit.inference import outputs
    from medwidit.inference.outputs import is_finished

    out = tmp_path / "out"
    out.mkdir()
    plan = _case(out, "x", ["x.nii.gz", "x_uncertainty.nii.gz"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "_sweep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _commit_case(plan, "new", overwrite=False)
    assert is_finished(plan) and _contents(out) == {name: f"new {name}" for name in visible(out)}
    assert len(_contents(out)) == 2 and hidden_leftovers(out) == []


def _overwrite_with_its_restore_cut_short(plan, monkeypatch, content="new", at=None):
    """An overwriting commit of ``plan`` whose marker meets a full disk, and whose restore is then interrupted (a
    second Ctrl-C) as it puts back the earlier ``at`` (a file name; None: the first it puts back)."""
    from medwidit.inference import outputs

    real_replace = os.replace

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def second_interrupt(source, target):
        if Path(source).name.startswith(outputs.KEPT) and at in (None, Path(target).name):
            raise KeyboardInterrupt
        real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(outputs, "_write_marker", full)
        patch.setattr(outputs.os, "replace", second_interrupt)
        with pytest.raises(KeyboardInterrupt):
            _commit_case(plan, content, overwrite=True)


@pytest.mark.parametrize("content", ["old", "new"])
def test_a_restore_cut_short_is_finished_by_the_next_sweep(tmp_path, monkeypatch, caplog, content):
    """A second Ctrl-C inside the restore (or a disk still full at the earlier marker) removed the earlier files of
    the same bytes and the kept copies; run again, a restore removed the earlier labels it had put back."""
    from medwidit.inference.outputs import finish_interrupted, is_finished

    out = tmp_path / "out"
    out.mkdir()
    plan = _case(out, "x", ["x.nii.gz", "x_uncertainty.nii.gz"])
    _commit_case(plan, "old", overwrite=False)
    _overwrite_with_its_restore_cut_short(plan, monkeypatch, content, at="x_uncertainty.nii.gz")
    assert not is_finished(plan) and len(hidden_leftovers(out)) == 1  # the kept copies wait for the next run
    said = [r.getMessage() for r in caplog.records if "cut short; what is left" in r.getMessage()]
    assert said and hidden_leftovers(out)[0] in said[0] and "next run of this case puts them back" in said[0]
    assert not finish_interrupted(plan, overwrite=True, finish=False)
    assert _contents(out) == {"x.nii.gz": "old x.nii.gz", "x_uncertainty.nii.gz": "old x_uncertainty.nii.gz"}
    assert is_finished(plan) and hidden_leftovers(out) == []


def test_an_interrupt_just_after_the_earlier_marker_is_removed_puts_it_back(tmp_path, monkeypatch):
    from medwidit.inference.outputs import is_finished

    out = tmp_path / "out"
    out.mkdir()
    plan = _case(out, "x", ["x.nii.gz"])
    _commit_case(plan, "old", overwrite=False)
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        real_unlink(self, missing_ok=missing_ok)
        if self.name == "x.json":
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        _commit_case(plan, "new", overwrite=True)
    monkeypatch.undo()
    assert is_finished(plan) and _contents(out) == {"x.nii.gz": "old x.nii.gz"} and hidden_leftovers(out) == []


def test_an_interrupt_while_the_removed_extras_are_named_puts_the_earlier_set_back(tmp_path, monkeypatch):
    """The line naming the earlier extras an overwrite removed came after the marker: an interrupt while it was
    logged removed the case just committed, the earlier set gone too (found by a second review). It is said before
    the marker now, so the interrupt puts the earlier set back."""
    from medwidit.inference import outputs
    from medwidit.inference.outputs import is_finished

    out = tmp_path / "out"
    out.mkdir()
    _commit_case(_case(out, "x", ["x.nii.gz", "x_uncertainty.nii.gz"]), "old", overwrite=False)
    plan = _case(out, "x", ["x.nii.gz"], others=["x_uncertainty.nii.gz"])

    def warning(message, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.logger, "warning", warning)
    with pytest.raises(KeyboardInterrupt):
        _commit_case(plan, "new", overwrite=True)
    assert is_finished(_case(out, "x", ["x.nii.gz", "x_uncertainty.nii.gz"])) and hidden_leftovers(out) == []
    assert _contents(out) == {"x.nii.gz": "old x.nii.gz", "x_uncertainty.nii.gz": "old x_uncertainty.nii.gz"}


def test_a_commit_finishes_a_restore_cut_short_before_it_sweeps(tmp_path, monkeypatch):
    """A commit of other outputs of the case swept the kept copies of a restore cut short: the earlier uncertainty
    the restore had not put back yet was lost (found by a second review)."""

    out = tmp_path / "out"
    out.mkdir()
    plan = _case(out, "x", ["x.nii.gz", "x_uncertainty.nii.gz"])
    _commit_case(plan, "old", overwrite=False)
    _overwrite_with_its_restore_cut_short(plan, monkeypatch, at="x_uncertainty.nii.gz")
    assert (out / "x_uncertainty.nii.gz").read_text() == "new x_uncertainty.nii.gz"  # not back yet
    # the restore first; then this commit, which would leave the earlier set behind, is refused (from a review: two
    # runs at once, one committed beside the other's set in another format)
    with pytest.raises(OutputError, match="x.nii.gz: case 'x' was written by another run .* would leave behind"):
        _commit_case(_case(out, "x", ["x_probabilities.nii.gz"]), "other", overwrite=False)
    assert (out / "x_uncertainty.nii.gz").read_text() == "old x_uncertainty.nii.gz"
    assert hidden_leftovers(out) == []


def test_a_plain_write_whose_restore_is_cut_short_keeps_the_copies_and_says_where(tmp_path, monkeypatch, caplog):
    from medwidit.inference import outputs
    from medwidit.inference.outputs import CasePlan, CaseWriter

    files = tuple(tmp_path / f"{name}.nii.gz" for name in "abc")
    for path in files:
        path.write_text(f"old {path.name}")
    real_commit, real_replace = outputs.commit, os.replace

    def failing(source, target, *, overwrite):
        if Path(target).name == "c.nii.gz":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_commit(source, target, overwrite=overwrite)

    def second_interrupt(source, target):
        if Path(target).name == "b.nii.gz" and ".previous-" in Path(source).name:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(outputs, "commit", failing)
    monkeypatch.setattr(outputs.os, "replace", second_interrupt)
    with pytest.raises(KeyboardInterrupt), CaseWriter(CasePlan("a.nii.gz", files, None), overwrite=True) as writer:
        for path in files:
            writer.write(path, lambda staged, path=path: staged.write_text(f"new {path.name}"))
        writer.commit()
    kept = [p for p in tmp_path.iterdir() if p.name.endswith(".staging")]
    assert len(kept) == 1 and (kept[0] / ".previous-b.nii.gz").read_text() == "old b.nii.gz"
    assert any(str(kept[0]) in r.getMessage() for r in caplog.records)


def test_finish_interrupted_looks_at_the_stagings_under_the_folder_lock(tmp_path, monkeypatch):
    """It listed the staging folders and took their flocks before the folder's lock: a commit landing meanwhile made
    it sweep the copies of a restore that commit had skipped, an earlier output lost (found by a third review)."""
    import fcntl

    from medwidit.inference import outputs
    from medwidit.inference.outputs import finish_interrupted

    out = tmp_path / "out"
    out.mkdir()
    plan = _case(out, "x", ["x.nii.gz"])
    _commit_case(plan, "old", overwrite=False)
    held, real = [], outputs._stagings

    def stagings(plan):
        with open(plan.state_dir / "lock", "a") as other:  # another open file: refused while the lock is held
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
                fcntl.flock(other, fcntl.LOCK_UN)
            except BlockingIOError:
                held.append(True)
        return real(plan)

    monkeypatch.setattr(outputs, "_stagings", stagings)
    finish_interrupted(plan, overwrite=True, finish=True)
    assert held == [True]


def test_a_staging_folder_gone_since_it_was_listed_is_skipped(tmp_path, monkeypatch):
    """Another run removed it meanwhile: taking its flock raised FileNotFoundError and failed the case."""
    from medwidit.inference import outputs
    from medwidit.inference.outputs import finish_interrupted, staged_elsewhere

    out = tmp_path / "out"
    out.mkdir()
    plan = _case(out, "x", ["x.nii.gz"])
    _commit_case(plan, "old", overwrite=False)
    (out / ".medwidit" / "x.json").unlink()  # no marker: restore_interrupted looks too
    gone = out / ".medwidit" / "x.abcdefgh.staging"
    monkeypatch.setattr(outputs, "_stagings", lambda plan: [gone])
    monkeypatch.setattr(outputs, "_read_json", lambda path: {"case": "x", "kept": []})
    assert staged_elsewhere(plan) is None
    assert not finish_interrupted(plan, overwrite=True, finish=True)
    assert not outputs.restore_interrupted(plan)


def test_continue_puts_back_what_a_ctrl_c_aborted_rather_than_finishing_it(tmp_path, monkeypatch):
    """A restore cut short before the labels went back left a folder that read as a commit to finish: --continue
    finished the overwrite the user had aborted and the earlier uncertainty was lost (found by a third review)."""
    from medwidit.inference.outputs import finish_interrupted, is_finished

    out = tmp_path / "out"
    out.mkdir()
    earlier = _case(out, "x", ["x.nii.gz", "x_uncertainty.nii.gz"])
    _commit_case(earlier, "old", overwrite=False)
    new = _case(out, "x", ["x.nii.gz", "x_probabilities.nii.gz"], others=["x_uncertainty.nii.gz"])
    _overwrite_with_its_restore_cut_short(new, monkeypatch)  # cut at its first file
    assert not finish_interrupted(new, overwrite=False, finish=True)
    assert _contents(out) == {"x.nii.gz": "old x.nii.gz", "x_uncertainty.nii.gz": "old x_uncertainty.nii.gz"}
    assert is_finished(earlier) and hidden_leftovers(out) == []


def test_a_plain_run_after_a_killed_overwrite_puts_the_case_back_before_segmenting(setup, monkeypatch):
    """It segmented the whole case, then its commit put the earlier set back and refused to replace it."""
    from medwidit.inference.outputs import is_finished, plan_case

    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    out.mkdir()
    earlier = plan_case(out, "scan", [out / "scan.nii.gz", out / "scan_uncertainty.nii.gz"])
    _commit_case(earlier, "old", overwrite=False)
    new = plan_case(out, "scan", [out / "scan.nii.gz", out / "scan_probabilities.nii.gz"])
    _kill_overwrite(new, monkeypatch, after_files=1)

    def never(*args, **kwargs):
        raise AssertionError("segmented a case whose outputs exist")

    monkeypatch.setattr(predictor, "segment", never)
    result = predictor.predict_from_files(inputs, out, save_uncertainty=True, **FAST)[0]
    assert result.status == "failed" and "scan.nii.gz: already exists" in result.message
    assert is_finished(earlier) and (out / "scan.nii.gz").read_text() == "old scan.nii.gz"


def test_continue_from_the_cli_finishes_a_killed_overwrite_that_had_placed_its_files(setup, monkeypatch):
    """Every run first put back any killed overwrite, so --continue never reached the commit it finishes: the new
    set was thrown away and the case refused (found by a fourth review; the test above calls finish_interrupted)."""
    from medwidit.inference.outputs import is_finished, plan_case

    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    out.mkdir()
    earlier = plan_case(out, "scan", [out / "scan.nii.gz", out / "scan_uncertainty.nii.gz"])
    _commit_case(earlier, "old", overwrite=False)
    others = [out / "scan_uncertainty.nii.gz"]
    new = plan_case(out, "scan", [out / "scan.nii.gz", out / "scan_probabilities.nii.gz"], others)
    _kill_overwrite(new, monkeypatch, after_files=2)  # both files placed, killed at the marker
    result = predictor.predict_from_files(inputs, out, save_probabilities=True, resume=True, **FAST)[0]
    assert (result.status, result.message) == ("done", "finished an interrupted commit")
    assert _contents(out) == {name: f"new {name}" for name in ("scan.nii.gz", "scan_probabilities.nii.gz")}
    assert is_finished(new) and hidden_leftovers(out) == []


def test_a_finished_case_takes_no_folder_lock_to_look_for_a_restore(tmp_path, monkeypatch):
    """Every run opened .medwidit/lock for writing for every case: in a shared folder whose lock file a colleague
    owns, --continue and plain runs failed each case with a permission error (found by a fourth review)."""
    from medwidit.inference import outputs
    from medwidit.inference.outputs import restore_interrupted

    out = tmp_path / "out"
    out.mkdir()
    plan = _case(out, "x", ["x.nii.gz"])
    _commit_case(plan, "old", overwrite=False)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out / ".medwidit" / "lock"))

    monkeypatch.setattr(outputs, "locked", denied)
    assert not restore_interrupted(plan)  # its marker says it is whole
    assert not restore_interrupted(_case(out, "y", ["y.nii.gz"]))  # nothing staged for it


######################################################################################################################
# 9. --continue takes no case finished with other settings for this run's
######################################################################################################################


def test_continue_with_other_settings_refuses_a_finished_case_and_overwrite_redoes_it(setup):
    """--continue with another seed skipped every finished case: the folder ended with two runs' results under one
    run's record (the README said so; nothing refused it)."""
    from medwidit.inference.outputs import STATE_DIR

    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    predictor.predict_from_files(inputs, out, seed=0, progress=False, **FAST)
    before = (out / "scan.nii.gz").read_bytes()
    assert predictor.predict_from_files(inputs, out, resume=True, seed=0, **FAST)[0].status == "skipped"

    refused = predictor.predict_from_files(inputs, out, resume=True, seed=1, progress=False, **FAST)[0]
    assert refused.status == "failed"
    assert f"{out / 'scan.nii.gz'}: finished by a run with other settings (seed 1 (then 0))" in refused.message
    assert "--overwrite and --continue" in refused.message and (out / "scan.nii.gz").read_bytes() == before

    redone = predictor.predict_from_files(inputs, out, resume=True, overwrite=True, seed=1, progress=False, **FAST)
    assert redone[0].status == "done"
    fresh = tmp_path / "fresh"
    predictor.predict_from_files(inputs, fresh, seed=1, progress=False, **FAST)
    labels = [nib.load(folder / "scan.nii.gz").get_fdata() for folder in (out, fresh)]
    np.testing.assert_array_equal(*labels)  # the seed-1 result, not the seed-0 one kept
    assert json.loads((out / STATE_DIR / "scan.json").read_text())["settings"]["seed"] == 1
    assert predictor.predict_from_files(inputs, out, resume=True, seed=1, **FAST)[0].status == "skipped"


def test_continue_refuses_a_finished_case_whose_input_was_replaced_by_another_of_the_same_name(setup):
    """From a review: --continue after scan.nii.gz was replaced by another scan of the same name (a corrected file,
    another patient) skipped the case, keeping the first scan's labels on the first scan's grid. The marker names the
    input's content: the same content (a copy) is still finished; another is refused, named, and --overwrite
    --continue segments it."""
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    predictor.predict_from_files(inputs, out, progress=False, **FAST)
    copy = inputs / "scan.nii.gz"
    copy.write_bytes(copy.read_bytes())  # rewritten, the same content: still the case that finished
    assert predictor.predict_from_files(inputs, out, resume=True, **FAST)[0].status == "skipped"

    before = (out / "scan.nii.gz").read_bytes()
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])
    nifti(inputs / "scan.nii.gz", affine=flipped, seed=5)  # another scan under the same name
    refused = predictor.predict_from_files(inputs, out, resume=True, progress=False, **FAST)[0]
    assert refused.status == "failed" and (out / "scan.nii.gz").read_bytes() == before
    assert f"{out / 'scan.nii.gz'}: finished from another input file of this name (input[0] " in refused.message
    assert "--overwrite and --continue" in refused.message

    redone = predictor.predict_from_files(inputs, out, resume=True, overwrite=True, progress=False, **FAST)[0]
    assert redone.status == "done"
    np.testing.assert_array_equal(nib.load(out / "scan.nii.gz").affine, flipped)
    assert predictor.predict_from_files(inputs, out, resume=True, **FAST)[0].status == "skipped"


def test_continue_asking_for_more_outputs_of_a_finished_case_says_it_finished_with_others(setup):
    """From a review: --continue --save-probabilities over a case finished without them said it was "unfinished (no
    completion marker, or other outputs were asked for)". It names what the case was finished with and what this run
    adds; --overwrite --continue writes them all."""
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    predictor.predict_from_files(inputs, out, progress=False, **FAST)
    more = predictor.predict_from_files(inputs, out, resume=True, save_probabilities=True, progress=False, **FAST)[0]
    assert more.status == "failed" and "unfinished" not in more.message
    assert ("already exists and the case was finished with other outputs (scan.nii.gz), where this run asks for "
            "scan_probabilities.nii.gz; pass overwrite with resume") in more.message  # fmt: skip
    redone = predictor.predict_from_files(
        inputs, out, resume=True, overwrite=True, save_probabilities=True, progress=False, **FAST
    )[0]
    assert redone.status == "done" and visible(out) == ["scan.nii.gz", "scan_probabilities.nii.gz"]
    # from a second review: an output gone since said "no completion marker" beside the marker
    (out / "scan_probabilities.nii.gz").unlink()
    gone = predictor.predict_from_files(inputs, out, resume=True, save_probabilities=True, progress=False, **FAST)[0]
    assert gone.status == "failed" and (
        "the case is unfinished (its earlier outputs are incomplete: scan_probabilities.nii.gz missing)" in gone.message
    )


def test_the_input_digest_reads_only_this_parts_cases(setup, monkeypatch):
    """From a second review: every part hashed every case's input before its first case (an array job of N tasks read
    the data N times). Each case's input is read as it comes, in its own part only."""
    from medwidit.inference import files as files_module

    tmp_path, inputs, predictor = setup
    for i in range(3):
        nifti(inputs / f"more{i}.nii.gz", seed=i + 1)
    hashed = []
    real = files_module.sha256_file
    monkeypatch.setattr(files_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    (done,) = predictor.predict_from_files(inputs, tmp_path / "parts", num_parts=4, part_id=0, progress=False, **FAST)
    assert hashed == [done.outputs[0].name]  # this part's one case, not all four


def test_continue_skips_a_case_whose_marker_names_no_settings(setup):
    """A case finished by a medwidit that kept no settings in its marker: nothing to compare, so it stays finished."""
    from medwidit.inference.outputs import STATE_DIR

    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    predictor.predict_from_files(inputs, out, progress=False, **FAST)
    marker = out / STATE_DIR / "scan.json"
    marker.write_text(json.dumps({"case": "scan", "files": ["scan.nii.gz"]}))
    assert predictor.predict_from_files(inputs, out, resume=True, seed=3, **FAST)[0].status == "skipped"


def test_continue_finishes_no_killed_commit_of_other_settings_and_keeps_it_for_its_own(tmp_path, monkeypatch):
    """A killed overwrite had placed all its files; --continue with other settings finished it as its own (the case
    then read as finished by this run). It is kept now for a run with its own settings, named by
    interrupted_settings (a review found the first version deleting it, so that the killed run's own --continue could
    no longer finish it); --overwrite --continue puts the earlier set back and segments the case again."""
    from medwidit.inference.outputs import (
        changed_settings,
        finish_interrupted,
        interrupted_settings,
        is_finished,
        plan_case,
        restore_interrupted,
    )

    out = tmp_path / "out"
    out.mkdir()
    files, others = [out / "x.nii.gz", out / "x_probabilities.nii.gz"], [out / "x_uncertainty.nii.gz"]
    earlier = plan_case(out, "x", [out / "x.nii.gz", out / "x_uncertainty.nii.gz"], settings={"seed": 0})
    _commit_case(earlier, "old", overwrite=False)
    killed = plan_case(out, "x", files, others, settings={"seed": 1})
    _kill_overwrite(killed, monkeypatch, after_files=2)  # both files placed, killed at the marker
    placed = _contents(out)

    other = plan_case(out, "x", files, others, settings={"seed": 2})
    assert not restore_interrupted(other, finish=True, keep_other=True)
    assert not finish_interrupted(other, overwrite=False, finish=True)
    assert _contents(out) == placed and interrupted_settings(other) == ["seed 2 (then 1)"]
    assert interrupted_settings(killed) == []
    assert finish_interrupted(killed, overwrite=False, finish=True)
    assert _contents(out) == {name: f"new {name}" for name in ("x.nii.gz", "x_probabilities.nii.gz")}
    assert is_finished(killed) and changed_settings(killed) == [] and changed_settings(other) == ["seed 2 (then 1)"]
    assert hidden_leftovers(out) == []

    earlier = plan_case(out, "x", [out / "x.nii.gz", out / "x_uncertainty.nii.gz"], files[1:], settings={"seed": 0})
    _commit_case(earlier, "old", overwrite=True)  # the seed-0 set again, then the seed-1 overwrite killed again
    _kill_overwrite(killed, monkeypatch, after_files=2)
    assert not finish_interrupted(other, overwrite=True, finish=True)  # --overwrite --continue: the earlier set back
    assert _contents(out) == {name: f"old {name}" for name in ("x.nii.gz", "x_uncertainty.nii.gz")}
    assert is_finished(earlier) and changed_settings(earlier) == [] and hidden_leftovers(out) == []


def test_continue_with_other_settings_names_a_killed_commit_and_leaves_it_to_its_run(setup):
    """The review's case end to end: a seed-0 run killed at its marker, then a seed-1 --continue (refused, naming the
    seeds, the staged commit kept), then the seed-0 --continue, which finishes it."""
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"), *CLI_FAST]
    killed = run_cli(["-c", KILL_AT_THE_MARKER, *args, "--seed", "0"])
    assert killed.wait(timeout=300) == -9
    staged = hidden_leftovers(out)
    assert len(staged) == 1 and visible(out) == ["scan.nii.gz"]

    refused = predictor.predict_from_files(inputs, out, resume=True, seed=1, progress=False, **FAST)[0]
    assert refused.status == "failed"
    assert "an interrupted run with other settings or outputs (seed 1 (then 0)) left this case" in refused.message
    assert hidden_leftovers(out) == staged
    finished = predictor.predict_from_files(inputs, out, resume=True, seed=0, progress=False, **FAST)[0]
    assert (finished.status, finished.message) == ("done", "finished an interrupted commit")
    assert hidden_leftovers(out) == []
    redone = predictor.predict_from_files(inputs, out, resume=True, overwrite=True, seed=1, progress=False, **FAST)
    assert redone[0].status == "done" and redone[0].message is None


def test_settings_differences_name_the_changed_leaf_and_pass_over_keys_one_side_lacks():
    """From a review: each value was cut to 37 characters of JSON, so a change deep in a dict showed the same text on
    both sides ("preprocessing {"orientation": "RAS", "spacing": [2.... (then ...)"); and a key another medwidit
    version adds would have marked every finished case as changed."""
    from medwidit.inference.outputs import _differences

    then = {"preprocessing": {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "bias_correction": None},
            "weights": ["a" * 64, "b" * 64], "seed": 0, "older_key": 1}  # fmt: skip
    now = {"preprocessing": {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "bias_correction": "n4"},
           "weights": ["a" * 64, "c" * 64], "seed": 0, "newer_key": 2}  # fmt: skip
    assert _differences(then, now) == [
        'preprocessing.bias_correction "n4" (then null)',
        f'weights[1] "{"c" * 36}... (then "{"b" * 36}...)',
    ]
    assert _differences(then, then) == [] and _differences(None, now) == [] and _differences(then, {}) == []
    # inside a setting, a key one side lacks is a change (a second review: an added view option or expected class
    # read as the same settings, and --continue kept cases sampled otherwise)
    views = {"view_options": {"flip_axes": [0]}, "expected_volume_ml": {}}
    more = {"view_options": {"flip_axes": [0], "max_shift": 3}, "expected_volume_ml": {"1": [900, 2200]}}
    assert _differences(views, more) == ["expected_volume_ml.1 [900, 2200] (then absent)",
                                         "view_options.max_shift 3 (then absent)"]  # fmt: skip


def test_numpy_settings_compare_equal_to_plain_ones(setup):
    """From a review: numpy scalars went through json's default=str, so a run with steps=np.int64(1) stored "1" and
    the same run resumed with steps=1 was refused as "steps 1 (then "1")"."""
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    first = predictor.predict_from_files(inputs, out, steps=np.int64(1), num_samples=1, eta=np.float32(0.0),
                                         seed=np.int64(2), progress=False)  # fmt: skip
    assert first[0].status == "done", first[0].message  # a numpy seed failed every case ("an integer is required")
    again = predictor.predict_from_files(inputs, out, resume=True, steps=1, num_samples=1, eta=0.0, seed=2,
                                         progress=False)  # fmt: skip
    assert again[0].status == "skipped", again[0].message


def test_output_settings_hold_the_expected_volumes_and_class_names(setup):
    """From a review: both change what is written (the quality report's unexpected volumes and, through the
    calibration, the retry; the statistics' names), and --continue kept cases written without them."""
    from medwidit.diffusion import load_segmenter
    from medwidit.inference.options import sampling_options

    tmp_path, inputs, predictor = setup
    options = sampling_options(1, 1, 0.25, None, 0.0, 1.0)
    plain = predictor.output_settings(options, seed=0, augment=1, weight_sets=1)
    segmenter = load_segmenter(tmp_path / "model.pt")[0]
    named = Predictor(segmenter, device="cpu", expected_volume_ml={"1": [1, 2]}, class_names=["bg", "a"])
    other = named.output_settings(options, seed=0, augment=1, weight_sets=1)
    assert other["expected_volume_ml"] != plain["expected_volume_ml"] and other["class_names"] == ["bg", "a"]


def test_continue_asking_for_other_outputs_keeps_a_killed_commit_for_its_run(setup):
    """A second review: a refused --continue that asked for more outputs than a killed run had staged deleted that
    run's commit, so its own --continue could no longer finish it."""
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"), *CLI_FAST]
    assert run_cli(["-c", KILL_AT_THE_MARKER, *args]).wait(timeout=300) == -9
    staged = hidden_leftovers(out)
    refused = predictor.predict_from_files(inputs, out, resume=True, save_uncertainty=True, progress=False, **FAST)[0]
    assert refused.status == "failed" and "(outputs +scan_aleatoric.nii.gz, +scan_disagreement" in refused.message
    assert hidden_leftovers(out) == staged
    finished = predictor.predict_from_files(inputs, out, resume=True, progress=False, **FAST)[0]
    assert (finished.status, finished.message) == ("done", "finished an interrupted commit")


def test_continue_with_the_earlier_sets_settings_puts_it_back_over_a_killed_overwrite(setup):
    """A second review: seed 0 finished, an --overwrite --seed 1 killed at its marker, then --continue --seed 0 was
    refused as "other settings (seed 0 (then 1))" where the earlier seed-0 set is this run's: it goes back now and
    the case is skipped."""
    tmp_path, inputs, predictor = setup
    out = tmp_path / "out"
    predictor.predict_from_files(inputs, out, seed=0, progress=False, **FAST)
    before = (out / "scan.nii.gz").read_bytes()
    args = ["segment", "-i", str(inputs), "-o", str(out), "--checkpoint", str(tmp_path / "model.pt"), *CLI_FAST]
    assert run_cli(["-c", KILL_AT_THE_MARKER, *args, "--overwrite", "--seed", "1"]).wait(timeout=300) == -9
    assert (out / "scan.nii.gz").read_bytes() != before  # the seed-1 labels in place, no marker
    again = predictor.predict_from_files(inputs, out, resume=True, seed=0, progress=False, **FAST)[0]
    assert again.status == "skipped", again.message
    assert (out / "scan.nii.gz").read_bytes() == before and hidden_leftovers(out) == []


######################################################################################################################
# from a mutation review of the settings comparison: each test failed on a bug the suite had let through
######################################################################################################################


def test_plan_case_keeps_its_settings_as_json_values(tmp_path):
    from medwidit.inference.outputs import plan_case

    plan = plan_case(tmp_path, "x", [tmp_path / "x.nii.gz"], settings={"spacing": (2.0, 2.0), "steps": np.int64(3)})
    assert plan.settings == {"spacing": [2.0, 2.0], "steps": 3}


def test_settings_lists_of_other_lengths_are_one_change():
    """--continue --weight-sets 2 into a folder of one set: without the length check the comparison failed in zip."""
    from medwidit.inference.outputs import _differences

    assert _differences({"weights": ["a"]}, {"weights": ["a", "b"]}) == ['weights ["a", "b"] (then ["a"])']


def test_overwrite_continue_finishes_a_killed_overwrite_of_its_own_settings(tmp_path, monkeypatch):
    from medwidit.inference.outputs import (
        changed_settings,
        finish_interrupted,
        is_finished,
        plan_case,
        restore_interrupted,
    )

    out = tmp_path / "out"
    out.mkdir()
    _commit_case(plan_case(out, "x", [out / "x.nii.gz"], settings={"seed": 0}), "old", overwrite=False)
    killed = plan_case(out, "x", [out / "x.nii.gz"], settings={"seed": 1})
    _kill_overwrite(killed, monkeypatch, after_files=1)  # its file placed, killed at the marker
    assert not restore_interrupted(killed, finish=True, keep_other=False)  # left for finish_interrupted
    assert finish_interrupted(killed, overwrite=True, finish=True)
    assert _contents(out) == {"x.nii.gz": "new x.nii.gz"} and is_finished(killed) and changed_settings(killed) == []


def test_a_staging_whose_placed_file_was_replaced_since_is_no_interrupted_commit(tmp_path, monkeypatch):
    from medwidit.inference.outputs import interrupted_settings, plan_case

    out = tmp_path / "out"
    out.mkdir()
    files = [out / "x.nii.gz", out / "x_probabilities.nii.gz"]
    _kill_overwrite(plan_case(out, "x", files, settings={"seed": 1}), monkeypatch, after_files=2)
    (out / "foreign").write_text("another tool's")
    os.replace(out / "foreign", out / "x.nii.gz")
    assert interrupted_settings(plan_case(out, "x", files, settings={"seed": 2})) == []


def test_a_live_runs_staging_is_not_called_interrupted(tmp_path, monkeypatch):
    from medwidit.inference import outputs
    from medwidit.inference.outputs import interrupted_settings, plan_case

    out = tmp_path / "out"
    out.mkdir()
    files = [out / "x.nii.gz", out / "x_probabilities.nii.gz"]
    other = plan_case(out, "x", files, settings={"seed": 2})
    seen, real = [], outputs.commit

    def looking(source, target, *, overwrite):  # while the live run commits, its flock held
        seen.append(interrupted_settings(other))
        return real(source, target, overwrite=overwrite)

    monkeypatch.setattr(outputs, "commit", looking)
    _commit_case(plan_case(out, "x", files, settings={"seed": 1}), "new", overwrite=False)
    assert seen == [[], []]


def test_overwrite_continue_removes_a_killed_plain_commit_of_other_settings(tmp_path, monkeypatch):
    from medwidit.inference.outputs import finish_interrupted, plan_case

    out = tmp_path / "out"
    out.mkdir()
    _kill_overwrite(plan_case(out, "x", [out / "x.nii.gz"], settings={"seed": 1}), monkeypatch, 1, overwrite=False)
    assert hidden_leftovers(out) != []
    assert not finish_interrupted(plan_case(out, "x", [out / "x.nii.gz"], settings={"seed": 2}), overwrite=True)
    assert hidden_leftovers(out) == []
