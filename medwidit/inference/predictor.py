"""Whole-volume segmentation, nnU-Net style: one predictor class, loaded from a checkpoint or a bundle, that both the
CLI and notebooks call.

    image --read, exact geometry--> MONAI pre-transforms (the training ones) --> ensemble of diffusion samples, each
    step stitched over windows --> mean probability, entropy --> MONAI Invertd --> label map, probabilities and
    uncertainty on the input's grid (nibabel images; files with the input's spacing, origin and direction)
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from monai.utils import ensure_tuple_rep

from medwidit.data.transforms import check_preprocessing, preprocessing_transforms
from medwidit.diffusion import DiffusionSegmenter, load_segmenter
from medwidit.nets.contract import network_size_multiple

from .cases import Case, find_cases
from .figure import save_overlay_figure
from .io import (
    ImageGeometry,
    InputError,
    OutputError,
    OutputImage,
    check_output_dir,
    read_array,
    read_image,
    read_nibabel,
    to_nibabel,
    write_images,
)
from .options import autocast_dtype, bundle_options, progress_callback, resolve_device
from .sliding import SlidingWindowDenoiser, sample_ensemble

__all__ = ["CaseResult", "Predictor", "Segmentation", "segment"]

logger = logging.getLogger(__name__)

DEFAULT_ROI = 96


@dataclass
class Segmentation:
    """A case's results on the input's grid: arrays, and the same as nibabel images (``labels``, ...)."""

    label_map: np.ndarray  # (*S) int, in 0..K-1
    probability: np.ndarray  # (K, *S) float32, mean over the ensemble
    entropy: np.ndarray  # (*S) float32, predictive entropy in nats (0 .. log K)
    geometry: ImageGeometry
    num_samples: int

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


@dataclass
class CaseResult:
    """What ``predict_from_files`` did with one case: ``status`` is done, skipped or failed (with ``message``)."""

    name: str
    status: str
    outputs: list[Path] = field(default_factory=list)
    message: str | None = None
    seconds: float = 0.0


class Predictor:
    """Segments whole volumes with a :class:`DiffusionSegmenter` and the pre-transforms it was trained with.

    Args:
        segmenter: the model; its net's ``size_multiple`` (the network contract) sets the divisibility of windows.
        preprocessing: the checkpoint's ``"preprocessing"`` dict (see ``medwidit.data.transforms``).
        roi_size: sliding-window size (default: the training crop where known, else 96 per axis).
        sw_batch_size: windows per network call.
        max_whole_voxels: run the network on the whole volume when batch x voxels is at most this (default:
            ``sw_batch_size * prod(roi_size)``); 0 forces windows.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: network autocast dtype, ``auto`` (bfloat16 on CUDA where supported, else float16; float32 on
            CPU), ``float32``, ``bfloat16`` or ``float16``. Sampler arithmetic and window blending stay float32.
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
    ) -> None:
        if not isinstance(segmenter, DiffusionSegmenter):
            raise TypeError(f"segmenter must be a DiffusionSegmenter, got {type(segmenter).__name__}.")
        self.device = resolve_device(device)
        self.segmenter = segmenter.to(self.device).eval()
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
        self.roi_size = [int(roi_size)] * self.spatial_dims if isinstance(roi_size, int) else [int(r) for r in roi_size]
        self.sw_batch_size, self.max_whole_voxels = sw_batch_size, max_whole_voxels
        SlidingWindowDenoiser(segmenter.net, self.roi_size, sw_batch_size=sw_batch_size, max_whole_voxels=0)  # checks
        self.precision = precision
        self.autocast_dtype = autocast_dtype(self.device, precision)

    @property
    def num_modalities(self) -> int:
        return self.preprocessing["num_modalities"]

    @property
    def num_classes(self) -> int:
        return self.segmenter.num_classes

    ##################################################################################################################
    # loading
    ##################################################################################################################

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **options) -> Predictor:
        """A predictor from a medwidit checkpoint (``save_segmenter``'s file, config holding ``"preprocessing"``)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such checkpoint file.")
        try:
            segmenter, config = load_segmenter(path, map_location="cpu")
        except Exception as e:  # torch.load raises pickle, struct, zip and runtime errors on a bad file
            raise InputError(f"{path}: not a readable medwidit checkpoint ({' '.join(str(e).split())[:200]}).") from e
        if "preprocessing" not in config:
            logger.warning("%s has no 'preprocessing' in its config; using the defaults.", path)
        options.setdefault("roi_size", config.get("roi_size"))
        return cls(segmenter, preprocessing=config.get("preprocessing"), **options)

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike, **options) -> Predictor:
        """A predictor from a MONAI bundle folder: weights in ``models/model.pt``; ``roi_size`` and
        ``sw_batch_size`` from ``configs/inference.json`` (else ``configs/train.json``) where they are plain values."""
        bundle_dir = Path(bundle_dir)
        checkpoint = bundle_dir / "models" / "model.pt"
        if not checkpoint.is_file():
            raise InputError(f"{bundle_dir}: not a trained bundle (no models/model.pt).")
        for key, value in bundle_options(bundle_dir).items():
            if key in ("roi_size", "sw_batch_size"):
                options.setdefault(key, value)
        return cls.from_checkpoint(checkpoint, **options)

    ##################################################################################################################
    # one case
    ##################################################################################################################

    def segment(
        self,
        image,
        *,
        affine=None,
        steps: int = 10,
        num_samples: int = 4,
        overlap: float = 0.5,
        generator: torch.Generator | None = None,
        progress: bool | Callable[[dict], None] = False,
    ) -> Segmentation:
        """Segment one case -> :class:`Segmentation` on the input's grid.

        ``image``: a file path, a list of modality paths, a nibabel image (or a list of them), or an array/tensor
        (*S) or (C, *S) with ``affine`` (default identity). ``generator`` seeds the ensemble (default: seed 0, so
        that a case always gets the same result).
        """
        array, geometry = self._read(image, affine)
        pre = Compose(preprocessing_transforms(self.preprocessing, load=False))
        data = pre({"image": MetaTensor(torch.from_numpy(array), affine=torch.as_tensor(geometry.affine))})
        condition = data["image"].as_tensor()[None].to(self.device)  # (1, C, *S')
        logger.info("segmenting %s: grid %s", geometry.path or "an array", tuple(condition.shape[2:]))
        summary = sample_ensemble(
            self.segmenter, condition, steps=steps, num_samples=num_samples, roi_size=self.roi_size, overlap=overlap,
            sw_batch_size=self.sw_batch_size, max_whole_voxels=self.max_whole_voxels, wrap_model_fn=self._autocast,
            generator=generator if generator is not None else torch.Generator().manual_seed(0),
            progress=progress_callback(progress, steps, f"{Path(geometry.path or 'array').name}"),
        )
        probability, entropy = self._invert(data, pre, summary["mean_probability"][0], summary["entropy"][0])
        if tuple(probability.shape[1:]) != geometry.shape:
            raise RuntimeError(f"inverted grid {probability.shape[1:]} differs from the input's {geometry.shape}")
        return Segmentation(
            label_map=probability.argmax(0), probability=probability, entropy=entropy[0], geometry=geometry,
            num_samples=num_samples,
        )

    def _autocast(self, model_fn):
        if self.autocast_dtype is None:
            return model_fn

        def autocast_model_fn(x, t, cond):
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                return model_fn(x, t, cond)

        return autocast_model_fn

    def _invert(self, data: dict, pre: Compose, probability: torch.Tensor, entropy: torch.Tensor):
        """Map (K, *S') and (1, *S') maps back onto the input grid with MONAI ``Invertd`` (linear interpolation)."""
        image = data["image"]
        maps = {
            "probability": MetaTensor(probability.float().cpu(), affine=image.affine),
            "entropy": MetaTensor(entropy.float().cpu(), affine=image.affine),
        }
        inverted = Invertd(list(maps), transform=pre, orig_keys="image", nearest_interp=False)({**data, **maps})
        probability = inverted["probability"].as_tensor().clamp_(0, 1)
        probability /= probability.sum(0, keepdim=True).clamp_min(1e-12)  # interpolation keeps sums, up to rounding
        return probability.numpy().astype(np.float32), inverted["entropy"].as_tensor().clamp_(min=0).numpy()

    def _read(self, image, affine) -> tuple[np.ndarray, ImageGeometry]:
        """Any accepted input -> (float32 (C, *S) array, geometry), checking modalities, dimensions, finiteness."""
        items = list(image) if isinstance(image, (list, tuple)) else [image]
        if isinstance(image, (np.ndarray, torch.Tensor)):
            array, geometry = read_array(image, affine, spatial_dims=self.spatial_dims)
            if array.shape[0] != self.num_modalities:
                raise InputError(f"array: {array.shape[0]} channel(s) where the model expects {self.num_modalities}.")
            return array, geometry
        if not items or not all(isinstance(i, (str, os.PathLike, nib.spatialimages.SpatialImage)) for i in items):
            raise TypeError(
                "image must be a path, a list of modality paths, a nibabel image or a list of them, or an array, got "
                f"{type(image).__name__}."
            )
        channels = [
            read_image(i, spatial_dims=self.spatial_dims) if isinstance(i, (str, os.PathLike))
            else read_nibabel(i, spatial_dims=self.spatial_dims) for i in items
        ]
        first = channels[0][1]
        name = first.path or "image"
        if len(channels) != self.num_modalities:
            raise InputError(f"{name}: {len(channels)} modality(ies) where the model expects {self.num_modalities}.")
        for array, geometry in channels[1:]:
            if array.shape != first.shape or not np.allclose(geometry.affine, first.affine, atol=1e-4):
                raise InputError(f"{geometry.path or 'image'}: grid differs from the first modality ({name}).")
        return np.stack([array for array, _ in channels]), first

    ##################################################################################################################
    # files
    ##################################################################################################################

    def predict_from_files(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        *,
        overwrite: bool = False,
        resume: bool = False,
        save_probabilities: bool = False,
        save_uncertainty: bool = False,
        save_figure: bool = False,
        progress: bool = True,
        steps: int = 10,
        num_samples: int = 4,
        overlap: float = 0.5,
        seed: int = 0,
    ) -> list[CaseResult]:
        """Segment every case in ``inputs`` (files and folders, nnU-Net modality naming) into ``output_dir``.

        A case whose outputs exist fails unless ``overwrite`` (replace) or ``resume`` (skip it) is given. A bad case
        fails alone with a one-line message; outputs are written all or nothing per case. Each case's ensemble is
        seeded with ``seed``, so results do not depend on the order or the subset of cases. ``save_figure`` adds
        ``<case>_figure.png``: three orthogonal slices with the label overlay and the uncertainty.
        """
        if overwrite and resume:
            raise ValueError("overwrite and resume exclude each other: replace finished cases, or skip them.")
        output_dir = check_output_dir(output_dir)
        kinds = ["labels"] + ["probabilities"] * save_probabilities + ["uncertainty"] * save_uncertainty
        kinds += ["figure"] * save_figure
        results = []
        for case in find_cases(inputs):
            start = time.perf_counter()
            result = self._predict_case(case, output_dir, kinds, overwrite, resume, progress,
                                        {"steps": steps, "num_samples": num_samples, "overlap": overlap}, seed)
            result.seconds = time.perf_counter() - start
            results.append(result)
        return results

    def _predict_case(self, case: Case, output_dir: Path, kinds, overwrite, resume, progress, options, seed):
        targets = {kind: case.output_path(output_dir, kind) for kind in kinds}
        if resume and all(path.exists() for path in targets.values()):
            logger.info("%s: done before, skipped", case.name)
            return CaseResult(case.name, "skipped", list(targets.values()))
        try:
            if case.problem is not None:
                raise InputError(case.problem)
            case.check_modalities(self.num_modalities)
            inputs = {path.resolve() for path in case.files}
            clash = [path for path in targets.values() if path.resolve() in inputs]
            if clash:
                raise InputError(f"{clash[0]}: the output would replace an input; choose another output folder.")
            existing = [path for path in targets.values() if path.exists()]
            if existing and resume:
                missing = ", ".join(path.name for path in targets.values() if not path.exists())
                raise OutputError(f"{existing[0]}: exists but {missing} does not; pass --overwrite to redo the case.")
            if existing and not overwrite:
                raise OutputError(
                    f"{existing[0]}: already exists; pass overwrite=True (--overwrite) to replace it or resume=True "
                    "(--continue) to skip finished cases."
                )
            generator = torch.Generator().manual_seed(seed)
            result = self.segment(list(case.files), generator=generator, progress=progress, **options)
            arrays = {"labels": result.label_map, "probabilities": result.probability, "uncertainty": result.entropy}
            images = {k: path for k, path in targets.items() if k != "figure"}
            write_images(
                [OutputImage(arrays[k], result.geometry, path, k, self.num_classes - 1) for k, path in images.items()],
                overwrite=overwrite,
            )
            if "figure" in targets:
                image, geometry = read_image(case.files[0])
                save_overlay_figure(targets["figure"], to_nibabel(image, geometry, "uncertainty"), result.labels,
                                    result.uncertainty, title=case.name, overwrite=overwrite)
        except (InputError, OSError) as e:
            logger.error("%s", e)
            return CaseResult(case.name, "failed", message=str(e))
        except Exception as e:  # one bad case must not stop the others; the traceback goes to the debug log
            logger.debug("case %s failed", case.name, exc_info=True)
            message = f"{case.files[0]}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            logger.error("%s", message)
            return CaseResult(case.name, "failed", message=message)
        logger.info("%s: wrote %s", case.name, ", ".join(path.name for path in targets.values()))
        return CaseResult(case.name, "done", list(targets.values()))


def segment(image, *, checkpoint=None, bundle=None, device: str = "auto", affine=None, **options) -> Segmentation:
    """One-call segmentation for notebooks: ``segment("scan.nii.gz", checkpoint="model.pt", steps=10)``; the same
    path as ``medwidit segment`` (``Predictor.from_checkpoint`` or ``from_bundle``, then ``Predictor.segment``)."""
    if (checkpoint is None) == (bundle is None):
        raise ValueError("give exactly one of checkpoint= (a .pt file) or bundle= (a bundle folder).")
    predictor = Predictor.from_checkpoint(checkpoint, device=device) if bundle is None else Predictor.from_bundle(
        bundle, device=device
    )
    return predictor.segment(image, affine=affine, **options)
