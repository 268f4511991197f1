"""benchmarks/registration.py: the atlas prior's registration alone, scored against a head's true brain, clean and
under coil fields, with the ranked and (``--raw``) the raw-intensity registration."""

import json

import nibabel as nib
import numpy as np
import pytest
from benchmark_scripts import bundle_with_template, load_benchmark

import medwidit.inference.atlas as atlas


def test_each_head_and_coil_field_gets_the_registered_masks_dice_with_its_brain_in_both_arms(tmp_path, monkeypatch):
    script = load_benchmark("registration")
    bundle = bundle_with_template(tmp_path)
    ranks, calls = atlas._ranks, []
    monkeypatch.setattr(atlas, "_ranks", lambda image: calls.append(1) or ranks(image))
    case = ["moved", str(tmp_path / "case.nii.gz"), str(tmp_path / "case_brain.nii.gz")]
    out = script.main(["--bundle", str(bundle), "--raw", "--levels", "0", "3", "--output", str(tmp_path / "r.json"),
                       "--base", *case])  # fmt: skip
    assert len(calls) == 2 * 2  # the ranked arm ranks the case and the template at both levels; the raw arm never
    assert [(r["case"], r["coil_field"]) for r in out["rows"]] == [("moved", 0.0), ("moved", 0.9)]
    clean = out["rows"][0]
    assert clean["ranks"]["dice"] > 0.95 and clean["raw"]["dice"] > 0.95  # the move is found either way
    brain_ml = float(np.asarray(nib.load(tmp_path / "case_brain.nii.gz").dataobj).sum()) * 8 / 1000
    assert clean["ranks"]["volume_ml"] == pytest.approx(brain_ml, rel=0.1)
    assert out["summary"]["ranks"]["cases"] == 2 and "| moved | 0.9 |" in out["markdown"]
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == out["rows"]


def test_a_head_too_small_to_register_is_a_row_without_a_dice(tmp_path):
    script = load_benchmark("registration")
    bundle = bundle_with_template(tmp_path)
    small = np.zeros((6, 6, 6), np.float32)
    small[2:4, 2:4, 2:4] = 1.0
    nib.save(nib.Nifti1Image(small, np.eye(4)), tmp_path / "small.nii.gz")
    out = script.main(["--bundle", str(bundle), "--levels", "0", "--output", str(tmp_path / "r.json"),
                       "--base", "small", str(tmp_path / "small.nii.gz"), str(tmp_path / "small.nii.gz")])  # fmt: skip
    row = out["rows"][0]["ranks"]
    assert row["dice"] is None and row["error"] and out["summary"]["ranks"]["below_0.8"] == 1
