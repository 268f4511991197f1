"""medwidit.inference: whole volumes and files -- stitched sliding-window sampling, uncertainty, the predictor, I/O."""

from .cases import Case, find_cases
from .files import CaseResult
from .inferer import DiffusionSamplingInferer
from .io import IMAGE_SUFFIXES, ImageGeometry, InputError, OutputError, read_image
from .options import resolve_device
from .outputs import write_image, write_images
from .predictor import Predictor, Segmentation, segment
from .sliding import SlidingWindowDenoiser, gaussian_weight_map, sample_ensemble
from .uncertainty import summarize_ensemble

__all__ = [
    "IMAGE_SUFFIXES",
    "Case",
    "CaseResult",
    "DiffusionSamplingInferer",
    "ImageGeometry",
    "InputError",
    "OutputError",
    "Predictor",
    "Segmentation",
    "SlidingWindowDenoiser",
    "find_cases",
    "gaussian_weight_map",
    "read_image",
    "resolve_device",
    "sample_ensemble",
    "segment",
    "summarize_ensemble",
    "write_image",
    "write_images",
]
