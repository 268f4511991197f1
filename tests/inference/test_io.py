"""inference/io: exact geometry through load -> identity -> save, atomic writes, one-line errors for bad files."""

import gzip
import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from inference_volumes import oblique_affine, save_itk, save_nifti
from monai.transforms import LoadImage

from medwidit.inference.io import InputError, OutputError, check_output_dir, label_dtype, read_image, to_nibabel
from medwidit.inference.io import OutputImage as Out
from medwidit.inference.outputs import input_files, write_image, write_images


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _itk_geometry(path):
    """Spacing, origin, direction of the first three axes as SimpleITK reads them (a 4D NIfTI adds a fourth)."""
    image = sitk.ReadImage(str(path))
    direction = np.reshape(image.GetDirection(), (image.GetDimension(),) * 2)[:3, :3]
    return image.GetSpacing()[:3], image.GetOrigin()[:3], tuple(direction.ravel())


@pytest.mark.parametrize("kind", ["labels", "probabilities", "uncertainty"])
def test_nifti_identity_round_trip_keeps_geometry_exactly(tmp_path, rng, kind):
    data = rng.random((9, 7, 5)).astype(np.float32)
    source = save_nifti(tmp_path / "in.nii.gz", data)
    array, geometry = read_image(source)
    np.testing.assert_array_equal(array, data)
    out = {"labels": array > 0.5, "probabilities": np.stack([array, 1 - array]), "uncertainty": array}[kind]
    write_image(out, geometry, tmp_path / "out.nii.gz", kind)
    written, original = nib.load(tmp_path / "out.nii.gz"), nib.load(source)
    np.testing.assert_array_equal(written.affine, original.affine)
    np.testing.assert_array_equal(written.header.get_qform(), original.header.get_qform())
    np.testing.assert_array_equal(written.header.get_sform(), original.header.get_sform())
    assert _itk_geometry(tmp_path / "out.nii.gz") == _itk_geometry(source)  # spacing, origin, direction
    expected = {"labels": np.uint8, "probabilities": np.float32, "uncertainty": np.float32}[kind]
    assert written.get_data_dtype() == expected
    assert written.shape == ((9, 7, 5, 2) if kind == "probabilities" else (9, 7, 5))
    if kind == "probabilities":
        np.testing.assert_array_equal(np.asanyarray(written.dataobj)[..., 0], data)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_identity_round_trip_keeps_geometry(tmp_path, rng, suffix):
    data = rng.random((9, 7, 5)).astype(np.float32)
    source = save_itk(tmp_path / f"in{suffix}", data)
    array, geometry = read_image(source)
    np.testing.assert_array_equal(array, data)  # (i, j, k) order, as MONAI's readers
    write_image(array > 0.5, geometry, tmp_path / f"labels{suffix}")
    write_image(np.stack([array, 1 - array]), geometry, tmp_path / f"prob{suffix}", "probabilities")
    for name in ("labels", "prob"):
        spacing, origin, direction = _itk_geometry(tmp_path / f"{name}{suffix}")
        ref_spacing, ref_origin, ref_direction = _itk_geometry(source)
        if suffix == ".mha":  # spacing and direction stored apart: bit for bit
            assert (spacing, origin, direction) == (ref_spacing, ref_origin, ref_direction)
        else:  # NRRD stores spacing x direction products; SimpleITK splits them again to the last bit or so
            np.testing.assert_allclose(spacing, ref_spacing, rtol=1e-14)
            np.testing.assert_allclose(direction, ref_direction, rtol=0, atol=1e-14)
            assert origin == ref_origin
        np.testing.assert_allclose(read_image(tmp_path / f"labels{suffix}")[1].affine, geometry.affine, atol=1e-13)
    np.testing.assert_allclose(geometry.affine, oblique_affine(), atol=1e-12)  # RAS, like MONAI's ITKReader
    # the voxels too, on a non-cubic grid: a write in (k, j, i) order keeps the geometry but transposes the data
    np.testing.assert_array_equal(read_image(tmp_path / f"labels{suffix}")[0], array > 0.5)
    prob = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"prob{suffix}")))  # (k, j, i, K)
    np.testing.assert_array_equal(prob.transpose(3, 2, 1, 0), np.stack([array, 1 - array]))


