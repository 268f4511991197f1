"""Label-to-image synthesis as MONAI dictionary transforms (SynthSeg, Billot et al. 2023; SynthStrip, Hoopes et
al. 2022): a label map becomes a new random image at every draw, with random anatomy deformation, contrast,
resolution, slice thickness, bias, noise and field of view, so that a model trained on it meets no single scanner.

The heavy parts are MONAI's (affine, bias field, gamma, smoothing, noise, flips, label mapping); these are written
here because no kept library does them the way synthesis needs (measured in ``benchmarks/synth_speed.py``):

- :class:`RandLabelsToImaged`: one Gaussian per label, drawn per sample (SynthSeg's GMM). TorchIO's
  ``RandomLabelsToImage`` does the same at 5x the CPU time on this machine and cornucopia's at 2x (a masked pass
  per label, where one table lookup draws all labels at once), and neither names an unknown label;
- :class:`RandSliceThicknessd`: a thick-slice acquisition along a random axis: the slice profile (a Gaussian with
  the slice thickness as FWHM) then sampling at the slice spacing and back. TorchIO's ``RandomAnisotropy`` samples
  with nearest neighbours and no profile, which models gaps between thin slices, not thick slices;
- :class:`RandFieldOfViewd`: a scan that ends inside the head (the image is air and the label background beyond
  a random plane near the top or bottom of an axis);
- :class:`RandNeckExtensiond`: a scan that goes on below the head the label map ends in (the neck of a real head
  coil's field of view); MONAI's ``BorderPad`` extends the map (moving its affine's origin with it) and
  ``MapLabelValue`` relabels the extension; which face is inferior, read from the affine, is ours;
- :class:`RandContrastRemapd`: another sequence's contrast on a real crop that the pipeline has equalised already
  (MONAI's ``RandHistogramShift`` draws monotone curves only, its ``IntensityRemap`` keeps a linear trend and maps a
  signed range onto [min, 0]; neither re-equalises);
- :class:`RandSubdivideLabelsd`: a label cut into random blobs painted apart (SynthStrip's many non-brain shapes;
  no kept library partitions a label into random shapes);
- :class:`RandCoilFieldd`: a coil field under the intensity normalisation of a real crop that the pipeline has
  normalised already (MONAI's ``RandBiasField`` multiplies the normalised values, so a dark region stays as bright
  relative to the rest as before, which a field in front of the equalisation does not).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    BorderPad,
    MapLabelValue,
    MapLabelValued,
    MapTransform,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasField,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    ScaleIntensityRangePercentilesd,
)

from medwidit.data.transforms import EdgePaddedd, RecordSpacingd, equalise_channels, gaussian_blur
from medwidit.utils import check_bool, check_int, check_interval, check_range, is_finite_number, is_integer

__all__ = [
    "CheckLabelMapd",
    "RandCoilFieldd",
    "RandContrastRemapd",
    "RandFieldOfViewd",
    "RandLabelsToImaged",
    "RandNeckExtensiond",
    "RandSliceThicknessd",
    "RandSubdivideLabelsd",
    "SynthesisError",
    "synthesis_transforms",
    "thick_slices",
]

ROTATE_DEGREES = 15.0  # synthesis_transforms' random rotation of the label map, at most this many degrees per axis


def _probability(name: str, value) -> float:
    """A probability in [0, 1] (MONAI clips one outside to 0 or 1 without a word), else a ValueError naming it."""
    return check_range(name, value, 0, 1, closed_high=True)


def _spatial_axes(transform: str, axes) -> tuple[int, ...]:
    """``axes`` as a non-empty tuple of spatial axis indices (ints >= 0; a negative one would count the channel axis
    in from the end), else a ValueError naming ``transform``; each call checks them against its image's rank."""
    try:  # any collection of integers (a list, a set, a numpy array, a tensor), not a string
        values = None if isinstance(axes, (str, bytes)) else np.asarray(list(axes))
    except (TypeError, ValueError):
        values = None
    indices = values is not None and values.ndim == 1 and values.size and np.issubdtype(values.dtype, np.integer)
    if not indices or (values < 0).any():
        raise ValueError(f"{transform} axes must be spatial axis indices (0, 1, ...), got {axes!r}.")
    return tuple(int(a) for a in values)


class SynthesisError(ValueError):
    """A label map the generator cannot use; the message names the file and the label."""


