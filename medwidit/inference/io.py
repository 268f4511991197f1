"""Read and encode medical images with their exact geometry (``outputs`` commits them as cases, never overwriting).

Arrays follow MONAI's readers: spatial axes in voxel-index order (i, j, k) and a 4x4 ``affine`` from voxel index to
RAS world millimetres (nibabel's convention). NIfTI goes through nibabel and keeps the input's header (qform, sform,
units) verbatim; NRRD/MHA and DICOM series folders (``dicom``) go through SimpleITK and keep spacing, origin and
direction (ITK's LPS convention) verbatim; a DICOM series' outputs are NIfTI on that geometry.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

from medwidit.utils import choose, itk_ras_affine
from medwidit.utils.files import itk_reader

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageGeometry",
    "InputError",
    "OutputError",
    "OutputImage",
    "check_output_dir",
    "geometry_from_affine",
    "image_suffix",
    "label_dtype",
    "one_line",
    "read_array",
    "read_image",
    "read_input",
    "read_nibabel",
    "save_image",
    "to_nibabel",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
KINDS = ("labels", "probabilities", "uncertainty", "image")
LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS for the first three world axes


def __getattr__(name: str):
    """``write_image`` / ``write_images`` live in ``outputs`` (which builds on this module); still importable here."""
    if name in ("write_image", "write_images"):
        from . import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class InputError(ValueError):
    """An input image that cannot be used; the message is one line naming the file and the problem."""


class OutputError(OSError):
    """An output that cannot be written; the message is one line naming the path and the problem."""


@dataclass(frozen=True)
class ImageGeometry:
    """Where an image's voxels sit in the world, kept exactly as read so that outputs can be written back onto it."""

    shape: tuple[int, ...]  # spatial shape in voxel-index order (i, j, k)
    affine: np.ndarray  # (4, 4) voxel index -> RAS world, float64
    spacing: tuple[float, ...]  # ITK convention (as SimpleITK reports it)
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major (N*N), LPS world
    header: nib.Nifti1Header | None = None  # NIfTI input: its header, written back verbatim
    path: str | None = None

    @property
    def spatial_dims(self) -> int:
        return len(self.shape)


def image_suffix(path: str | os.PathLike) -> str | None:
    """The supported suffix ``path`` ends with (case-insensitive), or None."""
    name = str(path).lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def one_line(error: BaseException) -> str:
    """The error as one line: SimpleITK's text after its last ``ERROR:`` or ``[nrrd]`` tag (the source location
    before it says nothing to a user), the exception's type where it has no text, at most 300 characters (the end)."""
    text = " ".join(str(error).split())
    # ITK's last line says what is wrong (ITK 5.4's registration writes "ITK ERROR:")
    text = re.split(r"sitk::ERROR:\s*|itk::ERROR:\s*|ITK ERROR:\s*|\[nrrd\] ", text)[-1]
    text = re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", text) or type(error).__name__  # no object addresses
    return text if len(text) <= 300 else "..." + text[-297:]


def _check_affine(affine: np.ndarray, path) -> None:
    """An InputError unless the voxel-to-world matrix is finite and invertible (MONAI would fail later, vaguely)."""
    linear = np.asarray(affine, dtype=np.float64)[:-1, :-1]
    if not np.isfinite(affine).all():
        raise InputError(f"{path}: the header's voxel-to-world affine holds NaN or infinite values; fix the header.")
    scale = np.abs(linear).max()  # the determinant of linear / scale: scale ** 3 underflowed to 0 for a zero matrix
    if scale == 0 or abs(np.linalg.det(linear / scale)) < 1e-12:
        raise InputError(
            f"{path}: the header's voxel-to-world affine is singular (a zero spacing or two parallel axes); fix the "
            "header."
        )


######################################################################################################################
# reading
######################################################################################################################


