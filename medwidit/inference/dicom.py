"""DICOM series input: a folder that holds one series is one case, read with SimpleITK's ``ImageSeriesReader``.

A folder holding several series is refused with a message that lists them (put each series in its own folder): a
case is one volume, and guessing which series was meant would segment the wrong one without a word. Slices of
different sizes, uneven slice positions (a missing slice) and a lone 2D slice are refused as well, naming the folder;
ITK itself would only warn, or average the spacing and misplace every slice after a gap.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .io import InputError, image_suffix, one_line

__all__ = ["dicom_files", "is_dicom_file", "is_dicom_series", "read_dicom_series"]

logger = logging.getLogger(__name__)

PREAMBLE_MAGIC = (128, b"DICM")  # DICOM Part 10: 128-byte preamble, then "DICM"
SLICE_GAP_TOLERANCE = 0.01  # relative: slice steps may differ from their median by 1 % (rounded positions)
POSITION_ROUNDING_MM = 0.05  # absolute: or by this (positions written to 0.01 mm on three axes)
SERIES_DESCRIPTION = "0008|103e"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (its ``DICM`` magic, whatever its suffix)."""
    offset, magic = PREAMBLE_MAGIC
    try:
        with open(path, "rb") as f:
            head = f.read(offset + len(magic))
    except OSError:
        return False
    return head[offset:] == magic


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM Part 10 files directly in ``folder`` (found by their ``DICM`` magic, whatever their suffix)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and is_dicom_file(p))


