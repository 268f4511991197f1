"""LightningDataModule over decathlon-style data lists and MONAI dictionary transforms.

Training crops come from the ONE shared pre-transform definition (`preprocessing_transforms`: load, channel first,
orientation, spacing, intensity) followed by a foreground crop, `RandCropByPosNegLabeld` and augmentation;
validation sees whole volumes through the same pre-transforms and nothing else, as inference will.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, load_decathlon_datalist
from monai.data.utils import json_hashing, pickle_hashing
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImage,
    MapTransform,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
)
from torch.utils.data import ConcatDataset

from medwidit.data.synth import ROTATE_DEGREES as SYNTH_ROTATE_DEGREES
from medwidit.data.synth import RandCoilFieldd, RandContrastRemapd, RandSliceThicknessd
from medwidit.data.transforms import (
    INTENSITY_MODES,
    EdgePaddedd,
    check_preprocessing,
    pad_to_crop,
    preprocessing_transforms,
)
from medwidit.utils import (
    check_bool,
    check_int,
    check_interval,
    check_range,
    choose,
    image_grid,
    is_finite_number,
    label_values,
    voxel_reorder,
)

from .synthetic import (
    check_label_maps,
    check_synth_options,
    check_synthesis,
    mixing_sampler,
    synthetic_train_transforms,
)

logger = logging.getLogger(__name__)
ANISOTROPY = 1.5  # a spacing ratio above which rotating voxel indices visibly shears the anatomy (10 deg: ~9%)

CACHE_MODES = ("memory", "disk", "none")
KEYS = ("image", "label")


def _read_split(data_list: str | os.PathLike, key: str, base_dir, argument: str) -> tuple[Path, list[dict]]:
    """MONAI's reading of one split (image and label paths resolved against ``base_dir``), errors naming the list."""
    data_list = Path(data_list)
    if data_list.is_dir():  # from a review: a folder read "does not exist"
        raise ValueError(
            f"{argument} {str(data_list)!r} is a folder; give a JSON data list (a file with a {key!r} list of "
            "entries, as in data_lists/)."
        )
    if not data_list.is_file():
        raise FileNotFoundError(f"{argument} {str(data_list)!r} does not exist.")
    try:
        listing = json.loads(data_list.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # a JSONDecodeError is a ValueError: not "no split"
        raise ValueError(f"{argument} {str(data_list)!r} is not valid JSON ({e}).") from e
    split = listing.get(key) if isinstance(listing, dict) else None
    if isinstance(split, list) and not all(isinstance(item, dict) for item in split):
        raise ValueError(
            f"{argument} {str(data_list)!r}: split {key!r} must be a list of objects like "
            f'{{"image": "...", "label": "..."}}, got {next(i for i in split if not isinstance(i, dict))!r}.'
        )
    try:
        items = load_decathlon_datalist(data_list, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    except ValueError as e:  # MONAI raises ValueError for a missing key (a review: a synth_data_list's named train_key)
        raise ValueError(
            f"{argument} {str(data_list)!r} has no split {key!r} ({e}); add one "
            + (
                "(synth_key selects the split of label maps: 'training' by default)"
                if argument == "synth_data_list"
                else "(the bundle's training reads its train_key and val_key splits: 'training' and 'validation' by "
                "default)"
            )
        ) from e
    except TypeError as e:  # a split that is not a list
        raise ValueError(f"{argument} {str(data_list)!r}: split {key!r} must be a list of objects ({e}).") from e
    if not items:
        raise ValueError(f"{argument} {str(data_list)!r} has an empty split {key!r}.")
    return data_list, items


@functools.cache
def _monai_readers() -> tuple:
    """The readers MONAI's ``LoadImage`` has here (built once, not per file checked)."""
    return tuple(LoadImage(image_only=True).readers)


def _check_exists(argument: str, data_list: Path, where: str, name: str, path) -> None:
    """The file exists, and MONAI's ``LoadImage`` here, which training loads it with, has a reader for its format."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{argument} {str(data_list)!r}, {where}: {name} must be one file path, got {path!r}.")
    if not os.path.exists(path):
        hint = (
            " (its paths are relative to --dataset_dir, else to the list's own folder; to train without painted "
            "volumes pass --synth_ratio 0, or give a synth_data_list of your label maps)"
            if argument == "synth_data_list"
            else ""
        )
        error = FileNotFoundError(
            f"{argument} {str(data_list)!r}, {where} names {name} file {str(path)!r}, which does not exist{hint}."
        )
        error.data_list, error.missing = data_list, path  # whose file, which: check_training_data's hints
        raise error
    readers = _monai_readers()
    if not os.path.isdir(path) and not any(reader.verify_suffix(str(path)) for reader in readers):
        raise ValueError(
            f"{argument} {str(data_list)!r}, {where}: {name} {str(path)!r}: MONAI's image loader has no reader for "
            f"this format here ({', '.join(type(r).__name__ for r in readers)}); convert it to NIfTI, or install "
            "itk for NRRD and MHA."
        )


def load_data_list(
    data_list: str | os.PathLike,
    key: str,
    base_dir: str | os.PathLike | None = None,
    spatial_dims: int = 3,
    *,
    num_classes: int | None = None,
    num_modalities: int | None = None,
    grids: dict | None = None,
    reoriented: bool = False,
) -> list[dict]:
    """Read one split of a decathlon-style data list and check that every file it names exists, that each label
    lies on its image's grid (from the headers) and holds whole class indices (in 0..``num_classes``-1 where given),
    and that each image has ``num_modalities`` channels where given. ``reoriented``: the pipeline reorients image and
    label alike (``preprocessing["orientation"]``), so a label on its image's grid with the voxels stored in another
    order (LAS against RAS) fits too.

    ``grids``, where given, receives each image's ``image_grid`` (shape, affine) by its path, as read for the checks.

    Raises FileNotFoundError naming the data list, the entry and the missing file, or ValueError naming the label
    whose grid or values are wrong, so that a bad list fails before any training starts (not hours later when a
    worker first loads the file; a label on another grid would otherwise be cropped beside the wrong voxels, and a
    fractional one, e.g. resampled linearly, cast to background).
    """
    data_list, items = _read_split(data_list, key, base_dir, "data_list")
    for index, item in enumerate(items):
        for name in KEYS:
            if name not in item:
                raise ValueError(f"data_list {str(data_list)!r}, {key}[{index}] has no {name!r} entry: {item}.")
            _check_exists("data_list", data_list, f"{key}[{index}]", name, item[name])
        where = ("data_list", data_list, f"{key}[{index}]")
        image_geometry = image_grid(item["image"], spatial_dims)
        if len(image_geometry[0]) < spatial_dims:  # a 2-D slice in a 3-D task failed in MONAI's padding, unnamed
            raise ValueError(
                f"data_list {str(data_list)!r}, {key}[{index}]: image {str(item['image'])!r} has "
                f"{len(image_geometry[0])} axes {image_geometry[0]} where the task's images have {spatial_dims} "
                "(roi_size)."
            )
        if grids is not None:
            grids[str(item["image"])] = image_geometry
        _check_same_grid(where, item["image"], image_geometry, item["label"], spatial_dims, reordered=reoriented)
        channels = int(np.prod(image_geometry[0][spatial_dims:], dtype=np.int64))
        if num_modalities is not None and channels != num_modalities:
            raise ValueError(
                f"data_list {str(data_list)!r}, {key}[{index}]: image {str(item['image'])!r} has {channels} "
                f"channel(s) where preprocessing['num_modalities'] is {num_modalities}."
            )
        _check_label_values(where, item["label"], num_classes)
    return items


def check_label_file(where: tuple, image, label, num_classes: int | None, spatial_dims: int = 3) -> None:
    """A label to score a prediction of ``image`` against (evaluate.json): on the image's grid, its voxels in any
    order (the prediction keeps the image's grid, and the scoring reorders such a label), holding class indices in
    0..``num_classes``-1; else a ValueError naming it. ``where`` = (argument, data list, entry)."""
    _check_same_grid(where, image, image_grid(image, spatial_dims), label, spatial_dims, reordered=True, axes_from=None)
    _check_label_values(where, label, num_classes)


def _check_label_values(where: tuple, label, num_classes: int | None) -> None:
    """ValueError unless ``label`` holds whole class indices >= 0 (below ``num_classes`` where given)."""
    argument, data_list, entry = where
    values = label_values(label)
    start = f"{argument} {str(data_list)!r}, {entry}: label {str(label)!r}"
    fractional = values[~np.isfinite(values) | (values != np.round(values))]  # inf: int(inf) was an OverflowError
    if fractional.size:
        raise ValueError(
            f"{start} holds non-integer values (e.g. {fractional[:3].tolist()}); a label map holds whole class "
            "indices (resample labels with nearest neighbour, not linear interpolation)."
        )
    outside = values[(values < 0) | (values >= (num_classes if num_classes is not None else np.inf))]
    if outside.size:
        expected = "0 or more" if num_classes is None else f"0..{num_classes - 1} (num_classes={num_classes})"
        raise ValueError(
            f"{start} holds {[int(v) for v in outside[:8]]}, outside the class indices {expected}; map its values "
            "to class indices first (e.g. 255 -> 1)."
        )
    if values.max(initial=0) == 0:  # a case without the structure is data (a lesion task's healthy scan), not an
        # error; from a review: only MONAI's crop sampler said so, naming no file
        logger.warning("%s holds only background (0): every crop of it is background.", start)


MAX_CHANNELS = 8  # a trailing axis this long or shorter reads as channels (modalities, one-hot classes), not space


def _check_same_grid(
    where: tuple,
    image,
    image_geometry: tuple,
    label,
    spatial_dims: int,
    atol: float = 1e-3,
    *,
    reordered=False,
    axes_from: str | None = "roi_size",
) -> None:
    """ValueError unless ``label`` has the spatial shape (``spatial_dims`` axes; the image may add channels) and,
    within ``atol`` mm, the affine of ``image`` (whose ``image_grid`` the caller read once); with ``reordered`` (the
    pipeline reorients image and label alike, or never reads the image), also the image's grid with its voxels
    stored in another order. ``where`` = (argument, data list, entry) for the message; ``axes_from``: the option
    that sets ``spatial_dims`` (None where none does)."""
    argument, data_list, entry = where
    (image_shape, image_affine), (label_shape, label_affine) = image_geometry, image_grid(label, spatial_dims)
    start = f"{argument} {str(data_list)!r}, {entry}: label {str(label)!r}"
    extra = label_shape[spatial_dims:]
    # from a review: 3-D data under a 2-value roi_size read "resample the label onto its image"; an axis as long as a
    # spatial one, in image and label alike, is the task's axis count (roi_size's length), not a channel
    if extra and axes_from and tuple(image_shape) == tuple(label_shape) and min(extra) > MAX_CHANNELS:
        raise ValueError(
            f"{start} and its image both have {len(label_shape)} axes {label_shape} where {axes_from} has "
            f"{spatial_dims} values: give {axes_from} one value per axis of the images."
        )
    if extra and max(extra) <= MAX_CHANNELS:  # (8, 8, 8, 2): one-hot or per-class maps
        raise ValueError(
            f"{start} has {len(label_shape)} axes {label_shape} where the task's images have {spatial_dims} spatial "
            "axes: a label map holds one class index per voxel, with no channel axis (take the argmax of one-hot or "
            "per-class maps)."
        )
    image_shape = image_shape[:spatial_dims]  # a channel axis after the spatial ones is the image's own
    comparable = image_affine is not None and label_affine is not None  # pictures (PNG, ...) have no world grid
    if image_shape == label_shape and (not comparable or np.allclose(image_affine, label_affine, rtol=0, atol=atol)):
        return
    same_lattice = comparable and voxel_reorder(image_shape, image_affine, label_shape, label_affine, atol) is not None
    if same_lattice and reordered:
        return
    if len(label_shape) != spatial_dims:
        problem = f"has {len(label_shape)} axes {label_shape} where the task's images have {spatial_dims}"
    elif same_lattice:
        problem = (
            f"is the grid of image {str(image)!r} with its voxels in another order, and preprocessing['orientation'] "
            "is null (nothing reorients them alike); set an orientation (e.g. 'RAS') or reorient the label"
        )
    else:

        def grid(shape, affine) -> str:
            return f"shape {shape}, affine {None if affine is None else np.round(affine, 3).tolist()}"

        problem = f"({grid(label_shape, label_affine)}) is not on the grid of image {str(image)!r} "
        problem += f"({grid(image_shape, image_affine)})"
    if not same_lattice:  # one lattice needs reorienting, not resampling
        problem += "; resample the label onto its image (nearest neighbour)"
        if len({str(f).lower().endswith((".nii", ".nii.gz")) for f in (image, label)}) > 1:
            problem += "; a NIfTI's sform and qform may disagree (nibabel reads the sform, ITK the qform)"
    raise ValueError(f"{argument} {str(data_list)!r}, {entry}: label {str(label)!r} {problem}.")


def load_label_maps(data_list: str | os.PathLike, key: str, base_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every label map of one split of a data list for synthesis: each entry whose name ends in ``label``
    (``label``, ``neuromorphometrics_label``, ...) is its own item ``{"label": path}``; missing files are errors, and
    so is a map off the grid of the item's ``image`` where it names one (the generator paints on the map's own grid,
    but a map that does not fit its scan is a broken list)."""
    # absolute, so that what MONAI resolved reads as resolved: a relative base_dir ("data") made "data/data/x.nii.gz"
    base = Path(base_dir or Path(data_list).parent).absolute()
    data_list, items = _read_split(data_list, key, base, "synth_data_list")
    maps = []
    for index, item in enumerate(items):
        names = [name for name in item if name.endswith("label")]
        if not names:
            raise ValueError(f"synth_data_list {str(data_list)!r}, {key}[{index}] names no label map: {item}.")
        for name in names:  # MONAI resolved "label" (and other maps it found) against base; the rest here
            path = item[name]
            if isinstance(path, (str, os.PathLike)) and not os.path.isabs(path):  # else _check_exists names a non-path
                path = base / path
            _check_exists("synth_data_list", data_list, f"{key}[{index}]", name, path)
            if "image" in item:  # MONAI resolved it against base_dir; its header is read once for all its maps
                if name == names[0]:
                    _check_exists("synth_data_list", data_list, f"{key}[{index}]", "image", item["image"])
                    geometry = image_grid(item["image"])
                where = ("synth_data_list", data_list, f"{key}[{index}] {name}")
                _check_same_grid(where, item["image"], geometry, path, 3, reordered=True)  # the image is not read
            maps.append({"label": str(path)})
    return maps


def _item_key(item: Mapping) -> bytes:
    """``PersistentDataset``'s key of one item: its entries and, for each that names a file, the file's size and
    modification time. MONAI's default hashes the entries alone, so a label corrected in place was read back from
    the cache as it was before, --overwrite_run or not (from a review)."""
    stamps = {}
    for key, value in sorted(item.items()):
        for i, path in enumerate(value if isinstance(value, (list, tuple)) else [value]):  # modalities' lists too
            if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
                stat = os.stat(path)
                stamps[f"{key}[{i}]"] = [stat.st_size, stat.st_mtime_ns]
    return pickle_hashing({**item, "_files": stamps})


class SegmentationDataModule(L.LightningDataModule):
    """Training crops and whole validation volumes from a decathlon-style data list.

    Args:
        data_list: JSON data list (`{"training": [{"image": ..., "label": ...}], "validation": [...]}`).
        preprocessing: the shared pre-transform settings (see `medwidit.data.transforms.preprocessing_transforms`);
            the same dict goes into the exported checkpoint so that inference preprocesses identically.
        roi_size: training crop size per spatial axis (2 or 3 axes).
        dataset_dir: folder that relative paths in the list refer to; default the data list's own folder.
        train_key, val_key: the data list's split names.
        batch_size: volumes per training batch; each gives `num_crops` crops, so a batch holds
            `batch_size * num_crops` crops.
        num_crops, pos, neg: `RandCropByPosNegLabeld` settings (crops per volume, its `num_samples`;
            foreground/background ratio).
        foreground_margin: margin in voxels of the crop to the image's foreground (what is above the background
            level of the intensity mode: 0 for z-scores, -1 for the [-1, 1] modes) before patches are cropped;
            None disables it.
        flip_prob, rotate_prob, rotate_degrees, zoom_prob, intensity_prob: augmentation (flip per axis, small
            rotations, zoom 0.85-1.15, intensity scale by up to 10 % and shift by up to 0.1, gamma 0.7-1.5, bias
            field, Gaussian noise, smoothing or sharpening); a probability of 0 removes the transform.
        cache: "memory" (`CacheDataset`), "disk" (`PersistentDataset` in `cache_dir`) or "none".
        cache_rate: fraction of volumes kept in memory with cache="memory".
        num_workers: DataLoader workers (and CacheDataset's loading threads).
        max_val_volumes: validate on the first N validation volumes only (sampling whole volumes is slow).
        synth_ratio: fraction of training volumes drawn synthetic (SynthSeg-style images painted from label maps;
            ``medwidit.training.synthetic``): 0 trains on real images only, 1 on synthetic images only.
        synth_data_list, synth_key: the label maps (every ``*label`` entry of the split is one map), e.g.
            ``data_lists/head_labels.json``; relative paths resolve against ``dataset_dir`` as for ``data_list``.
        synth_num_labels, synth_target_labels: generation labels 0..n-1 and the task class of each.
        synth_options: keyword arguments of ``medwidit.data.synth.synthesis_transforms`` (thickness_range, ...).
        thickness_prob, thickness_range: thick-slice acquisitions simulated on real training crops
            (``medwidit.data.synth.RandSliceThicknessd``: along a random axis, ``thickness_range`` in voxels of the
            working grid); probability 0 (the default) removes it.
        contrast_prob: another sequence's contrast on real training crops (``medwidit.data.synth.RandContrastRemapd``:
            a random, not necessarily monotone intensity curve, a coil field on half of them, then the histogram
            equalisation again); needs the "histogram" intensity mode; probability 0 (the default) removes it.
        coil_prob, coil_coeff_range: a coil field on real training crops as the scanner would have had it, in front
            of the intensity normalisation (``medwidit.data.synth.RandCoilFieldd``: MONAI's ``RandBiasField`` with
            these coefficients, then the crop's own values handed back in the order of the product); needs the
            "histogram" intensity mode; probability 0 (the default) removes it. ``intensity_prob``'s bias field
            multiplies the normalised values instead.
        spacing_conditioning: every item (training crops, real and synthetic, and validation volumes) carries
            ``"spacing"`` (2N,) mm: the working grid's spacing, then the acquisition's per axis (the scan's own, or
            the simulated slice thickness), for a network with ``spacing_conditioning=True`` (WiDiT).
        num_classes: the task's classes (the bundle's ``num_classes``): every label of the data lists must lie in
            0..num_classes-1, and so must ``synth_target_labels``, checked at setup; None checks whole indices >= 0.
    """

    def __init__(
        self,
        *,
        data_list: str | os.PathLike,
        preprocessing: dict,
        roi_size: Sequence[int],
        dataset_dir: str | os.PathLike | None = None,
        train_key: str = "training",
        val_key: str = "validation",
        batch_size: int = 2,
        num_crops: int = 2,
        pos: float = 1.0,
        neg: float = 1.0,
        foreground_margin: int | None = 8,
        flip_prob: float = 0.5,
        rotate_prob: float = 0.2,
        zoom_prob: float = 0.2,
        rotate_degrees: float = 10.0,
        intensity_prob: float = 0.3,
        cache: str = "memory",
        cache_dir: str | os.PathLike | None = None,
        cache_rate: float = 1.0,
        num_workers: int = 2,
        max_val_volumes: int | None = None,
        synth_ratio: float = 0.0,
        synth_data_list: str | os.PathLike | None = None,
        synth_key: str = "training",
        synth_num_labels: int | None = None,
        synth_target_labels: Sequence[int] | None = None,
        synth_options: dict | None = None,
        thickness_prob: float = 0.0,
        thickness_range: Sequence[float] = (1.0, 4.0),
        contrast_prob: float = 0.0,
        coil_prob: float = 0.0,
        coil_coeff_range: Sequence[float] = (0.0, 0.8),
        spacing_conditioning: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(roi_size, (str, bytes)) or not isinstance(roi_size, Sequence):  # "96" once gave [9, 6]
            raise ValueError(f"roi_size must be a list of 2 or 3 sizes, e.g. [96, 96, 96], got {roi_size!r}.")
        roi_size = [check_int("roi_size", s) for s in roi_size]
        if len(roi_size) not in (2, 3):
            raise ValueError(f"roi_size must have 2 or 3 positive sizes, got {roi_size}.")
        if num_classes is not None:
            check_int("num_classes", num_classes, low=2)
        check_int("batch_size", batch_size)
        check_int("num_crops (train.json: crops_per_volume)", num_crops)
        probabilities = {
            "flip_prob": flip_prob,
            "rotate_prob": rotate_prob,
            "zoom_prob": zoom_prob,
            "intensity_prob": intensity_prob,
            "thickness_prob": thickness_prob,
            "contrast_prob": contrast_prob,
            "coil_prob": coil_prob,
        }
        for name, value in probabilities.items():  # from a review: "high" or None failed in float(), unnamed
            check_range(name, value, 0.0, 1.0, closed_high=True)
        check_int("num_workers", num_workers, low=0)  # 1.5 was cut to 1, "two" failed in int()
        if max_val_volumes is not None:
            check_int("max_val_volumes", max_val_volumes, hint=" or None")
        check_range("rotate_degrees", rotate_degrees, 0.0, 180.0, closed_high=True)  # NaN turned rotation off
        check_range("cache_rate", cache_rate, 0.0, 1.0, closed_high=True)
        self.cache = choose("cache", cache, CACHE_MODES)
        if self.cache == "disk" and cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir.")
        self.data_list = Path(data_list)
        self.dataset_dir = None if dataset_dir is None else Path(dataset_dir)
        self.preprocessing = check_preprocessing(preprocessing)  # every key present, intensity mode known
        for key in ("orientation", "spacing"):  # from a review: 'RA' on 3-D crops failed in MONAI at the first load
            value = self.preprocessing[key]
            if value is not None and len(value) < len(roi_size):
                raise ValueError(
                    f"preprocessing[{key!r}] {value!r} has {len(value)} axes and roi_size {roi_size} has "
                    f"{len(roi_size)}: give one per spatial axis of the task."
                )
        self.roi_size = roi_size
        self.save_hyperparameters({"roi_size": roi_size})  # in Lightning checkpoints: the export's default window
        self.train_key, self.val_key = train_key, val_key
        self.batch_size, self.num_crops = batch_size, num_crops
        self.pos, self.neg = float(pos), float(neg)
        # from a review: -4 failed in MONAI at the first load, naming no option; 2.7 was truncated to 2 (8.0, as JSON
        # may give it, still counts)
        if is_finite_number(foreground_margin) and float(foreground_margin).is_integer():
            foreground_margin = int(foreground_margin)
        self.foreground_margin = (
            None if foreground_margin is None else check_int("foreground_margin", foreground_margin, low=0)
        )
        self.flip_prob, self.rotate_prob, self.zoom_prob = float(flip_prob), float(rotate_prob), float(zoom_prob)
        self.intensity_prob = float(intensity_prob)
        self.rotate_degrees = float(rotate_degrees)
        self.cache_dir, self.cache_rate = cache_dir, float(cache_rate)
        self.num_workers = int(num_workers)
        self.max_val_volumes = max_val_volumes
        self.num_classes = num_classes
        self.synth_ratio = check_synthesis(
            synth_ratio, synth_data_list, synth_num_labels, synth_target_labels, num_classes=num_classes
        )
        modalities = self.preprocessing.get("num_modalities") or 1
        if self.synth_ratio > 0 and (modalities != 1 or len(self.roi_size) != 3):
            # the generator paints one channel of a 3-D head: a 2-channel task failed at the first batch (stack of
            # 1 and 2 channels), a 2-D one in RandSliceThicknessd's axes
            raise ValueError(
                f"synth_ratio={self.synth_ratio} paints one-channel 3-D volumes, but this task has {modalities} "
                f"modalities (preprocessing['num_modalities']) and a {len(self.roi_size)}-D roi_size; train on the "
                "real volumes alone with synth_ratio 0."
            )
        self.synth_data_list = None if synth_data_list is None else Path(synth_data_list)
        self.synth_key, self.synth_options = synth_key, check_synth_options(synth_options)
        self.synth_num_labels, self.synth_target_labels = synth_num_labels, synth_target_labels
        self.thickness_prob = float(thickness_prob)
        self.thickness_range = check_interval("thickness_range", thickness_range, low=1.0, unit=" voxels")
        self.contrast_prob, self.coil_prob = float(contrast_prob), float(coil_prob)
        self.coil_coeff_range = check_interval("coil_coeff_range", coil_coeff_range)
        # the coil field's rank hand-back is what equalisation does to a field; a z-score's air (0) is not the
        # crop's minimum
        equalising = {
            "contrast_prob": "re-equalises the remapped crop",
            "coil_prob": "hands the crop's values back by rank",
        }
        for name, what in equalising.items():
            if getattr(self, name) > 0 and self.preprocessing["intensity"] != "histogram":
                raise ValueError(
                    f"{name} > 0 {what}, as the 'histogram' equalisation does, so it needs preprocessing['intensity'] "
                    f"'histogram', got {self.preprocessing['intensity']!r}."
                )
        self.spacing_conditioning = check_bool("spacing_conditioning", spacing_conditioning)
        self.spacing_key = "spacing" if self.spacing_conditioning else None
        self._datasets: dict[str, Dataset] = {}
        self._items: dict[str, list[dict]] = {}  # each split's checked list, read once (check_files, then _dataset)
        self._grids: dict[str, tuple] = {}  # each image's (shape, affine) as the checks read its header

    ##################################################################################################################
    # Transforms
    ##################################################################################################################

    def _deterministic(self) -> list[MapTransform]:
        return preprocessing_transforms(self.preprocessing, "image", "label", spacing_key=self.spacing_key)

    def _acquisition(self) -> list[MapTransform]:
        """Thick slices on a crop, before the spatial augmentation changes its affine (the grid spacing it reads)."""
        if self.thickness_prob == 0:
            return []
        options = {"thickness_range": self.thickness_range, "axes": range(len(self.roi_size))}  # 2D or 3D crops
        return [RandSliceThicknessd("image", prob=self.thickness_prob, spacing_key=self.spacing_key, **options)]

    def _augmentation(self) -> list[MapTransform]:
        spatial_dims = len(self.roi_size)
        out: list[MapTransform] = []
        if self.contrast_prob > 0:  # first: its floor is the air the pipeline equalised, before anything moves it
            out.append(RandContrastRemapd("image", prob=self.contrast_prob))
        if self.coil_prob > 0:  # as early: its floor is the crop's minimum, the equalised air
            out.append(RandCoilFieldd("image", prob=self.coil_prob, coeff_range=self.coil_coeff_range))
        if self.flip_prob > 0:
            out += [RandFlipd(KEYS, prob=self.flip_prob, spatial_axis=axis) for axis in range(spatial_dims)]
        if self.rotate_prob > 0 and self.rotate_degrees > 0:
            angle = float(np.deg2rad(self.rotate_degrees))
            ranges = {"range_x": angle} if spatial_dims == 2 else {"range_x": angle, "range_y": angle, "range_z": angle}
            out.append(RandRotated(KEYS, prob=self.rotate_prob, mode=("bilinear", "nearest"), **ranges))
        if self.zoom_prob > 0:  # head and brain sizes differ between people
            image_mode = "trilinear" if spatial_dims == 3 else "bilinear"
            out.append(
                RandZoomd(
                    KEYS,
                    prob=self.zoom_prob,
                    min_zoom=0.85,
                    max_zoom=1.15,
                    mode=(image_mode, "nearest-exact"),  # torch's "nearest" rounds down: half a voxel off the image
                    keep_size=True,
                )
            )
        if self.intensity_prob > 0:  # scanner differences: gain, offset, contrast curve, coil bias field, noise
            out.append(RandScaleIntensityd("image", factors=0.1, prob=self.intensity_prob))
            out.append(RandShiftIntensityd("image", offsets=0.1, prob=self.intensity_prob))
            out.append(RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=self.intensity_prob))
            # MRI has no intensity scale: a random monotone curve stands in for another scanner's or sequence's contrast
            out.append(RandHistogramShiftd("image", num_control_points=(5, 10), prob=self.intensity_prob))
            out.append(RandBiasFieldd("image", coeff_range=(0.0, 0.2), prob=self.intensity_prob))
            out.append(RandGaussianNoised("image", std=0.1, prob=self.intensity_prob))
            # templates are smooth averages, scans are sharper or blurrier than them; on the crop's own edge values
            # (the filters' zero padding put up to -44 on the faces of a crop of air at -1): reach 4 sigma, twice
            smooth = RandGaussianSmoothd(
                "image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=self.intensity_prob / 2
            )
            out.append(EdgePaddedd(smooth, "image", margin=4))
            out.append(EdgePaddedd(RandGaussianSharpend("image", prob=self.intensity_prob / 2), "image", margin=6))
        return out

    def train_transforms(self) -> Compose:
        """Pre-transforms, foreground crop, positive/negative patch sampling, augmentation."""
        crop: list[MapTransform] = []
        if self.foreground_margin is not None:
            crop.append(
                CropForegroundd(
                    KEYS,
                    source_key="image",
                    select_fn=INTENSITY_MODES[self.preprocessing["intensity"]].foreground,
                    margin=self.foreground_margin,
                    allow_smaller=True,
                    start_coord_key=None,
                    end_coord_key=None,
                )
            )
        crop += [
            *pad_to_crop(self.preprocessing, self.roi_size, *KEYS),
            RandCropByPosNegLabeld(
                KEYS,
                label_key="label",
                spatial_size=self.roi_size,
                pos=self.pos,
                neg=self.neg,
                num_samples=self.num_crops,
                image_key=None,  # negatives anywhere: z-scores go below 0
            ),
        ]
        return Compose([*self._deterministic(), *crop, *self._acquisition(), *self._augmentation(), *self._finish()])

    def val_transforms(self) -> Compose:
        """Pre-transforms only: whole volumes, exactly as the predictor will see them."""
        return Compose([*self._deterministic(), *self._finish()])

    @staticmethod
    def _finish() -> list[MapTransform]:
        return [CastToTyped("label", dtype=np.int64), EnsureTyped(KEYS, track_meta=False)]

    ##################################################################################################################
    # Datasets and loaders
    ##################################################################################################################

    def _dataset(self, split: str) -> Dataset:
        if split == "synth" and split not in self._datasets:
            items = self._split_items("synth")
            transform = Compose([*self._synthetic(), *self._finish()])
            logger.info("synthetic split %r of %s: %d label maps", self.synth_key, self.synth_data_list, len(items))
            self._datasets[split] = self._cached(items, transform, split)
        if split not in self._datasets:
            key = self.train_key if split == "train" else self.val_key
            items = self._split_items(split)
            if split == "val" and self.max_val_volumes is not None:
                items = items[: int(self.max_val_volumes)]
            # only image and label travel: a list's extra entries (template names, alternative labels) are not for
            # the transforms, and MONAI's Spacingd would take any "<key>_*" entry for a meta dict of <key>
            items = [{name: item[name] for name in KEYS} for item in items]
            if split == "val":  # each volume's place in the split: its noise seed and its one Dice under DDP
                items = [{**item, "index": i} for i, item in enumerate(items)]
            transform = self.train_transforms() if split == "train" else self.val_transforms()
            logger.info("%s split %r of %s: %d volumes, cache=%s", split, key, self.data_list, len(items), self.cache)
            self._datasets[split] = self._cached(items, transform, split)
        return self._datasets[split]

    def _cached(self, items: list[dict], transform: Compose, split: str) -> Dataset:
        """``items`` through ``transform``, its deterministic prefix cached as ``cache`` says."""
        if self.cache == "memory":
            return CacheDataset(
                items, transform, cache_rate=self.cache_rate, num_workers=max(self.num_workers, 1), progress=False
            )
        if self.cache == "disk":
            # keyed by the settings too: a cache made with others (another intensity mode or spacing, without the
            # spacing record) is not read back as if it were this one's
            folder = Path(self.cache_dir) / split
            return PersistentDataset(
                items, transform, cache_dir=folder, hash_func=_item_key, hash_transform=self._cache_key
            )
        return Dataset(items, transform)

    def _cache_key(self, transforms: Sequence) -> bytes:
        """``PersistentDataset``'s key of the deterministic transforms: MONAI's ``json_hashing`` cannot serialise
        transform objects and falls back to their class names alone, so the settings they were built from go in."""
        names = [type(t).__name__ for t in transforms]
        # the training crop's cached prefix also crops to the foreground and pads to roi_size (from a review: a cache
        # made with another margin or crop was read back as this run's)
        settings = {"foreground_margin": self.foreground_margin, "roi_size": [int(r) for r in self.roi_size]}
        return json_hashing(
            {"transforms": names, "preprocessing": self.preprocessing, "spacing_key": self.spacing_key, **settings}
        )

    def _synthetic(self) -> list[MapTransform]:
        return synthetic_train_transforms(
            self.preprocessing,
            self.roi_size,
            num_crops=self.num_crops,
            num_labels=self.synth_num_labels,
            target_labels=self.synth_target_labels,
            pos=self.pos,
            neg=self.neg,
            options={**self.synth_options, "spacing_key": self.spacing_key},
        )

    @property
    def train_dataset(self) -> Dataset:
        """The training dataset (built, its files checked and cached on first use)."""
        return self._dataset("train")

    @property
    def val_dataset(self) -> Dataset:
        """The validation dataset of whole volumes."""
        return self._dataset("val")

    def check_files(self) -> None:
        """Check every file of the splits in use (existence, grids, label values); raises naming the first bad one."""
        for split in ("train",) * (self.synth_ratio < 1) + ("val",) + ("synth",) * (self.synth_ratio > 0):
            self._split_items(split)

    def _split_items(self, split: str) -> list[dict]:
        """The checked items of "train", "val" or "synth" (label maps), read and checked once per data module."""
        if split not in self._items:
            if split == "synth":
                items = load_label_maps(self.synth_data_list, self.synth_key, base_dir=self.dataset_dir)
                check_label_maps(items, self.synth_num_labels, self.synth_target_labels, self.preprocessing)
            else:
                key = self.train_key if split == "train" else self.val_key
                items = load_data_list(
                    self.data_list, key, base_dir=self.dataset_dir, spatial_dims=len(self.roi_size),
                    num_classes=self.num_classes, num_modalities=self.preprocessing.get("num_modalities"),
                    grids=self._grids, reoriented=self.preprocessing.get("orientation") is not None,
                )  # fmt: skip
            self._items[split] = items
        return self._items[split]

    def warn_voxel_rotations(self) -> str | None:
        """A warning line (logged on the first rank, and returned) where training will rotate an anisotropic grid:
        MONAI's ``RandRotated`` (real crops) and ``RandAffined`` (the generator's label maps) rotate voxel indices,
        not mm, so a 1 x 1 x 3 mm grid's anatomy is sheared, not turned: an uneven ``preprocessing["spacing"]``, or
        none and a file whose voxels are not within ``ANISOTROPY`` of cubes. None where the rotations are off."""
        rotates = self.rotate_prob > 0 and self.rotate_degrees > 0
        splits = [("train", "image")] if self.synth_ratio < 1 and rotates else []
        if self.synth_ratio > 0 and self.synth_options.get("rotate_degrees", SYNTH_ROTATE_DEGREES) != 0:
            splits.append(("synth", "label"))
        if not splits:
            return None
        n, line = len(self.roi_size), None
        target = self.preprocessing["spacing"]
        if target is not None:
            spacing = np.asarray(target[:n], dtype=np.float64)
            if spacing.max() > ANISOTROPY * spacing.min():
                line = f"preprocessing['spacing'] is {target}: "
        else:
            for split, key in splits:
                for item in self._split_items(split):
                    path = str(item[key])  # the images' headers were read by the checks; the maps' are read here
                    affine = (self._grids.get(path) or image_grid(path, n))[1]
                    if affine is None:  # a picture: its pixels are square
                        continue
                    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :n], axis=0)
                    if spacing.max() > ANISOTROPY * spacing.min():
                        line = f"{path}: voxels of {' x '.join(f'{v:g}' for v in spacing)} mm, and "
                        line += "preprocessing['spacing'] is null: "
                        break
                if line:
                    break
        if line is None:
            return None
        line += (
            "the training rotations act on voxel indices and will shear the anatomy. Set an isotropic "
            "preprocessing['spacing'], or turn the rotations off (rotate_prob 0; synth_options rotate_degrees 0)."
        )
        trainer = getattr(self, "trainer", None)  # Lightning's, under fit: every rank runs setup
        if trainer is None or trainer.is_global_zero:
            logger.warning("%s", line)
        return line

    def setup(self, stage: str | None = None) -> None:
        self.check_files()  # every split in use, before anything is loaded or cached
        if stage in (None, "fit"):
            self.warn_voxel_rotations()
            for split in ("train",) * (self.synth_ratio < 1) + ("synth",) * (self.synth_ratio > 0):
                self._dataset(split)
        if stage in (None, "fit", "validate"):
            self._dataset("val")

    def train_dataloader(self) -> DataLoader:
        options = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0, "drop_last": False}
        if self.synth_ratio == 0:
            return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, **options)
        if self.synth_ratio == 1:
            return DataLoader(self._dataset("synth"), batch_size=self.batch_size, shuffle=True, **options)
        real, synthetic = self.train_dataset, self._dataset("synth")
        sampler = mixing_sampler(len(real), len(synthetic), self.synth_ratio)
        return DataLoader(ConcatDataset([real, synthetic]), batch_size=self.batch_size, sampler=sampler, **options)

    def val_dataloader(self) -> DataLoader:
        # a generator of its own: without workers MONAI's DataLoader re-seeds the one it is given, and the global one
        # re-seeded at a first validation mid-run replayed the first epoch's timesteps and noise (from a review)
        return DataLoader(
            self.val_dataset,
            batch_size=1,
            shuffle=False,
            num_workers=min(self.num_workers, 1),
            generator=torch.Generator(),
        )