def geometry_from_affine(affine, shape: Sequence[int], *, header=None, path=None) -> ImageGeometry:
    """ITK spacing/origin/direction derived from a RAS ``affine`` (nibabel's) for an image of spatial ``shape``."""
    n = len(shape)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (n + 1, n + 1) and affine.shape != (4, 4):
        raise ValueError(f"affine must be ({n + 1}, {n + 1}) or (4, 4) for a {n}D image, got shape {affine.shape}.")
    full = np.eye(4)
    full[: affine.shape[0] - 1, : affine.shape[1] - 1] = affine[:-1, :-1]
    full[: affine.shape[0] - 1, 3] = affine[:-1, -1]
    linear = LPS @ full[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / np.where(spacing > 0, spacing, 1.0)
    origin = LPS @ full[:3, 3]
    return ImageGeometry(
        shape=tuple(int(s) for s in shape),
        affine=full,
        spacing=tuple(float(s) for s in spacing[:n]),
        origin=tuple(float(o) for o in origin[:n]),
        direction=tuple(float(d) for d in direction[:n, :n].ravel()),
        header=header,
        path=path,
    )


def _squeeze_to(data: np.ndarray, spatial_dims: int, path) -> np.ndarray:
    """Drop trailing singleton axes beyond ``spatial_dims``; a wrong dimensionality is an InputError."""
    while data.ndim > spatial_dims and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != spatial_dims:
        raise InputError(
            f"{path}: {data.ndim}D image of shape {tuple(data.shape)} where a {spatial_dims}D image is expected."
        )
    return data


def _check_finite(data: np.ndarray, path) -> None:
    bad = np.size(data) - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite; fix or mask them before segmenting.")


def _check_not_blank(channels: np.ndarray, names: Sequence[str]) -> None:
    """An InputError naming the first channel (C, *S) of one value: a blank image or modality carries nothing to
    segment, and a model labels it anyway (the shipped one called 99.4% of a constant volume brain)."""
    for channel, name in zip(channels, names, strict=True):
        if channel.size and np.ptp(channel) == 0:
            raise InputError(f"{name}: every voxel is {float(channel.flat[0]):g}: a blank image, nothing to segment.")


def _check_real_scalar(dtype, name) -> None:
    """InputError for voxels that are not one real number: complex (numpy would drop the imaginary part, e.g. a
    phase image's whole signal) or several components (RGB NIfTI)."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None:
        raise InputError(f"{name}: {len(dtype.fields)} components per voxel where a scalar image is expected.")
    if dtype.kind == "c":
        raise InputError(f"{name}: complex voxels ({dtype}) where a real image is expected; give its magnitude.")


def _gzip_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _nifti_magic(path: Path) -> bool:
    """The file starts as an uncompressed NIfTI-1 or -2 header (sizeof_hdr 348 or 540, either byte order)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and {int.from_bytes(head, "little"), int.from_bytes(head, "big")} & {348, 540} != set()


def _check_float32_range(data, path) -> None:
    """An InputError where finite values lie beyond float32's range (the model computes in float32; the cast made
    them infinite, and the error then called them "NaN or infinite", after numpy's overflow warning)."""
    data = np.asanyarray(data)
    if data.dtype.kind != "f" or data.dtype.itemsize <= 4:
        return
    finite = np.abs(data[np.isfinite(data)])
    limit = float(np.finfo(np.float32).max)
    if finite.size and float(finite.max()) > limit:
        raise InputError(
            f"{path}: {int((finite > limit).sum())} voxel(s) reach {float(finite.max()):.3g}, beyond float32's range "
            f"(+-{limit:.3g}) that medwidit computes in; rescale the image."
        )


def _read_nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise InputError(f"{path}: not a NIfTI image (nibabel read it as {type(image).__name__}).")
    _check_real_scalar(image.get_data_dtype(), path)
    return np.asanyarray(image.dataobj), image


def _read_itk(path: Path):
    import SimpleITK as sitk

    image = itk_reader(path).Execute()  # its ImageIO named by the suffix in any case (SCAN.MHA)
    while image.GetDimension() > 3 and image.GetSize()[-1] == 1:  # a 4D singleton, as NIfTI's are accepted
        image = sitk.Extract(image, [*image.GetSize()[:-1], 0], [0] * image.GetDimension())
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        raise InputError(f"{path}: {components} components per voxel where a scalar image is expected.")
    data = sitk.GetArrayViewFromImage(image)  # (k, j, i)
    return np.array(data.transpose(tuple(range(data.ndim))[::-1])), image


def read_image(path: str | os.PathLike, *, spatial_dims: int = 3) -> tuple[np.ndarray, ImageGeometry]:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder -> (float32 array in (i, j, k) order, its geometry);
    one-line InputError otherwise."""
    path = Path(path)
    suffix = image_suffix(path)
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    if path.is_dir():
        from .dicom import read_dicom_series  # builds on this module

        data, image = read_dicom_series(path, spatial_dims=spatial_dims)
        _check_finite(data, path)
        geometry = _itk_geometry(image, data.shape, path)
        _check_affine(geometry.affine, path)
        return data, geometry
    if not path.is_file():
        raise InputError(f"{path}: not a file.")
    if suffix is None:
        from .dicom import is_dicom_file

        hint = "; it is a DICOM file: give its series folder" if is_dicom_file(path) else ""
        raise InputError(
            f"{path}: not a supported image format (expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM series "
            f"folder){hint}."
        )
    from .outputs import input_files  # builds on this module

    for part in input_files(path)[1:]:  # a header's data file: ITK's error named the header, which is there
        if not part.is_file():
            raise InputError(
                f"{path}: its data file {part.name} (the header's data file line) is not in {part.parent}."
            )
    try:
        if suffix in NIFTI_SUFFIXES:
            data, image = _read_nifti(path)
        else:
            data, image = _read_itk(path)
        _check_float32_range(data, path)
        data = np.asarray(data, dtype=np.float32)
    except InputError:
        raise
    except PermissionError as e:
        raise InputError(f"{path}: cannot read the file, permission denied.") from e
    except MemoryError as e:
        raise InputError(f"{path}: not enough memory to read the image.") from e
    except Exception as e:  # nibabel/SimpleITK/zlib raise many types for truncated or non-image files
        problem = f"cannot read the image, the file is truncated or not an image ({one_line(e)})"
        if suffix == ".nii" and _gzip_magic(path):  # nibabel reads a .nii as uncompressed whatever it holds
            problem = "the file is gzip-compressed but named .nii: rename it to .nii.gz"
        elif suffix == ".nii.gz" and _nifti_magic(path):
            problem = "the file is an uncompressed NIfTI but named .nii.gz: rename it to .nii"
        raise InputError(f"{path}: {problem}.") from e
    data = _squeeze_to(data, spatial_dims, path)
    _check_finite(data, path)
    if suffix in NIFTI_SUFFIXES:
        affine = _affine_in_mm(image.affine, image.header)
        geometry = geometry_from_affine(affine, data.shape, header=image.header.copy(), path=str(path))
    else:
        geometry = _itk_geometry(image, data.shape, path)
    _check_affine(geometry.affine, path)
    return data, geometry


def read_nibabel(image, *, spatial_dims: int = 3) -> tuple[np.ndarray, ImageGeometry]:
    """A nibabel image in memory -> (float32 array, geometry, with its header when it is NIfTI)."""
    name = image.get_filename() or "nibabel image"
    _check_real_scalar(image.get_data_dtype(), name)
    data = _squeeze_to(np.asarray(image.dataobj, dtype=np.float32), spatial_dims, name)
    _check_finite(data, name)
    if image.affine is None:  # nibabel's image made without one: what nibabel would write and read back
        if not hasattr(image.header, "get_best_affine"):
            raise InputError(f"{name}: the image has no affine (voxel -> RAS mm); give it one.")
        zooms = [round(float(z), 4) for z in image.header.get_zooms()[:spatial_dims]]
        logger.warning("%s: the image has no affine; using its header's (%s mm voxels).", name, zooms)
        image = type(image)(image.dataobj, image.header.get_best_affine(), image.header)
    _check_affine(image.affine, name)
    header = None
    if isinstance(image, nib.Nifti1Image):  # its .affine may have changed since the header was: as nibabel saves it
        header = type(image)(image.dataobj, image.affine, image.header).header.copy()
    affine = image.affine if header is None else _affine_in_mm(image.affine, header)
    return data, geometry_from_affine(affine, data.shape, header=header, path=image.get_filename())


MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}  # NIfTI's xyzt_units, spatial part


def _affine_in_mm(affine, header) -> np.ndarray:
    """A NIfTI affine in mm: nibabel's is in the header's spatial unit, which a file in microns or meters sets
    (SimpleITK reads them as mm; a micron file was refused as 2000 mm voxels). Outputs keep the input's header."""
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "mm"
    scale = MM_PER_UNIT.get(unit, 1.0)
    affine = np.array(affine, dtype=np.float64)
    if scale != 1.0:
        affine[:-1] *= scale
    return affine


def read_array(array, affine=None, *, spatial_dims: int = 3) -> tuple[np.ndarray, ImageGeometry]:
    """An array or tensor (*S) or (C, *S) and its RAS affine -> (float32 (C, *S), geometry); a MONAI MetaTensor
    without ``affine`` brings its own (RAS, as MONAI's loaders make it, or LPS where its meta says so); else 1 mm
    voxels at the origin are assumed with a warning (the grid is then resampled as if it were 1 mm)."""
    if affine is None and getattr(array, "affine", None) is not None and hasattr(array, "meta"):  # a MetaTensor
        affine = np.asarray(array.affine.detach().cpu(), dtype=np.float64)
        if str(array.meta.get("space", "RAS")).upper() == "LPS":
            flip = np.diag([-1.0, -1.0] + [1.0] * (affine.shape[0] - 2))
            affine = flip @ affine
    if hasattr(array, "detach"):
        tensor = array.detach().cpu()
        if tensor.is_floating_point() and tensor.element_size() < 4:  # numpy has no bfloat16
            tensor = tensor.float()
        data = tensor.numpy()
    else:
        data = np.asarray(array)
    _check_real_scalar(data.dtype, "array")
    data = data.astype(np.float32)
    if data.ndim == spatial_dims:
        data = data[None]
    if data.ndim != spatial_dims + 1:
        raise InputError(f"array: shape {data.shape} is neither (*S) nor (C, *S) with {spatial_dims} spatial axes.")
    _check_finite(data, "array")
    if affine is None:
        logger.warning("array: no affine given, assuming 1 mm voxels; pass affine= (voxel -> RAS mm) for its spacing.")
    shapes = {(spatial_dims + 1,) * 2, (4, 4)}
    expected = " or ".join(f"{n}x{n}" for n, _ in sorted(shapes))
    try:
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"affine: expected a {expected} voxel -> RAS mm matrix of numbers, got {affine!r}.") from None
    if affine.shape not in shapes:
        raise InputError(f"affine: expected a {expected} voxel -> RAS mm matrix, got shape {affine.shape}.")
    _check_affine(affine, "array")
    return data, geometry_from_affine(affine, data.shape[1:])


