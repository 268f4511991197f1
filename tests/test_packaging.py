"""Packaging: a wheel built from the checkout holds every module, the shipped bundle and the data lists, and an
install of it (outside the checkout) finds and runs them; pyproject's version floors are the versions that first
have what medwidit imports."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from setuptools import find_namespace_packages

REPOSITORY = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
SHIPPED = ["bundles", "data_lists"]


def test_package_list_covers_the_source_tree():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = set(find_namespace_packages(where=str(REPOSITORY), include=["medwidit*"], exclude=["*__pycache__*"]))
    assert listed == found | {f"medwidit.{kind}" for kind in SHIPPED}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """``pip wheel --no-deps --no-build-isolation`` of a copy of the checkout (the build leaves nothing behind)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "runs", "eval", "*.egg-info", "build")
    for name in ["pyproject.toml", "README.md", "medwidit", *SHIPPED]:
        copy = shutil.copytree if (REPOSITORY / name).is_dir() else shutil.copy
        copy(REPOSITORY / name, source / name, **({"ignore": ignore} if copy is shutil.copytree else {}))
    (source / "bundles" / "brain_widit_segmentation" / "runs").mkdir()  # training outputs must stay out
    (source / "bundles" / "brain_widit_segmentation" / "runs" / "last.ckpt").write_bytes(b"x")
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=300)
    return next(out.glob("medwidit-*.whl"))


def test_wheel_holds_modules_bundle_and_data_lists(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPOSITORY).as_posix() for p in (REPOSITORY / "medwidit").rglob("*.py")}
    assert modules <= names
    bundle = "medwidit/bundles/brain_widit_segmentation/"
    for kind in ("configs/inference.json", "configs/train.json", "configs/evaluate.json", "configs/metadata.json"):
        assert bundle + kind in names
    assert {bundle + "models/model.pt", bundle + "models/medwidit.json", bundle + "configs/logging.conf"} <= names
    data_lists = {f"medwidit/data_lists/{p.name}" for p in (REPOSITORY / "data_lists").glob("*.json")}
    assert data_lists and data_lists <= names
    assert "medwidit/data/examples/colin27_head_2mm_image.nii.gz" in names
    assert not [n for n in names if "/runs/" in n or "/eval/" in n]


@pytest.mark.slow
def test_installed_wheel_finds_and_runs_the_shipped_bundle(wheel, tmp_path):
    """Installed outside the checkout (``pip install --target``), the demo's bundle, the configs' data list and the
    bundle root resolve inside the installed package, and the shipped bundle segments the example."""
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    script = (
        "import medwidit, numpy as np\n"
        "from medwidit.inference import Predictor\n"
        "from medwidit.inference.demo import SHIPPED_BUNDLE\n"
        "from medwidit.training import find_bundle_root\n"
        "from medwidit.utils.resources import shipped_path\n"
        "from medwidit.data.example import example_case\n"
        "print(medwidit.__file__, SHIPPED_BUNDLE, find_bundle_root('brain_widit_segmentation', argv=[]))\n"
        "print(shipped_path('data_lists', 'brain_extraction.json'))\n"
        "case = example_case()\n"
        "result = Predictor.from_bundle(SHIPPED_BUNDLE, device='cpu').segment(case['image'], steps=1, num_samples=1)\n"
        "print('brain voxels', int((result.label_map == 1).sum()))\n"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(str(target) in part for part in lines[0].split()), lines[0]
    assert lines[1].startswith(str(target / "medwidit" / "data_lists"))
    assert int(lines[2].split()[-1]) > 10000  # a brain, not an empty map


def _floor(requirement: str) -> tuple[int, ...]:
    version = re.search(r">=([0-9.]+)", requirement)[1]
    return tuple(int(x) for x in version.split("."))


def test_version_floors_are_the_versions_that_have_what_medwidit_imports():
    """lightning's EMAWeightAveraging is new in 2.6; MONAI's CalibrationErrorMetric in 1.6.0, which needs torch 2.8."""
    floors = {re.split(r"[\[<>=]", r)[0]: _floor(r) for r in PYPROJECT["project"]["dependencies"] if ">=" in r}
    assert floors["lightning"] >= (2, 6) and floors["monai"] >= (1, 6) and floors["torch"] >= (2, 8)
    from lightning.pytorch.callbacks import EMAWeightAveraging  # noqa: F401  the installed versions have them
    from monai.metrics import CalibrationErrorMetric  # noqa: F401


def test_bundle_names_only_packages_an_index_has():
    """medwidit is not on any index: metadata.json's required_packages_version leaves it out (the docs say to install
    it from the repository) and names only medwidit's own dependencies, which pip resolves."""
    import json

    metadata = json.loads(
        (REPOSITORY / "bundles" / "brain_widit_segmentation" / "configs" / "metadata.json").read_text()
    )
    required = metadata["required_packages_version"]
    dependencies = {re.split(r"[\[<>=]", r)[0].strip() for r in PYPROJECT["project"]["dependencies"]}
    assert "medwidit" not in required and set(required) <= dependencies
