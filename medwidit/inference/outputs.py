"""Outputs written as one unit per case (design decision 10), never replacing anything unless asked.

Every file of a case is staged in a private folder inside the output folder under its final name (so a ``.mhd`` or
``.nhdr`` header names its final data file), then committed file by file with ``medwidit.utils.files.commit``
(link-based: without overwrite an existing target is refused in one system call, so two runs never both win), and a
per-case marker is written last. A case without its marker is unfinished: ``--continue`` completes the commit an
interrupted run left, or redoes the case; a finished case whose marker names other settings than the run's
(:func:`changed_settings`) is not taken for this run's. The plan of every output path is checked against every
input first. An overwriting commit replaces the case as one set: the earlier outputs its previous marker lists and
this run does not write are removed before the new marker; it keeps a second name of each earlier file in its staging
folder first, so that an error or interrupt puts the earlier set back (after a kill, the next run of the case does).

    out/.medwidit/<case>.json                the marker: the case's files and its run's settings, written last
    out/.medwidit/<case>.<random>.staging/   one run's staged files of one case, removed on success and on error
    out/.medwidit/lock                       held (flock) while a case commits, so commits in a folder never interleave

A case's own files besides ``Case.output_path``'s kinds (:func:`output_path`): ``<case>_aleatoric`` and
``<case>_epistemic`` (the parts of the entropy), ``<case>_disagreement`` (the localization pass against the full
one) and ``<case>_error_score`` (the entropy over ln K plus the disagreement plus the nearness to the written
labels' surface), with ``--save-uncertainty``;
``<case>_quality.json`` and ``<case>_statistics.json``.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medwidit.utils import atomic_write
from medwidit.utils.files import commit, link_or_copy, locked

from .io import IMAGE_SUFFIXES, OutputError, OutputImage, check_output_dir, image_suffix, one_line, save_image

__all__ = [
    "STATE_DIR",
    "CasePlan",
    "CaseWriter",
    "changed_settings",
    "check_plan",
    "finish_interrupted",
    "interrupted_settings",
    "restore_interrupted",
    "settings_json",
    "staged_elsewhere",
    "image_files",
    "input_files",
    "is_finished",
    "left_behind",
    "output_path",
    "output_path_variants",
    "plan_case",
    "replaced_outputs",
    "write_case",
    "write_image",
    "write_images",
    "write_json",
    "written_here",
]

logger = logging.getLogger(__name__)

STATE_DIR = ".medwidit"
DATA_FILES = {".mhd": ".zraw", ".nhdr": ".raw.gz"}  # the data file SimpleITK writes beside a header (compressed)
MANIFEST = "manifest.json"
RESTORING = ".restoring"  # in a staging folder: its overwrite is being undone (:func:`_restore`), not to be finished
ENTROPY_PARTS = {"aleatoric": "_aleatoric", "epistemic": "_epistemic", "disagreement": "_disagreement",
                 "error_score": "_error_score"}  # maps  # fmt: skip
JSON_SUFFIXES = {"quality": "_quality.json", "statistics": "_statistics.json"}  # per-case JSON outputs
# the rest of the line: a data file's name may hold spaces (from a review: "b c.raw.gz" went unprotected)
DATA_FILE_LINE = re.compile(r"^(?:ElementDataFile\s*=|data file:)[ \t]*(.+?)[ \t\r]*$", re.MULTILINE | re.IGNORECASE)


######################################################################################################################
# the plan
######################################################################################################################


def image_files(path: str | os.PathLike) -> list[Path]:
    """The files an image written at ``path`` consists of: its data file first for ``.mhd`` / ``.nhdr``, then it."""
    path = Path(path)
    suffix = image_suffix(path) or ""
    data = DATA_FILES.get(suffix.lower())
    return [path] if data is None else [path.with_name(path.name[: -len(suffix)] + data), path]


def input_files(path: str | os.PathLike) -> list[Path]:
    """``path`` and, for a ``.mhd`` / ``.nhdr`` header, the data file it names (an output may replace neither)."""
    path = Path(path)
    if (image_suffix(path) or "").lower() not in DATA_FILES or not path.is_file():
        return [path]
    try:
        with open(path, "rb") as f:
            # the file system's encoding, as SimpleITK opens the name (from a review: "héad.zraw" read as latin-1)
            match = DATA_FILE_LINE.search(os.fsdecode(f.read(65536)))
    except OSError:  # unreadable: reading the case reports it
        return [path]
    if match is None or match[1].split()[0].upper() in ("LOCAL", "LIST") or "%" in match[1]:  # "LIST 2D"
        return [path]
    return [path, path.parent / match[1]]


def output_path(case, output_dir: str | os.PathLike, kind: str) -> Path:
    """Where output ``kind`` of ``case`` (a ``cases.Case``) goes: ``case.output_path``'s kinds, the further maps
    (``aleatoric``, ``epistemic``, ``disagreement``, ``error_score``: images in the case's format), ``quality``
    (``<case>_quality.json``) and ``statistics`` (``<case>_statistics.json``)."""
    if kind in JSON_SUFFIXES:
        return Path(output_dir) / f"{case.name}{JSON_SUFFIXES[kind]}"
    if kind in ENTROPY_PARTS:
        return Path(output_dir) / f"{case.name}{ENTROPY_PARTS[kind]}{case.suffix.lower()}"
    return case.output_path(output_dir, kind)


def output_path_variants(case, output_dir: str | os.PathLike, kind: str) -> list[Path]:
    """:func:`output_path` of ``kind`` in every image format (itself first): the names an earlier run of a case of
    this name wrote from another format (``a.nii`` where this run writes ``a.nii.gz``; from a review, an overwrite
    left such a set behind, unlisted). A JSON or PNG output has one name."""
    path = output_path(case, output_dir, kind)
    suffix = image_suffix(path)
    if suffix is None:
        return [path]
    stem = path.name[: len(path.name) - len(suffix)]
    return [path, *(path.with_name(stem + other) for other in IMAGE_SUFFIXES if other != suffix.lower())]


def write_json(content: dict, staged: Path) -> None:
    """``content`` as indented JSON at ``staged`` (a staged file: the case's commit makes it appear)."""
    staged.write_text(json.dumps(content, indent=1, allow_nan=False) + "\n")


@dataclass(frozen=True)
class CasePlan:
    """Where one case goes: its files in commit order (data files before their headers) and its marker (None for a
    plain write: no marker, no folder lock). ``earlier``: the case's outputs of other kinds or other formats, which
    this run does not write; an overwriting commit removes those the case's previous marker lists, so that no
    earlier run's map or report is left beside new labels. ``settings``: what the case's outputs depend on (JSON
    values; the marker keeps them, :func:`changed_settings` compares them), None where nothing is compared."""

    name: str
    files: tuple[Path, ...]
    marker: Path | None
    earlier: tuple[Path, ...] = ()
    settings: dict | None = field(default=None, compare=False)

    @property
    def state_dir(self) -> Path:
        return self.marker.parent if self.marker is not None else self.files[0].parent


def plan_case(
    output_dir: str | os.PathLike,
    name: str,
    outputs: Sequence[str | os.PathLike],
    others: Sequence[str | os.PathLike] = (),
    settings: Mapping | None = None,
) -> CasePlan:
    """The plan of case ``name`` writing ``outputs`` (main files) into ``output_dir``; ``others``: the case's outputs
    of the kinds or formats not written this time (``CasePlan.earlier``); ``settings``: the run's
    (``CasePlan.settings``)."""
    files = tuple(f for path in outputs for f in image_files(path))
    earlier = tuple(f for path in others for f in image_files(path) if f not in files)
    settings = None if settings is None else settings_json(settings)  # as a marker reads them back
    return CasePlan(name, files, Path(output_dir) / STATE_DIR / f"{name}.json", earlier, settings)


def _key(path: Path) -> str:
    return os.path.realpath(path)


def check_plan(plans: Sequence[CasePlan], inputs: Sequence[str | os.PathLike]) -> None:
    """An OutputError, before anything runs, if an output would replace an input or two cases share an output."""
    owners = {_key(f): f"the input {f}" for path in inputs for f in input_files(path)}
    for plan in plans:
        for path in plan.files:
            owner = owners.setdefault(_key(path), f"an output of case {plan.name!r}")
            if owner != f"an output of case {plan.name!r}":
                raise OutputError(
                    f"{path}: this output of case {plan.name!r} is also {owner}; nothing was run (choose another "
                    "output folder or rename the inputs)."
                )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def written_here(folder: str | os.PathLike) -> set[str]:
    """The file names that the markers in ``folder``'s state folder list: outputs of earlier runs into ``folder``,
    never a case's inputs (from a review: after ``-i d -o d`` every later run there, ``--continue`` too, took the
    label map for a modality of its own case and the uncertainty maps for cases)."""
    state = Path(folder) / STATE_DIR
    names: set[str] = set()
    for marker in sorted(state.glob("*.json")) if state.is_dir() else ():
        files = _read_json(marker).get("files")
        names |= {name for name in files if isinstance(name, str)} if isinstance(files, list) else set()
    # and what a killed run's commit placed or kept (its marker gone or never written): else the next run there took
    # them for cases and refused to run, the earlier set never put back (from a review)
    for staging in sorted(state.glob("*.staging")) if state.is_dir() else ():
        manifest = _read_json(staging / MANIFEST)
        for key in ("files", "kept", "marker"):
            listed = manifest.get(key)
            names |= {name for name in listed if isinstance(name, str)} if isinstance(listed, list) else set()
    return names


def is_finished(plan: CasePlan) -> bool:
    """Whether the case's marker lists every planned file (it may list more) and all of them exist."""
    written = _read_json(plan.marker).get("files")
    return isinstance(written, list) and all(f.name in written and f.is_file() for f in plan.files)


def _listed(plan: CasePlan) -> list[str]:
    """The file names the case's marker lists ([] without a marker)."""
    written = _read_json(plan.marker).get("files")
    return [name for name in written if isinstance(name, str)] if isinstance(written, list) else []


def left_behind(plan: CasePlan) -> list[str]:
    """The files the case's marker lists, by name, that are there, that this plan does not write and that no other
    case's marker lists: an earlier set that a commit without overwrite would leave behind, listed by no marker (the
    new one replaces it); from a review, ``a.nii`` then ``a.nii.gz`` into one folder. Also those a killed run's
    begun commit placed (:func:`_placed`; from a review: they stayed beside the new set, listed by nothing)."""
    if plan.marker is None:
        return []
    ours = {f.name for f in plan.files}
    names = [name for name in _listed(plan) if name not in ours and (plan.marker.parent.parent / name).is_file()]
    others = _listed_by_other_cases(plan, names)
    behind = [name for name in names if name not in others]
    for staging in _stagings(plan) if plan.state_dir.is_dir() else ():
        try:
            with locked(staging / ".lock", blocking=False) as stale:
                placed = _placed(plan, staging) if stale else []
        except FileNotFoundError:  # removed by another run since it was listed
            continue
        behind += [path.name for path in placed if path.name not in behind]
    return behind


def _placed(plan: CasePlan, staging: Path) -> list[Path]:
    """The outputs a gone run's begun commit in ``staging`` had placed (its staged copies) that ``plan`` does not
    write and that no marker lists: removing its staging folder would leave them in the folder as nobody's."""
    written = _read_json(staging / MANIFEST).get("files")
    if (staging / RESTORING).exists() or not isinstance(written, list):
        return []
    folder, ours = plan.files[0].parent, {f.name for f in plan.files}
    names = [n for n in written if isinstance(n, str) and n not in ours and _same(staging / n, folder / n)]
    listed = set(_listed(plan)) | set(_listed_by_other_cases(plan, names))
    return [folder / name for name in names if name not in listed]


def _listed_by_other_cases(plan: CasePlan, names: Sequence[str]) -> dict[str, str]:
    """Those of ``names`` (files of the case's folder) that another case's marker lists -> the case listing each: an
    earlier output of this case may since have been replaced by another case's (case ``scan``'s
    ``scan_uncertainty.nii.gz`` by case ``scan_uncertainty``'s labels). Only a case whose name begins a file's can
    list it, so only the markers of those names are read, not the folder's every marker (a bulk overwrite read N^2)."""
    if plan.marker is None or not names:
        return {}
    cases = sorted({name[:i] for name in names for i in range(1, len(name))} - {plan.name})
    listed: dict[str, str] = {}
    for case in cases:
        marker = plan.marker.parent / f"{case}.json"
        files = _read_json(marker).get("files") if marker.is_file() else None
        for name in files if isinstance(files, list) else ():
            if isinstance(name, str) and name in names:
                listed.setdefault(name, case)
    return listed


def _stale(plan: CasePlan, previous: set[str]) -> list[Path]:
    """The ``earlier`` outputs an overwriting commit removes: those the case's previous marker lists (``previous``)
    that are there, and that no other case's marker lists (from a review: an overwrite of case ``scan`` removed
    case ``scan_uncertainty``'s labels, which had replaced its uncertainty map)."""
    stale = [f for f in plan.earlier if f.name in previous and f.is_file()]
    others = _listed_by_other_cases(plan, [f.name for f in stale])
    return [f for f in stale if f.name not in others]


def missing_outputs(plan: CasePlan) -> list[str]:
    """The files the case's marker lists that are gone ([] where it has no marker, or none is gone)."""
    return [name for name in _listed(plan) if not (plan.marker.parent.parent / name).is_file()]


def replaced_outputs(plan: CasePlan) -> dict[str, str]:
    """The case's outputs that another case's overwriting commit replaced -> that case (:func:`_release`)."""
    replaced = _read_json(plan.marker).get("replaced") if plan.marker is not None else None
    return {k: v for k, v in replaced.items() if isinstance(v, str)} if isinstance(replaced, dict) else {}


def finished_with_others(plan: CasePlan) -> list[str]:
    """What the case's marker lists, by name, where an earlier run finished the case (every listed file is there)
    with other outputs than this plan's; [] where it finished with these, or did not finish."""
    written = _listed(plan)
    if not written or missing_outputs(plan) or sorted(written) == sorted(f.name for f in plan.files):
        return []
    return written


def settings_json(settings: Mapping) -> dict:
    """``settings`` as a marker holds them and reads them back: JSON values (numpy scalars and arrays as numbers and
    lists, paths as text), so that one run's settings compare equal to themselves."""

    def plain(value):
        return value.tolist() if hasattr(value, "tolist") else str(value)

    return json.loads(json.dumps(settings, default=plain))


ABSENT = object()  # a key one side of a comparison does not have


def _differences(then, now, name: str = "") -> list[str]:
    """Each setting whose value differs, by its path ("preprocessing.bias_correction "n4" (then null)", "weights[1]
    ..."); [] where either side has none to compare. A setting only one side names is passed over (another medwidit
    version's setting, not a change of this run's); inside a setting, a key only one side has is a change (an
    option of the views, a class of the expected volumes)."""
    if isinstance(then, dict) and isinstance(now, dict):
        keys = sorted(set(then) & set(now)) if not name else sorted(set(then) | set(now))
        return [
            line
            for key in keys
            for line in _differences(then.get(key, ABSENT), now.get(key, ABSENT), f"{name}.{key}" if name else key)
        ]
    if isinstance(then, list) and isinstance(now, list) and len(then) == len(now) and name:
        pairs = enumerate(zip(then, now, strict=True))
        return [line for i, (a, b) in pairs for line in _differences(a, b, f"{name}[{i}]")]
    if then == now or not name:
        return []

    def shown(value) -> str:
        text = "absent" if value is ABSENT else json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{name} {shown(now)} (then {shown(then)})"]


def changed_settings(plan: CasePlan) -> list[str]:
    """The settings of ``plan``'s run that differ from those its case's marker names (the run that finished it):
    "steps 3 (then 10)", ...; [] where they agree, or where the plan or the marker names none (a plain write, or a
    case finished by a medwidit that kept no settings)."""
    return _differences(_read_json(plan.marker).get("settings"), plan.settings)


######################################################################################################################
# staging and committing
######################################################################################################################


def _same(a: Path, b: Path) -> bool:
    """``b`` is the file staged as ``a`` (one inode after a link; equal bytes where the file system copied)."""
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _marker_text(plan: CasePlan, files: Sequence[str], settings: dict | None) -> str:
    marker = {"case": plan.name, "files": list(files)} | ({} if settings is None else {"settings": settings})
    return json.dumps(marker, indent=1) + "\n"


def _write_marker(plan: CasePlan, files: Sequence[str], settings: dict | None) -> None:
    content = _marker_text(plan, files, settings)
    atomic_write(plan.marker, lambda tmp: tmp.write_text(content))


KEPT = ".previous-"  # in a staging folder: a second name of an earlier output that an overwriting commit replaces


def _commit_staged(
    plan: CasePlan, staging: Path, *, overwrite: bool, committed: list[Path], resume: bool = False
) -> None:
    """Commit each staged file of ``plan`` from ``staging``, then (with ``overwrite``) remove the ``earlier`` outputs
    the previous marker lists, then write the marker (the last step). ``resume``: ``staging`` is an interrupted
    run's, whose files already in place (:func:`_same`) are skipped; that run's overwrite and earlier list (in its
    manifest) are finished as it began them.

    An overwriting commit first keeps a second name of each earlier output it will replace or remove, and the
    earlier marker's list, in ``staging`` (:func:`_keep_earlier`): an error or interrupt during the commit puts the
    earlier set back (:func:`_restore`), and a sweep of a killed run's staging does too (:func:`finish_interrupted`).
    """
    manifest = _read_json(staging / MANIFEST)
    if resume and manifest.get("overwrite"):  # the killed run's commit, as it was asked for
        overwrite = True
    there = any(f.exists() for f in plan.files)  # then the commit's first link is refused: "already exists"
    if not overwrite and not resume and not there and (behind := left_behind(plan)):
        # under the folder's lock: another run committed the case meanwhile, in another format or with other outputs
        # (from a review: two runs at once, a/scan.nii.gz and b/scan.nii, both exited 0, one marker listing one)
        raise OutputError(
            f"{plan.state_dir.parent / behind[0]}: case {plan.name!r} was written by another run "
            f"({', '.join(behind)}), which this commit would leave behind; pass --overwrite to replace that case."
        )
    previous, taken = set(), {}
    if plan.marker is not None and overwrite:
        listed = manifest.get("previous") if resume and "previous" in manifest else _read_json(plan.marker).get("files")
        previous = {name for name in listed if isinstance(name, str)} if isinstance(listed, list) else set()
        taken = _listed_by_other_cases(plan, [f.name for f in plan.files if f.exists()])
    try:
        kept = _keep_earlier(plan, staging, manifest, previous, taken) if overwrite and not resume else None
    except OSError as e:  # nothing replaced yet
        # the output in the way (a folder under an output's name), else the case (not a staging file's hidden name)
        where = e.filename if e.filename and Path(e.filename).parent == plan.files[0].parent else plan.files[0]
        raise OutputError(f"{where}: cannot keep the earlier outputs to replace ({e.strerror or e}).") from e
    # without overwrite an existing marker stays: this commit can only add missing files, and a run that loses the race
    # to another (its first link refused) must leave the winner's marker; the new marker replaces it at the end
    try:
        if plan.marker is not None and overwrite:
            plan.marker.unlink(missing_ok=True)  # until the new marker is written, the case reads as unfinished
            # after it: a kill between the two leaves no marker, so the next run's restore puts the list back (a
            # review: killed the other way round, the other case's marker stayed without its file for good)
            _release(plan, taken)
        for final in plan.files:
            staged = staging / final.name
            if resume and final.exists() and _same(staged, final):
                # committed by the interrupted run whose staging folder this is; never in a fresh commit: another
                # run's file of the same bytes (same seed) is not this run's, and taking it let this run replace its
                # marker
                continue
            link = staging / f".commit-{final.name}"
            # listed before the commit: an interrupt (Ctrl-C, SIGTERM) just after the commit, before the append,
            # left the file behind unlisted; the writer's cleanup removes a listed file only where it is this run's
            committed.append(final)
            try:
                # a killed run's link, left between its making and the commit (from a kill campaign: --continue
                # failed on it as "already exists"); the staging folder is this run's, or a gone run's it finishes
                link.unlink(missing_ok=True)
                link_or_copy(staged, link)  # the staged file stays: it proves which outputs are this run's
                commit(link, final, overwrite=overwrite)
            except OSError as e:
                committed.pop()
                if isinstance(e, FileExistsError):
                    message = "already exists (written by another run meanwhile?); pass --overwrite to replace it"
                else:
                    message = f"cannot write ({e.strerror or one_line(e)})"
                raise OutputError(f"{final}: {message}.") from e
            finally:
                link.unlink(missing_ok=True)
        stale = _stale(plan, previous)  # an earlier run's, by its marker
        for path in stale:
            path.unlink(missing_ok=True)
        for case in sorted(set(taken.values())):
            logger.warning(
                "%s: replaced %s, case %r's output from an earlier run (--overwrite); case %r is unfinished now.",
                plan.name,
                ", ".join(name for name, owner in sorted(taken.items()) if owner == case),
                case,
                case,
            )
        if stale:  # said before the marker: an interrupt while it is said still puts the earlier set back
            logger.warning(
                "%s: removed the earlier run's %s, which this run does not write (--overwrite replaces a case's "
                "outputs as one set).",
                plan.name,
                ", ".join(p.name for p in stale),
            )
        if plan.marker is not None:  # a killed run's commit, finished: that run's settings (the same, _finishable)
            _write_marker(plan, [f.name for f in plan.files], manifest.get("settings") if resume else plan.settings)
        committed.clear()  # the case is complete: nothing after this (a sweep) may remove it
    except BaseException:
        if kept is not None:
            committed.clear()  # from here the restore owns the files: the writer's cleanup must not remove them
            try:
                _restore(plan, staging)
            except BaseException:
                later = "the next run of this case puts them back" if plan.marker else "see there"
                logger.error(
                    "%s: putting the earlier outputs back was cut short; what is left of them is kept in %s (%s).",
                    plan.name,
                    staging,
                    later,
                )
                raise
        raise


def _keep_earlier(plan: CasePlan, staging: Path, manifest: dict, previous: set[str], taken: dict) -> list[str]:
    """Before an overwriting commit: a second name in ``staging`` of each earlier output it replaces (the planned
    files that exist) or removes (``earlier`` files the marker lists), and, in the manifest, their names, the
    marker's list, the other cases' outputs it replaces (``taken``, :func:`_release`) and the overwrite -> the kept
    names."""
    earlier = [f for f in plan.files if f.exists()] + _stale(plan, previous)
    for path in earlier:
        link_or_copy(path, staging / f"{KEPT}{path.name}")
    marker = {} if plan.marker is None else _read_json(plan.marker)
    record = {**manifest, "overwrite": True, "previous": sorted(previous), "kept": [p.name for p in earlier]}
    record["taken"] = taken
    record["marker"] = marker.get("files") if isinstance(marker.get("files"), list) else None
    record["marker_settings"] = marker.get("settings")
    atomic_write(staging / MANIFEST, lambda tmp: tmp.write_text(json.dumps(record)))
    return record["kept"]


def _release(plan: CasePlan, taken: Mapping[str, str], *, back: bool = False) -> None:
    """Take the files an overwriting commit of ``plan`` replaces out of the other cases' markers that list them
    (``taken``: file name -> that case), so that none calls its case finished on this case's file (from a review:
    ``--overwrite`` of case ``scan`` replaced case ``scan_uncertainty``'s labels, whose marker then listed an entropy
    map, and ``--continue`` skipped it); each marker keeps ``replaced``: name -> the case that replaced it.
    ``back``: put them back (the overwrite undone, :func:`_restore`)."""
    for case in sorted(set(taken.values())):
        marker = plan.state_dir / f"{case}.json"
        content, names = _read_json(marker), {name for name, owner in taken.items() if owner == case}
        if not isinstance(content.get("files"), list):
            continue
        replaced = content.get("replaced") if isinstance(content.get("replaced"), dict) else {}
        if back:
            content["files"] = content["files"] + sorted(names - set(content["files"]))
            replaced = {name: by for name, by in replaced.items() if name not in names}
        else:
            content["files"] = [name for name in content["files"] if name not in names]
            replaced = {**replaced, **dict.fromkeys(sorted(names), plan.name)}
        content = {key: value for key, value in content.items() if key != "replaced"}
        text = json.dumps(content | ({"replaced": replaced} if replaced else {}), indent=1) + "\n"
        atomic_write(marker, lambda tmp, text=text: tmp.write_text(text))


def _restore(plan: CasePlan, staging: Path) -> None:
    """Undo an overwriting commit cut short, from what :func:`_keep_earlier` kept in ``staging`` (this run's, or a
    killed run's): each file that commit planned goes back to its earlier content (or away, where none stood), each
    earlier output it removed comes back, and so does the earlier marker; then the manifest drops its ``kept`` list.
    Safe to run again after it was cut short itself: a name that had an earlier file is never removed. It marks
    ``staging`` as restoring first, so that no later run takes a half-restored folder for a commit to finish."""
    (staging / RESTORING).touch()
    manifest = _read_json(staging / MANIFEST)
    folder, kept_names = plan.files[0].parent, set(manifest.get("kept", []))
    for name in manifest.get("files", []):
        final, kept = folder / name, staging / f"{KEPT}{name}"
        if kept.exists():
            os.replace(kept, final)
        elif name not in kept_names and final.exists() and _same(staging / name, final):
            final.unlink()  # the commit's, where no earlier file stood
    for name in kept_names:  # earlier outputs the commit had removed
        kept = staging / f"{KEPT}{name}"
        if kept.exists() and not (folder / name).exists():
            os.replace(kept, folder / name)
    if plan.marker is not None and isinstance(manifest.get("taken"), dict):
        _release(plan, manifest["taken"], back=True)
    listed = manifest.get("marker")
    if plan.marker is not None and isinstance(listed, list):
        content = _marker_text(plan, listed, manifest.get("marker_settings"))
        atomic_write(plan.marker, lambda tmp: tmp.write_text(content))
    done = {key: value for key, value in manifest.items() if key != "kept"}
    atomic_write(staging / MANIFEST, lambda tmp: tmp.write_text(json.dumps(done)))
    logger.warning("%s: an overwrite was cut short; the case's earlier outputs are back in place.", plan.name)


def restore_interrupted(plan: CasePlan, *, finish: bool = False, keep_other: bool = False) -> bool:
    """Before anything else is done with ``plan``'s case: put back its earlier set where a gone run's overwrite (or
    that overwrite's restore) was cut short, its copies kept and the case without a marker (:func:`_restore`) ->
    whether it did; under the folder's lock. ``finish`` (``--continue``): a killed commit that had placed all its
    files (:func:`_finishable`) is left for :func:`finish_interrupted` to finish; ``keep_other`` (``--continue``
    without ``--overwrite``): so is one of other settings, for a run with those settings to finish."""
    # a case with its marker has nothing to put back: no lock taken (another user's lock file may not be writable)
    if plan.marker is None or plan.marker.exists() or not _stagings(plan):
        return False
    with locked(plan.state_dir / "lock"):
        return _restore_stale(plan, finish=finish, keep_other=keep_other)


def _restore_stale(plan: CasePlan, *, finish: bool = False, keep_other: bool = False) -> bool:
    """:func:`restore_interrupted` for a caller that holds the folder's lock (a commit: so that it neither lands on
    half the earlier set nor sweeps the copies)."""
    if plan.marker.exists():
        return False
    restored = False
    for staging in _stagings(plan):
        staged = _staged_commit(plan, staging) if finish or keep_other else None
        kept_for_its_run = keep_other and staged and not _earlier_is_ours(plan, staging)
        if "kept" not in _read_json(staging / MANIFEST) or (finish and staged == []) or kept_for_its_run:
            continue
        try:
            with locked(staging / ".lock", blocking=False) as stale:
                if stale:
                    _restore(plan, staging)
                    shutil.rmtree(staging, ignore_errors=True)
                    restored = True
        except FileNotFoundError:  # removed by another run since it was listed
            continue
    return restored


def _sweep(plan: CasePlan, keep: Path) -> None:
    """After ``plan``'s commit from ``keep``: remove the staging folders other runs of the case left (their flock
    free), those killed before their manifest was written too (older than a minute, so that a run starting now is
    not taken for one)."""
    pattern = re.compile(rf"{re.escape(plan.name)}\.[a-z0-9_]{{8}}\.staging")
    try:
        found = list(plan.state_dir.iterdir())
    except OSError:  # the case is committed: a leftover is not worth failing it
        return
    for staging in found:
        if staging == keep or not pattern.fullmatch(staging.name):
            continue
        manifest = _read_json(staging / MANIFEST)
        if manifest.get("case", plan.name) != plan.name:
            continue
        try:
            if not staging.is_dir() or (not manifest and time.time() - staging.stat().st_mtime < 60):
                continue
            with locked(staging / ".lock", blocking=False) as stale:
                if stale:
                    for path in _placed(plan, staging):  # a run killed while this one ran (from a review)
                        path.unlink(missing_ok=True)
                    shutil.rmtree(staging, ignore_errors=True)
        except OSError:  # gone meanwhile, or another user's: the case is committed, a leftover is not worth failing it
            continue


class CaseWriter:
    """Stages one case's files (:meth:`write`), then :meth:`commit` puts them all in place and the marker last. On any
    error, KeyboardInterrupt included, the files this writer committed and its staging folder are removed;
    ``removed`` lists them and ``replaced`` the earlier files that ``overwrite`` had already replaced (an overwriting
    commit puts the earlier set back itself, :func:`_restore`, and then lists nothing)."""

    def __init__(self, plan: CasePlan, *, overwrite: bool) -> None:
        self.plan, self.overwrite = plan, overwrite
        self.committed: list[Path] = []
        self.removed: list[Path] = []
        self.replaced: list[Path] = []
        self.staging: Path | None = None
        self._existed: set[Path] = set()
        self._lock = None
        self._done = False  # the commit completed: nothing may remove the case any more

    def __enter__(self) -> CaseWriter:
        self.plan.state_dir.mkdir(exist_ok=True)
        prefix = f"{self.plan.name}." if self.plan.marker is not None else f".{self.plan.name}."
        self.staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".staging", dir=self.plan.state_dir))
        self._lock = locked(self.staging / ".lock")  # held while this run lives: its staging is never taken as stale
        self._lock.__enter__()
        (self.staging / MANIFEST).write_text(json.dumps({"case": self.plan.name}))
        return self

    def write(self, final: str | os.PathLike, write_fn: Callable[[Path], object]) -> None:
        """``write_fn(staged)`` writes ``final``'s content under its final name in the staging folder."""
        try:
            write_fn(self.staging / Path(final).name)
        except OSError as e:
            raise OutputError(f"{final}: cannot write ({e.strerror or one_line(e)}).") from e
        except RuntimeError as e:  # SimpleITK reports write failures as RuntimeError
            raise OutputError(f"{final}: cannot write ({one_line(e)}).") from e

    def commit(self) -> list[Path]:
        """Commit every staged file (data files before headers) and then the marker; returns the files."""
        staged = {p.name for p in self.staging.iterdir()} - {".lock", MANIFEST}
        planned = {f.name for f in self.plan.files}
        if staged != planned:  # a writer named a file otherwise than planned: it would be lost or unchecked
            raise OutputError(f"{self.plan.files[-1]}: wrote {sorted(staged)} where {sorted(planned)} were planned.")
        manifest = json.dumps({"case": self.plan.name, "files": sorted(planned), "settings": self.plan.settings})
        atomic_write(self.staging / MANIFEST, lambda tmp: tmp.write_text(manifest))
        self._existed = {f for f in self.plan.files if f.exists()}
        if self.plan.marker is None:
            _commit_staged(self.plan, self.staging, overwrite=self.overwrite, committed=self.committed)
            self._done = True
        else:
            with locked(self.plan.state_dir / "lock"):
                _restore_stale(self.plan)  # a restore cut short: the earlier set back first, then this commit
                _commit_staged(self.plan, self.staging, overwrite=self.overwrite, committed=self.committed)
                self._done = True
                _sweep(self.plan, keep=self.staging)  # a killed run's leftovers of this case, gigabytes of maps maybe
        return list(self.plan.files)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                for final in reversed(self.committed):
                    if _same(self.staging / final.name, final):
                        final.unlink(missing_ok=True)
                        self.removed.append(final)
                self.replaced = [f for f in self.removed if f in self._existed]
        finally:
            # a restore cut short itself (a second Ctrl-C, a disk still full) left its kept copies and no marker: the
            # folder stays for the next run of the case to finish the restore (restore_interrupted)
            done = self._done or (self.plan.marker is not None and is_finished(self.plan))
            unrestored = exc_type is not None and not done and "kept" in _read_json(self.staging / MANIFEST)
            if not unrestored:
                shutil.rmtree(self.staging, ignore_errors=True)
            self._lock.__exit__(None, None, None)