def read_input(
    image, affine=None, *, spatial_dims: int = 3, num_modalities: int = 1
) -> tuple[np.ndarray, ImageGeometry]:
    """Any input ``Predictor.segment`` accepts (paths, DICOM series folders, nibabel images, lists of them, an array
    or tensor with its ``affine``) -> (float32 (C, *S) array, geometry), checking modalities, dimensions, grids,
    finiteness, affines, and that no channel is blank (the readers themselves read a constant image, e.g. a mask)."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if isinstance(image, np.ndarray) or hasattr(image, "detach"):
        array, geometry = read_array(image, affine, spatial_dims=spatial_dims)
        if array.shape[0] != num_modalities:
            shape = tuple(getattr(image, "shape", array.shape))
            hint = (  # (X, Y, Z, 1) reads as 90 channels of (Y, Z, 1)
                f"; shape {shape} looks channel-last: channels go first, (C, *S), or pass (*S) for one"
                if len(shape) == spatial_dims + 1 and shape[-1] == num_modalities
                else ""
            )
            raise InputError(f"array: {array.shape[0]} channel(s) where the model expects {num_modalities}{hint}.")
        _check_not_blank(array, ["array"] if len(array) == 1 else [f"array channel {c}" for c in range(len(array))])
        return array, geometry
    if affine is not None:  # it would be ignored: a file or a nibabel image carries its own
        raise InputError(
            f"affine: given with {type(image).__name__} input, which carries its own; affine= is for arrays and "
            "tensors only."
        )
    if not items or not all(isinstance(i, (str, os.PathLike, nib.spatialimages.SpatialImage)) for i in items):
        # a dict is what MONAI's dictionary transforms give (LoadImaged): its entry is the image
        hint = ""
        if isinstance(image, Mapping) and image:
            key = "image" if "image" in image else next(iter(image))
            hint = f"; pass one of its entries ({', '.join(map(repr, list(image)[:4]))}), e.g. d[{key!r}]"
        raise TypeError(
            "image must be a path, a list of modality paths, a nibabel image or a list of them, or an array or tensor "
            f"(a MONAI MetaTensor carries its affine), got {type(image).__name__}{hint}."
        )
    channels = [
        read_image(i, spatial_dims=spatial_dims)
        if isinstance(i, (str, os.PathLike))
        else read_nibabel(i, spatial_dims=spatial_dims)
        for i in items
    ]
    first = channels[0][1]
    name = first.path or "image"
    if len(channels) != num_modalities:
        raise InputError(f"{name}: {len(channels)} modality(ies) where the model expects {num_modalities}.")
    for array, geometry in channels[1:]:
        if array.shape != first.shape or not np.allclose(geometry.affine, first.affine, atol=1e-4):
            raise InputError(f"{geometry.path or 'image'}: grid differs from the first modality ({name}).")
    stacked = np.stack([array for array, _ in channels])
    _check_not_blank(stacked, [geometry.path or "nibabel image" for _, geometry in channels])
    return stacked, first


def _itk_geometry(image, shape, path) -> ImageGeometry:
    """Geometry of a SimpleITK image as read, plus the RAS affine MONAI's ITKReader would build."""
    n = len(shape)
    if image.GetDimension() != n:
        raise InputError(f"{path}: {image.GetDimension()}D image where a {n}D image is expected.")
    return ImageGeometry(
        shape=tuple(int(s) for s in shape),
        affine=itk_ras_affine(image.GetSpacing(), image.GetOrigin(), image.GetDirection()),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=image.GetDirection(),
        path=str(path),
    )