def test_nifti_written_from_an_itk_input_carries_its_geometry_in_the_qform_too(tmp_path, rng):
    """Without an input header the writer builds one whose qform (code 1, scanner) holds the affine as the sform
    does: at qform code 0 a reader that goes by the qform (NIfTI's method 2) finds no orientation at all."""
    source = save_itk(tmp_path / "in.mha", rng.random((9, 7, 5)).astype(np.float32))
    array, geometry = read_image(source)
    write_image(array > 0.5, geometry, tmp_path / "labels.nii.gz")
    header = nib.load(tmp_path / "labels.nii.gz").header
    assert int(header["qform_code"]) == 1
    np.testing.assert_allclose(header.get_qform(), geometry.affine, atol=1e-5)  # quaternion in float32
    np.testing.assert_allclose(header.get_sform(), geometry.affine, atol=1e-5)


def test_nifti_geometry_matches_monai_loader(tmp_path, rng):
    source = save_nifti(tmp_path / "in.nii", rng.random((6, 5, 4)).astype(np.float32))
    array, geometry = read_image(source)
    loaded = LoadImage(image_only=True)(str(source))
    np.testing.assert_array_equal(array, loaded.numpy())
    np.testing.assert_array_equal(geometry.affine, loaded.affine.numpy())


def test_trailing_singleton_axes_are_dropped(tmp_path, rng):
    array, geometry = read_image(save_nifti(tmp_path / "x.nii.gz", rng.random((6, 5, 4, 1)).astype(np.float32)))
    assert array.shape == geometry.shape == (6, 5, 4)


def test_label_dtype_follows_the_largest_label(tmp_path):
    assert label_dtype(255) == np.uint8 and label_dtype(256) == np.uint16
    with pytest.raises(ValueError, match="65535"):
        label_dtype(70000)
    geometry = read_image(save_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.float32)))[1]
    labels = np.zeros((4, 4, 4), np.int64)
    labels[0, 0, 0] = 300
    write_image(labels, geometry, tmp_path / "y.nii.gz")
    assert nib.load(tmp_path / "y.nii.gz").get_data_dtype() == np.uint16
    assert int(np.asanyarray(nib.load(tmp_path / "y.nii.gz").dataobj).max()) == 300


def test_writes_never_overwrite_unless_asked_and_leave_no_temporary(tmp_path):
    geometry = read_image(save_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.float32)))[1]
    target = write_image(np.ones((4, 4, 4)), geometry, tmp_path / "out.nii.gz")
    with pytest.raises(OutputError, match="out.nii.gz: already exists"):
        write_image(np.full((4, 4, 4), 2), geometry, target)
    assert np.asanyarray(nib.load(target).dataobj).max() == 1
    write_image(np.full((4, 4, 4), 2), geometry, target, overwrite=True)
    assert np.asanyarray(nib.load(target).dataobj).max() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "x.nii.gz"]


def test_write_image_makes_missing_folders_and_refuses_a_format_before_making_any(tmp_path):
    """Two missing levels raised a bare FileNotFoundError (one was made silently); a .png made its folder, then
    failed."""
    geometry = read_image(save_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.float32)))[1]
    deep = write_image(np.ones((4, 4, 4)), geometry, tmp_path / "a" / "b" / "c.nii.gz")
    assert np.asanyarray(nib.load(deep).dataobj).max() == 1
    with pytest.raises(ValueError, match=r"api/x.png: cannot write this format \(expected one of .nii.gz"):
        write_image(np.ones((4, 4, 4)), geometry, tmp_path / "api" / "x.png")
    assert not (tmp_path / "api").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="file/d: output folder is not writable"):
        write_image(np.ones((4, 4, 4)), geometry, tmp_path / "file" / "d" / "x.nii.gz")