def _source(data: Mapping, key: Hashable) -> str:
    """The file an item came from (MONAI keeps it in the meta data), for error messages."""
    value = data.get(key)
    meta = getattr(value, "meta", None) or {}
    return str(meta.get("filename_or_obj") or f"item {key!r}")


def _label_index(data: Mapping, key: Hashable, num_labels: int) -> torch.Tensor:
    """The label map ``data[key]`` as int64 labels, else a SynthesisError naming the file: a map with no voxels,
    labels that are not integers, only label 0 (nothing to paint but air), or a label outside 0..num_labels - 1."""
    label = torch.as_tensor(data[key])
    if label.numel() == 0:
        raise SynthesisError(f"{_source(data, key)}: the label map has no voxels (shape {tuple(label.shape)}).")
    index = label.long()
    if not torch.equal(index.to(label.dtype), label):  # NaN and inf too
        bad = label[index.to(label.dtype) != label].flatten()[:3].tolist()
        raise SynthesisError(f"{_source(data, key)}: the label map must hold integer labels (e.g. {bad}).")
    low, high = int(index.min()), int(index.max())
    if high == 0:  # nothing to paint but air: no anatomy, no target
        raise SynthesisError(f"{_source(data, key)}: the label map is empty (every voxel is label 0).")
    if low < 0 or high >= num_labels:
        raise SynthesisError(
            f"{_source(data, key)}: label {low if low < 0 else high} is not one of the {num_labels} generation labels "
            f"(0..{num_labels - 1}) this generator was configured with."
        )
    return index


class CheckLabelMapd(MapTransform):
    """The generator's first step: ``data[key]`` must be one 3-D label map (1, X, Y, Z) of labels in
    ``0..num_labels - 1`` with a label other than 0 (:func:`_label_index`), else a SynthesisError naming the file.
    :class:`RandLabelsToImaged` checks the map it paints too, but after the random deformation, which drops labels
    that lie near the border (an unknown label at a corner passed 9 draws of 10), and a map with one axis too many or
    too few failed later without the file's name."""

    def __init__(self, keys: KeysCollection = "label", *, num_labels: int) -> None:
        super().__init__(keys)
        self.num_labels = check_int("num_labels", num_labels, low=2)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = tuple(d[key].shape)
            if len(shape) != 4 or shape[0] != 1:
                raise SynthesisError(
                    f"{_source(d, key)}: the label map must be one 3-D volume (1, X, Y, Z) after loading, got shape "
                    f"{shape}."
                )
            d[key] = _label_index(d, key, self.num_labels)  # checked, then int64: a cast before it made 1.5 a 1
        return d


class RandLabelsToImaged(RandomizableTransform, MapTransform):
    """``image = mu[label] + sigma[label] * n``, ``mu_l ~ U(mean_range)``, ``sigma_l ~ U(std_range)`` per label and
    draw, n ~ N(0, 1) per voxel (SynthSeg's generative model). Labels must be in ``0..num_labels - 1``.

    Args:
        label_key: the integer label map (1, *S) the image is generated from.
        image_key: where the image goes (created or replaced), on the label's grid and meta data.
        num_labels: how many generation labels the config knows; any other label value is a SynthesisError.
        mean_range, std_range: ranges of the per-label mean and standard deviation.
        background_labels: labels drawn as air (mean 0, no noise) with probability ``air_prob``; otherwise like
            any other label, so that the model also sees backgrounds that are not black.
    """

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        *,
        num_labels: int,
        mean_range: tuple[float, float] = (0.0, 1.0),
        std_range: tuple[float, float] = (0.0, 0.05),
        background_labels: Sequence[int] = (0,),
        air_prob: float = 0.5,
    ) -> None:
        MapTransform.__init__(self, [label_key])
        RandomizableTransform.__init__(self, prob=1.0)
        check_int("num_labels", num_labels)
        mean_range = check_interval("mean_range", mean_range, low=-math.inf)  # a scalar was a bare unpacking error
        std_range = check_interval("std_range", std_range)  # (0, inf) was an OverflowError at the first draw
        bad = [b for b in background_labels if not is_integer(b) or not 0 <= b < num_labels]
        if bad:  # 9 of 5 labels was an IndexError; -1 painted the last label (the brain) as air
            raise ValueError(f"background_labels must be labels in 0..{num_labels - 1} (num_labels), got {bad[0]!r}.")
        self.label_key, self.image_key, self.num_labels = label_key, image_key, num_labels
        self.mean_range, self.std_range = tuple(mean_range), tuple(std_range)
        self.background_labels, self.air_prob = [int(b) for b in background_labels], _probability("air_prob", air_prob)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        label, index = d[self.label_key], _label_index(d, self.label_key, self.num_labels)
        mean = torch.as_tensor(self.R.uniform(*self.mean_range, self.num_labels), dtype=torch.float32)
        std = torch.as_tensor(self.R.uniform(*self.std_range, self.num_labels), dtype=torch.float32)
        if self.R.rand() < self.air_prob:
            mean[self.background_labels], std[self.background_labels] = 0.0, 0.0
        noise = torch.as_tensor(self.R.standard_normal(index.shape), dtype=torch.float32)
        image = mean[index] + std[index] * noise  # (1, *S): a table lookup draws every label at once
        d[self.image_key] = (
            MetaTensor(image, meta=dict(getattr(label, "meta", {}))) if isinstance(label, MetaTensor) else image
        )
        return d


