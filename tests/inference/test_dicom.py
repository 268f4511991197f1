"""DICOM series input: a series folder is one case read with SimpleITK's ImageSeriesReader, segmented, and written as
NIfTI on the series' exact geometry; bad series (mixed sizes, a lone slice, a gap, two series) are one line naming
the folder."""

import locale
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from inference_volumes import random_tiny_segmenter

from medwidit.cli import main
from medwidit.diffusion import save_segmenter
from medwidit.inference.cases import find_cases
from medwidit.inference.io import InputError, read_image

LPS = np.diag([-1.0, -1.0, 1.0])
FAST = ["--steps", "2", "--samples", "2", "--quiet", "--device", "cpu"]


def _rotation(degrees_x, degrees_y, degrees_z):
    a, b, c = np.deg2rad([degrees_x, degrees_y, degrees_z])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = {
    "spacing": (0.9, 1.3, 2.5),
    "origin": (12.5, -40.25, 3.0),
    "direction": tuple(_rotation(10, -20, 30).ravel()),
}


def write_series(folder, data, **geometry):
    """``data`` (i, j, k) int16 written as one DICOM file per k-slice; GDCM's writer leaves the process in the C
    locale (Python then reads text files as ASCII), so the locale is put back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_series(folder, data, **geometry)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_series(folder, data, *, spacing, origin, direction, uid="1.2.826.0.1.3680043.2.1125.7", description="T1"):
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(data, dtype=np.int16).transpose(2, 1, 0))  # (k, j, i)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # the files have no suffix to choose it by
    writer.KeepOriginalImageUIDOn()
    d = direction
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0020|000d": uid + ".1",
            "0020|000e": uid,
            "0008|103e": description,
            "0020|0037": "\\".join(f"{v:.12g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.12g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
            "0018|0050": f"{spacing[2]:g}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:04d}"))  # no suffix, as scanners write them
        writer.Execute(slice_)
    return folder


def _ras_affine(spacing, origin, direction):
    affine = np.eye(4)
    affine[:3, :3] = LPS @ np.reshape(direction, (3, 3)) @ np.diag(spacing)
    affine[:3, 3] = LPS @ np.asarray(origin)
    return affine


def _volume(shape=(14, 12, 10), seed=0):
    """A bright ellipsoid on noise (i, j, k), so that the tiny model's labels vary in space."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.5
    return (600 * inside + np.random.default_rng(seed).integers(0, 200, shape)).astype(np.int16)


@pytest.fixture
def checkpoint(tmp_path):
    extra = {"preprocessing": {"spacing": [1.5, 1.5, 1.5], "num_modalities": 1}, "roi_size": [16, 16, 16]}
    return str(save_segmenter(random_tiny_segmenter(), tmp_path / "model.pt", extra_config=extra))


def test_a_series_reads_with_its_oblique_anisotropic_geometry(tmp_path):
    data = _volume()
    folder = write_series(tmp_path / "series", data, **OBLIQUE)
    array, geometry = read_image(folder)
    np.testing.assert_array_equal(array, data)
    np.testing.assert_allclose(geometry.affine, _ras_affine(**OBLIQUE), atol=1e-6)
    np.testing.assert_allclose(geometry.spacing, OBLIQUE["spacing"], rtol=1e-6)


