"""benchmarks/validation_cases.py: validation scans from a cache, never the test scan; painted scans are seeded."""

import nibabel as nib
import numpy as np
import pytest
from benchmark_scripts import load_benchmark

validation_cases = load_benchmark("validation_cases")


def _cache(root):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    head = np.zeros((12, 14, 10), np.uint8)
    head[2:10, 2:12, 2:8] = 6
    head[4:8, 4:10, 3:7] = 2
    head[5:7, 6:8, 4:6] = 4
    files = {
        "brain/mni152nlin6asym_2mm_image.nii.gz": (head * 20).astype(np.float32),
        "brain/mni152nlin6asym_2mm_label.nii.gz": np.isin(head, (1, 2, 3, 4)).astype(np.uint8),
        "head/mni152nlin6asym_2mm_neuromorphometrics_label.nii.gz": head,
    }
    for name, array in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, affine), str(root / name))
    return head


def test_writes_the_real_template_and_seeded_painted_scans(tmp_path):
    head = _cache(tmp_path / "cache")
    out = tmp_path / "val"
    written = validation_cases.main(["--out", str(out), "--cache", str(tmp_path / "cache"), "--painted", "2"])
    assert {p.name for p in written} == {
        f"{base}_{key}.nii.gz" for base in ("mni152_2mm", "painted_0", "painted_1") for key in ("image", "label")
    }
    first = nib.load(str(out / "painted_0_image.nii.gz")).get_fdata()
    second = nib.load(str(out / "painted_1_image.nii.gz")).get_fdata()
    assert not np.allclose(first, second)  # two draws of intensities
    again = validation_cases.paint(
        nib.load(str(tmp_path / "cache/head/mni152nlin6asym_2mm_neuromorphometrics_label.nii.gz")), 1000
    )
    np.testing.assert_array_equal(np.asarray(again.dataobj), first.astype(np.float32))  # seeded
    truth = np.asarray(nib.load(str(out / "painted_0_label.nii.gz")).dataobj)
    np.testing.assert_array_equal(truth, np.isin(head, (1, 2, 3, 4)))


def test_missing_cache_names_the_build_command(tmp_path):
    with pytest.raises(SystemExit, match="medwidit.datasets.brain build"):
        validation_cases.main(["--out", str(tmp_path / "val"), "--cache", str(tmp_path / "empty")])
