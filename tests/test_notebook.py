"""notebooks/quickstart.ipynb runs top to bottom on a fresh kernel and shows what it promises; it is stored executed,
uses the shipped bundle through the public API (no path into the checkout), and its own-scan cell works."""

from pathlib import Path

import nbformat
import nibabel as nib
import numpy as np
import pytest
from nbclient import NotebookClient

from medwidit.data.example import example_case

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def _value(text: str, prefix: str) -> float:
    return float(text.split(prefix)[1].split()[0])


def test_the_stored_notebook_is_executed_and_uses_the_shipped_bundle_without_a_path():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("outputs") for cell in code), "every code cell is stored with its outputs"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "the stored figure"
    source = "\n".join(cell.source for cell in code)
    assert "resolve_bundle()" in source and "parents[" not in source and "bundles/" not in source
    stored = "\n".join(_text(cell) for cell in code)
    for path in ("/tmp/", "/work/", "/home/", "site-packages"):  # a warning once stored /work/main/.venv/...
        assert path not in stored, f"stored outputs name no machine's paths ({path})"
    assert "MY_SCAN = None" in source, "the cell for the user's own scan"
    assert "quickstart_output/" in (NOTEBOOK.parent / ".gitignore").read_text().split()


@pytest.mark.slow
def test_quickstart_runs_and_reports_quality_volumes_overlay_and_saved_files(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    example = nib.load(example_case()["image"])
    crop = nib.Nifti1Image(np.asarray(example.dataobj)[20:60, 25:75, 20:60], example.affine)  # a small scan of "yours"
    crop.to_filename(tmp_path / "mine.nii.gz")
    (own,) = [cell for cell in notebook.cells if "MY_SCAN = None" in cell.source]
    own.source = own.source.replace("MY_SCAN = None", f"MY_SCAN = {str(tmp_path / 'mine.nii.gz')!r}")
    resources = {"metadata": {"path": str(tmp_path)}}  # the notebook's working folder
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not any(o.get("output_type") == "error" for o in c.get("outputs", [])) for c in code)
    text = "\n".join(_text(cell) for cell in code)

    assert "bundle: brain_widit_segmentation" in text and "geometry kept: True" in text
    figures = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(figures) == 2, "the example's and the own scan's overlay/uncertainty figures"

    out = tmp_path / "quickstart_output"
    saved = sorted(p.name for p in out.iterdir())
    assert saved == [
        "colin27_brain.nii.gz",
        "colin27_brain_uncertainty.nii.gz",
        "my_scan_brain.nii.gz",
        "my_scan_brain_uncertainty.nii.gz",
    ]
    assert text.count("same affine as the input: True") == 2
    np.testing.assert_allclose(nib.load(out / "my_scan_brain.nii.gz").affine, crop.affine, atol=1e-5)

    labels = nib.load(out / "colin27_brain.nii.gz")
    voxel_ml = float(np.prod(labels.header.get_zooms()[:3])) / 1000
    volume_line = next(line for line in text.splitlines() if line.strip().startswith("brain:"))
    segmented = float(volume_line.split()[1])
    assert segmented == pytest.approx((np.asanyarray(labels.dataobj) == 1).sum() * voxel_ml, abs=0.06), volume_line
    mine = np.asanyarray(nib.load(out / "my_scan_brain.nii.gz").dataobj) == 1
    assert _value(text, "your scan: brain") == pytest.approx(mine.sum() * voxel_ml, abs=0.06)
    assert _value(text, "Dice against the reference brain mask:") > 0.85, text  # benchmark: 0.927 (1 mm, 10 x 5)
    assert 0 < _value(text, "HD95 against the reference brain mask:") < 30, text  # 0.5.0: 21.4 (0.4.x: 8.2)
    assert 0.5 < _value(text, "uncertainty: AUROC") <= 1, text