def test_a_failing_write_leaves_nothing_behind(tmp_path):
    geometry = read_image(save_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.float32)))[1]
    good = Out(np.ones((4, 4, 4)), geometry, tmp_path / "a.nii.gz")
    bad = Out(np.ones((3, 3, 3)), geometry, tmp_path / "b.nii.gz")  # wrong shape: fails after `good` was staged
    with pytest.raises(ValueError, match="differs"):
        write_images([good, bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz"]


def _truncated(path, rng):
    save_nifti(path, rng.random((16, 16, 16)).astype(np.float32))
    path.write_bytes(path.read_bytes()[:2000])
    return path


def _rgb(path, rng):
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    return path


BAD_FILES = {
    # once read as its real part (a warning and a blank image segmented) and as a "truncated" file
    "complex": (lambda p, rng: save_nifti(p, (1j * rng.random((4, 4, 4))).astype(np.complex64)), "complex voxels"),
    "RGB": (_rgb, "3 components per voxel where a scalar image is expected"),
    "missing": (lambda p, rng: p, "no such file"),
    "truncated": (_truncated, "truncated or not an image"),
    "not an image": (lambda p, rng: (p.write_bytes(gzip.compress(b"hello, not an image")), p)[1], "not an image"),
    "2D": (lambda p, rng: save_nifti(p, rng.random((6, 5)).astype(np.float32)), "2D image .* where a 3D image"),
    "4D": (lambda p, rng: save_nifti(p, rng.random((6, 5, 4, 2)).astype(np.float32)), "4D image .* where a 3D"),
    "NaN": (lambda p, rng: save_nifti(p, np.full((4, 4, 4), np.nan, np.float32)), "64 voxel.* NaN or infinite"),
    "inf": (lambda p, rng: save_nifti(p, np.where(np.eye(4)[..., None] > 0, np.inf, 0.0)), "4 voxel.* NaN or inf"),
}


@pytest.mark.parametrize("problem", sorted(BAD_FILES))
def test_bad_input_files_get_one_line_naming_file_and_problem(tmp_path, rng, problem):
    make, message = BAD_FILES[problem]
    path = make(tmp_path / "case.nii.gz", rng)
    with pytest.raises(InputError, match=message) as error:
        read_image(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_compressed_nifti_named_nii_is_told_to_be_renamed(tmp_path, rng):
    """From a review: a gzip-compressed NIfTI named .nii (common after a rename) read as a truncated or non-image
    file; it says what it is now. A truncated uncompressed .nii keeps the general line."""
    compressed = save_nifti(tmp_path / "scan.nii.gz", rng.random((4, 4, 4)).astype(np.float32))
    misnamed = compressed.rename(tmp_path / "sub-03_T1w.nii")
    with pytest.raises(InputError, match=r"sub-03_T1w.nii: the file is gzip-compressed but named .nii: rename it to "
                                         r"\.nii\.gz\.$"):  # fmt: skip
        read_image(misnamed)
    plain = save_nifti(tmp_path / "plain.nii", rng.random((16, 16, 16)).astype(np.float32))
    plain.write_bytes(plain.read_bytes()[:500])
    with pytest.raises(InputError, match="truncated or not an image"):
        read_image(plain)


def test_an_uncompressed_nifti_named_nii_gz_is_told_to_be_renamed(tmp_path, rng):
    """From a review: the opposite mix-up (an uncompressed NIfTI named .nii.gz) said "truncated or not an image (File
    ... is not a gzip file)"; it says what it is, for NIfTI-1 and NIfTI-2 alike. A gzip file that is no image keeps
    the general line."""
    data = rng.random((4, 4, 4)).astype(np.float32)
    for kind in (nib.Nifti1Image, nib.Nifti2Image):
        plain = tmp_path / f"{kind.__name__}.nii"
        nib.save(kind(data, np.eye(4)), str(plain))
        misnamed = plain.rename(tmp_path / f"{kind.__name__}.nii.gz")
        told = r"\.nii\.gz: the file is an uncompressed NIfTI but named \.nii\.gz: rename it to \.nii\.$"
        with pytest.raises(InputError, match=told):
            read_image(misnamed)
    other = tmp_path / "other.nii.gz"
    other.write_bytes(gzip.compress(b"not an image at all" * 40))
    with pytest.raises(InputError, match="truncated or not an image"):
        read_image(other)


def test_finite_values_beyond_float32_are_named_as_such(tmp_path):
    """From a review: float64 voxels up to 2.5e302, all finite, printed numpy's overflow warning and then "voxel(s) are
    NaN or infinite" (the cast to float32 had made them so). They are named as beyond float32's range, with no
    warning; float64 values within it still read."""
    data = np.ones((6, 6, 6))
    data[0, 0, :2] = [2.5e302, -1e40]
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"huge.nii.gz: 2 voxel\(s\) reach 2.5e\+302, beyond float32's range"):
            read_image(path)
    data[0, 0, :2] = [1e30, 2.0]
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    assert read_image(path)[0].max() == np.float32(1e30)


def test_a_blank_image_or_modality_is_refused_by_name_wherever_it_comes_from(tmp_path, rng):
    """One value in every voxel of any channel: refused by ``read_input`` (what ``Predictor.segment`` reads with),
    naming the file or the array's channel; it was segmented (the shipped model called most of one brain). The
    readers themselves still read a constant image (a mask, for its geometry)."""
    from medwidit.inference.io import read_input

    blank = save_nifti(tmp_path / "blank.nii.gz", np.zeros((4, 4, 4), np.float32))
    constant = save_itk(tmp_path / "seven.mha", np.full((4, 4, 4), 7, np.int16))
    scan = save_nifti(tmp_path / "scan.nii.gz", rng.random((4, 4, 4)).astype(np.float32))
    assert read_image(blank)[0].shape == (4, 4, 4)
    for image, modalities, message in (
        (blank, 1, "blank.nii.gz: every voxel is 0: a blank image, nothing to segment"),
        (constant, 1, "seven.mha: every voxel is 7: a blank image"),
        ([scan, blank], 2, "blank.nii.gz: every voxel is 0"),  # a blank modality beside a real one
        (nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), 1, "nibabel image: every voxel is 0"),
        (np.full((4, 4, 4), -1.5, np.float32), 1, r"array: every voxel is -1.5"),
        (np.stack([rng.random((4, 4, 4)), np.full((4, 4, 4), 5.0)]), 2, r"array channel 1: every voxel is 5"),
    ):
        with pytest.raises(InputError, match=message):
            read_input(image, np.eye(4) if isinstance(image, np.ndarray) else None, num_modalities=modalities)
    assert read_input([scan, scan], num_modalities=2)[0].shape == (2, 4, 4, 4)


def test_a_complex_array_or_nibabel_image_is_refused_not_cast(rng):
    from medwidit.inference.io import read_array, read_nibabel

    phase = (1j * rng.random((4, 4, 4))).astype(np.complex64)
    with pytest.raises(InputError, match="array: complex voxels"):
        read_array(phase, np.eye(4))
    with pytest.raises(InputError, match="nibabel image: complex voxels"):
        read_nibabel(nib.Nifti1Image(phase, np.eye(4)))


def test_unsupported_suffix_and_2d_itk(tmp_path, rng):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="notes.txt: not a supported image format"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="2D image .* where a 3D image"):
        read_image(save_itk(tmp_path / "flat.mha", rng.random((6, 5)).astype(np.float32)))


