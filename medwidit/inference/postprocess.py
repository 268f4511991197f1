"""Label-map post-processing with MONAI transforms (``KeepLargestConnectedComponent``, ``FillHoles`` with the holes
of a class read as the background it alone encloses: :func:`fill_class_holes`), declared as
plain data in a bundle's ``inference.json`` (``label_postprocessing``) so that ``medwidit segment --bundle`` and
``python -m monai.bundle run`` apply the same steps, and the MONAI ``postprocessing`` chain of the bundle; and the
optional smoothing of the class probabilities on the model's grid before the argmax (``probability_smoothing``).

A spec is a list of steps, applied in order on the label map of the input's grid::

    [{"name": "keep_largest_component", "applied_labels": [1]}, {"name": "fill_holes", "applied_labels": [1]}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta
from monai.transforms import (
    AsDiscreted,
    Compose,
    FillHoles,
    FillHolesd,
    GaussianSmooth,
    Invertd,
    KeepLargestConnectedComponent,
    KeepLargestConnectedComponentd,
    Lambdad,
)
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_data_type, convert_to_dst_type, convert_to_tensor
from scipy import ndimage

from medwidit.utils import choose, is_finite_number, is_integer

from .options import read_inference_config

__all__ = [
    "LABEL_STEPS",
    "FillClassHoles",
    "FillClassHolesd",
    "apply_label_postprocessing",
    "bundle_label_postprocessing",
    "bundle_probability_smoothing",
    "check_label_postprocessing",
    "check_probability_smoothing",
    "fill_class_holes",
    "postprocessing_transforms",
    "run_label_steps",
    "smooth_probability",
]


def fill_class_holes(label_map: np.ndarray, applied_labels=None, connectivity: int | None = None) -> np.ndarray:
    """(*S) -> (*S): each applied class (None: every foreground class, in order) takes the background regions it
    alone encloses: regions of voxels not of that class that touch neither the grid's faces nor another class.
    By hand because MONAI's ``fill_holes`` fills every region the class encloses, other classes included (a class 2
    inside class 1 became class 1); on a map of one foreground class the two are the same (tested)."""
    out = np.array(label_map, copy=True)
    structure = ndimage.generate_binary_structure(out.ndim, connectivity or out.ndim)
    classes = sorted(set(np.unique(out).tolist()) - {0}) if applied_labels is None else list(applied_labels)
    for label in classes:
        others = out != label
        regions, count = ndimage.label(others, structure)
        if not count:
            continue
        faces = [regions.take(i, axis=a) for a in range(out.ndim) for i in (0, -1)]
        kept = np.union1d(np.concatenate([f.ravel() for f in faces]), regions[others & (out != 0)])  # open or mixed
        out[others & ~np.isin(regions, kept)] = label
    return out


class FillClassHoles(FillHoles):
    """MONAI's ``FillHoles`` (its options and its one-hot path) whose label-map path is :func:`fill_class_holes`."""

    def __call__(self, img):
        if np.shape(img)[0] != 1:  # one-hot channels: MONAI's, a class per channel
            return super().__call__(img)
        img = convert_to_tensor(img, track_meta=get_track_meta())
        labels, *_ = convert_data_type(img, np.ndarray)
        out, *_ = convert_to_dst_type(fill_class_holes(labels[0], self.applied_labels, self.connectivity)[None], img)
        return out


class FillClassHolesd(FillHolesd):
    """:class:`FillClassHoles` on ``keys``: the bundle chain's step, so ``monai.bundle run`` fills as the CLI does."""

    def __init__(self, keys, applied_labels=None, connectivity: int | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, applied_labels, connectivity, allow_missing_keys)
        self.converter = FillClassHoles(applied_labels=applied_labels, connectivity=connectivity)


# step name -> (array transform, dictionary transform, the options it takes besides applied_labels)
LABEL_STEPS = {
    "keep_largest_component": (KeepLargestConnectedComponent, KeepLargestConnectedComponentd, {"connectivity"}),
    "fill_holes": (FillClassHoles, FillClassHolesd, {"connectivity"}),
}