class RandSliceThicknessd(RandomizableTransform, MapTransform):
    """A thick-slice acquisition along a random axis: Gaussian slice profile (FWHM = thickness), sampling every
    ``thickness`` voxels, linear interpolation back to the grid. ``thickness_range`` is in voxels of the grid.

    ``spacing_key`` (optional) records what WiDiT's spacing conditioning reads: ``d[spacing_key]`` = (2N,) float32
    mm, the grid's spacing (from the first key's affine) then the acquisition's (the grid's, times the thickness
    along the thick axis; the grid's where no thick slices were drawn). Where ``d[spacing_key]`` holds a record already
    (:class:`~medwidit.data.transforms.RecordSpacingd`: a real scan's own acquisition, or the working grid recorded
    before a random affine rescaled the label map's), its grid and acquisition are kept, and the thick axis gets the
    larger of its own and the simulated slice spacing."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        *,
        prob: float = 0.5,
        thickness_range: tuple[float, float] = (1.0, 8.0),
        axes: Sequence[int] = (0, 1, 2),
        spacing_key: str | None = None,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=_probability("prob", prob))
        self.thickness_range = check_interval("thickness_range", thickness_range, low=1.0, unit=" in voxels")
        self.axes = _spatial_axes("RandSliceThicknessd", axes)
        self.spacing_key = spacing_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        known = None if self.spacing_key is None else d.get(self.spacing_key)  # a record made before, kept
        grid = None
        if self.spacing_key is not None:
            grid = self._grid_spacing(d[self.first_key(d)]) if known is None else known[: len(known) // 2]
        axis, thickness = None, 1.0
        spatial_dims = d[self.first_key(d)].ndim - 1
        if max(self.axes) >= spatial_dims:
            raise ValueError(f"RandSliceThicknessd axes {self.axes} must be spatial axes of a {spatial_dims}D image.")
        if self._do_transform:
            axis, thickness = int(self.R.choice(self.axes)), float(self.R.uniform(*self.thickness_range))
            for key in self.key_iterator(d):
                d[key] = thick_slices(d[key], axis, thickness)
            size = d[self.first_key(d)].shape[axis + 1]
            thickness = size / slice_count(size, thickness)  # the slice spacing the volume got
        if grid is not None:
            grid = torch.as_tensor(grid, dtype=torch.float32).clone()
            acquisition = grid.clone() if known is None else torch.as_tensor(known[len(grid) :], dtype=torch.float32)
            acquisition = acquisition.clone()
            if axis is not None:  # the thicker of the scan's own slices and the simulated ones
                acquisition[axis] = torch.maximum(acquisition[axis], grid[axis] * thickness)
            d[self.spacing_key] = torch.cat([grid, acquisition])
        return d

    def _grid_spacing(self, image) -> torch.Tensor:
        if not isinstance(image, MetaTensor):
            raise SynthesisError(
                f"RandSliceThicknessd(spacing_key={self.spacing_key!r}) needs a MetaTensor image (its affine gives "
                f"the grid spacing), got {type(image).__name__}; load images with LoadImaged."
            )
        return torch.as_tensor(image.pixdim, dtype=torch.float32)[: image.ndim - 1]


def slice_count(size: int, thickness: float) -> int:
    """The slices :func:`thick_slices` keeps of ``size`` voxels: ``size / thickness``, rounded, at least 1."""
    return max(1, round(size / thickness))


def thick_slices(image: torch.Tensor, axis: int, thickness: float) -> torch.Tensor:
    """(C, *S) -> (C, *S): profile along ``axis`` (0-based spatial), then :func:`slice_count` slices spaced
    ``S_axis / count`` voxels apart (cell centres) and back. The profile reads the edge slices beyond the faces: MONAI's
    filter pads with zeros, which on a crop of air at -1 put -0.58 on the faces, 8 slices deep; and slices through the
    first and last voxels (``align_corners``) spaced them (S - 1) / (n - 1) apart (7.75 voxels for 6-voxel slices of
    a 32-voxel crop)."""
    shape = list(image.shape[1:])
    sigmas = [0.0] * len(shape)
    sigmas[axis] = thickness / (2 * math.sqrt(2 * math.log(2)))  # FWHM -> sigma
    plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    blurred = gaussian_blur(plain.float(), sigmas)[None]  # (1, C, *S)
    slices = list(shape)
    slices[axis] = slice_count(shape[axis], thickness)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    low = F.interpolate(blurred, size=slices, mode=mode, align_corners=False)
    back = F.interpolate(low, size=shape, mode=mode, align_corners=False)[0]
    return MetaTensor(back, meta=dict(image.meta)) if isinstance(image, MetaTensor) else back


class RandFieldOfViewd(RandomizableTransform, MapTransform):
    """A field of view that ends inside the head: beyond a random plane at most ``max_fraction`` of an axis from
    its start or end, the image becomes ``air`` and the label ``background``."""

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        *,
        prob: float = 0.3,
        max_fraction: float = 0.3,
        axes: Sequence[int] = (0, 1, 2),
        air: float = 0.0,
        background: int = 0,
    ) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        RandomizableTransform.__init__(self, prob=_probability("prob", prob))
        if not is_finite_number(max_fraction) or not 0.0 < max_fraction < 1.0:  # a string: a bare TypeError
            raise ValueError(f"max_fraction must be in (0, 1), got {max_fraction!r}.")
        axes = _spatial_axes("RandFieldOfViewd", axes)
        self.image_key, self.label_key = image_key, label_key
        self.max_fraction, self.axes, self.air, self.background = max_fraction, axes, air, background

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        spatial_dims = d[self.image_key].ndim - 1  # checked on every call, not only on the draws that cut
        if max(self.axes) >= spatial_dims:
            raise ValueError(f"RandFieldOfViewd axes {self.axes} must be spatial axes of a {spatial_dims}D image.")
        if not self._do_transform:
            return d
        axis = int(self.R.choice(self.axes))
        size = d[self.image_key].shape[1 + axis]
        cut = max(1, int(self.R.uniform(0, self.max_fraction) * size))
        index = [slice(None)] * (d[self.image_key].ndim - 1)
        index[axis] = slice(size - cut, None) if self.R.rand() < 0.5 else slice(0, cut)
        for key, value in ((self.image_key, self.air), (self.label_key, self.background)):
            d[key] = d[key].clone()
            d[key][(slice(None), *index)] = value
        return d


class RandNeckExtensiond(RandomizableTransform, MapTransform):
    """A scan that goes on below the anatomy of a label map: the map continues past its inferior face (world -z,
    read from the affine) by a random ``length_mm``, copies of its last slice in which every ``relabel`` key becomes
    its value (e.g. brain structures -> a non-brain tissue: the brainstem's cross-section becomes a cord-like column
    that is not brain). Templates end a few mm below the cerebellum; real head scans go on into the neck, and a
    model that never saw tissue there calls it brain. Apply before the random affine, so the column is deformed too.
    """

    def __init__(
        self,
        label_key: str = "label",
        *,
        relabel: Mapping[int, int],
        prob: float = 0.5,
        length_mm: tuple[float, float] = (10.0, 80.0),
    ) -> None:
        MapTransform.__init__(self, [label_key])
        RandomizableTransform.__init__(self, prob=_probability("prob", prob))
        self.label_key, self.length_mm = label_key, check_interval("length_mm", length_mm, unit=" mm")
        self.relabel = {int(k): int(v) for k, v in dict(relabel).items()}

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = d[self.label_key]
        if not isinstance(label, MetaTensor):
            raise SynthesisError(
                f"RandNeckExtensiond needs a MetaTensor label map (its affine says where inferior is), got "
                f"{type(label).__name__}; load label maps with LoadImaged."
            )
        spatial = label.ndim - 1
        if spatial != 3:
            raise SynthesisError(
                f"{_source(d, self.label_key)}: RandNeckExtensiond needs a 3D label map, got {spatial}D."
            )
        direction = label.affine[2, :spatial].double()  # world z (superior) per step along each array axis
        axis = int(direction.abs().argmax())
        step_mm = float(torch.linalg.norm(label.affine[:spatial, axis].double()))
        slices = int(round(self.R.uniform(*self.length_mm) / step_mm))
        if slices == 0:
            return d
        low_end = bool(direction[axis] > 0)  # z grows with the index: the inferior face is index 0
        border = [0] * (2 * spatial)
        border[2 * axis + (0 if low_end else 1)] = slices
        extended = BorderPad(spatial_border=border, mode="replicate")(label)  # BorderPad moves the affine's origin
        index = [slice(None)] * spatial
        index[axis] = slice(0, slices) if low_end else slice(-slices, None)
        relabel = MapLabelValue(list(self.relabel), list(self.relabel.values()), dtype=extended.dtype)
        extended[(slice(None), *index)] = relabel(extended[(slice(None), *index)])
        d[self.label_key] = extended
        return d


class RandSubdivideLabelsd(RandomizableTransform, MapTransform):
    """Each of ``labels`` split into ``parts`` generation labels (each one or more random blobs), so that the
    generator paints each part with its own intensity (SynthStrip's non-brain: many classes of random shape, so a model
    cannot tell brain from the rest by the rest being a few flat regions). A head template's non-brain classes are
    a few intensity clusters, each one flat when painted; a scanner's scalp, muscle, marrow and neck are not.

    The blobs are the argmax over ``parts`` smooth random fields (standard normal on a coarse grid of one node per
    ``scale`` voxels, drawn per call from ``scale_range``, upsampled trilinearly), one partition of the volume that
    each label is cut by: part 0 keeps the label, part j
    of ``labels[i]`` becomes ``first_label + i * (parts - 1) + j - 1``. Apply after the spatial deformation and
    before :class:`RandLabelsToImaged`, whose ``num_labels`` must count the new labels. A label map that
    :class:`RandLabelsToImaged` would refuse with ``first_label`` labels is refused here, naming the file and the
    label; the background, label 0, is not cut (it is the air that is painted black half of the time).
    MONAI has no random partition of a label into shapes; its elastic and bias fields are the nearest, and neither
    relabels."""

    def __init__(
        self,
        label_key: str = "label",
        *,
        labels: Sequence[int],
        first_label: int,
        parts: int = 4,
        scale_range: tuple[float, float] = (4.0, 16.0),
        prob: float = 1.0,
    ) -> None:
        MapTransform.__init__(self, [label_key])
        RandomizableTransform.__init__(self, prob=_probability("prob", prob))
        check_int("first_label", first_label, low=1)
        labels = (
            list(labels) if isinstance(labels, (Sequence, np.ndarray)) and not isinstance(labels, str) else [labels]
        )
        bad = [v for v in labels if not is_integer(v) or not 1 <= v < first_label]
        if bad or len(set(labels)) != len(labels):  # label 0 is the air RandLabelsToImaged paints black
            raise ValueError(
                f"labels must be distinct generation labels in 1..{first_label - 1} (not the background 0), got "
                f"{bad[0] if bad else labels!r}."
            )
        self.label_key, self.labels, self.first_label = label_key, [int(v) for v in labels], int(first_label)
        self.parts = check_int("parts", parts, low=2)
        self.scale_range = check_interval("scale_range", scale_range, low=1.0, unit=" voxels")

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        label = d[self.label_key]
        _label_index(d, self.label_key, self.first_label)  # else the new labels' range would hide one it does not know
        if not self._do_transform or not self.labels:
            return d
        spatial = tuple(label.shape[1:])
        if len(spatial) not in (2, 3):
            raise SynthesisError(f"{_source(d, self.label_key)}: label maps must be 2D or 3D, got {len(spatial)}D.")
        scale = self.R.uniform(*self.scale_range)
        coarse = [max(2, math.ceil(n / scale) + 1) for n in spatial]
        mode = "trilinear" if len(spatial) == 3 else "bilinear"
        noise = torch.as_tensor(self.R.standard_normal((1, self.parts, *coarse)), dtype=torch.float32)
        part = F.interpolate(noise, size=spatial, mode=mode, align_corners=True)[0].argmax(0)  # (*S), one partition
        # a copy, never the caller's map; integer maps widened, since a uint8 map would wrap at 256
        out = label.clone() if label.is_floating_point() else label.to(torch.int64, copy=True)
        for i, value in enumerate(self.labels):
            where = (label[0] == value) & (part > 0)
            out[0][where] = (self.first_label + i * (self.parts - 1) - 1 + part[where]).to(out.dtype)
        d[self.label_key] = out
        return d


class _CoilFieldTransform(RandomizableTransform, MapTransform):
    """A random dictionary transform that draws a MONAI ``RandBiasField`` (degree 3, coefficients uniform in the
    range ``coeff_name`` names) from its own random stream, so that one seed draws the same field."""

    def __init__(self, keys: KeysCollection, prob: float, coeff_range, coeff_name: str) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=_probability("prob", prob))
        # an infinite coefficient made the air NaN
        self.bias_field = RandBiasField(coeff_range=check_interval(coeff_name, coeff_range), prob=1.0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.bias_field.set_random_state(state=self.R)  # one stream with the transform's own draws
        return self


class RandContrastRemapd(_CoilFieldTransform):
    """Another scanner's or sequence's contrast on a crop the pipeline has histogram-equalised onto [-1, 1] already:
    a random piecewise-linear intensity curve through ``num_control_points`` equally spaced knots whose values are
    drawn independently, so the curve need not be monotone (T2-like inversions included) but the floor, air, stays
    dark; then, with ``bias_prob``, a smooth coil field (MONAI's ``RandBiasField`` on the non-negative intensities,
    so air stays 0); then the histogram equalisation again, on the crop (inference equalises the whole volume).
    Real anatomy with a random contrast: what label-to-image synthesis gives, without painting a label map.
    The floor must still be air: run it before augmentations that move intensities (gain, shift, bias, noise). Every
    channel gets the same curve and field; a crop with one value only (all air) is left as it is."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        *,
        prob: float = 0.3,
        num_control_points: tuple[int, int] = (4, 8),
        bias_prob: float = 0.5,
        bias_coeff_range: tuple[float, float] = (0.1, 0.5),
    ) -> None:
        super().__init__(keys, prob, bias_coeff_range, "bias_coeff_range")
        knots = tuple(num_control_points) if isinstance(num_control_points, Sequence) else ()
        if len(knots) != 2 or not all(isinstance(n, int) for n in knots) or not 3 <= knots[0] <= knots[1]:
            raise ValueError(
                f"num_control_points must be integers (low, high) with 3 <= low <= high, got {num_control_points!r}."
            )
        if not 0.0 <= float(bias_prob) <= 1.0:
            raise ValueError(f"bias_prob must be in [0, 1], got {bias_prob}.")
        self.num_control_points, self.bias_prob = knots, float(bias_prob)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        knots = self.R.randint(self.num_control_points[0], self.num_control_points[1] + 1)
        values = np.concatenate([[0.0], self.R.uniform(0.05, 1.0, knots - 1)])  # the floor (air) stays dark
        with_bias = self.R.rand() < self.bias_prob
        for key in self.key_iterator(d):
            image = d[key]
            flat = torch.as_tensor(image).reshape(image.shape[0], -1)
            constant = flat.amax(dim=1) == flat.amin(dim=1)  # per channel: an all-air one would come back mid-grey
            if bool(constant.all()):
                continue
            level = np.interp((np.asarray(image, dtype=np.float32) + 1.0) / 2.0, np.linspace(0.0, 1.0, knots), values)
            level = torch.as_tensor(level, dtype=torch.float32)
            if with_bias:
                level = torch.as_tensor(self.bias_field(level), dtype=torch.float32)
            level = torch.as_tensor(equalise_channels(level))
            level[constant] = torch.as_tensor(image, dtype=torch.float32)[constant]  # left as they were
            if isinstance(image, MetaTensor):
                level = MetaTensor(level, meta=dict(image.meta), applied_operations=list(image.applied_operations))
            d[key] = level
        return d