def test_unwritable_output_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file/out: output folder is not writable"):
        check_output_dir(tmp_path / "file" / "out")
    with pytest.raises(OutputError, match=r"file: is an existing file, not a folder; give an output folder\.$"):
        check_output_dir(tmp_path / "file")  # mkdir's "File exists" was read as "not writable"
    assert check_output_dir(tmp_path / "new" / "out").is_dir()


@pytest.mark.parametrize(("suffix", "data"), [(".mhd", ".zraw"), (".nhdr", ".raw.gz")])
def test_header_formats_are_written_with_their_final_data_file_name(tmp_path, rng, suffix, data):
    """Issue 15 (2): the header names the data file it is committed beside, never a temporary."""
    geometry = read_image(save_nifti(tmp_path / "x.nii.gz", rng.random((4, 5, 6)).astype(np.float32)))[1]
    out = tmp_path / "out"
    out.mkdir()
    write_image(rng.random((4, 5, 6)) > 0.5, geometry, out / f"y{suffix}")
    assert sorted(p.name for p in out.iterdir()) == sorted([f"y{suffix}", f"y{data}"])  # no temporaries left
    assert f"y{data}" in (out / f"y{suffix}").read_text(errors="replace") and "partial" not in (
        out / f"y{suffix}"
    ).read_text(errors="replace")
    with pytest.raises(OutputError, match=f"y{data}: already exists"):  # its data file counts as an output too
        write_image(np.zeros((4, 5, 6)), geometry, out / f"y{suffix}")
    assert read_image(out / f"y{suffix}")[0].shape == (4, 5, 6)