def check_label_postprocessing(
    spec: Sequence[Mapping] | None, source: str = "label_postprocessing", num_classes: int | None = None
) -> list[dict]:
    """Validate a spec -> a list of ``{"name", "applied_labels", ...}`` (ValueError naming ``source`` and the step);
    with ``num_classes``, applied labels must be foreground classes below it (from a review: a class the model lacks,
    or an empty list, was accepted and MONAI did nothing, where ``expected_volume_ml`` refuses the same class)."""
    if spec is None:
        return []
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ValueError(f"{source} must be a list of steps like {{'name': 'fill_holes'}}, got {spec!r}.")
    steps = []
    for i, step in enumerate(spec):
        if not isinstance(step, Mapping) or "name" not in step:
            raise ValueError(f"{source}[{i}] must be an object with a 'name', got {step!r}.")
        name = choose(f"{source}[{i}]", step["name"], tuple(LABEL_STEPS))  # a tuple: the name back, not a value
        unknown = set(step) - {"name", "applied_labels"} - LABEL_STEPS[name][2]
        if unknown:
            raise ValueError(f"{source}[{i}] ({name}) has unknown option(s) {sorted(unknown)}.")
        labels = step.get("applied_labels")
        if isinstance(labels, int) and not isinstance(labels, bool):
            labels = [labels]  # one label, as MONAI takes it
        if labels is not None and (
            not isinstance(labels, Sequence)
            or isinstance(labels, str)
            or not labels
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in labels)
            or (num_classes is not None and max(labels) >= num_classes)
        ):
            classes = "ints > 0" if num_classes is None else f"1 to {num_classes - 1}"
            raise ValueError(
                f"{source}[{i}] ({name}): applied_labels must be a non-empty list of the model's foreground classes "
                f"({classes}), or null for all of them, got {step.get('applied_labels')!r}."
            )
        connectivity = step.get("connectivity")
        if connectivity is not None and not (is_integer(connectivity) and 1 <= connectivity <= 3):
            raise ValueError(
                f"{source}[{i}] ({name}): connectivity must be null or the orthogonal hops of a neighbour, 1 to the "
                f"grid's axes (at most 3), got {connectivity!r}."
            )
        steps.append({**step, "name": name} if labels is None else {**step, "name": name, "applied_labels": labels})
    return steps


def _arguments(step: Mapping) -> dict:
    return {k: v for k, v in step.items() if k != "name"}


def apply_label_postprocessing(label_map: np.ndarray, spec: Sequence[Mapping]) -> np.ndarray:
    """Apply the spec's MONAI array transforms (checked: ``check_label_postprocessing``) to a label map (*S) -> (*S)
    of the same dtype, within the labels' bounding box. Both steps only remove or fill labelled voxels' components
    inside it, and every background voxel on its faces lies next to the outside (or on the grid's face), so it is
    open there as in the whole grid: the result is the whole grid's (tested). The steps label every voxel they are
    given (MONAI's fill, which dilated to convergence, took 13 s of gpu.py's 512x512x300 volume on the H200
    machine's host)."""
    spec = check_label_postprocessing(spec)
    if not spec:
        return label_map
    for step in spec:
        if (step.get("connectivity") or 1) > np.ndim(label_map):  # MONAI's error, before an empty map skips the steps
            raise ValueError(
                f"{step['name']}: connectivity {step['connectivity']} exceeds the map's {np.ndim(label_map)} axes."
            )
    start, end = generate_spatial_bounding_box((np.asarray(label_map) != 0)[None])
    if not any(end):  # no labels: nothing to keep or fill
        return np.array(label_map, copy=True)
    if not any(start) and tuple(end) == np.shape(label_map):
        return run_label_steps(label_map, spec)  # the box is the grid
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, end, strict=True))
    out = np.array(label_map, copy=True)
    out[box] = run_label_steps(out[box], spec)
    return out


