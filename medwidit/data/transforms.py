"""The one definition of the pre-transforms shared by training and inference: load -> channel-first -> orientation ->
spacing -> intensity.

A model's checkpoint carries the JSON ``preprocessing`` dict these are built from, so inference replays exactly what
training saw and then inverts the spatial part with MONAI ``Invertd``:

    {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0] or null, "intensity": "zscore_nonzero", "num_modalities": 1,
     "bias_correction": null or "n4", "air_threshold": null or a fraction (the air set to the minimum),
     "anti_aliasing": false or true (a Gaussian blur before the spacing step wherever it coarsens an axis)}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import AFFINE_TOL, affine_to_spacing
from monai.networks.layers.convutils import gaussian_1d
from monai.networks.layers.simplelayers import separable_filtering
from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    HistogramNormalize,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Randomizable,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialPadd,
)

from medwidit.utils import check_bool, check_int, choose, is_finite_number

__all__ = [
    "DEFAULT_PREPROCESSING",
    "BIAS_CORRECTIONS",
    "INTENSITY_MODES",
    "AirToMinimumd",
    "AntiAliasd",
    "EdgePaddedd",
    "IntensityMode",
    "N4BiasFieldCorrectiond",
    "RecordSpacingd",
    "acquisition_spacing",
    "air_to_minimum",
    "anti_alias",
    "batch_spacing",
    "check_preprocessing",
    "pad_to_crop",
    "default_preprocessing",
    "equalise_channels",
    "gaussian_blur",
    "head_mask",
    "intensity_transforms",
    "median_filter3",
    "n4_bias_correct",
    "preprocessing_transforms",
    "torch_median_filter3",
]

DEFAULT_PREPROCESSING = {
    "orientation": "RAS",
    "spacing": None,
    "intensity": "zscore_nonzero",
    "num_modalities": 1,
    "bias_correction": None,
    "air_threshold": None,
    "anti_aliasing": False,
}
BIAS_CORRECTIONS = (None, "n4")  # "n4": SimpleITK's N4 on the working grid, before the intensity mode
N4_SHRINK = 4  # the field is fitted on a copy shrunk by this factor per axis (8 mm voxels on a 2 mm grid)
N4_ITERATIONS = (50, 50, 50)  # per fitting level (each level doubles the control-point mesh)
N4_FLOOR = 0.01  # N4 fits the head's voxels brighter than this fraction of the 99th percentile
PERCENTILES = (0.5, 99.5)  # "scale_percentiles" maps these per-channel percentiles to [-1, 1] and clips
HISTOGRAM_BINS = 256  # "histogram" equalises each channel's histogram onto [-1, 1] with this many bins
# ... between the channel's minimum and this percentile, above which it clips: MONAI's bins are of equal width up to
# the maximum, so a few extreme voxels (a coil field's bright corner, a spike) squeezed the whole head into the first
# bins (benchmarks/results/histogram_clip.json)
HISTOGRAM_CLIP_PERCENTILE = 99.0
HEAD_THRESHOLD = 0.1  # head_mask's default: the fraction of the way from the minimum to the 99th percentile
MIN_HEAD_FRACTION = 0.1  # air_to_minimum leaves a channel whose head is smaller than this fraction of the grid


def default_preprocessing(**overrides) -> dict:
    """A checked copy of ``DEFAULT_PREPROCESSING`` with ``overrides`` applied."""
    return check_preprocessing({**DEFAULT_PREPROCESSING, **overrides})


def check_preprocessing(preprocessing: Mapping) -> dict:
    """Validate a ``preprocessing`` dict and return a normalised copy with every key present."""
    if not isinstance(preprocessing, Mapping):
        raise TypeError(f"preprocessing must be a dict, got {type(preprocessing).__name__}.")
    unknown = sorted(set(preprocessing) - set(DEFAULT_PREPROCESSING))
    if unknown:
        raise ValueError(f"preprocessing has unknown keys {unknown}; valid keys are {sorted(DEFAULT_PREPROCESSING)}.")
    out = {**copy.deepcopy(DEFAULT_PREPROCESSING), **copy.deepcopy(dict(preprocessing))}
    orientation = out["orientation"]
    if orientation is not None and (
        not isinstance(orientation, str)
        or not 2 <= len(orientation) <= 3
        or set(orientation.upper()) - set("LRPAIS")
        # each axis once: "RRS" gave a singular affine and a 0 mm spacing record
        or len(set(orientation.upper().translate(str.maketrans("LPI", "RAS")))) != len(orientation)
    ):
        raise ValueError(
            f"preprocessing['orientation'] must be 2 or 3 axis codes, at most one of each of L/R, P/A and I/S (e.g. "
            f"'RAS'), or null, got {orientation!r}."
        )
    out["orientation"] = orientation.upper() if orientation is not None else None
    spacing = out["spacing"]
    if spacing is not None:
        if (
            not isinstance(spacing, Sequence)
            or not 2 <= len(spacing) <= 3
            or not all(is_finite_number(s) and s > 0 for s in spacing)
        ):
            raise ValueError(f"preprocessing['spacing'] must be 2 or 3 positive numbers or null, got {spacing!r}.")
        out["spacing"] = [float(s) for s in spacing]
    out["intensity"] = choose("preprocessing['intensity']", out["intensity"], tuple(INTENSITY_MODES))
    if out["bias_correction"] in ("none", "null"):  # the words, as the CLI and a bundle override hand them over
        out["bias_correction"] = None
    if out["bias_correction"] not in BIAS_CORRECTIONS:
        raise ValueError(
            f"preprocessing['bias_correction'] must be one of {list(BIAS_CORRECTIONS)}, got {out['bias_correction']!r}."
        )
    check_int("preprocessing['num_modalities']", out["num_modalities"])
    air = out["air_threshold"]
    if air is not None and (isinstance(air, bool) or not isinstance(air, (int, float)) or not 0 < air < 1):
        raise ValueError(
            "preprocessing['air_threshold'] must be null (the air kept) or a fraction in (0, 1) of the way from a "
            f"channel's minimum to its 99th percentile, got {air!r}."
        )
    out["air_threshold"] = None if air is None else float(air)
    out["anti_aliasing"] = check_bool("preprocessing['anti_aliasing']", out["anti_aliasing"])  # "true": a CLI's
    return out


class ChannelwiseHistogramNormalized(MapTransform):
    """MONAI ``HistogramNormalize`` (``HISTOGRAM_BINS`` equal-width bins between each channel's min and its
    ``HISTOGRAM_CLIP_PERCENTILE``-th percentile, above which it clips, onto [-1, 1]) applied to every channel on its
    own: MONAI's pools all channels into one histogram, which would let a bright modality flatten a dark one."""

    def __init__(self, keys) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = equalise_channels(out[key])
        return out


