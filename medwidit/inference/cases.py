"""Cases from files and folders, nnU-Net style: ``case_0000.nii.gz``, ``case_0001.nii.gz`` -> case ``case`` with two
modalities, written back as ``case.nii.gz`` (plus ``case_probabilities`` / ``case_uncertainty`` when asked).

ID-like names (``patient_0001.nii.gz``, ``patient_0002.nii.gz``) look like modalities too: for a model that takes one
channel, a group that is not exactly one ``_0000`` file is split into one case per file, named by its whole stem;
``modality_pattern`` sets the regular expression that marks modalities (None: every file is its own case).

A folder that holds DICOM files (given as input, or a subfolder of an input folder) is one case named after the folder,
written as NIfTI (``dicom``: one series per folder; a folder with several series fails with a list of them).
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .dicom import is_dicom_series
from .io import IMAGE_SUFFIXES, InputError, image_suffix
from .outputs import written_here

__all__ = ["DEFAULT_MODALITY_PATTERN", "Case", "find_cases", "modality_regex"]

logger = logging.getLogger(__name__)

DEFAULT_MODALITY_PATTERN = r"_(\d{4})"
OUTPUT_KINDS = {"labels": "", "probabilities": "_probabilities", "uncertainty": "_uncertainty"}


@dataclass(frozen=True)
class Case:
    """One case: its name and its modality files in channel order (``files[c]`` is ``<name>_<c:04d>``)."""

    name: str
    files: tuple[Path, ...]
    problem: str | None = None  # why the files cannot form this case (a gap, a duplicate); reported, others go on
    stem: str | None = None  # the name its files share where ``name`` tells it apart from others (p1/T1 -> p1_T1)

    @property
    def suffix(self) -> str:
        """The image suffix of the first modality; outputs are written in the same format (NIfTI for DICOM)."""
        return ".nii.gz" if self.files[0].is_dir() else image_suffix(self.files[0]) or ".nii.gz"

    def output_path(self, output_dir: str | os.PathLike, kind: str = "labels") -> Path:
        """Where output ``kind`` (labels, probabilities, uncertainty, figure) of this case goes in ``output_dir``."""
        if kind == "figure":
            return Path(output_dir) / f"{self.name}_figure.png"
        return Path(output_dir) / f"{self.name}{OUTPUT_KINDS[kind]}{self.suffix.lower()}"

    def check_modalities(self, expected: int) -> None:
        """InputError unless the case has exactly modalities ``_0000`` .. ``_{expected-1:04d}``."""
        if len(self.files) != expected:
            names = ", ".join(path.name for path in self.files)
            stem = self.stem or self.name  # the files' own name (from a review: p1/p1_T1_0001 for p1/T1_0001)
            wanted = ", ".join(f"{stem}_{c:04d}" for c in range(expected))
            raise InputError(
                f"{self.files[0].parent / stem}: {len(self.files)} modality file(s) ({names}) where the model "
                f"expects {expected} ({wanted})."
            )


def modality_regex(pattern: str | None) -> re.Pattern | None:
    """The compiled ``<name><pattern>`` regular expression (one group: the modality number); None stays None."""
    if pattern is None:
        return None
    try:
        re.compile(pattern)  # alone first, so that an error's position counts in the user's pattern
        regex = re.compile(rf"^(?P<name>.+?){pattern}$")
    except re.error as e:
        raise ValueError(f"modality_pattern {pattern!r} is not a regular expression ({e}).") from e
    if regex.groups != 2:
        raise ValueError(f"modality_pattern must hold exactly one group, the modality number, got {pattern!r}.")
    return regex


def _split_name(path: Path, regex: re.Pattern | None) -> tuple[str, int | None]:
    """``case_0001.nii.gz`` -> ("case", 1); ``scan.nrrd`` -> ("scan", None)."""
    suffix = image_suffix(path) or ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    match = regex.match(stem) if regex is not None else None
    if match is None or not match[2].isdigit():
        return stem, None
    return match["name"], int(match[2])


def _stem(path: Path) -> str:
    return _split_name(path, None)[0]


def _deeper_series(folder: Path, depth: int = 4, limit: int = 200) -> Path | None:
    """The first DICOM series folder two to ``depth`` levels below ``folder``, for the message: breadth first over
    folders only, dot-folders skipped, at most ``limit`` of them looked into, an unreadable one passed over (a
    glob of every entry of a BIDS root's 300 subjects opened 10 800 files, from a review)."""
    queue = collections.deque((child, 2) for parent in _subfolders(folder) for child in _subfolders(parent))
    for _ in range(limit):
        if not queue:
            return None
        candidate, level = queue.popleft()
        try:
            if is_dicom_series(candidate):
                return candidate
        except OSError:
            continue
        if level < depth:
            queue.extend((child, level + 1) for child in _subfolders(candidate))
    return None


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []


def _expand(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path], list[Case]]:
    """Files as given, folders as their image files (sorted; hidden files and other suffixes skipped) and as DICOM
    series (the folder itself and its subfolders that hold DICOM files); a folder with neither becomes a failed case,
    so that the rest still runs."""
    files: list[Path] = []
    series: list[Path] = []
    empty: list[Case] = []
    for item in inputs:
        if not str(item).strip():
            raise InputError("an input path is empty (''); give files or folders (use '.' for the current folder).")
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and image_suffix(p) and not p.name.startswith("."))
            written = written_here(path)  # a folder given as -i and -o both: its earlier outputs are not inputs
            if outputs := [p for p in found if p.name in written]:
                logger.info("%s: %d earlier outputs of medwidit here are not inputs: skipped.", path, len(outputs))
                found = [p for p in found if p not in outputs]
            folders = [path, *sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))]
            dicom = [folder for folder in folders if is_dicom_series(folder)]
            if not found and not dicom:
                problem = (
                    f"{path}: no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)}) and no DICOM "
                    "series in it or its direct subfolders"
                )
                deeper = _deeper_series(path)
                # from a review: a patient/study/series export read "no DICOM series in it or its subfolders"
                problem += f"; give the series folders, e.g. {deeper}." if deeper else "."
                empty.append(Case(path.name or str(path), (path,), problem))
            files.extend(found)
            series.extend(folder if folder.name not in ("", "..") else folder.resolve() for folder in dicom)
        else:
            files.append(path)  # missing or non-image files fail when their case is read, with the file's name
    # one file given twice (a folder and a file in it, as a shell glob gives; ./a and a) is one input, not two
    # modalities of a case (from a review: "one modality given twice (a.nii.gz, a.nii.gz)")
    return _once(files), _once(series), empty


