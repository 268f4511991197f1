"""medwidit.diffusion: segmentation by conditional diffusion on MONAI schedulers (the net is only a callable)."""

from .checkpoint import (
    SIDECAR,
    build_segmenter,
    load_segmenter,
    read_model_config,
    save_bundle_weights,
    save_segmenter,
    segmenter_config,
)
from .encoding import class_index, encode_labels, to_labels, to_probabilities
from .objectives import GAUSSIAN_OBJECTIVES, OBJECTIVES
from .samplers import (
    SAMPLERS,
    SamplerSpec,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    euler_maruyama_sample,
    flow_euler_sample,
    heun_sample,
    schedule_arguments,
    timestep_list,
)
from .segmenter import DiffusionSegmenter

__all__ = [
    "GAUSSIAN_OBJECTIVES",
    "OBJECTIVES",
    "SIDECAR",
    "SAMPLERS",
    "DiffusionSegmenter",
    "SamplerSpec",
    "build_segmenter",
    "class_index",
    "ddim_sample",
    "ddpm_sample",
    "dpmpp_2m_sample",
    "encode_labels",
    "euler_maruyama_sample",
    "flow_euler_sample",
    "heun_sample",
    "load_segmenter",
    "read_model_config",
    "save_bundle_weights",
    "save_segmenter",
    "segmenter_config",
    "schedule_arguments",
    "timestep_list",
    "to_labels",
    "to_probabilities",
]
