"""The benchmark scripts are not a package: tests load them by path, with ``benchmarks/`` on ``sys.path`` as it is
when a script runs (their shared parts are sibling modules: ``_report``, ``_recipe``, ``_baselines``)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

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
