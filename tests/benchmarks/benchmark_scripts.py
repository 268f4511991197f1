"""The benchmark scripts are not a package: tests load them by path, with ``benchmarks/`` on ``sys.path`` as it is
when a script runs (their shared parts are sibling modules: ``_report``, ``_recipe``, ``_baselines``)."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from medwidit.inference.options import resolve_bundle

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, its siblings importable as when it runs as a script."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"medwidit_benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sphere_head(shape=(40, 44, 36), label_dtype=np.int64):
    """A synthetic head for the shift tests: a brain sphere (800) inside a bright scalp shell (1500) in air (0), and the
    brain's label."""
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 0.6
    image = np.where(brain, 800.0, np.where(radius < 0.8, 1500.0, 0.0)).astype(np.float32)
    return image, brain.astype(label_dtype)


def bundle_with_template(tmp_path):
    """A copy of the shipped bundle whose atlas_prior is a small synthetic head (2 mm), and a case: the same head
    moved by 6 mm, with its brain as the truth."""
    image, brain = sphere_head((40, 44, 36))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "head.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), tmp_path / "brain.nii.gz")
    bundle = tmp_path / "bundle"
    shutil.copytree(resolve_bundle(), bundle, ignore=shutil.ignore_patterns("eval", "runs", "models", "atlas"))
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["atlas_prior"] = {"image": str(tmp_path / "head.nii.gz"), "label": str(tmp_path / "brain.nii.gz"),
                             "margin_mm": 5.0}  # fmt: skip
    path.write_text(json.dumps(config))
    moved = affine.copy()
    moved[:3, 3] = (6.0, -4.0, 2.0)
    nib.save(nib.Nifti1Image(image, moved), tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), moved), tmp_path / "case_brain.nii.gz")
    return bundle