def test_segmenting_a_series_writes_nifti_on_the_series_geometry(tmp_path, checkpoint):
    folder = write_series(tmp_path / "in" / "head", _volume(), **OBLIQUE)
    out = tmp_path / "out"
    assert main(["segment", "-i", str(folder), "-o", str(out), "--checkpoint", checkpoint, *FAST]) == 0
    written = nib.load(out / "head.nii.gz")
    series = sitk.ImageSeriesReader()
    series.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    reference = series.Execute()  # the series' geometry as ITK reads it, independently of medwidit
    assert written.shape == reference.GetSize()
    expected = _ras_affine(reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())
    np.testing.assert_allclose(written.affine, expected, atol=1e-5)  # NIfTI stores the affine in float32
    back = sitk.ReadImage(str(out / "head.nii.gz"))
    np.testing.assert_allclose(back.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_a_series_written_from_a_nifti_segments_to_the_same_labels(tmp_path, checkpoint):
    data = _volume()
    geometry = {"spacing": (1.5, 1.25, 2.0), "origin": (-10.0, 20.0, 5.0), "direction": tuple(np.eye(3).ravel())}
    (tmp_path / "nifti").mkdir()
    nib.save(nib.Nifti1Image(data, _ras_affine(**geometry)), tmp_path / "nifti" / "head.nii.gz")
    write_series(tmp_path / "dicom" / "head", data, **geometry)
    for source in ("nifti", "dicom"):
        inputs = tmp_path / source
        assert (
            main(
                ["segment", "-i", str(inputs), "-o", str(tmp_path / f"out_{source}"), "--checkpoint", checkpoint, *FAST]
            )
            == 0
        )
    from_nifti = nib.load(tmp_path / "out_nifti" / "head.nii.gz")
    from_dicom = nib.load(tmp_path / "out_dicom" / "head.nii.gz")
    labels = np.asarray(from_nifti.dataobj)
    assert 0 < labels.mean() < 1, "the test needs labels that vary in space"
    np.testing.assert_array_equal(np.asarray(from_dicom.dataobj), labels)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-6)


def test_series_inside_an_input_folder_are_cases_named_after_their_folders(tmp_path):
    write_series(tmp_path / "study" / "t1", _volume(), **OBLIQUE)
    write_series(tmp_path / "study" / "t2", _volume(seed=1), **OBLIQUE, uid="1.2.3.4")
    (tmp_path / "study" / "notes").mkdir()
    (tmp_path / "study" / "notes" / "readme.txt").write_text("not DICOM")
    cases = find_cases(tmp_path / "study", num_modalities=1)
    assert [(c.name, c.files, c.problem) for c in cases] == [
        ("t1", (tmp_path / "study" / "t1",), None),
        ("t2", (tmp_path / "study" / "t2",), None),
    ]
    assert cases[0].output_path(tmp_path / "out").name == "t1.nii.gz"


def test_thin_oblique_slices_whose_positions_were_written_rounded_read_quietly(tmp_path, capfd):
    """From a review: positions written to 0.01 mm (as scanners do) on 1 mm oblique slices varied their steps by
    over 1 % and drifted sideways a few hundredths of a mm a slice, and 9 of 12 such series were refused, as missing
    slices or as a gantry tilt; ITK's own warning printed C++ lines besides. Each reads, without a word."""
    for trial in (0, 2):  # series the spacing check, then the tilt check, had refused
        rng = np.random.default_rng(trial)
        folder = tmp_path / f"s{trial}"
        direction = tuple(_rotation(*rng.uniform(-25, 25, 3)).ravel())
        geometry = {"spacing": (1.0, 1.0, 1.0), "origin": tuple(rng.uniform(-100, 100, 3)), "direction": direction}
        write_series(folder, _volume((14, 12, 40)), **geometry)
        _move_slices(folder, lambda k, origin: np.round(origin, 2))  # as a scanner writing 2 decimals would
        capfd.readouterr()
        data, geometry_read = read_image(folder)
        assert data.shape == (14, 12, 40)
        np.testing.assert_allclose(geometry_read.affine[:3, 3], geometry["origin"] * np.array([-1, -1, 1]), atol=0.02)
        assert "WARNING" not in capfd.readouterr().err