class RandCoilFieldd(_CoilFieldTransform):
    """A receive coil's smooth multiplicative field on a real crop that the pipeline has intensity-normalised
    already, as it would be after the normalisation had seen it: MONAI's ``RandBiasField`` (degree 3, coefficients
    uniform in ``coeff_range``) multiplies the crop's values above its floor (air, the minimum, stays the floor), and
    the crop's own values are then handed back in the order of the product (each channel keeps its histogram). So
    tissue under a weak part of the field takes the values of darker tissue elsewhere, which is what the "histogram"
    equalisation of a scan with a coil field gives; a linear normalisation (a z-score, percentile scaling) would
    change the histogram instead, and its air need not be the minimum, so the data module allows it with the
    "histogram" mode only. A field applied after the normalisation, as ``intensity_prob``'s ``RandBiasFieldd`` is,
    also scales the air and keeps every region's rank in the crop. Every channel gets the same field; a channel with
    one value only (all air) is left as it is, one with a value that is not finite is an error. The floor must still
    be the crop's minimum: run it before the augmentations that move intensities (gain, shift, bias, noise)."""

    def __init__(
        self, keys: KeysCollection = "image", *, prob: float = 0.3, coeff_range: tuple[float, float] = (0.0, 0.8)
    ) -> None:
        super().__init__(keys, prob, coeff_range, "coeff_range")

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        field = None
        for key in self.key_iterator(d):
            image = d[key]
            values = torch.as_tensor(image, dtype=torch.float32)
            flat = values.reshape(values.shape[0], -1)
            if field is None:  # one field for every key and channel
                field = torch.as_tensor(self.bias_field(torch.ones_like(values[:1])), dtype=torch.float32)
            if not bool(torch.isfinite(flat).all()):  # a NaN sorted as the identity: the channel came back a ramp
                raise ValueError(f"RandCoilFieldd: {_source(d, key)} has values that are not finite (NaN or inf).")
            out = values.clone()
            for c in range(flat.shape[0]):
                low, high = flat[c].min(), flat[c].max()
                if low == high:
                    continue
                product = ((values[c] - low) * field[0]).reshape(-1)
                # stable: the floor's voxels (product 0) keep their places among themselves
                order = torch.argsort(product, stable=True)
                channel = torch.empty_like(product)
                channel[order] = torch.sort(flat[c]).values
                out[c] = channel.reshape(values.shape[1:])
            if isinstance(image, MetaTensor):
                out = MetaTensor(out, meta=dict(image.meta), applied_operations=list(image.applied_operations))
            d[key] = out
        return d


