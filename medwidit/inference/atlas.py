"""An atlas prior: a template head registered to the case, its structure mask carried onto the case's grid, and
every member background farther than ``margin_mm`` from it and (``core_mm``) the structure deeper than ``core_mm``
inside it.

The network's 2 mm windows see 128 mm of a head at a time, and in a face, a neck or a scalp unlike any training crop
they can see brain (MRHead: 760 mL too much, most of it below the skull base). A whole head says where the brain can
be: classical brain extraction (ROBEX, BEaST, FreeSurfer's watershed) registers an atlas first for that reason. Here an
affine registration (similarity first, then all 12 parameters) by Mattes mutual information on the images' ranks,
which holds for any contrast and under a strong coil field, carries the bundle's template onto the case; it costs a
few CPU seconds. How well the written labels agree with the registered mask (:func:`template_dice`) is evidence about
the labels that shares none of the network's failure modes: the bundle's calibration reads it. SimpleITK does the
registration (a kept library); what is written here is only the choice of its settings, the ranks and the geometry
between nibabel's RAS arrays and ITK's LPS images.

``configs/inference.json``'s ``atlas_prior`` declares it ({"image": template head, "label": its mask (> 0: the
structure), both files relative to the bundle, "margin_mm": mm, "min_kept": share, optionally "core_mm": mm and
"core_label": class, "warn_filled": share, "kept_margin_mm": mm}; null: off). A region (within ``kept_margin_mm``,
default ``margin_mm``) that holds less than ``min_kept`` of the members' foreground is not applied (a registration gone
wrong, or a case that is not a head): the case is left as the members saw it, and its quality report says so. The core:
where a coil field darkens a lobe or the contrast is one the network never saw, its members call the inside of the brain
background (a Dice of 0.1 on an inverted validation head) while an affine template, registered on ranks, still puts the
brain within millimetres (0.93-0.96 on the validation heads); so the voxels deeper than ``core_mm`` inside the
registered mask are ``core_label`` in every member, and the network decides the band between ``core_mm`` inside and
``margin_mm`` outside the template's edge, where its voxel-level detail is. Depth is measured between voxel centres on
the case's grid, so on a grid coarser than ``core_mm`` the core is the whole mask. The core is applied only with the
region (not where the region held less than ``min_kept``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medwidit.utils import is_finite_number
from medwidit.utils.checks import check_keys

from .io import one_line
from .localize import foreground_region
from .options import read_inference_config

__all__ = [
    "ATLAS_PRIOR_KEYS",
    "AtlasFit",
    "atlas_mask",
    "atlas_warning",
    "bundle_atlas_prior",
    "check_atlas_prior",
    "core_of",
    "fit_atlas",
    "network_voxels",
    "register_template",
    "sitk_image",
    "template_dice",
    "template_information",
]

logger = logging.getLogger(__name__)

ATLAS_PRIOR_KEYS = ("image", "label", "margin_mm")  # required; the others are optional
ATLAS_PRIOR_OPTIONAL = ("min_kept", "core_mm", "core_label", "warn_filled", "kept_margin_mm", "warn_information")
DEFAULT_MIN_KEPT = 0.5
REGISTRATION_SEED = 1  # the metric's fixed draw of voxels (SimpleITK's seed 0 is the wall clock: a new draw each run)
REGISTRATION_MM = 4.0  # both images are smoothed and shrunk to about this voxel size before they are registered
LPS = np.diag([-1.0, -1.0, 1.0])  # nibabel's RAS world -> ITK's LPS world


def check_atlas_prior(spec: Mapping | None, root: str | os.PathLike | None = None, source: str = "atlas_prior"):
    """A bundle's or a caller's ``atlas_prior`` -> ``{"image": Path, "label": Path, "margin_mm": mm, "min_kept":
    share, "core_mm": mm or None, "core_label": class, "warn_filled": share or None}`` or None (off). Relative
    paths are taken from ``root`` (a bundle's folder); both files must exist. ``margin_mm`` >= 0; ``min_kept`` in [0,
    1] (default ``DEFAULT_MIN_KEPT``); ``core_mm`` >= 0 or null (default: no core); ``core_label`` an integer >= 1
    (default 1; the predictor checks it against its classes); ``warn_filled`` in [0, 1] or null (default: no
    warning): the warning line names a case whose core added more than that share of its foreground;
    ``kept_margin_mm`` >= 0 or null (default: ``margin_mm``; below ``margin_mm`` it is ``margin_mm``): ``min_kept``
    judges the share of the members' foreground within that distance of the template's structure, so a tight cut does
    not switch the prior off where a looser one applied; ``warn_information`` >= 0 nats or null (default: no
    warning): the warning line names a case whose :func:`template_information` is below it (an image that is not
    what the template shows, or a registration that ran away). A ValueError names ``source``."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source} must be null or a mapping with {', '.join(ATLAS_PRIOR_KEYS)}, got {spec!r}.")
    check_keys(spec, ATLAS_PRIOR_KEYS, ATLAS_PRIOR_OPTIONAL, source)
    files, images = {}, {}
    for key in ("image", "label"):
        if not isinstance(spec[key], (str, os.PathLike)):
            raise ValueError(f"{source}: {key} file must be a path, got {spec[key]!r}.")
        path = Path(spec[key])
        # absolute: the run reads (and its settings digest) the files later, whatever the working folder is then
        path = (path if path.is_absolute() or root is None else Path(root) / path).absolute()
        if not path.is_file():
            raise ValueError(f"{source}: {key} file {path} does not exist.")
        try:
            images[key] = _load(path)
        except RuntimeError as e:
            raise ValueError(f"{source}: {key} file {path} is not an image SimpleITK reads ({one_line(e)}).") from e
        if images[key].GetDimension() != 3:
            raise ValueError(f"{source}: {key} file {path} must be a 3D image, got {images[key].GetDimension()}D.")
        files[key] = path
    if not _same_grid(images["image"], images["label"]):
        raise ValueError(f"{source}: label file {files['label']} is not on the grid of image file {files['image']}.")
    margin, min_kept = spec["margin_mm"], spec.get("min_kept", DEFAULT_MIN_KEPT)
    if not is_finite_number(margin) or margin < 0:
        raise ValueError(f"{source}: margin_mm must be a number of mm >= 0, got {margin!r}.")
    if not is_finite_number(min_kept) or not 0 <= min_kept <= 1:
        raise ValueError(f"{source}: min_kept must be a share in [0, 1], got {min_kept!r}.")
    core, core_label = spec.get("core_mm"), spec.get("core_label", 1)
    if core is not None and (not is_finite_number(core) or core < 0):
        raise ValueError(f"{source}: core_mm must be null or a number of mm >= 0, got {core!r}.")
    if isinstance(core_label, bool) or not isinstance(core_label, (int, np.integer)) or core_label < 1:
        raise ValueError(f"{source}: core_label must be a class index >= 1, got {core_label!r}.")
    warn_filled, warn_information = spec.get("warn_filled"), spec.get("warn_information")
    if warn_filled is not None and (not is_finite_number(warn_filled) or not 0 <= warn_filled <= 1):
        raise ValueError(f"{source}: warn_filled must be null or a share in [0, 1], got {warn_filled!r}.")
    if warn_information is not None and (not is_finite_number(warn_information) or warn_information < 0):
        raise ValueError(f"{source}: warn_information must be null or a number of nats >= 0, got {warn_information!r}.")
    kept_margin = spec.get("kept_margin_mm")
    if kept_margin is not None and (not is_finite_number(kept_margin) or kept_margin < 0):
        raise ValueError(f"{source}: kept_margin_mm must be null or a number of mm >= 0, got {kept_margin!r}.")
    return {
        **files, "margin_mm": float(margin), "min_kept": float(min_kept),
        "core_mm": None if core is None else float(core), "core_label": int(core_label),
        "warn_filled": None if warn_filled is None else float(warn_filled),
        # never tighter than the cut (a tighter guard would switch a prior on whose cut holds too little)
        "kept_margin_mm": None if kept_margin is None else float(max(kept_margin, margin)),
        # only where set: the run's settings digest holds the spec, and a key of None would make every case an
        # earlier version finished "changed" for --continue (from a review)
        **({} if warn_information is None else {"warn_information": float(warn_information)}),
    }  # fmt: skip


