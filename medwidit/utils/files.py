"""The one atomic-write helper: write under a temporary name in the target folder, then commit it in one step.

Committing without ``overwrite`` uses ``os.link``, which fails if the target exists: the existence check and the
commit are one system call, so two writers started at the same moment cannot both win (``os.replace`` after an
``exists()`` check can). Where the file system has no hard links, an empty placeholder created with ``O_EXCL``
reserves the name before ``os.replace``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_write",
    "commit",
    "image_grid",
    "itk_ras_affine",
    "link_or_copy",
    "locked",
    "sha256_file",
    "temporary_path",
]

logger = logging.getLogger(__name__)

PARTIAL = ".partial"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # image_grid: files without world coordinates


def temporary_path(path: str | os.PathLike, tag: str = "") -> Path:
    """A hidden name beside ``path`` that keeps its suffixes (writers choose the format by them):
    ``dir/.name.<random>.partial.nii.gz`` for ``dir/name.nii.gz``."""
    path = Path(path)
    stem, suffixes = _split_suffixes(path.name)
    return path.with_name(f".{stem}.{tag}{secrets.token_hex(4)}{PARTIAL}{suffixes}")


def _split_suffixes(name: str) -> tuple[str, str]:
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return name[: -len(double)], double
    stem, dot, suffix = name.rpartition(".")
    return (stem, dot + suffix) if dot and stem else (name, "")


def commit(temporary: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool) -> None:
    """Move ``temporary`` onto ``path`` in one step; without ``overwrite`` a ``FileExistsError`` if ``path`` exists
    (the temporary is then left for the caller to remove)."""
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists; pass overwrite to replace it", str(path)) from None
    except OSError as e:
        if e.errno not in NO_LINKS:
            raise
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # no hard links here: reserve the name
        try:
            reserved = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            os.replace(temporary, path)
        except BaseException:  # an interrupt or error before the replace: the empty reservation is not a result
            with suppress(OSError):
                if os.path.samestat(os.stat(path), reserved):
                    os.unlink(path)
            raise
        return
    os.unlink(temporary)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    *,
    overwrite: bool = True,
    mode: int = 0o644,
) -> Path:
    """``write(temporary)`` fills a temporary file beside ``path``; it is made ``mode`` and committed onto ``path``.
    Nothing is left behind on any error; without ``overwrite`` an existing ``path`` is a ``FileExistsError``."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        write(temporary)
        os.chmod(temporary, mode)  # outputs are shared like the data beside them, whatever the umask made them
        commit(temporary, path, overwrite=overwrite)
    finally:
        temporary.unlink(missing_ok=True)
    return path


NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)  # no hard link possible there


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``target`` as a second name of ``source`` (no space needed, and ``source`` stays), else, where the file system
    has no hard links, a copy; any other error (``target`` exists) is raised."""
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in NO_LINKS:
            raise
        shutil.copy2(source, target)


NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)  # flock not supported by the file system


@contextmanager
def locked(path: str | os.PathLike, *, blocking: bool = True, required: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on the file ``path`` (created if missing) while inside; yields False (and holds
    nothing) if not ``blocking`` and taken. Advisory and per machine: it makes writers of one machine take turns;
    correctness across machines rests on the link-based :func:`commit`. Not ``required``: where no lock can be had
    (a file system without ``flock``, some NFS and FUSE mounts; a system without ``fcntl``; a lock file that cannot be
    opened) go on without one,
    with a warning, yielding True."""
    fd, held, problem = None, True, None
    try:
        import fcntl  # POSIX only: imported where a lock is taken, so the package imports elsewhere
    except ImportError as e:  # Windows: no flock
        if required:
            raise
        problem = OSError(errno.ENOSYS, f"no flock on this system ({e})")
    try:
        if problem is None:
            try:  # the umask decides who may write the lock file (a group's shared folder: 0o664 under umask 002)
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
            except PermissionError:  # another user's: flock needs no write access (from a review: Errno 13 at commit)
                fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        held = False
    except OSError as e:
        if required or (fd is not None and e.errno not in NO_LOCKS):
            if fd is not None:
                os.close(fd)
            raise
        problem = e  # handled outside the except, so that the body's own errors are not chained to it
    if problem is not None:
        logger.warning(
            "%s: no lock here (%s); writers of this folder do not take turns.", path, problem.strerror or problem
        )
    try:
        yield held
    finally:
        if fd is not None:
            os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def itk_ras_affine(spacing, origin, direction) -> np.ndarray:
    """The (4, 4) RAS voxel-to-world affine of an ITK geometry (LPS world, ``direction`` row-major N*N), as MONAI's
    ITKReader and nibabel build it; the one conversion the readers share."""
    n = len(spacing)
    affine = np.eye(4)
    affine[:n, :n] = np.asarray(direction, dtype=np.float64).reshape(n, n) * np.asarray(spacing, dtype=np.float64)
    affine[:n, 3] = origin
    affine[:3] = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # LPS -> RAS on the first three world axes
    return affine


ITK_IMAGE_IO = {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}


