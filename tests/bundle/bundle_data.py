"""The bundle under test, tiny overrides, and a few random 32^3 NIfTI cases with a data list (as the model zoo's own
bundle tests make them)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]
BUNDLE = REPOSITORY / "bundles" / "brain_widit_segmentation"
CONFIGS = BUNDLE / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
NUM_CLASSES = json.loads((CONFIGS / "train.json").read_text())["num_classes"]  # the bundle's own task

# a network small enough for a 2-core CPU: 32^3 files resampled to 2 mm -> 16^3 volumes, 16^3 crops and windows
TINY_NET = {"hidden_size": 32, "depth": 1, "num_heads": 2, "val_steps": 2}
TINY_TRAIN = {
    **TINY_NET,
    "roi_size": [16, 16, 16],
    "val_samples": 2,
    "epochs": 1,
    "val_interval": 1,
    "batch_size": 1,
    "crops_per_volume": 1,
    "num_workers": 0,
    "warmup_steps": 1,
    "cache": "none",
    "synth_ratio": 0.0,  # the shipped recipe paints a quarter of its volumes from the cache's head label maps
}
TINY_INFER = {
    "roi_size": [16, 16, 16],
    "steps": 2,
    "num_samples": 2,
    "device": "cpu",
    "weight_sets": 1,
}  # one trained set


def config(name: str) -> str:
    return str(CONFIGS / f"{name}.json")


def write_random_cases(root: Path, *, num_train: int = 2, num_val: int = 1, num_test: int = 1, seed: int = 0) -> Path:
    """Random 32^3 images and labels (1 mm, an oblique-free but non-identity affine) and ``datalist.json``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.array([[1.0, 0, 0, -16], [0, 1.0, 0, -20], [0, 0, 1.0, -12], [0, 0, 0, 1]])
    cases = []
    for i in range(num_train + num_val + num_test):
        label = rng.integers(0, NUM_CLASSES, (32, 32, 32)).astype(np.uint8)
        image = (label + rng.normal(0, 0.5, label.shape) + 1).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), root / f"case{i}_image.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"case{i}_label.nii.gz")
        cases.append({"image": f"case{i}_image.nii.gz", "label": f"case{i}_label.nii.gz"})
    listing = {
        "training": cases[:num_train],
        "validation": cases[num_train : num_train + num_val],
        "test": cases[num_train + num_val :],
    }
    path = root / "datalist.json"
    path.write_text(json.dumps(listing))
    return path


def run_evaluating(output_dir: Path, **overrides) -> dict:
    """The zoo's ``monai.bundle run evaluating --config_file "['train.json','evaluate.json']"`` through MONAI's
    ``ConfigWorkflow`` with ``overrides`` -> the ``dice.json`` report it writes into ``output_dir``."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[config("train"), config("evaluate")],
        meta_file=META,
        logging_file=LOGGING,
        workflow_type=None,
        run_id="evaluating",
        output_dir=str(output_dir),
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return json.loads((Path(output_dir) / "dice.json").read_text())