def _once(paths: list[Path]) -> list[Path]:
    """``paths`` without one already listed (the same absolute path: ``./a`` and ``a``, a folder and a file in it), in
    order. Not by real path: two names linked to one file are two cases, or two modalities (from a review: merged,
    one case vanished without a word)."""
    seen: set[str] = set()
    return [p for p in paths if not (os.path.abspath(p) in seen or seen.add(os.path.abspath(p)))]


def find_cases(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    num_modalities: int | None = None,
    modality_pattern: str | None = DEFAULT_MODALITY_PATTERN,
) -> list[Case]:
    """Group files (and the image files of folders) into cases by name; modality order from the ``_NNNN`` suffix.

    A file without a ``_NNNN`` suffix, or a DICOM series folder, is a case of one modality. With ``num_modalities``
    1, a group other than one ``_0000`` file is one case per file. A name found in several folders is prefixed by the
    names of the folders that tell them apart (``p1/T1``, ``p2/T1`` -> ``p1_T1``, ``p2_T1``, with a warning). A case
    with a gap in its modality numbers (``_0000`` and ``_0002``), a modality given twice, a name its folders cannot
    tell apart (one folder given twice), or a folder without image files carries a ``problem`` instead of failing the
    others.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    regex = modality_regex(modality_pattern)
    files, series, empty = _expand(inputs)
    groups: dict[tuple[Path, str], dict[int, list[Path]]] = {}
    for path in files:
        name, index = _split_name(path, regex)
        groups.setdefault((path.parent, name), {}).setdefault(0 if index is None else index, []).append(path)
    if num_modalities == 1:  # ID-like numbers, not modalities: each file is a case named by its whole stem
        for key in [k for k, m in groups.items() if set(m) != {0} and all(len(p) == 1 for p in m.values())]:
            split = [path for (path,) in groups.pop(key).values()]
            logger.warning(
                "%s: %s are %d cases (the model takes one image channel; --modality-pattern to change).",
                key[0] / key[1],
                ", ".join(p.name for p in split),
                len(split),
            )
            for path in split:  # a name another file already has (scan_0001_0000) is that case's modality twice
                groups.setdefault((path.parent, _stem(path)), {}).setdefault(0, []).append(path)
    for folder in series:  # a DICOM series is one single-modality case named after its folder
        groups.setdefault((folder.parent, folder.name), {}).setdefault(0, []).append(folder)
    names, apart = _names_apart(list(groups))
    cases = []
    for (folder, name), modalities in groups.items():
        indices = sorted(modalities)
        files = tuple(modalities[i][0] for i in indices)
        problem = None
        if any(len(paths) > 1 for paths in modalities.values()):
            twice = next(paths for paths in modalities.values() if len(paths) > 1)
            listed = ", ".join(p.name for p in twice)
            if all(_split_name(p, regex)[1] is None for p in twice):  # no modality number: two cases of one name
                problem = f"{folder / name}: two files of one case name ({listed}); their outputs would share names."
            else:
                problem = f"{folder / name}: one modality given twice ({listed})."
        elif indices != list(range(len(indices))):
            problem = f"{folder / name}: modality numbers {indices} are not 0..{len(indices) - 1} without gaps."
        else:
            problem = apart.get((folder, name))
        cases.append(Case(names[folder, name], files, problem, stem=name))
    return cases + empty


def _names_apart(keys: list[tuple[Path, str]]) -> tuple[dict[tuple[Path, str], str], dict[tuple[Path, str], str]]:
    """Each case's output name: its own where no other folder gives that name, else prefixed by as many of its
    folders' names as tell the cases apart (``p1/T1``, ``p2/T1`` -> ``p1_T1``, ``p2_T1``: a patient/series DICOM
    export names series alike); and the problem of a case that cannot be named apart."""
    # from a review: same-named series of two patients were refused, with no way to name their outputs apart
    by_name = collections.defaultdict(list)
    for folder, name in keys:
        by_name[name].append(folder)
    names = {key: key[1] for key in keys}
    problems = {}
    for name, folders in by_name.items():
        places = collections.Counter(os.path.abspath(folder) for folder in folders)  # one each: _expand's _once
        if len(places) < 2:
            continue
        parts = {place: Path(place).parts[1:] for place in places}  # the root ('/', 'C:\\') names nothing
        for depth in range(1, max(map(len, parts.values())) + 1):
            prefixes = {place: "_".join(p[-depth:]) for place, p in parts.items()}
            if len(set(prefixes.values())) == len(prefixes):
                break
        for folder in folders:
            names[folder, name] = f"{prefixes[os.path.abspath(folder)]}_{name}"
    taken = collections.Counter(names.values())
    for (folder, name), new in names.items():
        if new != name and taken[new] > 1 and (folder, name) not in problems:
            problems[folder, name] = (
                f"{folder / name}: a case of this name comes from another folder too, and its folder's name for it, "
                f"{new}, is another case's; outputs would collide."
            )
    renamed = [f"{f / n} -> {new}" for (f, n), new in names.items() if new != n and (f, n) not in problems]
    if renamed:
        logger.warning("cases of one name in different folders, named apart by their folders: %s.", ", ".join(renamed))
    return names, problems