def test_a_series_deeper_than_the_folders_children_is_named_in_the_message(tmp_path):
    """From a review: a patient/study/series export given as its top folder read "no DICOM series in it or its
    subfolders", which was false; only the folder and its direct subfolders are looked in, and the line says so and
    names the series folder to give."""
    write_series(tmp_path / "export" / "patient" / "study" / "t1", _volume(), **OBLIQUE)
    (tmp_path / "export" / ".git" / "objects").mkdir(parents=True)  # skipped, not walked
    (case,) = find_cases(tmp_path / "export", num_modalities=1)
    assert case.problem.endswith(
        f"no DICOM series in it or its direct subfolders; give the series folders, e.g. "
        f"{tmp_path / 'export' / 'patient' / 'study' / 't1'}."
    )
    # the look is bounded (it opened every file of a BIDS root, from a review): past its limit, no example
    from medwidit.inference.cases import _deeper_series

    for i in range(30):
        (tmp_path / "export" / f"a{i:02d}" / "anat").mkdir(parents=True)
    assert _deeper_series(tmp_path / "export", limit=20) is None
    assert _deeper_series(tmp_path / "export") == tmp_path / "export" / "patient" / "study" / "t1"


def _mixed_sizes(folder):
    write_series(folder, _volume((14, 12, 3)), **OBLIQUE)
    other = write_series(folder.parent / "other", _volume((14, 10, 3)), **OBLIQUE)
    for path in other.iterdir():
        shutil.move(path, folder / f"b{path.name}")


def _one_file(folder):
    write_series(folder, _volume((14, 12, 1)), **OBLIQUE)


def _gap(folder):
    write_series(folder, _volume((14, 12, 6)), **OBLIQUE)
    (folder / "IM0003").unlink()


def _two_series(folder):
    write_series(folder, _volume((14, 12, 3)), **OBLIQUE, description="T1")
    other = write_series(folder.parent / "other", _volume((14, 12, 3)), **OBLIQUE, uid="1.2.3.4", description="FLAIR")
    for path in other.iterdir():
        shutil.move(path, folder / f"b{path.name}")


def _tilted(folder):
    """Each slice 0.5 mm further along its rows than the last (a CT's gantry tilt): positions along the normal stay
    evenly spaced, so only the step's direction shows it."""
    write_series(folder, _volume((14, 12, 4)), **OBLIQUE)
    rows = np.asarray(OBLIQUE["direction"]).reshape(3, 3)[:, 0]
    _move_slices(folder, lambda k, origin: origin + 0.5 * k * rows)


