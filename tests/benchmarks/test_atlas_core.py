"""benchmarks/atlas_core.py: the atlas prior's core and margin scored on a finished run's written masks, and the
rule that chooses them."""

import json

import nibabel as nib
import numpy as np
import pytest
from benchmark_scripts import bundle_with_template, load_benchmark


def _row(own, candidates, template_truth=False):
    return {"case": "c", "own": own, "template": 0.9, "template_truth": template_truth, "candidates": candidates}


def test_the_rule_takes_the_weakest_prior_within_the_tie_of_the_best_that_loses_no_case_and_guards_the_rest():
    script = load_benchmark("atlas_core")
    rows = [
        _row(0.80, {"c0m1": 0.950, "c1m2": 0.949, "c4m5": 0.930, "c6m5": 0.951}),
        _row(0.90, {"c0m1": 0.950, "c1m2": 0.948, "c4m5": 0.920, "c6m5": 0.890}),  # c6m5 loses 0.010 here
        _row(0.70, {"c0m1": 0.990, "c1m2": 0.980, "c4m5": 0.950, "c6m5": 0.900}, template_truth=True),
    ]
    decision = script.decide(rows, ["mni"], max_loss=0.005, tie=0.002)
    assert decision["candidates"]["c6m5"]["meets"] is False  # the best mean, but a case lost more than max_loss
    assert decision["candidates"]["c1m2"]["mean_dice"] == pytest.approx(0.9485)
    assert decision["chosen"] == "c1m2"  # within 0.002 of c0m1's 0.950, and the larger core
    assert decision["scored_cases"] == 2 and decision["guarded_cases"] == 1
    assert decision["own_mean_dice"] == pytest.approx(0.85)
    rows[2]["candidates"] = {"c0m1": 0.6, "c1m2": 0.6, "c4m5": 0.6, "c6m5": 0.6}  # the guard: below its own 0.70
    assert script.decide(rows, ["mni"], max_loss=0.005, tie=0.002)["chosen"] is None
    with pytest.raises(SystemExit, match=r"every case is a template-truth case \(mni\)"):
        script.decide([rows[2]], ["mni"], max_loss=0.005, tie=0.002)


def test_a_written_mask_with_a_dark_hole_is_filled_by_the_core_and_cut_to_the_margin(tmp_path):
    script = load_benchmark("atlas_core")
    bundle = bundle_with_template(tmp_path)  # the template and a case moved by 6 mm, its brain the truth
    brain = np.asarray(nib.load(tmp_path / "case_brain.nii.gz").dataobj) > 0
    affine = nib.load(tmp_path / "case.nii.gz").affine
    keep = tmp_path / "keep"
    keep.mkdir()
    for name, src in (("image", "case.nii.gz"), ("truth", "case_brain.nii.gz")):
        (keep / f"c_{name}.nii.gz").write_bytes((tmp_path / src).read_bytes())
    written = brain.copy()
    written[:, :, 18:] = False  # half the brain, out to its edge: a dark lobe the network missed
    written[:, :, :3] = True  # and a slab of scalp it called brain, far from the template
    nib.save(nib.Nifti1Image(written.astype(np.uint8), affine), tmp_path / "c_mask.nii.gz")
    results = tmp_path / "run.json"
    results.write_text(json.dumps({"rows": [{"case": "c", "mask": str(tmp_path / "c_mask.nii.gz")}]}))
    out = script.main(["--results", str(results), "--keep", str(keep), "--bundle", str(bundle), "--cores", "2", "8",
                       "--margins", "2", "--output", str(tmp_path / "core.json")])  # fmt: skip
    row = out["rows"][0]
    assert row["template"] > 0.95 and row["own"] < 0.85
    assert row["candidates"]["c2m2"] > 0.9 > row["candidates"]["c8m2"] > row["own"] + 0.3  # a deeper core fills less
    assert out["decision"]["chosen"] == "c2m2" and "| 2 | 2 |" in out["markdown"]
    assert json.loads((tmp_path / "core.json").read_text())["decision"] == out["decision"]
    (keep / "c_truth.nii.gz").unlink()
    with pytest.raises(SystemExit, match=r"case c: missing .*c_truth\.nii\.gz"):
        script.main(["--results", str(results), "--keep", str(keep), "--bundle", str(bundle)])
