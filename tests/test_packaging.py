"""Packaging: a wheel built from the checkout holds every module, the shipped bundle and the data lists, and an
install of it (outside the checkout) finds and runs them; pyproject's version floors are the versions that first
have what medwidit imports."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

import pytest
import tomllib
from setuptools import find_namespace_packages

from medwidit.inference.options import bundle_extra_weights

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
    atlas = {
        bundle + f"atlas/{name}" for name in ("mni152nlin6asym_2mm_head.nii.gz", "mni152nlin6asym_2mm_brain.nii.gz")
    }
    assert atlas <= names  # inference.json's atlas_prior
    shipped = REPOSITORY / "bundles" / "brain_widit_segmentation"
    extra = {bundle + f.relative_to(shipped).as_posix() for f in bundle_extra_weights(shipped)}  # inference.json's
    assert extra <= names
    data_lists = {f"medwidit/data_lists/{p.name}" for p in (REPOSITORY / "data_lists").glob("*.json")}
    assert data_lists and data_lists <= names
    assert "medwidit/data/examples/colin27_head_2mm_image.nii.gz" in names
    assert not [n for n in names if "/runs/" in n or "/eval/" in n]


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory):
    """A new venv holding only the wheel; its dependencies come from this environment's site-packages through a
    ``.pth`` line (a path there is not a site dir, so the checkout's editable install stays invisible)."""
    import site
    import venv

    root = tmp_path_factory.mktemp("venv") / "fresh"
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    here = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (purelib / "dependencies.pth").write_text("\n".join(here) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, timeout=300)
    return root


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_segments_the_example_with_no_bundle_argument(fresh_venv, tmp_path):
    """``medwidit segment`` from the installed wheel, run outside the checkout, finds the shipped bundle and the
    example inside the installed package, and writes a brain; the demo's bundle, the configs' data list and the
    bundle root resolve there too."""
    env = {"PATH": f"{fresh_venv / 'bin'}:/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    probe = (
        "import medwidit\n"
        "from medwidit.data.example import example_case\n"
        "from medwidit.inference.demo import SHIPPED_BUNDLE\n"
        "from medwidit.training import find_bundle_root\n"
        "from medwidit.utils.resources import shipped_path\n"
        "print(medwidit.__file__, SHIPPED_BUNDLE, find_bundle_root('brain_widit_segmentation', argv=[]))\n"
        "print(shipped_path('data_lists', 'brain_extraction.json'))\n"
        "print(example_case()['image'])\n"
        "from medwidit.datasets.brain import REPO_DATA_LISTS\n"  # where `lists` writes and `build` points
        "print(REPO_DATA_LISTS == shipped_path('data_lists', 'brain_extraction.json').parent)\n"
    )
    run = partial(subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    done = run([fresh_venv / "bin" / "python", "-c", probe])
    assert done.returncode == 0, done.stderr
    paths, data_list, example, same_lists = done.stdout.splitlines()
    assert same_lists == "True"  # it was <site-packages>/data_lists, which nothing reads
    site_packages = str(fresh_venv / "lib")
    assert all(part.startswith(site_packages) for part in paths.split()), paths
    assert data_list.startswith(site_packages) and example.startswith(site_packages)

    version = run([fresh_venv / "bin" / "medwidit", "--version"])
    bundle = json.loads((REPOSITORY / "bundles/brain_widit_segmentation/configs/metadata.json").read_text())["version"]
    expected = f"medwidit {PYPROJECT['project']['version']}; default model: bundle brain_widit_segmentation {bundle}"
    assert version.stdout.strip() == expected, version.stdout + version.stderr  # the wheel's own bundle
    command = [fresh_venv / "bin" / "medwidit", "segment", "-i", example, "-o", "out", "--steps", "1", "--samples",
               "1", "--save-statistics", "--device", "cpu"]  # fmt: skip
    done = run(command)
    assert done.returncode == 0, done.stderr
    assert "the shipped default bundle brain_widit_segmentation" in done.stderr
    out = tmp_path / "out"
    record = json.loads((out / "medwidit_run.json").read_text())
    assert record["model"]["shipped_default"] and record["model"]["bundle"].startswith(site_packages)
    statistics = json.loads((out / "colin27_head_2mm_image_statistics.json").read_text())
    assert 900 < statistics["classes"]["1"]["volume_ml"] < 2200  # an adult brain (the bundle's expected_volume_ml)
    assert (out / "colin27_head_2mm_image.nii.gz").is_file()


def _floor(requirement: str) -> tuple[int, ...]:
    version = re.search(r">=([0-9.]+)", requirement)[1]
    return tuple(int(x) for x in version.split("."))


def test_version_floors_are_the_versions_that_have_what_medwidit_imports():
    """lightning's EMAWeightAveraging is new in 2.6; MONAI 1.6.0 is the oldest CI tests (.ci/oldest), and it needs
    torch 2.8."""
    floors = {re.split(r"[\[<>=]", r)[0]: _floor(r) for r in PYPROJECT["project"]["dependencies"] if ">=" in r}
    assert floors["lightning"] >= (2, 6) and floors["monai"] >= (1, 6) and floors["torch"] >= (2, 8)
    from lightning.pytorch.callbacks import EMAWeightAveraging  # noqa: F401  the installed version has it


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