def bundle_atlas_prior(bundle_dir) -> dict | None:
    """The checked ``atlas_prior`` of a bundle's ``configs/inference.json``, its files relative to the bundle (None
    where it has none)."""
    path, config = read_inference_config(bundle_dir)
    return check_atlas_prior(config.get("atlas_prior"), root=bundle_dir, source=f"{path}: atlas_prior")


def _load(path: str | os.PathLike) -> sitk.Image:
    """A template file, read once per version of it: every case registers the same two images."""
    return _read(str(path), Path(path).stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int) -> sitk.Image:
    return sitk.ReadImage(path)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return a.GetSize() == b.GetSize() and all(
        np.allclose(getattr(a, f)(), getattr(b, f)(), atol=1e-4) for f in ("GetSpacing", "GetOrigin", "GetDirection")
    )


def sitk_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A 3D array (nibabel's voxel order) on the grid of a RAS ``affine`` -> a float32 SimpleITK image at the same
    places in the world (ITK's LPS). A sheared affine keeps its nearest rotation (the polar factor): ITK's images
    have orthonormal directions."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"an atlas prior needs a 3D image, got shape {array.shape}.")
    affine = np.asarray(affine, dtype=np.float64)
    linear = LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    u, _, vt = np.linalg.svd(linear / spacing)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK's arrays are (z, y, x)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (u @ vt).ravel()])
    image.SetOrigin([float(o) for o in LPS @ affine[:3, 3]])
    return image


def _coarse(image: sitk.Image, ranked: bool = True) -> sitk.Image:
    """Smoothed, shrunk to about ``REGISTRATION_MM`` voxels and (``ranked``) ranked (:func:`_ranks`): the
    registration's working images."""
    factors = [max(1, round(REGISTRATION_MM / s)) for s in image.GetSpacing()]
    coarse = sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, REGISTRATION_MM / 2.5), factors)
    return _ranks(coarse) if ranked else coarse


