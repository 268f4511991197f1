"""medwidit.diffusion: segmentation by conditional diffusion on MONAI schedulers (the net is only a callable)."""

from .encoding import encode_labels, to_labels, to_probabilities
from .objectives import GAUSSIAN_OBJECTIVES, OBJECTIVES
from .samplers import SAMPLERS, ddim_sample, ddpm_sample, flow_euler_sample, set_steps
from .segmenter import DiffusionSegmenter, load_segmenter, save_segmenter

__all__ = [
    "GAUSSIAN_OBJECTIVES",
    "OBJECTIVES",
    "SAMPLERS",
    "DiffusionSegmenter",
    "ddim_sample",
    "ddpm_sample",
    "encode_labels",
    "flow_euler_sample",
    "load_segmenter",
    "save_segmenter",
    "set_steps",
    "to_labels",
    "to_probabilities",
]
