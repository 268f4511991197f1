"""Whole-volume segmentation, nnU-Net style: one predictor class, loaded from a checkpoint or a bundle, that both the
CLI and notebooks call.

    image --read, exact geometry--> MONAI pre-transforms (the training ones) --> ensemble of diffusion samples, each
    step stitched over windows --> mean probability, entropy --> MONAI Invertd --> label map, probabilities and
    uncertainty on the input's grid (nibabel images; files with the input's spacing, origin and direction)
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from monai.utils import ensure_tuple_rep

from medwidit.data.transforms import check_preprocessing, preprocessing_transforms
from medwidit.diffusion import DiffusionSegmenter, load_segmenter
from medwidit.diffusion.checkpoint import read_model_config
from medwidit.diffusion.ensemble import check_generator
from medwidit.diffusion.segmenter import DEFAULT_SAMPLER
from medwidit.nets.contract import network_size_multiple
from medwidit.utils import check_bool, check_int, check_per_axis, check_seed, is_integer, sha256_file

from .atlas import AtlasFit, bundle_atlas_prior, check_atlas_prior, fit_atlas, network_voxels, template_dice
from .calibration import (
    ENSEMBLE_WARN_DICE,
    apply_calibration,
    bundle_calibration,
    bundle_warn_dice,
    case_warn_dice,
    check_calibration,
    check_warn_dice,
    missing_evidence,
)
from .files import CaseResult, case_warnings, predict_from_files
from .io import ImageGeometry, InputError, one_line, read_input, to_nibabel
from .localize import (
    bundle_localization,
    check_localization,
    decode_regions,
    encode_regions,
    error_score,
    foreground_region,
    outside_to_background,
    scale_disagreement,
)
from .options import (
    BIAS_RETRY,
    BIAS_RETRY_CORRECTION,
    PREPROCESSING_OVERRIDES,
    autocast_dtype,
    autocast_model_fn,
    bundle_extra_weights,
    bundle_options,
    bundle_preprocessing_overrides,
    check_grid,
    check_sampling,
    checkpoint_problem,
    fit_shared_steps,
    inference_preprocessing,
    progress_callback,
    resolve_bundle,
    resolve_device,
    sampling_defaults,
)
from .outputs import image_files, settings_json
from .postprocess import (
    apply_label_postprocessing,
    bundle_label_postprocessing,
    bundle_probability_smoothing,
    check_label_postprocessing,
    check_probability_smoothing,
    smooth_probability,
)
from .sliding import SlidingWindowDenoiser, sample_ensemble
from .statistics import class_statistics
from .trust import (
    augmentation_views,
    bundle_expected_volumes,
    bundle_view_options,
    check_expected_volumes,
    check_view_options,
    entropy_of,
    quality_report,
)

__all__ = ["CaseResult", "Predictor", "Segmentation", "segment"]

logger = logging.getLogger(__name__)

DEFAULT_ROI = 96
DEFAULT_WARN_DICE = ENSEMBLE_WARN_DICE  # a foreground class predicted below it gets a warning line


@dataclass
class Segmentation:
    """A case's results on the input's grid: arrays, and the same as nibabel images (``labels``, ...)."""

    label_map: np.ndarray  # (*S) int, in 0..K-1
    probability: np.ndarray  # (K, *S) float32, mean over the ensemble
    entropy: np.ndarray  # (*S) float32, predictive entropy in nats (0 .. log K)
    geometry: ImageGeometry
    num_samples: int
    aleatoric: np.ndarray | None = None  # (*S) float32, expected entropy over the views' groups, nats
    epistemic: np.ndarray | None = None  # (*S) float32, mutual information between prediction and view, nats
    # (*S) float32 in [0, 1]: the localization pass's class probabilities against these (total variation distance);
    # None without the pass
    disagreement: np.ndarray | None = None
    quality: dict = field(default_factory=dict)  # the per-case estimate (trust.quality_report), as in _quality.json
    class_names: list[str] | None = None  # the model's, background first (None: "class_k")

    @property
    def statistics(self) -> dict:
        """Voxel count and volume (mL) per class of ``label_map`` on the input's grid, as in ``_statistics.json``."""
        return class_statistics(self.label_map, self.geometry.affine, self.num_classes, self.class_names)

    @property
    def num_classes(self) -> int:
        return self.probability.shape[0]

    @property
    def labels(self) -> nib.Nifti1Image:
        return to_nibabel(self.label_map, self.geometry, "labels", max_label=self.num_classes - 1)

    @property
    def probabilities(self) -> nib.Nifti1Image:
        return to_nibabel(self.probability, self.geometry, "probabilities")  # (*S, K)

    @property
    def uncertainty(self) -> nib.Nifti1Image:
        return to_nibabel(self.entropy, self.geometry, "uncertainty")

    @property
    def error_score(self) -> np.ndarray:
        """(*S) float32 in [0, 3]: the entropy over ln K plus the disagreement plus the nearness to the label map's
        surface (``localize.error_score``), as ``<case>_error_score``; computed on each access (a distance
        transform of the input's grid), so keep the array where it is used twice."""
        return error_score(
            self.entropy, self.disagreement, self.num_classes, self.label_map, spacing=self.geometry.spacing
        )


def _checkpoint_classes(checkpoint) -> int | None:
    """The ``num_classes`` a checkpoint's config names (None where it names none or cannot be read: loading it says
    why)."""
    try:
        classes = read_model_config(checkpoint)["segmenter"]["num_classes"]
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError):
        return None
    return classes if is_integer(classes) else None


