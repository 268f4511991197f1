"""Cases from files and folders, nnU-Net style: ``case_0000.nii.gz``, ``case_0001.nii.gz`` -> case ``case`` with two
modalities, written back as ``case.nii.gz`` (plus ``case_probabilities`` / ``case_uncertainty`` when asked)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .io import IMAGE_SUFFIXES, InputError, image_suffix

__all__ = ["Case", "find_cases"]

MODALITY = re.compile(r"^(?P<name>.+)_(?P<index>\d{4})$")
OUTPUT_KINDS = {"labels": "", "probabilities": "_probabilities", "uncertainty": "_uncertainty"}


@dataclass(frozen=True)
class Case:
    """One case: its name and its modality files in channel order (``files[c]`` is ``<name>_<c:04d>``)."""

    name: str
    files: tuple[Path, ...]
    problem: str | None = None  # why the files cannot form this case (a gap, a duplicate); reported, others go on

    @property
    def suffix(self) -> str:
        """The image suffix of the first modality; outputs are written in the same format."""
        return image_suffix(self.files[0]) or ".nii.gz"

    def output_path(self, output_dir: str | os.PathLike, kind: str = "labels") -> Path:
        """Where output ``kind`` (labels, probabilities, uncertainty, figure) of this case goes in ``output_dir``."""
        if kind == "figure":
            return Path(output_dir) / f"{self.name}_figure.png"
        return Path(output_dir) / f"{self.name}{OUTPUT_KINDS[kind]}{self.suffix.lower()}"

    def check_modalities(self, expected: int) -> None:
        """InputError unless the case has exactly modalities ``_0000`` .. ``_{expected-1:04d}``."""
        if len(self.files) != expected:
            names = ", ".join(path.name for path in self.files)
            wanted = ", ".join(f"{self.name}_{c:04d}" for c in range(expected))
            raise InputError(
                f"{self.files[0].parent / self.name}: {len(self.files)} modality file(s) ({names}) where the model "
                f"expects {expected} ({wanted})."
            )


def _split_name(path: Path) -> tuple[str, int | None]:
    """``case_0001.nii.gz`` -> ("case", 1); ``scan.nrrd`` -> ("scan", None)."""
    suffix = image_suffix(path) or ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    match = MODALITY.match(stem)
    return (match["name"], int(match["index"])) if match else (stem, None)


def _expand(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders as their image files (sorted; hidden files and other suffixes skipped)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and image_suffix(p) and not p.name.startswith("."))
            if not found:
                raise InputError(f"{path}: no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)}).")
            files.extend(found)
        else:
            files.append(path)  # missing or non-image files fail when their case is read, with the file's name
    return files


def find_cases(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Case]:
    """Group files (and the image files of folders) into cases by name; modality order from the ``_NNNN`` suffix.

    A file without a ``_NNNN`` suffix is a case of one modality. A case with a gap in its modality numbers (``_0000``
    and ``_0002``), a modality given twice or a name found in two folders carries a ``problem`` instead of failing
    the others. A folder without image files is an InputError.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    groups: dict[tuple[Path, str], dict[int, list[Path]]] = {}
    for path in _expand(inputs):
        name, index = _split_name(path)
        groups.setdefault((path.parent, name), {}).setdefault(0 if index is None else index, []).append(path)
    names = [name for _, name in groups]
    cases = []
    for (folder, name), modalities in groups.items():
        indices = sorted(modalities)
        files = tuple(modalities[i][0] for i in indices)
        problem = None
        if any(len(paths) > 1 for paths in modalities.values()):
            twice = next(paths for paths in modalities.values() if len(paths) > 1)
            problem = f"{folder / name}: one modality given twice ({', '.join(p.name for p in twice)})."
        elif indices != list(range(len(indices))):
            problem = f"{folder / name}: modality numbers {indices} are not 0..{len(indices) - 1} without gaps."
        elif names.count(name) > 1:
            problem = f"{folder / name}: a case of this name comes from another folder too; outputs would collide."
        cases.append(Case(name, files, problem))
    return cases
