"""Synthetic training crops drawn from label maps, and their mixing with real crops (SynthSeg / SynthStrip).

A label map (e.g. ``data_lists/head_labels.json``: the whole head in generation labels) is loaded, oriented and
resampled to the working grid by nearest neighbour, then ``medwidit.data.synth.synthesis_transforms`` deforms it,
paints a random image from it and maps the generation labels to the task's classes; the image then goes through
the bundle's own intensity normalisation, exactly as a real image would, and is cropped like a real one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    Spacingd,
)
from torch.utils.data import WeightedRandomSampler

from medwidit.data.synth import SynthesisError, synthesis_transforms
from medwidit.data.transforms import check_preprocessing, intensity_transforms, pad_to_crop
from medwidit.utils import check_int, check_options, check_range, image_grid, label_values

logger = logging.getLogger(__name__)

__all__ = ["check_label_maps", "synthetic_train_transforms", "mixing_sampler", "check_synthesis", "check_synth_options"]


def check_label_maps(
    maps: list[dict],
    num_labels: int,
    target_labels: Sequence[int] | None = None,
    preprocessing: Mapping | None = None,
) -> None:
    """Before training starts: each map is one 3-D volume holding integer labels in 0..num_labels-1 and, when
    ``target_labels`` are given, a label of a task class other than 0, on the working grid it is resampled to where
    ``preprocessing`` gives a spacing (else in the file); the error names the file and the label (the generator would
    otherwise fail in a worker, minutes into training, or paint all-background crops)."""
    spacing = None if preprocessing is None else check_preprocessing(preprocessing)["spacing"]
    # from a review: a 1 mm map whose foreground vanished on the 2 mm grid passed a check of the file, then failed in
    # a DataLoader worker mid-training, reading "the label map is empty" of a file that is not
    load = None if spacing is None else Compose(_load_transforms(preprocessing))
    where = "" if spacing is None else f" on the working grid ({spacing} mm spacing)"
    for item in maps:
        values = _label_file_values(item, num_labels)
        kept = values if load is None else np.unique(np.asarray(load({"label": item["label"]})["label"]))
        lost = [int(v) for v in values if v > 0 and v not in kept]
        lost_note = f"; its labels {lost} are too small to keep a voxel when resampled" if lost else ""
        if kept.max(initial=0) == 0:
            raise SynthesisError(f"{item['label']}: the label map is empty{where} (every voxel is label 0{lost_note}).")
        if target_labels is not None and not any(target_labels[int(v)] for v in kept):
            raise SynthesisError(
                f"{item['label']}: none of its labels {[int(v) for v in kept]}{where} maps to a task class other than "
                f"0 through synth_target_labels {list(target_labels)}{lost_note}: every painted crop would be "
                "background."
            )
        if lost:  # the others are painted: a warning, not a stop (from a review, the docs promised one; said nothing)
            logger.warning(
                "%s: its labels %s are too small to keep a voxel%s: the generator never paints them.",
                item["label"],
                lost,
                where,
            )


def _label_file_values(item: Mapping, num_labels: int) -> np.ndarray:
    """One map file's distinct values, checked: one 3-D volume of integer labels in 0..num_labels-1."""
    shape = image_grid(item["label"])[0]  # trailing singleton axes dropped: (X, Y, Z, 1) is one volume
    if len(shape) != 3:  # the generator is 3-D: a slice or a 4-D map failed inside it, without the file's name
        raise SynthesisError(f"{item['label']}: the label map must be one 3-D volume, got shape {shape}.")
    values = label_values(item["label"])  # any format: load_label_maps refused those LoadImaged cannot read
    bad = values[~np.isfinite(values) | (values != np.round(values))]  # inf: int(inf) was a bare OverflowError
    if bad.size:
        raise SynthesisError(f"{item['label']}: the label map must hold integer labels (e.g. {bad[:1].tolist()}).")
    unknown = [int(v) for v in values if not 0 <= v < num_labels]
    if unknown:
        raise SynthesisError(
            f"{item['label']}: label {unknown[0]} is not one of the {num_labels} generation labels "
            f"(0..{num_labels - 1}) given by synth_num_labels."
        )
    return values


SET_BY_THE_DATA_MODULE = ("num_labels", "target_labels", "image_key", "label_key", "spacing_key")


def check_synth_options(options) -> dict:
    """``synth_options`` as a dict of :func:`~medwidit.data.synth.synthesis_transforms`' keyword arguments, less those
    the data module sets itself; anything else is a ValueError naming the key (a misspelt one failed inside
    ``trainer.fit`` with a TypeError that named no argument, and ``image_key`` broke the later steps)."""
    return (
        {}
        if options is None
        else check_options(synthesis_transforms, options, "synth_options", exclude=SET_BY_THE_DATA_MODULE)
    )


