"""medwidit.training: Lightning module and data module, and the glue the MONAI bundles reference."""

import sys

from . import bundle
from .bundle import (
    RENAMED_KEYS,
    MissingDataError,
    SegmentationNetwork,
    bundle_datalist,
    check_run_folder,
    check_run_options,
    check_training_data,
    find_bundle_root,
    initial_weights,
    one_line_errors,
    refuse_renamed,
    release_run_folder,
    require_done,
    run_training,
)
from .data import SegmentationDataModule, load_data_list, load_label_maps
from .module import (
    DiffusionSegmentationModule,
    ExportSegmenter,
    WarmupCosine,
    export_checkpoint,
    segmenter_state_from_checkpoint,
)

__all__ = [
    "RENAMED_KEYS",
    "DiffusionSegmentationModule",
    "ExportSegmenter",
    "MissingDataError",
    "SegmentationDataModule",
    "SegmentationNetwork",
    "WarmupCosine",
    "bundle_datalist",
    "check_run_folder",
    "check_run_options",
    "check_training_data",
    "export_checkpoint",
    "find_bundle_root",
    "initial_weights",
    "one_line_errors",
    "refuse_renamed",
    "release_run_folder",
    "load_data_list",
    "load_label_maps",
    "require_done",
    "run_training",
    "segmenter_state_from_checkpoint",
]

if bundle._under_monai_bundle_cli():  # python -m monai.bundle run: medwidit's checks print as one line
    one_line_errors()
    bundle.exit_on_unknown_overrides(sys.argv)