def is_dicom_series(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds DICOM files directly (whether they form one valid series is checked on reading)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    candidates = (p for p in folder.iterdir() if not p.name.startswith(".") and image_suffix(p) is None)
    return any(p.is_file() and is_dicom_file(p) for p in candidates)  # NIfTI/NRRD files are not opened


def series_files(folder: Path) -> list[str]:
    """The files of the one series in ``folder``, in slice order (GDCM sorts them by position)."""
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(f"{folder}: DICOM files but no image series in them (no pixel data?); expected one series.")
    if len(ids) > 1:
        listed = []
        for uid in ids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
            listed.append(f"{uid} {_description(files[0])!r} ({len(files)} file(s))")
        raise InputError(
            f"{folder}: {len(ids)} DICOM series in one folder ({'; '.join(listed)}); expected one series per folder: "
            "move each series into its own folder (each is then a case)."
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def _description(path: str) -> str:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader.GetMetaData(SERIES_DESCRIPTION).strip() if reader.HasMetaDataKey(SERIES_DESCRIPTION) else ""


def _check_slices(folder: Path, files: list[str]) -> None:
    """InputError unless every slice has one size and the slices are evenly spaced along their normal."""
    import SimpleITK as sitk

    sizes, origins, normal, pixel = set(), [], None, None
    reader = sitk.ImageFileReader()
    for path in files:
        reader.SetFileName(path)
        reader.ReadImageInformation()
        sizes.add(tuple(reader.GetSize()[:2]))
        direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
        normal = direction[:, 2] if normal is None else normal
        pixel = min(reader.GetSpacing()[:2]) if pixel is None else pixel
        origins.append(np.asarray(reader.GetOrigin(), dtype=np.float64))
    positions = [float(np.dot(normal, origin)) for origin in origins]
    if len(sizes) > 1:
        shown = ", ".join("x".join(map(str, s)) for s in sorted(sizes))
        raise InputError(f"{folder}: DICOM slices of different sizes ({shown}); expected one series of equal slices.")
    steps = np.abs(np.diff(np.sort(positions)))  # (n - 1,) mm between neighbouring slices
    median = float(np.median(steps))
    # positions are written rounded (often to 0.01 mm, on three axes): thin oblique slices' steps then vary by a few
    # hundredths of a mm, over 1 % of a 1 mm step (such series were refused, from a review)
    if median <= 0 or np.abs(steps - median).max() > max(SLICE_GAP_TOLERANCE * median, POSITION_ROUNDING_MM):
        raise InputError(
            f"{folder}: DICOM slice positions are not evenly spaced (steps from {steps.min():.4g} to {steps.max():.4g}"
            " mm): a missing or repeated slice; expected one complete series."
        )
    # and on one even grid: ITK spaces the slices (last - first) / (n - 1) apart, so a series whose step changes part
    # way through (0.55 then 0.5 mm) had every step within the tolerance and slices up to 1.25 mm off (a review)
    ordered_positions = np.sort(positions)
    off = np.abs(ordered_positions - np.linspace(ordered_positions[0], ordered_positions[-1], len(positions)))
    if off.max() > max(SLICE_GAP_TOLERANCE * median, POSITION_ROUNDING_MM):
        raise InputError(
            f"{folder}: DICOM slice positions are not evenly spaced: slice {int(off.argmax()) + 1} of "
            f"{len(positions)} lies {off.max():.3g} mm off an even grid (steps from {steps.min():.4g} to "
            f"{steps.max():.4g} mm); resample it to a regular grid first."
        )
    # each slice's origin one step along the normal from the last's: a gantry tilt (or a sheared series) steps
    # sideways too, which ITK read as a longer spacing on a grid without shear, every slice but the first misplaced
    # (65 mm at the top of a head stepping 0.73 mm sideways a slice, from a review). Judged on the whole series'
    # drift, which rounding does not add up to: refused where the last slice would be half a pixel or more away
    ordered = np.asarray(origins)[np.argsort(positions)]
    drift = ordered[-1] - ordered[0]
    sideways = float(np.linalg.norm(drift - (drift @ normal) * normal))
    if sideways >= 0.5 * pixel:
        per_slice = sideways / (len(ordered) - 1)
        degrees = float(np.degrees(np.arctan2(per_slice, median)))
        raise InputError(
            f"{folder}: DICOM slices step {per_slice:.3g} mm sideways per {median:.4g} mm along their normal (a "
            f"gantry tilt or a sheared series, {degrees:.2g} degrees: the last slice {sideways:.3g} mm off a grid "
            "without shear); resample it to a regular grid first (e.g. dcm2niix corrects a gantry tilt)."
        )


def read_dicom_series(folder: str | os.PathLike, *, spatial_dims: int = 3):
    """A folder with one DICOM series -> (float32 array (i, j, k), ITK image) as ``io.read_image`` reads NRRD/MHA."""
    import SimpleITK as sitk

    folder = Path(folder)
    if spatial_dims != 3:
        raise InputError(f"{folder}: a DICOM series is a 3D volume where a {spatial_dims}D image is expected.")
    if not is_dicom_series(folder):
        raise InputError(f"{folder}: a folder without DICOM files; expected an image file or a DICOM series folder.")
    try:
        files = series_files(folder)
        if len(files) == 1:  # a multi-frame file holds the whole volume; a lone 2D slice does not
            image = sitk.ReadImage(files[0])
            if image.GetDimension() != 3 or image.GetSize()[2] < 2:
                raise InputError(f"{folder}: one DICOM file holding one 2D slice; expected a 3D series (2+ slices).")
        else:
            _check_slices(folder, files)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            # ITK warns of "non uniform sampling" past its own 0.001 of the spacing: positions written to 0.01 mm
            # on thin oblique slices; _check_slices has judged the spacing, so its C++ lines on stderr are noise
            shown = sitk.ProcessObject.GetGlobalWarningDisplay()
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
            try:
                image = reader.Execute()
            finally:
                sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    except InputError:
        raise
    except Exception as e:  # GDCM/ITK raise RuntimeError with a page of ITK context
        raise InputError(f"{folder}: cannot read the DICOM series ({one_line(e)}).") from e
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{folder}: {image.GetNumberOfComponentsPerPixel()} components per voxel (colour DICOM?).")
    logger.info("%s: DICOM series %r, %d file(s)", folder, _description(files[0]), len(files))
    data = sitk.GetArrayViewFromImage(image)  # (k, j, i)
    return np.array(data.transpose(2, 1, 0), dtype=np.float32), image