def check_synthesis(ratio: float, data_list, num_labels, target_labels, *, num_classes: int | None = None) -> float:
    """The mixing ratio in [0, 1]; a positive one needs the label maps and the generation -> task label table, whose
    task labels must be class indices (below ``num_classes`` where given)."""
    try:
        if isinstance(ratio, bool):  # True read as 1.0: every volume synthetic (from a review)
            raise TypeError
        ratio = float(ratio)
    except (TypeError, ValueError) as e:
        raise ValueError(f"synth_ratio must be a number in [0, 1], got {ratio!r}.") from e
    if target_labels is not None:
        if isinstance(target_labels, (str, bytes)) or not isinstance(target_labels, Sequence):
            raise ValueError(f"synth_target_labels must be a list of task labels, got {target_labels!r}.")
        top = num_classes if num_classes is not None else math.inf
        bad = [v for v in target_labels if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < top]
        if bad:
            expected = "0 or more" if num_classes is None else f"0..{num_classes - 1} (num_classes={num_classes})"
            raise ValueError(f"synth_target_labels must be task class indices {expected}, got {bad[0]!r}.")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"synth_ratio must be in [0, 1] (the fraction of synthetic training volumes), got {ratio}.")
    if ratio > 0:
        missing = [n for n, v in (("synth_data_list", data_list), ("synth_num_labels", num_labels),
                                  ("synth_target_labels", target_labels)) if v is None]  # fmt: skip
        if missing:
            raise ValueError(f"synth_ratio={ratio} needs {', '.join(missing)} (the label maps and their classes).")
        check_int("synth_num_labels", num_labels, low=2)  # "8" read as 8 labels against a table of 8 ("got 8")
        if len(target_labels) != num_labels:  # checked here, before the label maps' check reads the table
            raise ValueError(
                f"synth_target_labels must give a class for each of the {num_labels} generation labels "
                f"(synth_num_labels), got {len(target_labels)}."
            )
        if num_classes is not None and max(target_labels, default=0) < num_classes - 1:
            raise ValueError(
                f"synth_target_labels {list(target_labels)} reach classes up to {max(target_labels, default=0)} only, "
                f"but the task has num_classes={num_classes}: the painted volumes would teach that classes "
                f"{max(target_labels, default=0) + 1}..{num_classes - 1} never occur (with the shipped brain-only "
                "label maps, every brain voxel would be class 1). Map the generation labels onto the task's classes "
                "with --synth_target_labels, or train on the real volumes alone with --synth_ratio 0."
            )
    return ratio


def synthetic_train_transforms(
    preprocessing: Mapping,
    roi_size: Sequence[int],
    *,
    num_crops: int,
    num_labels: int,
    target_labels: Sequence[int],
    pos: float = 1.0,
    neg: float = 1.0,
    options: Mapping | None = None,
) -> list[MapTransform]:
    """Label map file -> ``num_crops`` synthetic (image, label) crops on the working grid, intensity-normalised
    like real images. ``options`` go to ``synthesis_transforms`` (thickness_range, fov_prob, elastic_prob, ...)."""
    preprocessing = check_preprocessing(preprocessing)
    load = _load_transforms(preprocessing)
    # no int64 cast here: the generator's first step checks the labels are integers, then casts (a cast before it
    # made 1.5 a 1)
    generate = synthesis_transforms(num_labels=num_labels, target_labels=target_labels, **dict(options or {}))
    normalise = [
        *intensity_transforms(preprocessing, "image"),
        EnsureTyped("image", dtype=torch.float32, track_meta=True),
    ]
    crop = [
        *pad_to_crop(preprocessing, roi_size),
        RandCropByPosNegLabeld(
            ["image", "label"],
            label_key="label",
            spatial_size=list(roi_size),
            pos=pos,
            neg=neg,
            num_samples=num_crops,
            image_key=None,
        ),
    ]
    return [*load, *generate, *normalise, *crop]


def _load_transforms(preprocessing: Mapping) -> list[MapTransform]:
    """Label map file -> the map on the working grid (oriented, resampled by nearest neighbour)."""
    preprocessing = check_preprocessing(preprocessing)
    load = [LoadImaged("label", image_only=True), EnsureChannelFirstd("label")]
    if preprocessing["orientation"] is not None:
        load.append(Orientationd("label", axcodes=preprocessing["orientation"], labels=None))
    if preprocessing["spacing"] is not None:
        load.append(Spacingd("label", pixdim=preprocessing["spacing"], mode="nearest"))
    return load


def mixing_sampler(real: int, synthetic: int, ratio: float, seed: int | None = None) -> WeightedRandomSampler:
    """A sampler over ``ConcatDataset([real, synthetic])`` that draws synthetic items with probability ``ratio``;
    an epoch is ``real + synthetic`` draws (with replacement). torch draws; only the weights are ours. A ratio
    outside [0, 1], or one that asks for volumes of a kind there are none of, is a ValueError (from a review: 1.5
    failed at the first draw without naming it, and a positive ratio over no synthetic volumes drew none)."""
    real, synthetic = check_int("real", real, low=0), check_int("synthetic", synthetic, low=0)
    ratio = check_range("ratio", ratio, 0.0, 1.0, closed_high=True)
    if (ratio > 0 and synthetic == 0) or (ratio < 1 and real == 0):
        raise ValueError(f"ratio {ratio} draws from both kinds, but there are {real} real and {synthetic} synthetic.")
    weights = np.concatenate(
        [np.full(real, (1.0 - ratio) / max(real, 1)), np.full(synthetic, ratio / max(synthetic, 1))]
    )
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights), real + synthetic, replacement=True, generator=generator)