def _stagings(plan: CasePlan) -> list[Path]:
    """The staging folders of ``plan``'s case in its state folder: a live run's, or an interrupted one's."""
    found = sorted(plan.state_dir.glob(f"{glob_escape(plan.name)}.*.staging"))
    return [staging for staging in found if _read_json(staging / MANIFEST).get("case") == plan.name]


def _staged_commit(plan: CasePlan, staging: Path) -> list[str] | None:
    """Whether the gone run's ``staging`` holds a commit of ``plan``'s case it had begun (its manifest lists its
    files, written when the commit starts, and each of them already in place is its staged copy) -> how that run
    differs from ``plan``'s: the outputs it wrote ("outputs +x_uncertainty.nii.gz" where this run asks for more) and
    its settings (:func:`changed_settings`' lines); [] for none (:func:`_finishable`), None where it holds no begun
    commit."""
    if (staging / RESTORING).exists():  # the user's Ctrl-C aborted that commit: its earlier set goes back instead
        return None
    manifest = _read_json(staging / MANIFEST)
    written = manifest.get("files")
    if not isinstance(written, list) or not all(isinstance(name, str) for name in written):
        return None
    folder = plan.files[0].parent
    if not all(not (folder / name).exists() or _same(staging / name, folder / name) for name in written):
        return None
    planned, written = {f.name for f in plan.files}, set(written)
    outputs = [f"+{name}" for name in sorted(planned - written)] + [f"-{name}" for name in sorted(written - planned)]
    settings = _differences(manifest.get("settings"), plan.settings)
    return ([f"outputs {', '.join(outputs)}"] if outputs else []) + settings


