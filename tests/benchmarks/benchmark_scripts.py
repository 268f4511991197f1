"""The benchmark scripts are not a package: tests load them by path."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (its own ``sys.path`` set-up runs, as when it runs as a script)."""
    spec = importlib.util.spec_from_file_location(f"medwidit_benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