######################################################################################################################
# writing
######################################################################################################################


def label_dtype(max_label: int) -> np.dtype:
    """uint8 for labels up to 255, uint16 up to 65535."""
    if max_label < 0 or max_label > np.iinfo(np.uint16).max:
        raise ValueError(f"labels must lie in [0, 65535] to be written, got a maximum of {max_label}.")
    return np.dtype(np.uint8) if max_label <= np.iinfo(np.uint8).max else np.dtype(np.uint16)


def _prepare(array, geometry: ImageGeometry, kind: str, max_label: int | None) -> np.ndarray:
    """Cast ``array`` for ``kind``; probabilities arrive channel-first (K, *S) and leave channel-last (*S, K)."""
    kind = choose("kind", kind, KINDS)
    array = np.asarray(array)
    expected = geometry.spatial_dims + (1 if kind == "probabilities" else 0)
    if array.ndim != expected:
        raise ValueError(f"a {kind} array for a {geometry.spatial_dims}D image must be {expected}D, got {array.shape}.")
    spatial = array.shape[1:] if kind == "probabilities" else array.shape
    if tuple(spatial) != geometry.shape:
        raise ValueError(f"array spatial shape {tuple(spatial)} differs from the image's {geometry.shape}.")
    if kind == "labels":
        return array.astype(label_dtype(int(array.max()) if max_label is None else max_label))
    if kind == "probabilities":
        array = np.moveaxis(array, 0, -1)
    return np.ascontiguousarray(array, dtype=np.float32)