def _earlier_is_ours(plan: CasePlan, staging: Path) -> bool:
    """Whether the earlier set a killed overwrite in ``staging`` kept is of ``plan``'s settings (or of a medwidit that
    kept none, as :func:`changed_settings` reads it): then it goes back, rather than wait for the killed run's."""
    manifest = _read_json(staging / MANIFEST)
    return "kept" in manifest and not _differences(manifest.get("marker_settings"), plan.settings)


def _finishable(plan: CasePlan, staging: Path) -> bool:
    """Whether ``staging`` holds a commit of ``plan`` that this run may finish: one of its own settings (a run with
    other settings is not this run's to finish)."""
    return _staged_commit(plan, staging) == []


def staged_elsewhere(plan: CasePlan) -> str | None:
    """What another run left staged for ``plan``'s case: "live" (a run writing it now, its flock held), "finishable"
    (a gone run's commit that :func:`finish_interrupted` completes), or None."""
    found = None
    for staging in _stagings(plan):
        try:
            with locked(staging / ".lock", blocking=False) as stale:
                if not stale:
                    return "live"
                if _finishable(plan, staging):
                    found = "finishable"
        except FileNotFoundError:  # removed by another run since it was listed
            continue
    return found


def interrupted_settings(plan: CasePlan) -> list[str]:
    """Where a gone run with other settings or outputs left a commit of ``plan``'s case (kept by ``--continue``
    without ``--overwrite``, :func:`finish_interrupted`): how it differs from ``plan``'s run; else []."""
    for staging in _stagings(plan):
        try:
            with locked(staging / ".lock", blocking=False) as stale:
                if stale and (differences := _staged_commit(plan, staging)):
                    return differences
        except FileNotFoundError:  # removed by another run since it was listed
            continue
    return []