def _move_slices(folder, position):
    """Each slice of a written series moved to ``position(k, origin)`` (the k-th file's ImagePositionPatient), written
    back as :func:`write_series` writes (the locale put back)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        for k, path in enumerate(sorted(folder.iterdir())):
            image = sitk.ReadImage(str(path))
            origin = position(k, np.asarray(image.GetOrigin()))
            image.SetOrigin([float(v) for v in origin])
            image.SetMetaData("0020|0032", "\\".join(f"{float(v):.12g}" for v in origin))
            writer = sitk.ImageFileWriter()
            writer.SetImageIO("GDCMImageIO")
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(path))
            writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def test_a_tilt_is_refused_from_half_a_pixel_of_drift_over_the_series(tmp_path):
    """From a mutation review: the refusal starts where the last slice lies half a pixel sideways (0.45 mm under
    0.9 mm pixels), below it the series reads; the one tilt tested drifted 1.5 mm, refused at a whole pixel too."""
    rows = np.asarray(OBLIQUE["direction"]).reshape(3, 3)[:, 0]
    for step, refused in ((0.1, False), (0.2, True)):  # 0.3 and 0.6 mm over the series' 3 steps
        folder = write_series(tmp_path / f"s{step}", _volume((14, 12, 4)), **OBLIQUE)
        _move_slices(folder, lambda k, origin, step=step: origin + step * k * rows)
        if refused:
            with pytest.raises(InputError, match="sideways"):
                read_image(folder)
        else:
            assert read_image(folder)[0].shape == (14, 12, 4)


BAD = {
    "gantry tilt": (_tilted, r"DICOM slices step 0.5 mm sideways per 2.5 mm along their normal \(a gantry tilt"),
    "mixed sizes": (_mixed_sizes, r"DICOM slices of different sizes \(14x10, 14x12\)"),
    "one file": (_one_file, r"one DICOM file holding one 2D slice; expected a 3D series"),
    "a missing slice": (_gap, r"slice positions are not evenly spaced \(steps from 2.5 to 5 mm\)"),
    "two series": (
        _two_series,
        r"2 DICOM series in one folder \(1.2.3.4 'FLAIR' \(3 file\(s\)\); .*'T1'.*one series per",
    ),
}


@pytest.mark.parametrize("problem", list(BAD))
def test_a_bad_series_is_one_line_naming_its_folder(tmp_path, problem, checkpoint, capsys):
    make, message = BAD[problem]
    folder = tmp_path / "in" / "bad"
    make(folder)
    with pytest.raises(InputError, match=f"^{folder}: .*{message}"):
        read_image(folder)
    write_series(tmp_path / "in" / "good", _volume(), **OBLIQUE, uid="1.2.3.9")
    status = main(
        ["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", checkpoint, *FAST]
    )
    assert status == 1  # the bad case failed, the good one ran
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["good.nii.gz"]
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(folder) in errors[0], errors


def test_a_dicom_file_given_alone_says_to_give_its_folder(tmp_path):
    folder = write_series(tmp_path / "series", _volume(), **OBLIQUE)
    with pytest.raises(
        InputError, match=r"IM0000: not a supported image format .* it is a DICOM file: give its series"
    ):
        read_image(folder / "IM0000")


def test_continue_over_a_series_reads_only_the_series_own_files(tmp_path, checkpoint):
    """From a review: a series folder's input digest took every file below it, so outputs written into the series
    folder (or a .DS_Store) made a second --continue refuse the unchanged case as another input. The digest reads
    the files the series reader reads; a changed slice is another input."""
    folder = write_series(tmp_path / "head", _volume(), **OBLIQUE)
    args = ["segment", "-i", str(folder), "-o", str(folder / "seg"), "--checkpoint", checkpoint, *FAST]
    assert main(args) == 0
    (folder / ".DS_Store").write_bytes(b"finder")
    assert main([*args, "--continue"]) == 0
    write_series(folder, _volume(seed=3), **OBLIQUE)  # the same files, other pixels
    assert main([*args, "--continue"]) == 1


def test_a_step_that_changes_part_way_is_refused_though_each_step_is_within_the_tolerance(tmp_path):
    """From a review: steps of 0.55 mm, then of 0.5 mm, each within the tolerance of the median step, passed; ITK
    spaced the slices evenly, and slice 51 of 101 lay 1.25 mm off its place. Here 2.54 mm steps, then 2.5 mm ones
    (each 0.02 mm from the median, 2.52 mm, under the positions' rounding allowance): the middle slice lies 0.16 mm
    off."""
    normal = np.asarray(OBLIQUE["direction"]).reshape(3, 3)[:, 2]
    shift = np.r_[0.0, np.cumsum([2.54] * 8 + [2.5] * 8)] - np.arange(17) * OBLIQUE["spacing"][2]
    folder = write_series(tmp_path / "drift", _volume((6, 5, 17)), **OBLIQUE)
    _move_slices(folder, lambda k, origin: origin + shift[k] * normal)
    with pytest.raises(InputError, match=r"not evenly spaced: slice 9 of 17 lies 0.16 mm off an even grid"):
        read_image(folder)


def test_a_series_written_as_nifti_says_millimetres_and_scanner_coordinates(tmp_path, checkpoint):
    """From a review: a DICOM series' NIfTI output had units 'unknown' and sform code 2 (aligned), where ITK and
    dcm2niix write mm and scanner coordinates."""
    folder = write_series(tmp_path / "in" / "head", _volume(), **OBLIQUE)
    assert main(["segment", "-i", str(folder), "-o", str(tmp_path / "out"), "--checkpoint", checkpoint, *FAST]) == 0
    header = nib.load(tmp_path / "out" / "head.nii.gz").header
    assert header.get_xyzt_units()[0] == "mm" and (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)