def _ranks(image: sitk.Image) -> sitk.Image:
    """Each voxel replaced by its rank among the image's voxels, in [0, 1] (ties share their mean rank): a monotonic
    map, which leaves mutual information's optimum where it was on a clean scan. Under a strong coil field the
    intensities span decades; Mattes's equal-width bins then crowd most of the head into a few of them and the affine
    ran away (masks up to 7 times the brain on validation heads: bundle docs, "The template's agreement as the Dice
    estimate", and ``benchmarks/registration.py``); ranks fill every bin alike."""
    from scipy.stats import rankdata

    values = sitk.GetArrayViewFromImage(image)
    ranks = (rankdata(values, method="average").reshape(values.shape) - 1) / max(values.size - 1, 1)
    out = sitk.GetImageFromArray(ranks.astype(np.float32))
    out.CopyInformation(image)
    return out


def _registration(initial: sitk.Transform) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.3, seed=REGISTRATION_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=300, relaxationFactor=0.7
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])  # 16, 8, 4 mm: a strong bias field trapped two levels (bundle docs)
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    return method


def register_template(case: sitk.Image, template: sitk.Image, ranked: bool = True) -> sitk.Transform:
    """The affine transform that carries ``case``'s world points to ``template``'s (ITK's resampling direction):
    a similarity (rotation, translation, one scale) from the images' centres, then an affine from it, on the images'
    ranks (``ranked`` False: their intensities, the registration of 0.7.0-0.7.1, which ``benchmarks/registration.py
    --raw`` scores). SimpleITK's global thread count is 1 while it runs, and restored after, whatever happens."""
    with _one_thread():  # threads sum in any order, and the optimizer amplifies that
        return _register(*_working_images(case, template, ranked))


@contextlib.contextmanager
def _one_thread():
    """SimpleITK's global thread count 1 inside, restored after whatever happens."""
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _working_images(case: sitk.Image, template: sitk.Image, ranked: bool = True) -> tuple[sitk.Image, sitk.Image]:
    """The registration's working images (:func:`_coarse`) of a case and a template."""
    return _coarse(sitk.Cast(case, sitk.sitkFloat32), ranked), _coarse(sitk.Cast(template, sitk.sitkFloat32), ranked)