def finish_interrupted(plan: CasePlan, *, overwrite: bool, finish: bool = True) -> bool:
    """Complete the commit an interrupted run left for ``plan`` (:func:`_finishable`) -> True; stale staging folders
    of the case are removed either way (only removed, without ``finish``), and where one is an overwrite killed while
    committing (its earlier outputs kept, the case without a marker) the case's earlier set is put back first
    (:func:`_restore`). A staging folder whose run is alive (its flock held) is left alone, and so, with ``finish``
    and without ``overwrite``, is a commit of other settings (:func:`interrupted_settings`): that run's to finish."""
    finished = False
    if not plan.state_dir.is_dir():
        return finished
    keep_other = finish and not overwrite  # a commit of other settings: that run's to finish, or an overwrite's
    # the folder's lock first, then each staging flock without waiting: the order of a commit (_restore_stale), so
    # that no commit lands between this run's look at a staging folder and what it does with it
    with locked(plan.state_dir / "lock"):
        # an overwrite killed while committing (or its restore): put back
        _restore_stale(plan, finish=finish, keep_other=keep_other)
        for staging in _stagings(plan):
            try:
                with locked(staging / ".lock", blocking=False) as stale:
                    if not stale:
                        continue  # a live run's
                    if keep_other and _staged_commit(plan, staging):
                        continue  # interrupted_settings names it (an overwrite's earlier set of ours went back)
                    if finish and not finished and _finishable(plan, staging):
                        _commit_staged(plan, staging, overwrite=overwrite, committed=[], resume=True)
                        finished = True
                        logger.info("%s: finished the commit an interrupted run had begun", plan.name)
                    elif overwrite and (placed := _placed(plan, staging)):  # else nobody's, beside the new set
                        for path in placed:
                            path.unlink(missing_ok=True)
                        logger.warning(
                            "%s: removed %s, placed by an interrupted run's commit (--overwrite replaces a case's "
                            "outputs as one set).",
                            plan.name,
                            ", ".join(path.name for path in placed),
                        )
                    shutil.rmtree(staging, ignore_errors=True)
            except FileNotFoundError:  # removed by another run since it was listed
                continue
    return finished


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def write_case(plan: CasePlan, writes: dict[Path, Callable[[Path], object]], *, overwrite: bool) -> None:
    """``writes[final](staged)`` for every output of a case, then the commit; on any error the files this run
    committed are removed again, and a line says so (and which earlier files ``overwrite`` had replaced)."""
    writer = CaseWriter(plan, overwrite=overwrite)
    try:
        with writer:
            for final, write_fn in writes.items():
                writer.write(final, write_fn)
            writer.commit()
    except BaseException:
        if writer.removed:
            gone = (
                f"; the earlier {', '.join(p.name for p in writer.replaced)} it replaced are gone"
                if (writer.replaced)
                else ""
            )
            logger.error(
                "%s: removed the %d output file(s) this run had committed (%s)%s.",
                plan.name,
                len(writer.removed),
                ", ".join(p.name for p in writer.removed),
                gone,
            )
        raise