def synthesis_transforms(
    *,
    num_labels: int,
    target_labels: Sequence[int],
    image_key: str = "image",
    label_key: str = "label",
    rotate_degrees: float = ROTATE_DEGREES,
    scale_range: float = 0.15,
    thickness_range: tuple[float, float] = (1.0, 8.0),
    fov_prob: float = 0.3,
    elastic_prob: float = 0.0,
    neck_prob: float = 0.0,
    neck_length_mm: tuple[float, float] = (10.0, 80.0),
    neck_label: int | None = None,
    flip: bool = True,
    bias_coeff_range: tuple[float, float] = (0.0, 0.3),
    subdivide_labels: Sequence[int] = (),
    subdivide_parts: int = 4,
    subdivide_scale: tuple[float, float] = (4.0, 16.0),
    spacing_key: str | None = None,
) -> list:
    """The generator as a list of MONAI dictionary transforms for a training pipeline (``train.json`` can list it):
    deformed label map -> random image -> acquisition -> task labels.

    ``target_labels[l]`` is the task class of generation label ``l`` (e.g. every brain structure -> 1, scalp,
    skull, eyes, CSF outside the brain -> 0), applied last with MONAI's ``MapLabelValued``. The image comes out in
    [0, 1] (0-99.5th percentile scaling) before gamma and noise, ahead of the bundle's own intensity preprocessing.
    ``elastic_prob`` adds MONAI's dense elastic field (``Rand3DElasticd``); it is off by default because a dense
    field costs 14-23x an affine per crop on a CPU in MONAI, TorchIO and cornucopia alike (synth_speed.json).
    ``spacing_key`` records the grid and acquisition spacing for spacing conditioning (:class:`RandSliceThicknessd`).
    ``neck_prob`` extends the map below its inferior face by ``neck_length_mm`` (:class:`RandNeckExtensiond`), the
    target structures' cross-section relabelled ``neck_label`` (a generation label whose task class is 0).
    ``bias_coeff_range``: the coil field's ``RandBiasField`` coefficients (on half of the images), before the
    intensities are scaled.
    ``subdivide_labels`` split each of those generation labels into ``subdivide_parts`` random blobs of
    ``subdivide_scale`` voxels, painted apart (:class:`RandSubdivideLabelsd`), each keeping its label's task class.
    """
    if len(target_labels) != num_labels:
        raise ValueError(
            f"target_labels must give a class for each of the {num_labels} labels, got {len(target_labels)}."
        )
    if not all(is_integer(t) and t >= 0 for t in target_labels):  # -1 was written as a class, 1.5 became 1
        raise ValueError(f"target_labels must be task classes, ints >= 0, got {list(target_labels)}.")
    target_labels = [int(t) for t in target_labels]
    fov_prob, elastic_prob, neck_prob = (
        _probability(name, value)  # a negative one added its transform at probability 0; 1.7 became 1
        for name, value in (("fov_prob", fov_prob), ("elastic_prob", elastic_prob), ("neck_prob", neck_prob))
    )
    scale_range = check_range("scale_range", scale_range, 0, 1)  # 1.5 gave scales <= 0
    # checked here under the options' own names: the transforms' messages name their arguments (parts, scale_range,
    # length_mm), and scale_range is also another option of this function's
    rotate_degrees = check_range("rotate_degrees", rotate_degrees, 0, 180, closed_high=True)
    neck_length_mm = check_interval("neck_length_mm", neck_length_mm, unit=" mm")
    if neck_prob and (neck_label is None or not 0 <= neck_label < num_labels or target_labels[neck_label] != 0):
        raise ValueError(
            f"neck_prob {neck_prob} needs neck_label: a generation label in 0..{num_labels - 1} whose target class "
            f"is 0 (what the target structures become below the map), got {neck_label!r}."
        )
    angle = math.radians(rotate_degrees)
    keys = [image_key, label_key]
    # the working grid's spacing, recorded before the random affine rescales the label map's affine
    transforms = [CheckLabelMapd(label_key, num_labels=num_labels)]
    if spacing_key is not None:
        transforms.append(RecordSpacingd(label_key, spacing_key, painted=True))
    if neck_prob:
        relabel = {label: neck_label for label, target in enumerate(target_labels) if target}
        transforms.append(RandNeckExtensiond(label_key, relabel=relabel, prob=neck_prob, length_mm=neck_length_mm))
    if elastic_prob:
        elastic = Rand3DElasticd(label_key, (5, 7), (50, 150), prob=elastic_prob, mode="nearest")
        transforms.append(elastic)
    try:
        subdivide = RandSubdivideLabelsd(
            label_key,
            labels=subdivide_labels,
            first_label=num_labels,
            parts=subdivide_parts,
            scale_range=subdivide_scale,
        )
    except ValueError as e:  # the transform's own check, its arguments named as the user set them here
        names = {"labels": "subdivide_labels", "parts": "subdivide_parts", "scale_range": "subdivide_scale"}
        argument, _, rest = str(e).partition(" ")
        raise ValueError(f"{names.get(argument, argument)} {rest}") from None
    target_labels = [*target_labels, *(target_labels[v] for v in subdivide.labels for _ in range(1, subdivide.parts))]
    transforms += [
        RandAffined(
            label_key,
            prob=1.0,
            rotate_range=(angle,) * 3,
            scale_range=(scale_range,) * 3,
            mode="nearest",
            padding_mode="zeros",
        ),
        *([subdivide] if subdivide.labels else []),
        RandLabelsToImaged(label_key, image_key, num_labels=len(target_labels)),
        EdgePaddedd(  # partial volume; MONAI's filter pads with zeros, which darkened the faces of a grey background
            RandGaussianSmoothd(image_key, prob=0.5, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), sigma_z=(0.3, 1.0)),
            image_key,
            margin=4,
        ),
        RandSliceThicknessd(image_key, prob=0.5, thickness_range=thickness_range, spacing_key=spacing_key),
        RandBiasFieldd(image_key, prob=0.5, coeff_range=check_interval("bias_coeff_range", bias_coeff_range)),
        ScaleIntensityRangePercentilesd(image_key, lower=0.0, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        RandAdjustContrastd(image_key, prob=0.5, gamma=(0.5, 2.0)),
        RandGaussianNoised(image_key, prob=0.5, std=0.03),
        RandFieldOfViewd(image_key, label_key, prob=fov_prob),
    ]
    if check_bool("flip", flip):
        transforms.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
    transforms.append(
        MapLabelValued(label_key, list(range(len(target_labels))), [int(t) for t in target_labels], dtype=np.int64)
    )
    return transforms