class Predictor:
    """Segments whole volumes with a :class:`DiffusionSegmenter` and the pre-transforms it was trained with.

    Args:
        segmenter: the model; its net's ``size_multiple`` (the network contract) sets the divisibility of windows.
        preprocessing: the checkpoint's ``"preprocessing"`` dict (see ``medwidit.data.transforms``).
        roi_size: sliding-window size (default: the training crop where known, else 96 per axis).
        sw_batch_size: windows per network call.
        max_whole_voxels: run the network on the whole volume when batch x voxels is at most this memory budget
            (default ``sliding.DEFAULT_WHOLE_VOXELS``, independent of ``sw_batch_size``); 0 forces windows.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: network autocast dtype, ``auto`` (bfloat16 on CUDA where supported, else float16; bfloat16 on a
            CPU with bf16 matmul hardware, AMX or AVX512-BF16, else float32), ``float32``, ``bfloat16`` (on CUDA or
            any CPU) or ``float16`` (CUDA). Sampler arithmetic and window blending stay float32.
        label_postprocessing: MONAI label-map steps applied after the argmax (``medwidit.inference.postprocess``; a
            bundle's ``inference.json`` declares them); probabilities and uncertainty are left as sampled.
        probability_smoothing: a Gaussian's sigma in voxels of the model's grid (0: none; a bundle's
            ``inference.json`` may declare it): the full-resolution ensemble's mean class probabilities are smoothed
            with it on the model's grid (``postprocess.smooth_probability``) before they are inverted to the input
            grid and take the argmax, so the probability map written and the labels agree. The uncertainty maps and
            the localization pass (its region) stay as sampled, and so does the ensemble's own Dice estimate
            (``ensemble_dice``: the members against their unsmoothed argmax); the quality report's volumes and the
            calibration's features (fitted without smoothing) are the written labels', and the disagreement map
            compares the smoothed result with the unsmoothed coarse pass.
        class_names: one name per class, background first, for the statistics (a checkpoint's ``"class_names"``).
        extra_segmenters: further independently trained segmenters of the same task (classes, image channels,
            patch, spacing conditioning; the same ``preprocessing`` is the caller's to ensure, as
            :meth:`from_checkpoint` does). ``segment(weight_sets=N)`` samples the first N of ``segmenters`` (this
            one first), each as its own groups of the ensemble, so that the epistemic map and the quality estimate
            see where independently trained weights disagree.
        expected_volume_ml: ``{class: [low, high]}`` in mL (``trust.check_expected_volumes``; a bundle's
            ``inference.json`` declares it): a case whose class volume falls outside gets a warning line and is
            listed in its quality JSON's ``unexpected_volumes``, whatever the members agree on.
        view_options: the test-time views' ``augmentation_views`` keywords (``flip_axes``, ``gamma_range``,
            ``max_shift``, ``bias_range``, ``spread_shifts``; a bundle's ``inference.json`` declares them as
            ``augment_views``) for ``segment(augment=N)``.
        localization: ``{"spacing": mm, "margin_mm": mm, "min_kept": share, "warn_kept": share}``
            (``localize.check_localization``; a bundle's ``inference.json`` declares it): each case is first sampled on
            that coarser grid, and the full-resolution ensemble is background farther than ``margin_mm`` from the
            coarse foreground, unless that region holds less than ``min_kept`` of the full pass's foreground (then
            nothing is cut, with a warning); below ``warn_kept`` the CLI's warning line names the case. None: off.
        atlas_prior: ``{"image": template head, "label": its mask, "margin_mm": mm, "min_kept": share, ...}``
            (``atlas.check_atlas_prior``, which names the optional ``core_mm``, ``core_label``, ``warn_filled``,
            ``kept_margin_mm`` and ``warn_information``; a bundle's ``inference.json`` declares it, its files in the
            bundle): the template is registered to each case (affine, mutual information) and the full-resolution
            ensemble is background farther than ``margin_mm`` from its registered mask and ``core_label`` deeper than
            ``core_mm`` inside it, unless the region within ``kept_margin_mm`` holds less than ``min_kept`` of the
            members' foreground (then nothing is cut or filled). The quality report records it as ``atlas_prior``.
            None: off.
        quality_calibration: ``{"intercept": a, "weights": {feature: w}}`` (``calibration.check_calibration``; a
            bundle's ``inference.json`` declares it, fitted on validation cases): the quality report's
            ``predicted_dice`` of each foreground class is ``exp(intercept + sum(weight * feature))`` of the case's
            features (the ensemble's own estimate, the localization's share, the volume outside its range, the mean
            epistemic and total entropy over the foreground; ``calibration.FEATURES``), which the warning line
            reads; the ensemble's own estimate stays as ``ensemble_dice``. None: the ensemble's own estimate.
        warn_dice: a case whose predicted Dice of a foreground class falls below it gets a warning line
            (:meth:`predict_from_files`, the CLI; 0 or None: no warning line). The threshold belongs to the
            estimate: a bundle's ``inference.json`` declares it beside its ``quality_calibration``
            (:meth:`from_bundle` keeps ``DEFAULT_WARN_DICE`` where the caller replaces that calibration); without
            one ``DEFAULT_WARN_DICE``, chosen for the ensemble's own estimate.
        bias_retry: a case whose predicted Dice of a foreground class falls below ``warn_dice`` is segmented again
            from the same random state with N4 bias-field correction in front of the intensity normalisation
            (``preprocessing["bias_correction"]`` "n4"), and whichever of the two has the higher minimum predicted
            Dice is kept (ties: the first); the quality report records both estimates as ``bias_retry`` (or the N4
            pass's error, which keeps the first). The threshold is the warning line's, :meth:`case_warn_dice`
            (``ENSEMBLE_WARN_DICE`` where a case's calibration was skipped, unless ``warn_dice_given``); ``warn_dice``
            None retries nothing. For weights whose first pass runs without N4
            (``preprocessing`` without it): a strong coil field breaks them where N4 would have rescued it, and N4
            on every case costs where it is not needed (``from_checkpoint(bias_correction="retry")``,
            ``medwidit segment --bias-correction retry``).
        warn_dice_given: True: ``warn_dice`` judges every case as it is (``medwidit segment --warn-dice``); False
            (default): a case whose calibration was skipped is judged at the ensemble's threshold
            (``calibration.case_warn_dice``), since a bundle's own ``warn_dice``, which ``inference.json`` passes on
            to :meth:`from_checkpoint`, belongs to its calibrated estimate (from a review).

    ``sampling_defaults`` (``steps``, ``num_samples``, ``overlap``, ``shared_steps``, ``weight_sets``, ``augment``)
    fill every sampling argument left at None: ``options.SAMPLING_DEFAULTS``, or, for :meth:`from_bundle`, the bundle's
    ``inference.json`` values over them, the same values ``medwidit segment --bundle`` uses.
    """

    def __init__(
        self,
        segmenter: DiffusionSegmenter,
        *,
        preprocessing: Mapping | None = None,
        roi_size: Sequence[int] | int | None = None,
        sw_batch_size: int = 4,
        max_whole_voxels: int | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        label_postprocessing: Sequence[Mapping] | None = None,
        probability_smoothing: float = 0.0,
        class_names: Sequence[str] | None = None,
        extra_segmenters: Sequence[DiffusionSegmenter] = (),
        expected_volume_ml: Mapping | None = None,
        view_options: Mapping | None = None,
        localization: Mapping | None = None,
        atlas_prior: Mapping | None = None,
        quality_calibration: Mapping | None = None,
        warn_dice: float | None = DEFAULT_WARN_DICE,
        bias_retry: bool = False,
        warn_dice_given: bool = False,
    ) -> None:
        if not isinstance(segmenter, DiffusionSegmenter):
            raise TypeError(f"segmenter must be a DiffusionSegmenter, got {type(segmenter).__name__}.")
        self.device = resolve_device(device)
        self.segmenter = segmenter.to(self.device).eval()
        self.extra_weight_files: list[Path | None] = [None] * len(extra_segmenters)  # from_checkpoint: their files
        self.segmenters = [self.segmenter] + [
            _check_companion(segmenter, extra, i).to(self.device).eval() for i, extra in enumerate(extra_segmenters)
        ]
        self.spatial_dims = int(getattr(segmenter.net, "spatial_dim", 3))
        cond_channels = getattr(segmenter.net, "cond_channels", None)
        self.preprocessing = check_preprocessing({"num_modalities": cond_channels or 1, **(preprocessing or {})})
        if cond_channels is not None and cond_channels != self.preprocessing["num_modalities"]:
            raise ValueError(
                f"preprocessing['num_modalities'] = {self.preprocessing['num_modalities']} but the network takes "
                f"{cond_channels} image channel(s)."
            )
        patch = ensure_tuple_rep(network_size_multiple(segmenter.net), self.spatial_dims)
        if roi_size is None:  # the smallest multiple of the patch from 96 up
            roi_size = [math.ceil(DEFAULT_ROI / p) * p for p in patch]
        if isinstance(roi_size, (list, tuple)) and len(roi_size) == 1:  # [96]: one size for every axis
            roi_size = roi_size[0]
        self.roi_size = list(check_per_axis("roi_size", roi_size, self.spatial_dims))  # 16.9 was cut to 16, "16" [1, 6]
        self.sw_batch_size, self.max_whole_voxels = sw_batch_size, max_whole_voxels
        SlidingWindowDenoiser(
            segmenter.net, self.roi_size, sw_batch_size=sw_batch_size, max_whole_voxels=max_whole_voxels
        )  # checks
        self.precision = precision
        self.autocast_dtype = autocast_dtype(self.device, precision)
        self.label_postprocessing = check_label_postprocessing(label_postprocessing, num_classes=segmenter.num_classes)
        self.probability_smoothing = check_probability_smoothing(probability_smoothing)
        if class_names is not None and len(class_names) != segmenter.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {segmenter.num_classes} classes.")
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.expected_volume_ml = check_expected_volumes(expected_volume_ml, segmenter.num_classes)
        self.view_options = check_view_options(view_options, self.spatial_dims, source="view_options")
        self.localization = check_localization(localization, self.spatial_dims)
        self.atlas_prior = check_atlas_prior(atlas_prior)
        if self.atlas_prior is not None and self.spatial_dims != 3:
            raise ValueError(f"atlas_prior needs a 3D model, got {self.spatial_dims} spatial dimensions.")
        if self.atlas_prior is not None and self.atlas_prior["core_mm"] is not None:
            if self.atlas_prior["core_label"] >= segmenter.num_classes:
                raise ValueError(
                    f"atlas_prior: core_label {self.atlas_prior['core_label']} is not a foreground class of a model "
                    f"with {segmenter.num_classes} classes (1 to {segmenter.num_classes - 1})."
                )

        if self.atlas_prior is not None and segmenter.num_classes > 2:  # own labels exported into the brain bundle
            core = self.atlas_prior["core_mm"] is not None
            logger.warning(
                "atlas_prior: %sits region makes every voxel beyond the registered template's mask and margin "
                "background; this model has %d classes: unless each class lies where that holds, set atlas_prior to "
                "null (medwidit segment --no-atlas-prior), as for any task but the template's structure.",
                f"its core writes class {self.atlas_prior['core_label']} over the inside of the mask, over any other "
                "class there, and "
                if core
                else "",
                segmenter.num_classes,
            )
        self.quality_calibration = check_calibration(quality_calibration)
        self.warn_dice = check_warn_dice(warn_dice)
        self.warn_dice_given = check_bool("warn_dice_given", warn_dice_given)
        self.bias_retry = check_bool("bias_retry", bias_retry)
        if self.bias_retry and self.preprocessing["bias_correction"] is not None:
            raise ValueError(
                f"bias_retry retries a case with {BIAS_RETRY_CORRECTION!r} bias correction, but the preprocessing "
                f"already applies {self.preprocessing['bias_correction']!r} to every case."
            )
        self.sampling_defaults = sampling_defaults()

    def resolve_sampling(self, steps, num_samples, overlap) -> tuple[int, int, float]:
        """``steps``, ``num_samples``, ``overlap`` with each None replaced by ``sampling_defaults``."""
        given = {"steps": steps, "num_samples": num_samples, "overlap": overlap}
        return tuple(self.sampling_defaults[k] if v is None else v for k, v in given.items())

    def resolve_shared_steps(self, shared_steps: int | None, steps: int) -> int:
        """``shared_steps``, or ``sampling_defaults``'s when None, fitted to ``steps`` (``options.fit_shared_steps``: a
        default of k shared steps shares at most ``steps - 1``; the shipped bundle's default shares none)."""
        if shared_steps is not None:
            return shared_steps
        return fit_shared_steps(self.sampling_defaults["shared_steps"], steps)  # checked when the defaults were read

    @property
    def num_modalities(self) -> int:
        return self.preprocessing["num_modalities"]

    @property
    def num_classes(self) -> int:
        return self.segmenter.num_classes

    @property
    def window_options(self) -> dict:
        """``sample_ensemble``'s ``roi_size``, ``sw_batch_size`` and ``max_whole_voxels``: this predictor's windows."""
        return {name: getattr(self, name) for name in ("roi_size", "sw_batch_size", "max_whole_voxels")}

    ##################################################################################################################
    # loading
    ##################################################################################################################

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        extra_checkpoints: Sequence[str | os.PathLike] = (),
        bias_correction: str | None = "model",
        anti_aliasing: bool | str = "model",
        **options,
    ) -> Predictor:
        """A predictor from a medwidit checkpoint (``save_segmenter``'s file, config holding ``"preprocessing"``);
        ``extra_checkpoints``: further weights of the same task and preprocessing (``extra_segmenters``), an
        InputError naming the file whose preprocessing differs. ``bias_correction`` None ("none") or "n4" replaces the
        checkpoint's ``preprocessing["bias_correction"]`` at inference ("model": keep it): N4 on a scan with a strong
        coil field, for weights trained on scans without one; "retry": none, and N4 again where the case's estimate
        warns (``bias_retry``). ``anti_aliasing`` True or False likewise replaces
        ``preprocessing["anti_aliasing"]``: a blur before the resampling wherever it coarsens the grid (the coarse
        localization pass's grid too)."""
        segmenter, config = _load_checkpoint(path)
        if "preprocessing" not in config:
            logger.warning("%s has no 'preprocessing' in its config; using the defaults.", path)
        extras = []
        for extra_path in extra_checkpoints:
            extra, extra_config = _load_checkpoint(extra_path)
            ours, theirs = (check_preprocessing(c.get("preprocessing") or {}) for c in (config, extra_config))
            if ours != theirs:
                changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
                raise InputError(
                    f"{extra_path}: its preprocessing differs from {path}'s in {', '.join(changed)}; the weights of "
                    "one ensemble must see the same pre-processed image."
                )
            try:
                _check_companion(segmenter, extra, len(extras))
            except ValueError as e:
                raise InputError(f"{extra_path} beside {path}: {e}") from e
            extras.append(extra)
        if options.get("roi_size") is None:  # an explicit None too: else 96, where the CLI ran the training crop
            options["roi_size"] = config.get("roi_size")
        options.setdefault("class_names", config.get("class_names"))
        if isinstance(bias_correction, str) and bias_correction == BIAS_RETRY:  # the first pass without N4
            options.setdefault("bias_retry", True)  # a caller's own bias_retry=False wins over a bundle's "retry"
        stored = config.get("preprocessing") or {}
        preprocessing = inference_preprocessing(stored, bias_correction, anti_aliasing)
        try:
            check_preprocessing(preprocessing)
        except ValueError as e:  # the caller's value where it replaced the checkpoint's, else the checkpoint's
            given = [
                n for n in PREPROCESSING_OVERRIDES if preprocessing.get(n) != stored.get(n) and f"['{n}']" in str(e)
            ]
            retry = f" It also takes {BIAS_RETRY!r} (N4 only where a case warns)." if "bias_correction" in given else ""
            raise InputError(f"{given[0]}: {e}{retry}" if given else f"{path}: {e}") from e
        predictor = cls(segmenter, preprocessing=preprocessing or None, extra_segmenters=extras, **options)
        predictor.extra_weight_files = [Path(p) for p in extra_checkpoints]
        return predictor

    @classmethod
    def from_bundle(
        cls, bundle_dir: str | os.PathLike | None = None, *, weight_sets: int | None = None, **options
    ) -> Predictor:
        """A predictor from a MONAI bundle: a folder, the name of a shipped bundle, or None for the shipped default
        (``options.resolve_bundle``, as ``medwidit segment --bundle``). Weights in ``models/model.pt`` (with
        ``models/medwidit.json``); ``roi_size`` and ``sw_batch_size`` from ``configs/inference.json`` (else
        ``configs/train.json``) where they are plain values, ``label_postprocessing``, ``probability_smoothing``,
        ``expected_volume_ml`` and the test-time views' ``augment_views`` (``view_options``), ``localization``,
        ``atlas_prior``, ``quality_calibration`` and ``warn_dice`` from ``configs/inference.json`` (unless given), and
        the sampling defaults (``steps``, ``num_samples``, ``overlap``) from the same files; ``extra_weights`` (files
        relative to the bundle, e.g. ``models/model_b.pt``) from ``configs/inference.json``: the bundle's further
        weights for ``segment(weight_sets=N)``, of which the first ``weight_sets`` - 1 are loaded (None: as many as
        the bundle's default ``weight_sets`` uses), so that ``weight_sets=1`` runs a bundle whose other sets do not fit
        its ``models/model.pt`` (e.g. after ``medwidit export``). ``bias_correction`` and ``anti_aliasing`` (unless
        given) from ``configs/inference.json`` where it sets them to other than "model", as ``monai.bundle run`` reads
        them.
        """
        bundle_dir = resolve_bundle(bundle_dir)
        checkpoint = bundle_dir / "models" / "model.pt"
        if not checkpoint.is_file():
            raise InputError(f"{bundle_dir}: not a trained bundle (no models/model.pt).")
        defaults = sampling_defaults(bundle_dir)
        sets = defaults["weight_sets"] if weight_sets is None else check_int("weight_sets", weight_sets)
        given = options.get("extra_checkpoints")  # a caller's own further weights replace the bundle's
        extra = bundle_extra_weights(bundle_dir, used=sets - 1) if given is None else list(given)
        if sets > len(extra) + 1:
            where = (
                f"{bundle_dir / 'configs' / 'inference.json'}: weight_sets" if weight_sets is None else "weight_sets"
            )
            raise InputError(
                f"{where} is {sets} but there are {len(extra) + 1} set(s) of weights (models/model.pt and "
                f"{'extra_weights' if given is None else 'extra_checkpoints'})."
            )
        options["extra_checkpoints"] = extra[: sets - 1]
        for key, value in bundle_options(bundle_dir).items():
            if key in ("roi_size", "sw_batch_size") and options.get(key) is None:  # an explicit None: the bundle's
                options[key] = value
        for key, value in bundle_preprocessing_overrides(bundle_dir).items():  # as `monai.bundle run` reads them
            options.setdefault(key, value)
        try:  # the bundle's atlas prior, or a caller's with its files relative to the bundle
            given = options.get("atlas_prior")
            options["atlas_prior"] = (
                bundle_atlas_prior(bundle_dir) if "atlas_prior" not in options
                else check_atlas_prior(given, root=bundle_dir)
            )  # fmt: skip
            # the model's classes, so that a class inference.json names and the model lacks is named with the file
            num_classes = _checkpoint_classes(checkpoint)
            if "label_postprocessing" not in options:
                options["label_postprocessing"] = bundle_label_postprocessing(bundle_dir, num_classes)
            options.setdefault("probability_smoothing", bundle_probability_smoothing(bundle_dir))
            if "expected_volume_ml" not in options:
                options["expected_volume_ml"] = bundle_expected_volumes(bundle_dir, num_classes)
        except ValueError as e:
            raise InputError(str(e)) from e
        predictor = cls.from_checkpoint(checkpoint, **options)
        if options.get("view_options") is None:  # checked against the network's spatial dimensions
            try:
                predictor.view_options = bundle_view_options(bundle_dir, predictor.spatial_dims)
            except ValueError as e:
                raise InputError(str(e)) from e
        if "localization" not in options:  # a caller's own (None: off) replaces the bundle's
            try:
                predictor.localization = bundle_localization(bundle_dir, predictor.spatial_dims)
            except ValueError as e:
                raise InputError(str(e)) from e
        try:  # a caller's own (None: the ensemble's estimate; no warning line) replaces the bundle's
            own = "quality_calibration" in options
            if not own:
                predictor.quality_calibration = bundle_calibration(bundle_dir)
            calibration = predictor.quality_calibration
            # what a report without an atlas prior lacks: the calibration reads evidence only the prior gives
            if not own and calibration and predictor.atlas_prior is None and missing_evidence({}, calibration):
                message = "the bundle's quality_calibration reads the atlas prior's template_dice: without the prior"
                logger.info("%s, the ensemble's own Dice estimate and warn_dice %s", message, predictor.warn_dice)
                predictor.quality_calibration, own = None, True  # as --no-calibration
            if "warn_dice" not in options and not own:  # the bundle's is for its own calibration
                predictor.warn_dice = bundle_warn_dice(bundle_dir, predictor.warn_dice)
        except ValueError as e:
            raise InputError(str(e)) from e
        predictor.sampling_defaults = {**defaults, "weight_sets": sets}  # the sets loaded: model.pt + sets - 1
        return predictor

    ##################################################################################################################
    # one case
    ##################################################################################################################

    def segment(
        self,
        image,
        *,
        affine=None,
        steps: int | None = None,
        num_samples: int | None = None,
        overlap: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool | Callable[[dict], None] = False,
        sampler: str | None = None,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        force_grid: bool = False,
        augment: int | None = None,
        shared_steps: int | None = None,
        weight_sets: int | None = None,
        localize: bool = True,
        atlas: bool = True,
    ) -> Segmentation:
        """Segment one case -> :class:`Segmentation` on the input's grid.

        ``image``: a file path, a list of modality paths, a nibabel image (or a list of them), or an array/tensor
        (*S) or (C, *S) with ``affine`` (without one, 1 mm voxels and a warning). ``generator`` seeds the ensemble
        (default: seed 0, so that a case always gets the same result). ``steps``, ``num_samples``, ``overlap`` left at
        None take ``sampling_defaults``. ``sampler``, ``eta``, ``guidance_scale`` go to
        ``DiffusionSegmenter.sample``. A resampled grid too small to segment is an InputError, and so is one with more
        than ``options.MAX_GRID_GROWTH`` times the input's voxels unless ``force_grid``. ``augment`` N > 1 (None:
        ``sampling_defaults``) adds test-time views (``trust.augmentation_views`` with ``view_options``: flips, voxel
        shifts, intensity curve), each with ``num_samples`` members (N times the cost; the localization pass, which
        has no views, draws N x ``num_samples`` members per set), so that the ``epistemic`` map and the ``quality``
        estimate see more than noise.
        ``shared_steps`` k < steps (None: ``sampling_defaults``): the members share their first k steps, then branch
        (``DiffusionSegmenter.sample``): k + (steps - k) x num_samples network calls per view, not steps x num_samples.
        ``weight_sets`` N (None: ``sampling_defaults``): the first N of ``segmenters`` (independently trained
        weights) each sample every view (N times the cost); 1 is this predictor's own weights alone.
        ``localize`` False skips the coarse pass of ``localization`` (where the predictor has one). The quality
        records ``localization``: None without the pass, else its settings, the share of the foreground its region
        held (``kept``) and whether it was ``applied``. ``atlas`` False skips the ``atlas_prior`` (where the
        predictor has one); the quality records ``atlas_prior`` as ``localization``. With ``bias_retry``, a case
        whose predicted Dice is below ``warn_dice`` is segmented once more with N4 (the quality's ``bias_retry``).
        """
        array, geometry, sampling = self._case_input(
            image, affine, force_grid, steps, num_samples, overlap, sampler, eta, guidance_scale, shared_steps,
            weight_sets,
        )  # fmt: skip
        generator = _case_generator(generator)
        augment = self.resolve_augment(augment)
        localize, atlas = check_bool("localize", localize), check_bool("atlas", atlas)
        start = generator.get_state() if self.bias_retry else None
        prior = self.register_prior(array, geometry.affine, geometry.path) if atlas else (None, False)
        case = (array, geometry, sampling, generator, augment, localize, prior, progress)
        result = self._segment_case(self.preprocessing, *case)
        threshold = self.case_warn_dice(result.quality)
        if start is None or threshold is None or result.quality["min_predicted_dice"] >= threshold:
            return self._judged(result)
        name = geometry.path or "array"
        logger.info("%s: predicted Dice below %s: segmenting again with N4", name, threshold)
        generator.set_state(start)  # the retry draws what a run with N4 from the first would
        try:
            retry = self._segment_case({**self.preprocessing, "bias_correction": BIAS_RETRY_CORRECTION}, *case)
        except RuntimeError as e:  # SimpleITK's, inside MONAI's "applying transform": the first result stands
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            logger.warning("%s: the retry with N4 failed (%s); the first result is kept", name, one_line(cause))
            result.quality["bias_retry"] = {"correction": BIAS_RETRY_CORRECTION, "failed": one_line(cause)}
            return self._judged(result)
        first, second = (r.quality["min_predicted_dice"] for r in (result, retry))
        kept = retry if second > first else result
        kept.quality["bias_retry"] = {
            "correction": BIAS_RETRY_CORRECTION,
            "first_predicted_dice": first,
            "retry_predicted_dice": second,
            "kept": "retry" if kept is retry else "first",
        }
        return self._judged(kept)

    def _judged(self, result: Segmentation) -> Segmentation:
        """``result`` whose quality report holds ``warnings``: the causes of its warning line at this predictor's
        threshold (``files.case_warnings``: [] none, None without a threshold), as ``medwidit segment`` prints them;
        a run of ``predict_from_files`` with its own ``warn_dice`` judges again there (from a review: the verdict
        was only printed)."""
        result.quality = {
            **result.quality,
            "warnings": case_warnings(result.quality, self.case_warn_dice(result.quality)),
        }
        return result

    def _segment_case(
        self, preprocessing: dict, array, geometry, sampling: dict, generator, augment: int, localize: bool,
        registered: tuple[AtlasFit | None, bool], progress,
    ) -> Segmentation:  # fmt: skip
        """One pass of :meth:`segment` under ``preprocessing`` (the predictor's, or the retry's with N4): the
        localization pass, the full-resolution ensemble under the ``registered`` atlas prior (:meth:`register_prior`'s
        pair: it reads the case, not its preprocessing) and its disagreement with the coarse pass."""
        views = augmentation_views(augment, self.spatial_dims, **self.view_options) if augment > 1 else None
        region, coarse = None, None
        if localize and self.localization is not None:
            coarse = self._coarse_pass(array, geometry, preprocessing, generator, _coarse_sampling(sampling, augment))
            if coarse is not None:
                region = foreground_region(coarse.label_map, geometry.affine, self.localization["margin_mm"])
        prior, failed = registered
        result = self._sample_case(
            array, geometry, preprocessing, sampling, generator, views=views, region=region, prior=prior,
            progress=progress,
        )  # fmt: skip
        if failed:
            result.quality["atlas_prior"] = self.atlas_entry(None, False)
        if coarse is not None:  # the coarse pass cut where the members were: the map shows where they disagree
            cut = bool((result.quality["atlas_prior"] or {}).get("applied"))
            reference = (
                outside_to_background(coarse.probability, prior.region, prior.core, self.atlas_prior["core_label"])
                if cut else coarse.probability
            )  # fmt: skip
            result.disagreement = scale_disagreement(result.probability, reference)
        return result

    def case_warn_dice(self, quality: dict | None) -> float | None:
        """The threshold a case's predicted Dice is judged by, for its warning line and the N4 retry alike:
        ``warn_dice`` as it is where ``warn_dice_given`` (``medwidit segment --warn-dice``); else
        ``calibration.case_warn_dice``'s (the ensemble's threshold where the case's calibration was skipped). From a
        review: with ``--warn-dice 0.9`` such a case was retried with N4 below 0.955 and warned below 0.9."""
        return self.warn_dice if self.warn_dice_given else case_warn_dice(quality, self.warn_dice)

    def register_prior(self, array: np.ndarray, affine: np.ndarray, name=None) -> tuple[AtlasFit | None, bool]:
        """(the ``atlas_prior``'s template registered onto the case's grid (``atlas.AtlasFit``: its mask and the
        region within ``margin_mm``), False), or (None, False) without a prior, or (None, True) with a warning where
        the template does not register (a field of view too small for the registration's coarsest level): the case
        is then segmented without the prior."""
        if self.atlas_prior is None:
            return None, False
        try:
            return fit_atlas(array, affine, self.atlas_prior), False
        except RuntimeError as e:  # SimpleITK's, whose words name its optimizer's internals (m_Scales, epsilon)
            extent = " x ".join(
                f"{v:.0f}" for v in np.asarray(array.shape[-3:]) * np.linalg.norm(affine[:3, :3], axis=0)
            )
            logger.warning(
                "%s: no atlas prior: the template did not register on this field of view (%s mm; the registration "
                "starts at 16 mm voxels, so a small or thin one cannot take it) (SimpleITK: %s)",
                name or "array",
                extent,
                one_line(e),
            )
            return None, True

    def atlas_entry(
        self,
        kept: float | None,
        applied: bool,
        dice: float | None = None,
        filled: float | None = None,
        guard_kept: float | None = None,
        network_voxels: int | None = None,
        information: float | None = None,
    ) -> dict:
        """The quality report's ``atlas_prior``: the margin, ``min_kept`` (the template's files are the bundle's,
        named in the run record), the share ``kept`` and the ``template_dice`` of the written labels with the
        registered template's mask (``atlas.template_dice``; both None where the template did not register) and
        ``applied``; with a ``core_mm``, it, ``core_filled``, the share of the foreground the core added
        (``localize.fill_core``; None where the template did not register), and ``warn_filled``; with a
        ``kept_margin_mm``, it and ``guard_kept``, the share within it, which ``min_kept`` judged; where a core was
        applied, ``network_voxels`` (``atlas.network_voxels``: 0 where the voxels are coarser than the margin);
        ``template_information`` (``atlas.template_information``; None where the template did not register) and,
        where the prior sets one, ``warn_information``."""
        entry = {"margin_mm": self.atlas_prior["margin_mm"], "min_kept": self.atlas_prior["min_kept"], "kept": kept,
                 "template_dice": dice, "applied": applied}  # fmt: skip
        if self.atlas_prior["core_mm"] is not None:
            entry.update(core_mm=self.atlas_prior["core_mm"], core_filled=filled,
                         warn_filled=self.atlas_prior["warn_filled"])  # fmt: skip
        if self.atlas_prior["kept_margin_mm"] is not None:
            entry.update(kept_margin_mm=self.atlas_prior["kept_margin_mm"], guard_kept=guard_kept)
        if applied and network_voxels is not None:
            entry["network_voxels"] = network_voxels
        entry["template_information"] = information
        if self.atlas_prior.get("warn_information") is not None:
            entry["warn_information"] = self.atlas_prior["warn_information"]
        return entry

    def localization_pass(
        self,
        image,
        *,
        affine=None,
        generator: torch.Generator | None = None,
        force_grid: bool = False,
        augment: int | None = None,
        **sampling,
    ) -> Segmentation | None:
        """The coarse pass of :meth:`segment` alone: the case sampled on ``localization``'s grid ->
        :class:`Segmentation` on the input's grid (labels, probabilities and entropy; no aleatoric and epistemic maps
        or quality estimate), from which ``segment`` keeps the foreground within ``margin_mm``;
        None without ``localization`` or where its grid is too small (with a warning). ``sampling``: ``segment``'s
        ``steps``, ``num_samples``, ``overlap``, ``sampler``, ``eta``, ``guidance_scale``, ``shared_steps``,
        ``weight_sets``; ``augment`` as ``segment``'s (the pass has no views: it draws ``augment`` x ``num_samples``
        members per set)."""
        generator = _case_generator(generator)
        array, geometry, sampling = self._case_input(image, affine, force_grid, **sampling)
        if self.localization is None:
            return None
        sampling = _coarse_sampling(sampling, self.resolve_augment(augment))
        return self._coarse_pass(array, geometry, self.preprocessing, generator, sampling)

    def _case_input(
        self, image, affine, force_grid, steps=None, num_samples=None, overlap=None, sampler=None, eta=0.0,
        guidance_scale=1.0, shared_steps=None, weight_sets=None,
    ) -> tuple[np.ndarray, ImageGeometry, dict]:  # fmt: skip
        """The case read and its grid checked, and the sampling arguments resolved (None: ``sampling_defaults``)."""
        steps, num_samples, overlap = self.resolve_sampling(steps, num_samples, overlap)
        shared_steps = self.resolve_shared_steps(shared_steps, steps)
        array, geometry = read_input(image, affine, spatial_dims=self.spatial_dims, num_modalities=self.num_modalities)
        name = geometry.path or "array"
        force = check_bool("force_grid", force_grid)
        check_grid(array.shape[1:], geometry.affine, self.preprocessing["spacing"], name, force=force)
        sampling = {
            "steps": steps,
            "num_samples": num_samples,
            "overlap": overlap,
            "sampler": sampler,
            "eta": eta,
            "guidance_scale": guidance_scale,
            "shared_steps": shared_steps,
            "segmenters": self.select_weights(weight_sets),
        }
        return array, geometry, sampling

    def _coarse_pass(
        self, array, geometry: ImageGeometry, preprocessing: dict, generator, sampling: dict
    ) -> Segmentation | None:
        """The case sampled on ``localization``'s coarser grid with the same weights, sampling (``_coarse_sampling``'s
        members) and post-processing (no test-time views), from a copy of ``generator``'s state (the
        full-resolution pass then draws exactly what it would without it); None (with a warning) where that grid is
        too small."""
        name = geometry.path or "array"
        coarse_grid = {**preprocessing, "spacing": self.localization["spacing"]}
        try:
            check_grid(array.shape[1:], geometry.affine, coarse_grid["spacing"], name, force=True)
        except InputError as e:
            logger.warning("%s: not localised (%s)", name, e)
            return None
        copy = torch.Generator(device=generator.device)
        copy.set_state(generator.get_state())
        return self._sample_case(
            array, geometry, coarse_grid, sampling, copy, views=None, region=None, uncertainty=False, smooth=False
        )

    def _sample_case(
        self,
        array: np.ndarray,
        geometry: ImageGeometry,
        preprocessing: dict,
        sampling: dict,
        generator: torch.Generator,
        *,
        views,
        region: np.ndarray | None,
        prior: AtlasFit | None = None,
        progress: bool | Callable[[dict], None] = False,
        uncertainty: bool = True,
        smooth: bool = True,
    ) -> Segmentation:
        """One case (C, *S) on the grid ``preprocessing`` makes, every member background outside ``region`` (bool
        (*S) on the input grid, resampled with the image by nearest neighbour) unless it holds less than
        ``localization["min_kept"]`` of their foreground, then outside ``prior``'s region (the same, with
        ``atlas_prior["min_kept"]``) -> :class:`Segmentation` on the input's grid;
        ``uncertainty`` False (the coarse pass, which only needs its labels): without the aleatoric and epistemic
        maps and the quality estimate, whose inversion to the input grid would be thrown away; ``smooth`` False (the
        coarse pass too): its probabilities as sampled, not ``probability_smoothing``'s, so that the region it gives is
        the one without smoothing."""
        name = geometry.path or "array"
        sampling = dict(sampling)
        segmenters = sampling.pop("segmenters")
        steps, num_samples = sampling["steps"], sampling["num_samples"]
        spacing_key = "spacing" if self.segmenter.spacing_conditioning else None  # the grid's and the acquisition's mm
        # one label, resampled by nearest neighbour
        prior_core, prior_guard = (None, None) if prior is None else (prior.core, prior.guard)
        bits = encode_regions(geometry.shape, region, None if prior is None else prior.region, prior_core, prior_guard)
        region_key = None if bits is None else "region"
        pre = Compose(
            preprocessing_transforms(
                preprocessing, label_key=region_key, load=False, spacing_key=spacing_key, device=self.device
            )
        )
        arrays = {"image": torch.from_numpy(array)}
        if bits is not None:
            arrays["region"] = torch.from_numpy(bits[None])
        # "original_affine" as LoadImaged records it (the acquisition's own spacing), in a meta dict per key: a
        # MetaTensor writes its affine into the dict it is given
        inputs = {
            key: MetaTensor(a, affine=torch.as_tensor(geometry.affine), meta={"original_affine": geometry.affine})
            for key, a in arrays.items()
        }
        data = pre(inputs)
        condition = data["image"].as_tensor()[None].to(self.device)  # (1, C, *S')
        spacing = None if spacing_key is None else data[spacing_key][None].to(self.device)  # (1, 2N)
        within = prior_within = core_within = guard_within = None  # (1, 1, *S')
        if bits is not None:
            within, prior_within, core_within, guard_within = decode_regions(
                data["region"].as_tensor()[None].to(self.device), region=region is not None, prior=prior is not None,
                core=prior_core is not None, guard=prior_guard is not None,
            )  # fmt: skip
        logger.info("segmenting %s: grid %s", name, tuple(condition.shape[2:]))
        augment = 1 if views is None else len(views)
        callback = progress_callback(progress, steps * augment * len(segmenters), Path(name).name)
        try:
            summary = sample_ensemble(
                segmenters,
                condition,
                **sampling,
                **self.window_options,
                wrap_model_fn=self.wrap_model_fn,
                progress=None if callback is None else partial(_view_steps, callback, steps),
                generator=generator,
                views=views,
                spacing=spacing,
                region=within,
                region_min_kept=0.0 if region is None else self.localization["min_kept"],
                prior=prior_within,
                prior_min_kept=0.0 if prior is None else self.atlas_prior["min_kept"],
                core=core_within,
                core_label=1 if self.atlas_prior is None else self.atlas_prior["core_label"],
                prior_guard=guard_within,
            )
        finally:
            getattr(callback, "close", lambda: None)()
        mean = summary["mean_probability"][0]
        probability, entropy = self.invert(data, pre, self.smooth(mean) if smooth else mean)  # smoothed on the patches
        if smooth and self.probability_smoothing:  # the uncertainty is the members' as sampled, not smoothed
            entropy = self.invert(data, pre, mean)[1]
        if tuple(probability.shape[1:]) != geometry.shape:
            raise RuntimeError(f"inverted grid {probability.shape[1:]} differs from the input's {geometry.shape}")
        label_map = apply_label_postprocessing(probability.argmax(0), self.label_postprocessing)  # volumes: as written
        if not uncertainty:
            return Segmentation(
                label_map=label_map, probability=probability, entropy=entropy[0], geometry=geometry,
                num_samples=num_samples, class_names=self.class_names,
            )  # fmt: skip
        maps = uncertainty_maps(data, pre, entropy[0], summary["epistemic"][0])
        kept = applied = None
        if region is not None:
            kept, applied = float(summary["region_kept"][0]), bool(summary["region_applied"][0])
            if not applied:  # the case's warning line says it too (predict_from_files, the CLI)
                logger.info("%s: not localised: the coarse pass's region holds %.4f of the foreground", name, kept)
        atlas = None
        if prior is not None:
            filled = float(summary["core_filled"][0]) if "core_filled" in summary else None
            guarded = float(summary["prior_guard_kept"][0]) if "prior_guard_kept" in summary else None
            atlas = self.atlas_entry(float(summary["prior_kept"][0]), bool(summary["prior_applied"][0]),
                                     template_dice(label_map, prior.mask), filled, guarded,
                                     network_voxels=network_voxels(prior), information=prior.information)  # fmt: skip
            if not atlas["applied"]:
                share = atlas["kept"] if atlas.get("guard_kept") is None else atlas["guard_kept"]
                logger.info("%s: no atlas prior: its region holds %.4f of the foreground", name, share)
        quality = self.case_quality(
            label_map, geometry.affine, summary["estimated_dice"][0].tolist(), maps, views=augment,
            num_samples=num_samples, weight_sets=len(segmenters), kept=kept, applied=applied, image=array,
            atlas=atlas,
        )  # fmt: skip
        return Segmentation(
            label_map=label_map,
            probability=probability,
            entropy=entropy[0],
            geometry=geometry,
            num_samples=num_samples,
            aleatoric=maps["aleatoric"],
            epistemic=maps["epistemic"],
            quality=quality,
            class_names=self.class_names,
        )

    def case_quality(
        self,
        label_map,
        affine,
        ensemble_dice,
        maps,
        *,
        views,
        num_samples,
        weight_sets,
        kept=None,
        applied=None,
        image=None,
        atlas=None,
    ) -> dict:
        """A case's quality report as this predictor writes it: ``trust.quality_report`` of the written labels with
        the ensemble's own Dice estimate per class (and ``boundary_overlap`` with ``image``, the case (C, *S) on the
        labels' grid), the localization entry (its settings, the share ``kept`` and
        whether the region was ``applied``; None where no region was cut or offered), the ``atlas_prior`` entry
        (``atlas``: its margin, ``min_kept``, ``kept``, ``template_dice`` and ``applied``; None without one), then
        ``quality_calibration`` (not applied where the report lacks the evidence it reads:
        ``calibration.missing_evidence``).
        ``benchmarks/trust.py`` scores the same report."""
        quality = quality_report(
            label_map, affine, ensemble_dice, maps, views=views, num_samples=num_samples, weight_sets=weight_sets,
            expected_volume_ml=self.expected_volume_ml, image=image,
        )  # fmt: skip
        localized = None if kept is None else {**self.localization, "kept": kept, "applied": applied}
        return apply_calibration({**quality, "localization": localized, "atlas_prior": atlas}, self.quality_calibration)

    def select_weights(self, count: int | None) -> list[DiffusionSegmenter]:
        """The first ``count`` (None: ``sampling_defaults``'s ``weight_sets``) of ``segmenters``; a ValueError naming
        ``weight_sets`` where there are fewer."""
        count = self.sampling_defaults["weight_sets"] if count is None else count
        hint = (  # a bundle may ship more: from_bundle loads as many as asked for
            f" (this predictor holds {len(self.segmenters)} set(s) of weights; Predictor.from_bundle(weight_sets=N) "
            "loads N of a bundle's, from_checkpoint(path, extra_checkpoints=[...]) adds sets to a checkpoint)"
        )
        check_int("weight_sets", count, high=len(self.segmenters), hint=hint)
        return self.segmenters[:count]

    def output_settings(self, options: Mapping, *, seed: int, augment: int, weight_sets: int) -> dict:
        """What a case's outputs depend on, as JSON values: a digest of each set of weights sampled, the sampling
        ``options`` (``sampling_options``'s), ``seed``, ``augment``, ``weight_sets``, and this predictor's pre- and
        post-processing, views, localization, atlas prior (its files by content), calibration, expected volumes and
        class names; not where it runs (device, precision, windows). A case's marker keeps them, so that ``resume``
        never takes a case finished otherwise for this run's (``outputs.changed_settings``)."""
        prior = self.atlas_prior
        if prior is not None:  # by content: one template under another name or folder is the same prior, and the
            # same name over another file is not
            prior = {**prior, **{key: [sha256_file(f) for f in image_files(prior[key])] for key in ("image", "label")}}
        calibration = self.quality_calibration
        if isinstance(calibration, Mapping):  # where it was chosen is a note, not a setting
            calibration = {key: value for key, value in calibration.items() if key != "chosen_on"}
        settings = {
            **options,
            "sampler": options["sampler"] or DEFAULT_SAMPLER[self.segmenter.scheduler_name],
            "seed": seed,
            "augment": augment,
            "weight_sets": weight_sets,
            "weights": [state_digest(segmenter) for segmenter in self.select_weights(weight_sets)],
            "preprocessing": self.preprocessing,
            "label_postprocessing": self.label_postprocessing,
            "probability_smoothing": self.probability_smoothing,
            "view_options": self.view_options if augment > 1 else None,
            "localization": self.localization,
            "atlas_prior": prior,
            "quality_calibration": calibration,
            "bias_retry": self.warn_dice if self.bias_retry else None,  # the threshold below which a case is retried
            "expected_volume_ml": self.expected_volume_ml,  # the quality report's and the calibration's
            "class_names": self.class_names,  # the statistics' names
        }
        return settings_json(settings)

    def resolve_augment(self, augment: int | None) -> int:
        """Test-time views per case: ``augment``, or ``sampling_defaults``'s when None (a ValueError unless an int
        >= 1)."""
        return check_int("augment", self.sampling_defaults["augment"] if augment is None else augment)

    def check_options(
        self,
        *,
        steps=None,
        num_samples=None,
        overlap=None,
        sampler=None,
        eta=0.0,
        guidance_scale=1.0,
        shared_steps=None,
    ) -> None:
        """Every sampling option checked once, before any case is read (ValueError naming the option)."""
        steps, num_samples, overlap = self.resolve_sampling(steps, num_samples, overlap)
        numbers = {
            "eta": eta,
            "guidance_scale": guidance_scale,
            "shared_steps": self.resolve_shared_steps(shared_steps, steps),
        }
        check_sampling(steps=steps, num_samples=num_samples, overlap=overlap, **numbers)
        probe = torch.zeros((1, self.num_modalities, *[1] * self.spatial_dims))  # only its rank is looked at
        self.segmenter.check_sampling(
            probe, steps=steps, num_samples=num_samples, sampler=sampler, eta=eta, guidance_scale=guidance_scale
        )

    def smooth(self, probability: torch.Tensor) -> torch.Tensor:
        """Mean class probabilities (K, *S') on the model's grid -> (K, *S') of the same dtype, smoothed as this
        predictor writes them (``probability_smoothing``; the input itself where it is 0); :meth:`invert` then takes
        them to the input's grid."""
        if not self.probability_smoothing:
            return probability
        return smooth_probability(probability, self.probability_smoothing).to(probability.dtype)

    def wrap_model_fn(self, model_fn: Callable) -> Callable:
        """``model_fn(x, t, cond)`` run under this predictor's autocast (``precision``); itself where that is float32.

        ``sample_ensemble(..., wrap_model_fn=predictor.wrap_model_fn)`` samples as :meth:`segment` does."""
        return autocast_model_fn(model_fn, self.device.type, self.autocast_dtype)

    def invert(self, data: dict, pre: Compose, probability: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Undo the preprocessing: probability (K, *S') on the grid ``pre`` made for ``data`` (``data = pre(...)``, its
        ``"image"`` a MetaTensor carrying the applied transforms) -> float32 (K, *S) numpy probabilities on the input's
        grid, by MONAI ``Invertd`` (linear interpolation; clamped to [0, 1] and renormalised), and their entropy
        H(p) (1, *S) in nats. The entropy is computed on the input's grid from the probabilities written, not
        interpolated: between two confident voxels of different classes an interpolated entropy read 0 where the
        probabilities read 0.5 / 0.5."""
        image = data["image"]
        maps = {"probability": MetaTensor(probability.float().cpu(), affine=image.affine)}
        inverted = Invertd(list(maps), transform=pre, orig_keys="image", nearest_interp=False)({**data, **maps})
        probability = inverted["probability"].as_tensor().clamp_(0, 1)
        probability /= probability.sum(0, keepdim=True).clamp_min(1e-12)  # interpolation keeps sums, up to rounding
        return probability.numpy().astype(np.float32), entropy_of(probability, dim=0).numpy().astype(np.float32)

    ##################################################################################################################
    # files
    ##################################################################################################################

    # the case loop over files and folders is .files.predict_from_files, a function of the predictor (this class is
    # about one image); bound here as the method users call, with its signature and docs
    predict_from_files = predict_from_files


def state_digest(module: torch.nn.Module) -> str:
    """Hex SHA-256 of a module's state (names, dtypes, shapes and bytes): the same weights, however they were loaded
    (a bundle, a checkpoint, an object built in a notebook), give the same digest."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_checkpoint(path: str | os.PathLike) -> tuple[DiffusionSegmenter, dict]:
    """``load_segmenter`` on CPU; an InputError naming the file where it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file.")
    try:
        return load_segmenter(path, map_location="cpu")
    except Exception as e:  # torch.load raises pickle, struct, zip and runtime errors on a bad file
        raise InputError(f"{path}: not a readable medwidit checkpoint ({checkpoint_problem(path, e)}).") from e


def _check_companion(primary: DiffusionSegmenter, extra, index: int) -> DiffusionSegmenter:
    """``extra_segmenters[index]``, checked to sample the same task as ``primary`` on the same windows."""
    if not isinstance(extra, DiffusionSegmenter):
        raise TypeError(f"extra_segmenters[{index}] must be a DiffusionSegmenter, got {type(extra).__name__}.")
    facts = {
        "classes": lambda s: s.num_classes,
        "image channels": lambda s: getattr(s.net, "cond_channels", None),
        "spatial dims": lambda s: getattr(s.net, "spatial_dim", 3),
        "size multiple": lambda s: network_size_multiple(s.net),
        "spacing conditioning": lambda s: s.spacing_conditioning,
        "scheduler": lambda s: s.scheduler_name,  # one --sampler must suit every set
    }
    for what, fact in facts.items():
        if fact(extra) != fact(primary):
            raise ValueError(
                f"extra_segmenters[{index}] has {what} {fact(extra)} where the predictor's segmenter has "
                f"{fact(primary)}; an ensemble's weights must sample the same task on the same windows."
            )
    return extra


def _view_steps(callback: Callable[[dict], None], steps: int, info: dict) -> None:
    """One progress bar over every view's steps: view g's step i is step g * steps + i."""
    callback({**info, "i": info.get("view", 0) * steps + info.get("i", 0)})


def uncertainty_maps(data: dict, pre: Compose, total: np.ndarray, epistemic: torch.Tensor) -> dict[str, np.ndarray]:
    """The entropy maps (*S) on the input grid: ``total``, :meth:`Predictor.invert`'s H(p) there; ``epistemic``, the
    groups' mutual information (1, *S') on the model's grid, taken there by MONAI ``Invertd`` (linear); ``aleatoric``,
    the rest of the total. Interpolated, the epistemic map stays below H(p) of the interpolated p (entropy is
    concave), so the rest is >= 0; what resampling adds between voxels (partial volume) counts as aleatoric, and one
    group's epistemic map stays 0."""
    meta = {"epistemic": MetaTensor(epistemic.float().cpu(), affine=data["image"].affine)}
    inverted = Invertd(list(meta), transform=pre, orig_keys="image", nearest_interp=False)({**data, **meta})
    epistemic = np.minimum(inverted["epistemic"].as_tensor().clamp_(min=0)[0].numpy().astype(np.float32), total)
    return {"total": total, "aleatoric": total - epistemic, "epistemic": epistemic}