def test_write_images_refuses_two_folders(tmp_path):
    geometry = read_image(save_nifti(tmp_path / "x.nii.gz", np.zeros((4, 4, 4), np.float32)))[1]
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="one folder"):
        write_images(
            [
                Out(np.ones((4, 4, 4)), geometry, tmp_path / "a" / "y.nii.gz"),
                Out(np.ones((4, 4, 4)), geometry, tmp_path / "z.nii.gz"),
            ]
        )


def test_a_metatensor_brings_its_own_affine_and_other_tensors_their_values(tmp_path, rng):
    """A MONAI MetaTensor was read as a bare tensor: 1 mm identity voxels and a warning saying no affine was given,
    so the volume (and the resampled grid) were wrong; a bfloat16 tensor failed in numpy."""
    import torch

    from medwidit.inference.io import read_input

    affine = oblique_affine()
    path = save_nifti(tmp_path / "x.nii.gz", rng.random((8, 7, 6)).astype(np.float32), affine)
    loaded = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    data, geometry = read_input(loaded)
    expected, on_file = read_image(path)
    np.testing.assert_allclose(geometry.affine, on_file.affine, atol=1e-5)
    np.testing.assert_array_equal(data[0], expected)
    half = torch.from_numpy(expected).bfloat16()
    data, _ = read_input(half, affine=affine)
    np.testing.assert_array_equal(data[0], half.float().numpy())


@pytest.mark.parametrize("shape", [(3, 4), (16,), (3, 3)])
def test_a_malformed_affine_is_one_line_naming_it(rng, shape):
    from medwidit.inference.io import read_input

    with pytest.raises(InputError, match=rf"^affine: expected a 4x4 .* got shape \({shape[0]},"):  # LinAlgError, ...
        read_input(rng.random((6, 5, 4)).astype(np.float32), affine=np.ones(shape))


@pytest.mark.parametrize(
    "affine, spatial_dims, match",
    [
        ("eye", 3, r"^affine: expected a 4x4 voxel -> RAS mm matrix of numbers, got 'eye'\.$"),  # numpy's float error
        ([[1, 0], [0]], 3, r"^affine: expected a 4x4 voxel -> RAS mm matrix of numbers"),
        (np.eye(3), 3, r"^affine: expected a 4x4 voxel -> RAS mm matrix, got shape \(3, 3\)\.$"),  # "4x4 (or 4x4)"
        (np.eye(5), 2, r"^affine: expected a 3x3 or 4x4 voxel -> RAS mm matrix, got shape \(5, 5\)\.$"),
    ],
)
def test_an_affine_that_is_not_a_matrix_of_numbers_is_named(rng, affine, spatial_dims, match):
    from medwidit.inference.io import read_array

    with pytest.raises(InputError, match=match):
        read_array(rng.random((6, 5, 4)[:spatial_dims]).astype(np.float32), affine=affine, spatial_dims=spatial_dims)