######################################################################################################################
# plain writes
######################################################################################################################


def write_images(items: Sequence[OutputImage], *, overwrite: bool = False) -> list[Path]:
    """Write ``items`` (one folder) all or nothing: staged, then committed; without ``overwrite`` an existing target
    is an OutputError and nothing is left behind."""
    items = [item._replace(path=Path(item.path)) for item in items]
    if not items:
        return []
    if len({item.path.parent for item in items}) > 1:
        raise ValueError(f"write_images writes into one folder, got {sorted({str(i.path.parent) for i in items})}.")
    for item in items:  # before any folder is made
        if image_suffix(item.path) is None:
            raise ValueError(f"{item.path}: cannot write this format (expected one of {', '.join(IMAGE_SUFFIXES)}).")
    check_output_dir(items[0].path.parent)  # made with its parents, or one line saying why not
    files = tuple(f for item in items for f in image_files(item.path))
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]}: already exists; pass overwrite=True (--overwrite) to replace it.")
    with CaseWriter(CasePlan(items[0].path.name, files, None), overwrite=overwrite) as writer:
        for item in items:
            writer.write(item.path, lambda staged, item=item: save_image(item, staged))
        writer.commit()
    logger.debug("wrote %s", ", ".join(str(item.path) for item in items))
    return [item.path for item in items]


def write_image(
    array, geometry, path, kind: str = "labels", *, overwrite: bool = False, max_label: int | None = None
) -> Path:
    """Write one image atomically on ``geometry``; ``kind`` is labels (uint8/uint16), probabilities or uncertainty."""
    return write_images([OutputImage(array, geometry, Path(path), kind, max_label)], overwrite=overwrite)[0]
