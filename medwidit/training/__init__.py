"""medwidit.training: Lightning module and data module, and the glue the MONAI bundles reference."""

from .bundle import (
    RENAMED_KEYS,
    MissingDataError,
    SegmentationNetwork,
    bundle_datalist,
    check_run_folder,
    check_training_data,
    find_bundle_root,
    initial_weights,
    refuse_renamed,
    require_done,
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
    "check_training_data",
    "export_checkpoint",
    "find_bundle_root",
    "initial_weights",
    "refuse_renamed",
    "load_data_list",
    "load_label_maps",
    "require_done",
    "segmenter_state_from_checkpoint",
]
