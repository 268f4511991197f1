"""notebooks/quickstart.ipynb runs top to bottom on a fresh kernel and shows what it promises."""

from pathlib import Path

import nbformat
import nibabel as nib
import numpy as np
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.slow
def test_quickstart_runs_and_reports_volumes_overlay_and_saved_files(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}  # the notebook's working folder
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not any(o.get("output_type") == "error" for o in c.get("outputs", [])) for c in code)
    text = "\n".join(_text(cell) for cell in code)

    assert "geometry kept: True" in text
    figures = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figures, "the overlay/uncertainty figure was not shown"

    saved = sorted(p.name for p in (tmp_path / "quickstart_output").iterdir())
    assert saved == ["colin27_brain.nii.gz", "colin27_brain_uncertainty.nii.gz"]
    assert text.count("same affine as the input: True") == 2

    labels = nib.load(tmp_path / "quickstart_output" / "colin27_brain.nii.gz")
    voxel_ml = float(np.prod(labels.header.get_zooms()[:3])) / 1000
    volume_line = next(line for line in text.splitlines() if line.strip().startswith("brain:"))
    segmented = float(volume_line.split()[1])
    assert segmented == pytest.approx((np.asanyarray(labels.dataobj) == 1).sum() * voxel_ml, abs=0.06), volume_line
    dice = float(text.split("Dice against the reference brain mask:")[1].split()[0])
    assert dice > 0.85, text  # the shipped weights segment the held-out example (benchmark: 0.927 at 1 mm)
