"""A MONAI ``Inferer`` that segments by diffusion sampling, for bundle configs and MONAI engines.

``inferer(inputs, network)`` with inputs (B, C_img, *S) already pre-processed and ``network`` a
``DiffusionSegmenter`` or a module holding one as ``.segmenter`` (the bundle's ``network_def``) returns the mean class
probability (B, K, *S) of an ensemble sampled through :func:`~medwidit.inference.sliding.sample_ensemble` with the
predictor's seeding and autocast, so that a MONAI pipeline and ``Predictor.segment`` give the same probabilities
without a localization pass and an atlas prior (``Predictor(localization=None, atlas_prior=None)``, ``--no-localize
--no-atlas-prior``): the pass samples the whole case on a second grid first, and the prior registers a template to
the case on its own grid, which an inferer handed one pre-processed batch does not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from medwidit.data.transforms import batch_spacing
from medwidit.diffusion import DiffusionSegmenter
from medwidit.utils import check_int, check_seed, choose
from medwidit.utils.checks import check_per_axis

from .options import PRECISIONS, SAMPLING_DEFAULTS, autocast_dtype, autocast_model_fn, sampling_options
from .sliding import check_max_whole_voxels, sample_ensemble

__all__ = ["DiffusionSamplingInferer"]


class DiffusionSamplingInferer(Inferer):
    """Ensemble diffusion sampling as a MONAI inferer; ``seed`` seeds a CPU generator per call, as the predictor does
    for each case. ``precision`` is the predictor's (``auto``: bfloat16/float16 autocast on CUDA, bfloat16 on a CPU
    with bf16 matmul hardware, float32 elsewhere; ``medwidit.inference.options.autocast_dtype``).
    ``extra_segmenters``: further weights sampled after the network's own (``Predictor.segment(weight_sets=...)``;
    a bundle's ``extra_weights``), each moved to the inputs' device."""

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        *,
        sw_batch_size: int = 4,
        overlap: float = SAMPLING_DEFAULTS["overlap"],
        steps: int = SAMPLING_DEFAULTS["steps"],
        num_samples: int = SAMPLING_DEFAULTS["num_samples"],
        seed: int = 0,
        sampler: str | None = None,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        max_whole_voxels: int | None = None,
        precision: str = "auto",
        shared_steps: int = SAMPLING_DEFAULTS["shared_steps"],
        extra_segmenters: Sequence[DiffusionSegmenter] = (),
    ) -> None:
        super().__init__()
        options = sampling_options(steps, num_samples, overlap, sampler, eta, guidance_scale, shared_steps)
        self.roi_size = roi_size
        self.sw_batch_size = check_int("sw_batch_size", sw_batch_size)
        self.seed = check_seed(seed)
        choose("precision", precision, PRECISIONS)  # named here, not at the first batch
        self.precision = precision
        self.options = {**options, "max_whole_voxels": check_max_whole_voxels(max_whole_voxels)}
        self.extra_segmenters = list(extra_segmenters)
        for i, extra in enumerate(self.extra_segmenters):
            if not isinstance(extra, DiffusionSegmenter):
                raise TypeError(f"extra_segmenters[{i}] must be a DiffusionSegmenter, got {type(extra).__name__}.")

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:
            raise TypeError(f"DiffusionSamplingInferer takes (inputs, network), got extra {args} {sorted(kwargs)}.")
        segmenter = getattr(network, "segmenter", network)
        if not isinstance(segmenter, DiffusionSegmenter):
            raise TypeError(f"network must be a DiffusionSegmenter or hold one as .segmenter, got {type(network)}.")
        spatial_dims = inputs.ndim - 2
        one = isinstance(self.roi_size, Sequence) and len(self.roi_size) == 1  # [96]: every axis, as the predictor
        roi = list(check_per_axis("roi_size", self.roi_size[0] if one else self.roi_size, spatial_dims))
        dtype = autocast_dtype(inputs.device, self.precision)

        spacing = batch_spacing(inputs).to(inputs.device) if segmenter.spacing_conditioning else None
        extras = [extra.to(inputs.device).eval() for extra in self.extra_segmenters]
        images = (inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs).float()  # as the predictor's
        probabilities = []
        for b in range(images.shape[0]):  # each case alone, seeded alike: its result does not depend on the batch
            summary = sample_ensemble(
                [segmenter, *extras],
                images[b : b + 1],
                roi_size=roi,
                sw_batch_size=self.sw_batch_size,
                generator=torch.Generator().manual_seed(self.seed),
                wrap_model_fn=partial(autocast_model_fn, device_type=inputs.device.type, dtype=dtype),
                spacing=None if spacing is None else spacing[b : b + 1],
                **self.options,
            )
            probabilities.append(summary["mean_probability"])
        probability = torch.cat(probabilities)  # (B, K, *S)
        if isinstance(inputs, MetaTensor):  # carry the image's meta and transforms, so that Invertd can map it back
            return MetaTensor(probability).copy_meta_from(inputs)
        return probability