def equalise_channels(image: torch.Tensor) -> torch.Tensor:
    """(C, *S) -> (C, *S): the "histogram" intensity mode's equalisation onto [-1, 1], each channel on its own, after
    clipping it at its ``HISTOGRAM_CLIP_PERCENTILE``-th percentile."""
    normalize = HistogramNormalize(num_bins=HISTOGRAM_BINS, min=-1.0, max=1.0)
    channels = []
    for c in range(image.shape[0]):
        channel = image[c : c + 1]
        # numpy's selection, not MONAI's ClipIntensityPercentiles: its torch.quantile sorts the whole volume (0.28 s
        # against 0.015 s for a 2 mm head)
        top = float(np.percentile(np.asarray(channel.detach().cpu(), dtype=np.float32), HISTOGRAM_CLIP_PERCENTILE))
        channels.append(normalize(channel.clamp(max=top)))
    return torch.cat(channels)


class AirToMinimumd(MapTransform):
    """``preprocessing["air_threshold"]``: every channel's air, outside :func:`head_mask` (``threshold``, largest
    component), set to the channel's minimum. A scanner's air is noise; the histogram equalisation spread it into grey
    noise around a washed-out head, and weights trained on templates (whose air is smooth) labelled whole real heads
    as brain (benchmarks/results/histogram_air.json). ``device``: where the mask's median filter runs (None: scipy on
    the CPU; the predictor gives its own device)."""

    def __init__(self, keys, threshold: float = HEAD_THRESHOLD, device: torch.device | str | None = None) -> None:
        super().__init__(keys)
        self.threshold, self.device = threshold, device

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = air_to_minimum(out[key], self.threshold, device=self.device)
        return out