def _register(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    similarity = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Similarity3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    similarity = sitk.Similarity3DTransform(_single(_registration(similarity).Execute(fixed, moving)))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(similarity.GetCenter())
    affine.SetMatrix(similarity.GetMatrix())
    affine.SetTranslation(similarity.GetTranslation())
    return _single(_registration(affine).Execute(fixed, moving))


def _single(transform: sitk.Transform) -> sitk.Transform:
    """The one transform a registration returns (SimpleITK wraps it in a composite)."""
    if transform.GetName() == "CompositeTransform":
        transform = sitk.CompositeTransform(transform)
        if transform.GetNumberOfTransforms() == 1:
            return transform.GetNthTransform(0)
    return transform


def atlas_mask(image: np.ndarray, affine: np.ndarray, spec: Mapping, ranked: bool = True) -> np.ndarray:
    """The template's structure (its label > 0) registered onto a case, as bool on the case's grid (the first
    channel of a (C, *S) ``image``, or a 3D ``image``, on the grid of the RAS ``affine``). ``spec``: a checked
    ``atlas_prior``; ``ranked``: :func:`register_template`'s."""
    return _registered(image, affine, spec, ranked, information=False)[0]


def template_information(case: sitk.Image, template: sitk.Image, label: sitk.Image, transform) -> float:
    """How much the case's image tells of the registered template's image inside the template's structure: Mattes
    mutual information (nats, 32 bins; SimpleITK's, as the registration's metric) between the two images' ranks on
    the registration's 4 mm working grid, over the points the ``transform`` carries into ``label`` > 0. The
    validation heads the shipped default segments right hold 0.19-2.04 nats inside the brain (grey and white matter,
    ventricles and CSF line up with the template's, whatever the contrast; a coil field lowers it most); a
    featureless ball of head size, noise, a phantom or a smooth shelled blob hold 0.003-0.115, and so does a
    registration that ran away (ITK's head under a coil field, 0.063): the atlas prior then writes the template's
    brain into what is not one (from a review: a uniform sphere got a predicted Dice of 0.93 and no warning).
    ``benchmarks/template_information.py`` measures it. 0.0 where no point of the case maps into the template
    (a registration far off: SimpleITK's metric refuses to evaluate)."""
    with _one_thread():
        return _information(*_working_images(case, template), label, transform)


def _information(fixed: sitk.Image, moving: sitk.Image, label: sitk.Image, transform: sitk.Transform) -> float:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.NONE)  # every point: a value, not a draw
    method.SetInterpolator(sitk.sitkLinear)
    inside = sitk.Resample(sitk.Cast(label > 0, sitk.sitkUInt8), moving, sitk.Transform(), sitk.sitkNearestNeighbor)
    method.SetMetricMovingMask(sitk.Cast(inside, sitk.sitkUInt8))
    method.SetInitialTransform(transform)
    try:
        return max(0.0, -float(method.MetricEvaluate(fixed, moving)))  # SimpleITK minimises minus the information
    except RuntimeError:  # "all samples map outside moving image buffer": nothing of the template's brain is there
        return 0.0  # a review: the error discarded a registration that had run, as if it had failed


def _registered(
    image: np.ndarray, affine: np.ndarray, spec: Mapping, ranked: bool = True, *, information: bool = True
) -> tuple[np.ndarray, float | None]:
    """(:func:`atlas_mask`, :func:`template_information`) of one registration; None for the second without
    ``information`` or ``ranked``."""
    image = np.asarray(image)
    image = image[0] if image.ndim == 4 else image
    # registered on the grid's RAS-ordered view, then put back: the pyramid's shrink starts at voxel 0 and the
    # centring reads the grid, so a scan stored in LPS order (the same voxels in the same places) was registered
    # about a voxel apart from its RAS copy (Dice 0.937 against 0.941 on the example, from a review)
    orientation = nib.orientations.io_orientation(affine)
    canonical = nib.orientations.apply_orientation(image, orientation)
    case = sitk_image(canonical, affine @ nib.orientations.inv_ornt_aff(orientation, image.shape))
    template, label = _load(spec["image"]), sitk.Cast(_load(spec["label"]) > 0, sitk.sitkFloat32)
    with _one_thread():  # register_template's, on working images the measure shares
        fixed, moving = _working_images(case, template, ranked)
        transform = _register(fixed, moving)
        # on the registration's own working images: ranked, as warn_information was chosen (None on raw ones)
        measured = _information(fixed, moving, label, transform) if information and ranked else None
    warped = sitk.Resample(label, case, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = sitk.GetArrayFromImage(warped).transpose(2, 1, 0) >= 0.5
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), orientation)
    return np.ascontiguousarray(nib.orientations.apply_orientation(mask, back)), measured


class AtlasFit(NamedTuple):
    """The template registered onto a case, bool on the case's grid: its structure (``mask``), the voxels within
    ``margin_mm`` of it (``region``: where the members may keep foreground), those deeper than ``core_mm`` inside
    it (``core``: where every member is ``core_label``; None without ``core_mm``) and those within
    ``kept_margin_mm`` of it (``guard``: where ``min_kept``'s share is counted; None: the region)."""

    mask: np.ndarray
    region: np.ndarray
    core: np.ndarray | None = None
    guard: np.ndarray | None = None
    information: float | None = None  # template_information (None: not measured)


def fit_atlas(image: np.ndarray, affine: np.ndarray, spec: Mapping) -> AtlasFit:
    """:func:`atlas_mask`, the voxels within ``spec["margin_mm"]`` of it, (``spec["core_mm"]`` not None) its
    voxels farther than ``core_mm`` from every voxel outside it (:func:`core_of`) and (``spec["kept_margin_mm"]`` not
    None) the voxels within that of it. A registration that SimpleITK
    cannot run (a field of view too small for the 16 mm level of the pyramid, a slab a few voxels thick) is a
    RuntimeError."""
    mask, information = _registered(image, affine, spec)
    core = None if spec.get("core_mm") is None else core_of(mask, affine, spec["core_mm"])
    kept_margin = spec.get("kept_margin_mm")
    guard = None if kept_margin is None else foreground_region(mask.astype(np.uint8), affine, kept_margin)
    region = foreground_region(mask.astype(np.uint8), affine, spec["margin_mm"])
    return AtlasFit(mask, region, core, guard, information)