def run_label_steps(label_map: np.ndarray, spec: Sequence[Mapping]) -> np.ndarray:
    """The spec's MONAI array transforms over all of ``label_map`` (*S) -> a new (*S) of its dtype."""
    array = np.asarray(label_map)  # torch has no uint16/uint32 fill and no big-endian arrays: native int64 labels
    work = array.astype(np.int64) if array.dtype.kind in "ui" else array.astype(array.dtype.newbyteorder("="))
    labels = torch.from_numpy(np.ascontiguousarray(work))[None]  # (1, *S), a copy: MONAI's steps write in place
    for step in spec:
        labels = LABEL_STEPS[step["name"]][0](**_arguments(step))(labels)
    return np.asarray(labels[0], dtype=label_map.dtype)


def check_probability_smoothing(value, source: str = "probability_smoothing") -> float:
    """A Gaussian's sigma in voxels of the model's grid, a finite number >= 0 (None or 0: no smoothing) -> float;
    ValueError naming ``source``."""
    if value is None:
        return 0.0
    if not is_finite_number(value) or value < 0:
        raise ValueError(
            f"{source} must be a Gaussian's sigma in voxels of the model's grid, a finite number >= 0 (0: none), got "
            f"{value!r}."
        )
    return float(value)


def bundle_probability_smoothing(bundle_dir) -> float:
    """The checked ``probability_smoothing`` of a bundle's ``configs/inference.json`` (0.0 where it has none)."""
    path, config = read_inference_config(bundle_dir)
    return check_probability_smoothing(config.get("probability_smoothing"), f"{path}: probability_smoothing")


def smooth_probability(probability: torch.Tensor, sigma: float) -> torch.Tensor:
    """Class probabilities (K, *S) on the model's grid, each class smoothed by a Gaussian of ``sigma`` voxels (MONAI
    ``GaussianSmooth``) and renormalised to sum to 1 over the classes -> (K, *S); the input itself where ``sigma`` is 0.

    A patch-token network writes each p^3 block of voxels with one linear map, so its probabilities change from block
    to block and their argmax follows the patch grid in steps; a Gaussian of a fraction of the patch lets the argmax
    cross between the blocks. GaussianSmooth pads with zeros, which scales every class alike at a voxel (the classes
    sum to 1 everywhere), so the renormalisation makes it the kernel's mean over the voxels inside the grid: a uniform
    map stays uniform, at the grid's faces too."""
    sigma = check_probability_smoothing(sigma, "sigma")
    if sigma == 0:
        return probability
    smoothed = GaussianSmooth(sigma=sigma)(probability.float())
    if isinstance(smoothed, MetaTensor) and not isinstance(probability, MetaTensor):  # MONAI's output tracks meta
        smoothed = smoothed.as_tensor()
    return smoothed / smoothed.sum(0, keepdim=True).clamp_min(1e-12)


def postprocessing_transforms(
    spec: Sequence[Mapping] | None,
    *,
    key: str = "pred",
    preprocessing: Compose | None = None,
    image_key: str = "image",
    probability_smoothing: float = 0.0,
) -> Compose:
    """MONAI dictionary transforms for a bundle's ``postprocessing``: [the probabilities smoothed on the model's grid
    (``smooth_probability``, where ``probability_smoothing`` > 0),] [``Invertd`` onto the input grid (linear, when
    ``preprocessing`` is given),] ``AsDiscreted(argmax)``, then the spec's steps -- what the predictor does."""
    sigma = check_probability_smoothing(probability_smoothing)
    transforms = [] if sigma == 0 else [Lambdad(key, partial(smooth_probability, sigma=sigma))]
    if preprocessing is not None:
        transforms.append(Invertd(key, transform=preprocessing, orig_keys=image_key, nearest_interp=False))
    transforms.append(AsDiscreted(key, argmax=True))
    for step in check_label_postprocessing(spec):
        transforms.append(LABEL_STEPS[step["name"]][1](key, **_arguments(step)))
    return Compose(transforms)


def bundle_label_postprocessing(bundle_dir, num_classes: int | None = None) -> list[dict]:
    """The checked ``label_postprocessing`` of a bundle's ``configs/inference.json`` ([] where it has none), its
    labels below ``num_classes`` where given (the error then names the file)."""
    path, config = read_inference_config(bundle_dir)
    return check_label_postprocessing(config.get("label_postprocessing"), f"{path}: label_postprocessing", num_classes)