def air_to_minimum(
    image: torch.Tensor, threshold: float = HEAD_THRESHOLD, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """(C, *S) -> a copy (same type and meta) whose air, outside each channel's head, is that channel's minimum. A
    head under ``MIN_HEAD_FRACTION`` of the grid is taken for a failed mask and the channel is left as it is: under a
    strong coil field the threshold, relative to a 99th percentile the field inflates, finds a bright corner of air
    instead of the head (trust.py's bias3 on MNI152: 3 % of the grid, no brain in it). ``device``: the
    :func:`head_mask`'s."""
    out = image.detach().clone()
    for c in range(image.shape[0]):
        values = np.asarray(image[c].detach().cpu(), dtype=np.float32)
        head = head_mask(values, threshold, largest=True, device=device)
        if head.mean() >= MIN_HEAD_FRACTION:
            out[c][torch.as_tensor(~head, device=out.device)] = float(values.min())
    return out


def head_mask(
    values: np.ndarray,
    threshold: float = HEAD_THRESHOLD,
    *,
    largest: bool = False,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """The head of one channel (*S): voxels whose 3^3 median (or own value, beside such voxels) lies above
    ``threshold`` of the way from the air's level (the medians' 1st percentile: MRI's air sits at the bottom; CT's
    too, at -1000 HU) to the 99th percentile, closed (3 iterations, the faces continued outwards) and filled;
    ``largest`` keeps its largest connected component. Not datasets.brain.head's Otsu threshold, which lands above
    the head when a coil field lights a corner. ``device``: where the median filter runs (:func:`median_filter3`);
    the mask is the same on every device."""
    from scipy import ndimage

    # a scanner's air is Rician noise: compared voxel by voxel from the minimum, 6 % noise put specks above 10 % that
    # the closing joined into the whole grid; the median keeps a head's faces where they are, unlike a Gaussian, and
    # the voxels next to them that pass on their own value give back the edges and corners the median rounds off
    filtered = median_filter3(values, device)
    low = float(np.percentile(filtered, 1))
    level = low + threshold * (float(np.percentile(values, 99)) - low)
    head = filtered > level
    head |= ndimage.binary_dilation(head, np.ones((3,) * head.ndim, bool)) & (values > level)
    # scipy's closing erodes from the grid's faces: a head cut by the field of view would lose 3 voxels there
    head = ndimage.binary_closing(np.pad(head, 3, mode="edge"), iterations=3)[(slice(3, -3),) * head.ndim]
    head = ndimage.binary_fill_holes(head)
    if largest and head.any():
        components, count = ndimage.label(head)
        if count > 1:
            head = components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    return head


def median_filter3(values: np.ndarray, device: torch.device | str | None = None) -> np.ndarray:
    """scipy's ``median_filter(values, size=3, mode="nearest")`` (*S float32 -> *S). ``device`` None or a CPU: scipy
    itself; any other device: the middle of torch's sort of the 3^N neighbourhoods there, a slab of the first axis at a
    time (the same values: a median picks one of its inputs). scipy's rank filter runs on one core: 42 s of the
    122 s that gpu.py's 512x512x300 volume took on the H200 machine (its two grids, 2026-12-04). On this 2-core CPU
    torch's took 1.01-1.18x scipy's wall time at that size in two runs, on two cores where scipy uses one
    (host_steps.json), so the CPU keeps scipy."""
    if device is None or torch.device(device).type == "cpu":
        from scipy import ndimage

        return ndimage.median_filter(values, size=3, mode="nearest")
    return torch_median_filter3(torch.as_tensor(np.ascontiguousarray(values)).to(device)).cpu().numpy()


def torch_median_filter3(x: torch.Tensor, chunk: int = 1 << 23) -> torch.Tensor:
    """:func:`median_filter3` in torch on ``x``'s device (*S -> *S): the middle of each voxel's sorted 3^N
    neighbourhood, the grid's faces continued outwards, a slab of the first axis at a time (about ``chunk``
    neighbourhood values a slab, at least one plane). The sort, not ``Tensor.median``: CUDA's median computes indices,
    which ``torch.use_deterministic_algorithms`` refuses."""
    padded = torch.nn.functional.pad(x[None, None], (1, 1) * x.ndim, mode="replicate")[0, 0]
    out = torch.empty_like(x)
    slab = max(1, chunk // (math.prod(x.shape[1:]) * 3**x.ndim))
    for start in range(0, x.shape[0], slab):
        block = padded[start : start + slab + 2]
        for axis in range(x.ndim):
            block = block.unfold(axis, 3, 1)
        block = block.reshape(*block.shape[: x.ndim], -1)
        out[start : start + slab] = block.sort(-1).values[..., block.shape[-1] // 2]
    return out


class N4BiasFieldCorrectiond(MapTransform):
    """SimpleITK's N4 bias-field correction (Tustison et al. 2010) of every channel: the smooth multiplicative field
    is fitted on the head and divided out of every voxel (``n4_bias_correct``). MONAI has none; SimpleITK is ITK's."""

    def __init__(self, keys, shrink: int = N4_SHRINK, iterations: Sequence[int] = N4_ITERATIONS) -> None:
        super().__init__(keys)
        self.shrink, self.iterations = check_int("shrink", shrink), [int(i) for i in iterations]

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = n4_bias_correct(out[key], shrink=self.shrink, iterations=self.iterations)
        return out


def n4_bias_correct(
    image: torch.Tensor, *, shrink: int = N4_SHRINK, iterations: Sequence[int] = N4_ITERATIONS
) -> torch.Tensor:
    """(C, *S) -> (C, *S), the same type and meta: each channel divided by its N4 bias field, fitted on a copy shrunk
    by ``shrink`` (at least 16 voxels per axis) on the head's voxels above ``N4_FLOOR`` of the 99th percentile (the
    head: :func:`head_mask`); the grid's spacing from a MetaTensor's affine. A channel with no
    head (all air) is left as it is."""
    import SimpleITK as sitk

    spacing = [float(v) for v in image.pixdim] if isinstance(image, MetaTensor) else [1.0] * (image.ndim - 1)
    out = image.detach().clone().float()
    for c in range(image.shape[0]):
        values = np.asarray(image[c].detach().cpu(), dtype=np.float32)
        top = float(np.percentile(values, 99))
        head = head_mask(values)
        # N4 fits a histogram of the log intensities between their extremes: near-zero voxels (black tissue, a
        # resampled edge) would stretch it until the tissue peaks share a bin and the field came out flat
        head &= values > N4_FLOOR * top
        if not head.any():
            continue
        # SimpleITK orders axes x-fastest: reverse them so that the spacing follows its axis
        itk_image = sitk.GetImageFromArray(np.ascontiguousarray(values.T))
        itk_image.SetSpacing(spacing)
        itk_mask = sitk.GetImageFromArray(np.ascontiguousarray(head.T).astype(np.uint8))
        itk_mask.CopyInformation(itk_image)
        factor = [max(1, min(shrink, n // 16)) for n in itk_image.GetSize()]
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations(list(iterations))
        corrector.Execute(sitk.Shrink(itk_image, factor), sitk.Shrink(itk_mask, factor))
        log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(itk_image)).T
        out[c] = torch.from_numpy(values / np.exp(log_field).astype(np.float32))
    return out


def intensity_transforms(
    preprocessing: Mapping, key: str = "image", *, device: torch.device | str | None = None
) -> list[MapTransform]:
    """The intensity part of ``preprocessing`` for ``key``: its bias correction, its air step (its median filter on
    ``device``: :class:`AirToMinimumd`), then its intensity mode (real and synthetic training images and inference
    share it)."""
    bias = [N4BiasFieldCorrectiond(key)] if preprocessing["bias_correction"] == "n4" else []
    threshold = preprocessing["air_threshold"]
    air = [] if threshold is None else [AirToMinimumd(key, threshold, device=device)]
    return bias + air + INTENSITY_MODES[preprocessing["intensity"]].transforms(key)


def _zscore_nonzero(key: str) -> list[MapTransform]:
    return [NormalizeIntensityd(key, nonzero=True, channel_wise=True)]


def _scale_percentiles(key: str) -> list[MapTransform]:
    lower, upper = PERCENTILES
    return [ScaleIntensityRangePercentilesd(key, lower, upper, b_min=-1.0, b_max=1.0, clip=True, channel_wise=True)]


def _histogram(key: str) -> list[MapTransform]:
    return [ChannelwiseHistogramNormalized(key)]  # nearly blind to a monotone intensity curve: MR has no scale


def _no_transform(key: str) -> list[MapTransform]:
    return []


def _not_zero(x):
    """z-scored over non-zero voxels: the background stays exactly 0 while tissue goes below it."""
    return x != 0


def _above_floor(x):
    """Percentile scaling and histogram equalisation put the background at their floor, -1."""
    return x > -1.0


def _above_minimum(x):
    """Raw intensities: the background is the image's minimum (usually 0)."""
    return x > x.min()


class IntensityMode(NamedTuple):
    """One intensity mode: its transforms on the image key, and which voxels of its output are foreground (the
    background rule of the training crop; module-level functions, since DataLoader workers pickle them)."""

    transforms: Callable[[str], list[MapTransform]]
    foreground: Callable
    background: float  # the value of air in its output: what a crop padded beyond the image is filled with


INTENSITY_MODES: dict[str, IntensityMode] = {
    "zscore_nonzero": IntensityMode(_zscore_nonzero, _not_zero, 0.0),
    "scale_percentiles": IntensityMode(_scale_percentiles, _above_floor, -1.0),
    "histogram": IntensityMode(_histogram, _above_floor, -1.0),
    "none": IntensityMode(_no_transform, _above_minimum, 0.0),  # raw: usually 0
}


class EdgePaddedd(Randomizable, MapTransform):
    """``transform`` on ``keys`` extended by ``margin`` voxels of their own edge values on every side, then cropped
    back: MONAI's Gaussian filters pad with zeros, which on a training crop (not a whole volume) put values far outside
    the intensity range on its faces (``RandGaussianSharpend`` gave -44 where the crop was air at -1). Its random state
    is the wrapped transform's, so seeding reaches it."""

    def __init__(self, transform: MapTransform, keys, margin: int) -> None:
        MapTransform.__init__(self, keys)
        self.transform, self.margin = transform, check_int("margin", margin, low=0)

    def set_random_state(self, seed: int | None = None, state=None) -> EdgePaddedd:
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:  # the wrapped transform draws its own
        pass

    def __call__(self, data: Mapping) -> dict:
        d, m, originals = dict(data), self.margin, {}
        for key in self.key_iterator(d):
            originals[key] = d[key]
            pad = [m, m] * (d[key].ndim - 1)
            d[key] = torch.nn.functional.pad(torch.as_tensor(d[key])[None], pad, mode="replicate")[0]
        d = dict(self.transform(d))
        for key, original in originals.items():
            inner = torch.as_tensor(d[key])[(slice(None), *(slice(m, s - m) for s in d[key].shape[1:]))]
            inner = inner.as_tensor() if isinstance(inner, MetaTensor) else inner
            d[key] = MetaTensor(inner, meta=dict(original.meta)) if isinstance(original, MetaTensor) else inner
        return d


def pad_to_crop(preprocessing: dict, roi_size, image_key: str = "image", label_key: str = "label") -> list:
    """Pad a normalised image and its label up to ``roi_size``: the image with its intensity mode's air (-1 after
    percentile scaling or histogram equalisation; MONAI's default 0 is mid-grey there), the label with background."""
    air = INTENSITY_MODES[preprocessing["intensity"]].background
    return [SpatialPadd(image_key, spatial_size=list(roi_size), value=air), SpatialPadd(label_key, list(roi_size))]


def acquisition_spacing(image) -> torch.Tensor:
    """(2N,) float32 mm for a channel-first MetaTensor (C, *S): its grid's spacing per axis, then the spacing at
    which it was acquired along each of those axes (from ``meta["original_affine"]``, the affine as read; for
    each axis of the grid, the spacing of the original axis nearest in direction), never finer than the grid's:
    detail finer than the working grid is gone after resampling, so a 1 mm and a 2 mm scan on a 2 mm grid get the
    same record. Orientation and resampling change the grid; thick slices keep their thickness as the acquisition's
    spacing (WiDiT's ``spacing_conditioning``)."""
    ndim = image.ndim - 1
    grid = torch.as_tensor(image.affine, dtype=torch.float64)[:ndim, :ndim]
    original = image.meta.get("original_affine")
    if original is None:
        raise ValueError(
            "acquisition_spacing needs the image's affine as read (meta['original_affine'], which LoadImaged "
            "and the predictor set); this MetaTensor has none."
        )
    original = torch.as_tensor(original, dtype=torch.float64)[:ndim, :ndim]
    grid_mm, original_mm = grid.norm(dim=0), original.norm(dim=0)  # column norms: mm per voxel step
    alignment = (grid / grid_mm).T @ (original / original_mm)  # (grid axis, original axis) direction cosines
    acquired = torch.maximum(original_mm[alignment.abs().argmax(dim=1)], grid_mm)
    return torch.cat([grid_mm, acquired]).float()


def batch_spacing(images) -> torch.Tensor:
    """(B, 2N) :func:`acquisition_spacing` of each item of a batched MetaTensor (B, C, *S), as MONAI's loaders and
    ``preprocessing_transforms`` give it (its affine and the affine as read); ValueError for anything else."""
    if not isinstance(images, MetaTensor) or images.meta.get("original_affine") is None:
        raise ValueError(
            "a spacing-conditioned model needs its inputs as MetaTensors that carry their affine and the affine as "
            "read (meta['original_affine'], which LoadImaged records), to give the network the grid's and the "
            f"acquisition's spacing; got {type(images).__name__} without them. medwidit.inference.Predictor reads "
            "files itself and gives it."
        )
    return torch.stack([acquisition_spacing(images[b]) for b in range(images.shape[0])])


def gaussian_blur(image: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """(C, *S) -> (C, *S): a Gaussian of ``sigmas[i]`` voxels along spatial axis i (0: none; truncated at 4 sigma)
    with MONAI's separable filter (GaussianSmooth's), padding with the edge values: MONAI's own pads with zeros,
    which on a crop of air at -1 put -0.58 on the faces. float32 unless float64; a MetaTensor comes back as one, with
    copies of its meta and applied operations."""
    array = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    array = array if array.dtype in (torch.float32, torch.float64) else array.float()
    kernels = [
        gaussian_1d(torch.tensor(float(sigma)), truncated=4.0).to(array) if sigma > 0 else torch.ones(1).to(array)
        for sigma in sigmas
    ]
    blurred = separable_filtering(array[None], kernels, mode="replicate")[0]
    if isinstance(image, MetaTensor):
        return MetaTensor(blurred, meta=dict(image.meta), applied_operations=list(image.applied_operations))
    return blurred


def anti_alias(image: MetaTensor, pixdim: Sequence[float]) -> MetaTensor:
    """(C, *S) -> (C, *S): :func:`gaussian_blur` along each axis whose spacing ``pixdim`` coarsens by a factor f > 1,
    with sigma = (f - 1) / 2 of its voxels (the rule of MONAI ``Resize(anti_aliasing=True)`` and scikit-image); the
    image itself where no axis coarsens. MONAI ``Spacing`` has no anti-aliasing: from 1 mm to 2 mm it keeps every
    second voxel, noise and all, and every fourth for a 4 mm grid."""
    if not isinstance(image, MetaTensor):
        raise TypeError(f"anti-aliasing needs a MetaTensor that carries its affine, got {type(image).__name__}.")
    spatial = image.ndim - 1
    spacing = affine_to_spacing(np.asarray(image.affine, dtype=np.float64), spatial).tolist()
    target = [float(p) for p in pixdim][:spatial]
    target += target[-1:] * (spatial - len(target))  # as MONAI Spacing: the last value for the axes not given
    # an axis within MONAI's AFFINE_TOL (mm) of its target is one Spacing does not resample
    sigmas = [(t / c - 1.0) / 2.0 if t - c > AFFINE_TOL else 0.0 for t, c in zip(target, spacing, strict=True)]
    return gaussian_blur(image, sigmas) if any(sigmas) else image


class AntiAliasd(MapTransform):
    """:func:`anti_alias` of each key before MONAI ``Spacingd`` resamples it to ``pixdim`` (``preprocessing``'s
    ``anti_aliasing``; images only: a label map is resampled by nearest neighbour)."""

    def __init__(self, keys, pixdim: Sequence[float]) -> None:
        super().__init__(keys)
        self.pixdim = [float(p) for p in pixdim]

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = anti_alias(d[key], self.pixdim)
        return d


class RecordSpacingd(MapTransform):
    """``d[spacing_key]`` = :func:`acquisition_spacing` of the first key: the (2N,) vector WiDiT's spacing
    conditioning reads, for training crops and inference alike (``preprocessing_transforms(spacing_key=...)``).
    ``painted=True`` records the grid as the acquisition too: an image synthesised on the grid (a label map's)."""

    def __init__(self, keys="image", spacing_key: str = "spacing", *, painted: bool = False) -> None:
        super().__init__(keys)
        self.spacing_key, self.painted = spacing_key, painted

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.first_key(d)]
        if self.painted:
            grid = torch.as_tensor(image.affine, dtype=torch.float64)[: image.ndim - 1, : image.ndim - 1].norm(dim=0)
            d[self.spacing_key] = torch.cat([grid, grid]).float()
        else:
            d[self.spacing_key] = acquisition_spacing(image)
        return d


def preprocessing_transforms(
    preprocessing: Mapping,
    image_key: str = "image",
    label_key: str | None = None,
    *,
    load: bool = True,
    spacing_key: str | None = None,
    device: torch.device | str | None = None,
) -> list[MapTransform]:
    """MONAI dictionary transforms for ``preprocessing``: [load, channel-first,] orientation, spacing, intensity.

    ``load=False`` starts from channel-first MetaTensors that already carry their affine (the predictor reads files
    itself to keep their exact geometry). The label, if any, is resampled by nearest neighbour and cast to int64;
    the image is float32. Orientation and spacing are invertible, so ``Invertd`` maps predictions back.
    ``spacing_key`` adds :class:`RecordSpacingd`: the grid's and the acquisition's spacing for spacing conditioning.
    ``device``: where the air step's median filter runs (:class:`AirToMinimumd`; the tensors stay where they are).
    """
    preprocessing = check_preprocessing(preprocessing)
    keys = [image_key] + ([label_key] if label_key is not None else [])
    transforms: list[MapTransform] = []
    if load:
        transforms += [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)]
    if preprocessing["orientation"] is not None:
        transforms.append(Orientationd(keys, axcodes=preprocessing["orientation"], labels=None))
    if preprocessing["spacing"] is not None:
        modes = ["bilinear"] + (["nearest"] if label_key is not None else [])
        if preprocessing["anti_aliasing"]:
            transforms.append(AntiAliasd(image_key, preprocessing["spacing"]))
        transforms.append(Spacingd(keys, pixdim=preprocessing["spacing"], mode=modes))
    transforms += intensity_transforms(preprocessing, image_key, device=device)
    transforms.append(EnsureTyped(image_key, dtype=torch.float32, track_meta=True))
    if label_key is not None:
        transforms.append(EnsureTyped(label_key, dtype=torch.int64, track_meta=True))
    if spacing_key is not None:
        transforms.append(RecordSpacingd(image_key, spacing_key))
    return transforms