def network_voxels(fit: AtlasFit) -> int | None:
    """The voxels of the case's grid a fit leaves to the network where its core is applied: within its margin and
    outside its core (None without a core). 0 where the voxels are coarser than the margin (a 3 mm scan under the
    2 mm margin): the region is then the core, every member the registered template, every map 0 (from a review)."""
    return None if fit.core is None else int((fit.region & ~fit.core).sum())


def core_of(mask: np.ndarray, affine: np.ndarray, core_mm: float) -> np.ndarray:
    """The voxels of ``mask`` (bool, on the grid of ``affine``) farther than ``core_mm`` from every voxel outside it:
    the erosion by a ball of ``core_mm`` in mm (the complement of the outside's :func:`foreground_region`), distances
    between voxel centres: along an axis whose spacing exceeds ``core_mm`` nothing is eroded (on a 2 mm grid a 1 mm
    core is the whole mask). The grid's faces are not an outside: a structure cut by the field of view continues past
    it."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~foreground_region((~mask).astype(np.uint8), affine, core_mm)


def template_dice(label_map: np.ndarray, mask: np.ndarray) -> float:
    """Dice between a written label map's foreground (every label > 0) and the registered template's structure
    (``AtlasFit.mask``), on the same grid: two answers to where the structure lies, one from the network and one
    from a registration that shares none of its failure modes (``calibration.case_features``'s ``log_atlas_dice``).
    1.0 where both are empty."""
    label_map, mask = np.asarray(label_map), np.asarray(mask, dtype=bool)
    if label_map.shape != mask.shape:
        raise ValueError(f"label map {label_map.shape} and template mask {mask.shape} must share one grid.")
    foreground = label_map > 0
    total = int(foreground.sum()) + int(mask.sum())
    return 1.0 if total == 0 else 2.0 * int((foreground & mask).sum()) / total


def atlas_warning(entry: Mapping | None) -> str | None:
    """:func:`_region_warning`'s text and, where the entry's ``template_information`` is below its
    ``warn_information``, a cause that says the image holds little of the template's structure, joined."""
    if entry is None:
        return None
    information, floor = entry.get("template_information"), entry.get("warn_information")
    causes = [_region_warning(entry)]
    if information is not None and floor is not None and information < floor:
        causes.append(
            f"the image holds {information:.3f} nats of the registered template's structure (below "
            f"warn_information {floor:g}): not the kind of scan the template is, or a registration that ran away"
        )
    return "; ".join(cause for cause in causes if cause) or None


def _region_warning(entry: Mapping) -> str | None:
    """The warning-line text for a case's quality ``atlas_prior`` entry: the template did not register, its region
    held less than ``min_kept`` of the members' foreground (not applied: most of what the members call the structure
    lies where a registered template does not put it), or its core added more than ``warn_filled`` of the foreground
    (there the answer is the registered template's, not the network's: right where the network failed and the
    registration held, wrong where the registration failed), or it left the network no voxel (``network_voxels`` 0);
    None otherwise."""
    if not entry["applied"]:
        if entry["kept"] is None:
            return "the atlas template did not register: no atlas prior"
        if entry.get("guard_kept") is not None:
            return (
                f"the atlas prior's region within {entry['kept_margin_mm']:g} mm held {entry['guard_kept']:.4f} of the "
                f"foreground (below min_kept {entry['min_kept']:.2f}): not applied"
            )
        return (
            f"the atlas prior's region held {entry['kept']:.4f} of the foreground (below min_kept "
            f"{entry['min_kept']:.2f}): not applied"
        )
    if entry.get("network_voxels") == 0:
        return (
            f"the atlas prior left the network no voxel to decide (voxels coarser than its margin_mm "
            f"{entry['margin_mm']:g}): the labels are the registered template's, and the maps say nothing of them"
        )
    filled, warn = entry.get("core_filled"), entry.get("warn_filled")
    if filled is not None and warn is not None and filled > warn:
        return (
            f"the atlas prior's core made {filled:.4f} of the foreground (above warn_filled {warn:.2f}): there the "
            "answer is the registered template's, not the network's"
        )
    return None