def _case_generator(generator: torch.Generator | None) -> torch.Generator:
    """A case's generator: the caller's, checked, or seed 0 (a case samples the same whatever ran before it)."""
    return torch.Generator().manual_seed(0) if check_generator(generator) is None else generator


def _coarse_sampling(sampling: dict, augment: int) -> dict:
    """The localization pass's sampling: it has no test-time views, so each set draws as many members as the full
    pass's views give it (``augment`` x ``num_samples``): views that stand in for samples (the same network calls)
    leave the region as it was."""
    return {**sampling, "num_samples": sampling["num_samples"] * augment}


# medwidit.segment's options: Predictor.segment's, and the predictor's (its constructor's and from_checkpoint's:
# precision, bias correction, anti-aliasing, the bundle's settings) as the CLI passes them; not preprocessing, the
# weights' own, which from_checkpoint passes
SEGMENT_OPTIONS = set(inspect.signature(Predictor.segment).parameters) - {"self", "image", "affine"}
BUILD_OPTIONS = {
    *inspect.signature(Predictor.__init__).parameters,
    *inspect.signature(Predictor.from_checkpoint).parameters,
} - {"self", "cls", "path", "options", "segmenter", "device", "extra_segmenters", "preprocessing"}


def segment(
    image, *, checkpoint=None, bundle=None, device: str = "auto", affine=None, seed: int | None = None, **options
) -> Segmentation:
    """One-call segmentation for notebooks: ``segment("scan.nii.gz", steps=10, seed=1)``; the same path as ``medwidit
    segment`` (``Predictor.from_checkpoint``, or ``from_bundle`` with a bundle folder, a shipped bundle's name, or by
    default the shipped brain-extraction bundle; then ``Predictor.segment``, whose sampling defaults are the bundle's);
    ``seed`` seeds the ensemble (default 0, as ``medwidit segment --seed``); ``probability_smoothing`` (None: the
    bundle's) goes to the predictor, as ``medwidit segment --probability-smoothing``, and so do the predictor's other
    settings (``precision``, ``bias_correction``, ``anti_aliasing``, ...); ``localize=False`` and
    ``atlas=False`` skip the bundle's localization pass and atlas prior, as ``--no-localize`` and
    ``--no-atlas-prior``."""
    if checkpoint is not None and bundle is not None:
        raise ValueError("give checkpoint= (a .pt file) or bundle= (a bundle folder or name), not both.")
    if seed is not None and options.get("generator") is not None:
        raise ValueError("give seed= or generator=, not both.")
    if seed is not None:
        options["generator"] = torch.Generator().manual_seed(check_seed(seed))
    unknown = sorted(set(options) - SEGMENT_OPTIONS - BUILD_OPTIONS)
    if unknown:  # it was Predictor.segment's TypeError, naming a function the caller did not call
        raise TypeError(
            f"medwidit.segment() got unknown option(s) {', '.join(unknown)}; it takes the predictor's "
            f"({', '.join(sorted(BUILD_OPTIONS))}) and Predictor.segment's ({', '.join(sorted(SEGMENT_OPTIONS))})."
        )
    built = {name: options.pop(name) for name in list(options) if name in BUILD_OPTIONS}
    if built.get("probability_smoothing", 0.0) is None:  # None: the bundle's
        del built["probability_smoothing"]
    predictor = (
        Predictor.from_checkpoint(checkpoint, device=device, **built)
        if checkpoint is not None
        else Predictor.from_bundle(bundle, device=device, weight_sets=options.get("weight_sets"), **built)
    )
    return predictor.segment(image, affine=affine, **options)