def test_a_nibabel_image_made_without_an_affine_reads_as_nibabel_writes_it(tmp_path, rng, caplog):
    """``Nifti1Image(data, None)`` (affine None) failed with an IndexError inside the affine check; it now takes the
    header's affine, the one nibabel writes to a file and reads back, with a warning."""
    from medwidit.inference.io import read_nibabel

    image = nib.Nifti1Image(rng.random((6, 5, 4)).astype(np.float32), None)
    image.header.set_zooms((2.0, 1.5, 3.0))
    with caplog.at_level("WARNING", logger="medwidit.inference.io"):
        data, geometry = read_nibabel(image)
    assert "the image has no affine; using its header's ([2.0, 1.5, 3.0] mm voxels)" in caplog.text
    nib.save(image, tmp_path / "x.nii.gz")
    expected, on_file = read_image(tmp_path / "x.nii.gz")
    np.testing.assert_allclose(geometry.affine, on_file.affine, atol=1e-6)
    np.testing.assert_array_equal(data, expected)


def test_affine_with_a_file_or_nibabel_image_is_refused_not_ignored(tmp_path, rng):
    from medwidit.inference.io import read_input

    path = save_nifti(tmp_path / "x.nii.gz", rng.random((6, 5, 4)).astype(np.float32))
    for image in (path, str(path), nib.load(path)):
        with pytest.raises(InputError, match="affine: given with .* which carries its own"):
            read_input(image, affine=np.diag([5.0, 5.0, 5.0, 1.0]))


def test_outputs_of_an_in_memory_image_use_its_affine_even_if_changed_after_its_header(rng):
    """nibabel keeps .affine and the header apart until a save: the outputs took the stale header's."""
    from medwidit.inference.io import read_nibabel, to_nibabel

    image = nib.Nifti1Image(rng.random((6, 5, 4)).astype(np.float32), oblique_affine())
    image.affine[:3, 3] += 10.0
    _, geometry = read_nibabel(image)
    out = to_nibabel(np.zeros((6, 5, 4), np.uint8), geometry, "labels", max_label=1)
    np.testing.assert_allclose(out.affine, image.affine, atol=1e-5)
    np.testing.assert_allclose(geometry.affine, image.affine, atol=1e-9)


def test_outputs_reset_what_the_input_header_says_about_its_own_values(tmp_path):
    """The input's display window (3000-8000 for MNI152's T1) showed the 0/1 labels and 0-1 probabilities blank in
    MRIcroGL and FSLeyes; its intent ("z score"), description and a 2.5 s time step went into every output, the
    probability map's class axis read as time. The geometry stays the input's, verbatim."""
    image = nib.Nifti1Image(np.random.default_rng(0).random((8, 9, 10, 1), dtype=np.float32) * 5000,
                            np.diag([2.0, 2.0, 2.0, 1.0]))  # fmt: skip
    header = image.header
    header["cal_min"], header["cal_max"] = 3000, 8000
    header.set_intent("z score")
    header["descrip"] = b"CT head"
    header.set_zooms((2.0, 2.0, 2.0, 2.5))
    header.set_xyzt_units("mm", "sec")
    nib.save(image, tmp_path / "x.nii.gz")
    _, geometry = read_image(tmp_path / "x.nii.gz")
    labels = to_nibabel(np.ones((8, 9, 10), np.uint8), geometry, "labels", max_label=1).header
    assert (float(labels["cal_min"]), float(labels["cal_max"])) == (0.0, 1.0)
    assert labels.get_intent()[0] == "label" and labels["descrip"].item() == b"medwidit labels"
    probabilities = to_nibabel(np.full((2, 8, 9, 10), 0.5, np.float32), geometry, "probabilities").header
    assert float(probabilities["cal_max"]) == 1.0 and probabilities.get_intent()[0] == "none"
    assert probabilities.get_zooms() == (2.0, 2.0, 2.0, 1.0) and probabilities.get_xyzt_units() == ("mm", "unknown")
    uncertainty = to_nibabel(np.full((8, 9, 10), 0.3, np.float32), geometry, "uncertainty").header
    assert float(uncertainty["cal_max"]) == 0.0  # the viewer's own window
    for out in (labels, probabilities, uncertainty):
        np.testing.assert_array_equal(out.get_best_affine(), header.get_best_affine())
        assert out.get_sform(coded=True)[1] == header.get_sform(coded=True)[1]