def to_nibabel(array, geometry: ImageGeometry, kind: str = "labels", *, max_label: int | None = None):
    """A NIfTI image of ``array`` on ``geometry`` (the input's header verbatim where the input was NIfTI)."""
    data = _prepare(array, geometry, kind, max_label)
    if geometry.header is not None:
        header = geometry.header.copy()
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = cls(data, header.get_best_affine(), header=header)  # the header's own affine: qform, sform untouched
    else:
        image = nib.Nifti1Image(data, geometry.affine)  # a DICOM series' or an ITK file's: scanner mm
        image.header.set_qform(geometry.affine, code=1)
        image.header.set_sform(geometry.affine, code=1)
        image.header.set_xyzt_units("mm")
    image.header.set_slope_inter(None, None)
    image.header.set_data_dtype(data.dtype)
    _describe(image.header, kind, data, geometry.spatial_dims)
    return image


def _describe(header, kind: str, data: np.ndarray, spatial_dims: int) -> None:
    """The input header's fields that describe its own values, reset for ``kind``: its display window (a T1's
    3000-8000 showed the 0/1 labels blank in MRIcroGL and FSLeyes), intent ("z score" on a label map), description,
    and a time step on an axis after the spatial ones (a probability map's class axis was read as 2.5 s frames)."""
    window = {"labels": float(data.max(initial=0)), "probabilities": 1.0}.get(kind, 0.0)  # 0, 0: the viewer's own
    header["cal_min"], header["cal_max"] = 0.0, window
    header.set_intent("label" if kind == "labels" else "none")
    header["descrip"], header["aux_file"] = f"medwidit {kind}".encode(), b""
    zooms = list(header.get_zooms())
    if len(zooms) > spatial_dims:
        header.set_zooms(zooms[:spatial_dims] + [1.0] * (len(zooms) - spatial_dims))
    header.set_xyzt_units(header.get_xyzt_units()[0], "unknown")