def itk_reader(path: str | os.PathLike):
    """A SimpleITK ``ImageFileReader`` of ``path`` with its ImageIO named by the suffix in any case: ITK picks its
    reader by a case-sensitive suffix, so ``SCAN.MHA`` had none."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    io = ITK_IMAGE_IO.get(os.path.splitext(str(path))[1].lower())
    if io is not None:
        reader.SetImageIO(io)
    reader.SetFileName(str(path))
    return reader


def label_values(path: str | os.PathLike) -> np.ndarray:
    """The distinct voxel values of a label file, sorted, read by the readers of :func:`image_grid` (NIfTI through
    nibabel, with its scaling as MONAI's loader applies it; NRRD/MHA and DICOM through SimpleITK; pictures through
    PIL). ValueError naming the file where it is not an image."""
    name = str(path).lower()
    try:
        if name.endswith(PICTURE_SUFFIXES):
            from PIL import Image

            with Image.open(path) as picture:
                return np.unique(np.asarray(picture))
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            return np.unique(np.asanyarray(nib.load(str(path)).dataobj))
        import SimpleITK as sitk

        if os.path.isdir(path):
            image = sitk.ReadImage(list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))))
        else:
            image = itk_reader(path).Execute()
        return np.unique(sitk.GetArrayFromImage(image))  # a copy: a view dies with its image
    except Exception as e:  # nibabel/SimpleITK/PIL raise many types for a truncated or non-image file
        raise ValueError(f"{path}: cannot read the label map ({' '.join(str(e).split())[-200:]}).") from e


def voxel_reorder(
    shape: tuple, affine, other_shape: tuple, other_affine, atol: float = 1e-3
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Where the grid (``other_shape``, ``other_affine``) is the grid (``shape``, ``affine``) with its voxels stored in
    another order (axes swapped or flipped: one lattice, e.g. LAS against RAS; within ``atol`` mm): ``(axes, flips)``
    such that ``np.flip(np.transpose(other, axes), flips)`` holds an array of the other grid in this grid's voxel
    order; else None. The affines are (d + 1, d + 1) with d >= len(shape) (a 2-D image's is 4 x 4)."""
    # by hand: nibabel.orientations' io_orientation takes the nearest axes of any grid (oblique too) and is 3-D only;
    # this checks that the two are one lattice within atol, for 2-D grids as well
    n = len(shape)
    if len(other_shape) != n or sorted(shape) != sorted(other_shape):
        return None
    affine, other_affine = np.asarray(affine, dtype=np.float64), np.asarray(other_affine, dtype=np.float64)
    if affine.shape != other_affine.shape:
        return None
    m = affine.shape[0] - 1  # the translation's column
    # the other grid's voxel axes in this grid's voxel units: a signed permutation where it is a reordering (least
    # squares over every world axis: a 2-D grid's plane may hold world z)
    order = np.round(np.linalg.lstsq(affine[:m, :n], other_affine[:m, :n], rcond=None)[0]).astype(int)
    if not ((np.abs(order).sum(axis=0) == 1).all() and (np.abs(order).sum(axis=1) == 1).all()):
        return None
    reorder = np.eye(m + 1)
    reorder[:n, :n] = order
    axes = [0] * n
    for j in range(n):  # the other grid's axis j is this grid's axis i, flipped where it starts at the other end
        i = int(np.flatnonzero(order[:, j])[0])
        if other_shape[j] != shape[i]:
            return None
        axes[i] = j
        reorder[i, m] = 0 if order[i, j] > 0 else shape[i] - 1
    columns = [*range(n), m]  # the grid's own axes and its origin: a 2-D grid's slice axis may point either way
    if not np.allclose((affine @ reorder)[:, columns], other_affine[:, columns], rtol=0, atol=atol):
        return None
    flips = tuple(i for i in range(n) if order[i, axes[i]] < 0)
    return tuple(axes), flips


def image_grid(path: str | os.PathLike, spatial_dims: int = 3) -> tuple[tuple[int, ...], list[list[float]] | None]:
    """(shape, RAS voxel-to-world affine) of an image from its header alone (NIfTI through nibabel, NRRD/MHA through
    SimpleITK; a DICOM series folder is read whole), so that two files' grids can be compared before any voxels are
    loaded. The shape drops trailing singleton axes beyond ``spatial_dims`` and keeps any other (channels, or a label
    with one axis too many); the affine is None for picture formats (PNG, JPEG, BMP), which have no world coordinates.
    ValueError naming the file where it is not an image."""
    name = str(path).lower()
    try:
        if name.endswith(PICTURE_SUFFIXES):
            from PIL import Image

            with Image.open(path) as picture:
                return tuple(int(s) for s in picture.size), None  # (width, height), as ITK's (i, j)
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            image = nib.load(str(path))
            shape, affine = tuple(int(s) for s in image.shape), np.asarray(image.affine, dtype=np.float64)
        else:
            import SimpleITK as sitk

            if os.path.isdir(path):
                info = sitk.ReadImage(list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))))
            else:
                info = itk_reader(path)
                info.ReadImageInformation()
            shape = tuple(int(s) for s in info.GetSize())
            n = min(len(shape), 3)
            direction = np.asarray(info.GetDirection()).reshape(len(shape), len(shape))[:n, :n]
            affine = itk_ras_affine(info.GetSpacing()[:n], info.GetOrigin()[:n], direction)
    except Exception as e:  # nibabel/SimpleITK/PIL raise many types for a truncated or non-image file
        raise ValueError(f"{path}: cannot read the image header ({' '.join(str(e).split())[-200:]}).") from e
    while len(shape) > spatial_dims and shape[-1] == 1:  # a 4D singleton, as the readers accept it
        shape = shape[:-1]
    return shape, affine.tolist()