@pytest.mark.parametrize(("unit", "zoom"), [("micron", 2000.0), ("meter", 0.002)])
def test_nifti_spatial_units_are_read_as_mm_and_outputs_keep_the_inputs(tmp_path, unit, zoom):
    """nibabel's affine is in the header's unit: a 2 mm scan stored in microns was refused as 2000 mm voxels (in
    meters, as leaving 0 voxels); SimpleITK reads both as 2 mm. The outputs keep the input's header and unit."""
    image = nib.Nifti1Image(np.random.default_rng(0).random((8, 9, 10), dtype=np.float32), np.diag([zoom] * 3 + [1.0]))
    image.header.set_xyzt_units(unit, "sec")
    nib.save(image, tmp_path / "x.nii.gz")
    _, geometry = read_image(tmp_path / "x.nii.gz")
    np.testing.assert_allclose(geometry.spacing, (2.0, 2.0, 2.0), rtol=1e-6)
    assert sitk.ReadImage(str(tmp_path / "x.nii.gz")).GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    out = to_nibabel(np.zeros((8, 9, 10), np.uint8), geometry, "labels", max_label=1).header
    np.testing.assert_allclose(out.get_best_affine(), image.header.get_best_affine())
    assert out.get_xyzt_units()[0] == unit


def test_upper_case_metaimage_and_nrrd_suffixes_read(tmp_path, rng):
    """From a review: ITK picks its reader by a case-sensitive suffix, so SCAN.MHA, which medwidit accepts as an
    image, failed as 'truncated or not an image'."""
    data = rng.random((6, 5, 4)).astype(np.float32)
    for name in ("SCAN.MHA", "SCAN.NRRD"):
        sitk.WriteImage(sitk.GetImageFromArray(data.transpose(2, 1, 0)), str(tmp_path / name.lower()))
        (tmp_path / name.lower()).rename(tmp_path / name)
        np.testing.assert_array_equal(read_image(tmp_path / name)[0], data)


def test_a_header_whose_data_file_is_missing_names_the_data_file(tmp_path, rng):
    """From a review: b.mhd without its b.raw read as 'b.mhd: cannot read the image, the file is truncated or not an
    image (... b.mhd ... No such file or directory)', about a file that is there."""
    sitk.WriteImage(sitk.GetImageFromArray(rng.random((4, 5, 6)).astype(np.float32)), str(tmp_path / "b.mhd"))
    (tmp_path / "b.raw").unlink()
    with pytest.raises(InputError, match=r"b.mhd: its data file b.raw \(the header's data file line\) is not in"):
        read_image(tmp_path / "b.mhd")


@pytest.mark.parametrize("name", ["my scan", "héad"])
def test_a_header_names_its_data_file_with_spaces_or_non_ascii_letters(tmp_path, rng, name):
    """From a review: the data file line was read up to its first space and decoded as latin-1, so 'héad.mhd' was
    refused ("its data file hÃ©ad.raw is not in ...") and 'my scan.raw' left out of what an output may not replace."""
    header = tmp_path / f"{name}.mhd"
    data = rng.random((4, 5, 6)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(data), str(header))
    assert input_files(header) == [header, tmp_path / f"{name}.raw"]
    np.testing.assert_array_equal(read_image(header)[0], data.transpose(2, 1, 0))
    header.write_bytes(header.read_bytes().replace(b"\n", b"\r\n"))  # written on Windows
    assert input_files(header) == [header, tmp_path / f"{name}.raw"]


def test_a_header_whose_data_files_are_a_list_names_no_single_data_file(tmp_path):
    """A second review: read to the line's end, "LIST 2D" was taken for a file name and such headers refused."""
    header = tmp_path / "scan.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nElementType = MET_FLOAT\nElementDataFile = LIST 2D\na.raw\n")
    assert input_files(header) == [header]