def _to_itk(array, geometry: ImageGeometry, kind: str, max_label: int | None):
    import SimpleITK as sitk

    data = _prepare(array, geometry, kind, max_label)
    n = geometry.spatial_dims
    order = tuple(range(n))[::-1] + ((n,) if data.ndim > n else ())
    image = sitk.GetImageFromArray(data.transpose(order), isVector=data.ndim > n)  # (k, j, i[, K])
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def check_output_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it writable; OutputError with one line otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medwidit-write-test-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError as e:  # mkdir(exist_ok=True) of a file; it read "not writable (File exists)"
        raise OutputError(f"{folder}: is an existing file, not a folder; give an output folder.") from e
    except OSError as e:
        raise OutputError(f"{folder}: output folder is not writable ({e.strerror or one_line(e)}).") from e
    return folder


class OutputImage(NamedTuple):
    """One image to write: ``array`` on ``geometry`` at ``path``; ``kind`` picks the dtype and layout."""

    array: np.ndarray
    geometry: ImageGeometry
    path: Path
    kind: str = "labels"
    max_label: int | None = None


def save_image(item: OutputImage, target: str | os.PathLike) -> None:
    """Encode ``item`` into ``target`` (its format chosen by ``item.path``'s suffix); not atomic: ``target`` is a
    staging path (``outputs.write_images`` and the predictor's case writer commit it)."""
    if image_suffix(item.path) is None:
        raise ValueError(f"{item.path}: cannot write this format (expected one of {', '.join(IMAGE_SUFFIXES)}).")
    if image_suffix(item.path) in NIFTI_SUFFIXES:
        nib.save(to_nibabel(item.array, item.geometry, item.kind, max_label=item.max_label), str(target))
    else:
        import SimpleITK as sitk

        sitk.WriteImage(_to_itk(item.array, item.geometry, item.kind, item.max_label), str(target), True)
