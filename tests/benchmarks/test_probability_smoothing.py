"""benchmarks/probability_smoothing.py: each sigma is the bundle's predictor with that probability_smoothing, the
same draw for every sigma, scored against the truth of a generalisation.py --keep run's cases."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark

from medwidit.data.example import example_case
from medwidit.inference import Predictor

smoothing = load_benchmark("probability_smoothing")


def _kept_case(tmp_path):
    """A 48^3 corner of the shipped 2 mm example (the model's working grid; the brain's edge runs through it) and its
    brain, as a --keep folder and its run."""
    example = example_case()
    image, label = nib.load(example["image"]), nib.load(example["label"])
    box = (slice(0, 48), slice(20, 68), slice(30, 78))
    folder = tmp_path / "kept"
    folder.mkdir()
    for name, source in (("image", image), ("truth", label)):
        data = np.asarray(source.dataobj)[box]
        nib.save(nib.Nifti1Image(data, source.affine), str(folder / f"head_{name}.nii.gz"))
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"rows": [{"case": "head", "tool": "medwidit", "dice": 0.9}], "bases": {}}))
    return run, folder


def test_each_sigma_is_the_predictors_own_result_scored_on_the_truth(tmp_path):
    run, folder = _kept_case(tmp_path)
    out = tmp_path / "smoothing.json"
    result = smoothing.main([str(run), str(folder), "--sigmas", "1.5", "--output", str(out)])
    (case,) = result["cases"]
    assert case["on_model_grid"] and set(case) == {"case", "on_model_grid", "sigma0", "sigma1.5"}  # 0 always added
    truth = np.asarray(nib.load(folder / "head_truth.nii.gz").dataobj) > 0
    direct = Predictor.from_bundle(probability_smoothing=1.5).segment(
        str(folder / "head_image.nii.gz"), generator=torch.Generator().manual_seed(0)
    )
    mask = np.asarray(direct.label_map) > 0
    assert case["sigma1.5"]["dice"] == pytest.approx(2 * (mask & truth).sum() / (mask.sum() + truth.sum()), abs=1e-6)
    assert 0 <= case["sigma1.5"]["grid_faces"] <= 1 and 0 <= case["sigma0"]["grid_faces"] <= 1
    assert case["sigma0"]["smoothing_cpu_s"] == 0 and case["sigma1.5"]["smoothing_cpu_s"] > 0
    written = json.loads(out.read_text())
    assert written["summary"]["sigma0"]["better"] == 0 and written["summary"]["sigma0"]["largest_loss"] == 0
    assert "| 1.5 |" in written["markdown"]
    assert case["sigma0"]["dice"] > 0.5, case  # the model finds the ellipsoid: the scores are not vacuous


def test_a_missing_case_or_a_bad_sigma_is_refused_by_name(tmp_path):
    run, folder = _kept_case(tmp_path)
    with pytest.raises(SystemExit, match=r"no scored medwidit row for \['skull'\]"):
        smoothing.main([str(run), str(folder), "--cases", "skull"])
    (folder / "head_truth.nii.gz").unlink()
    with pytest.raises(SystemExit, match="no head_image.nii.gz or no truth for head"):
        smoothing.main([str(run), str(folder), "--output", str(tmp_path / "x.json")])
    for value in ("-1", "nan"):
        with pytest.raises(SystemExit):
            smoothing.main([str(run), str(folder), "--sigmas", value])
