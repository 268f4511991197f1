"""Segmenting files: the case loop behind ``Predictor.predict_from_files``. It finds the cases (nnU-Net modality
naming), plans every output against every input before the first case runs, segments each case with the predictor,
commits each case's outputs as one unit (``outputs``), and gives a doubtful case one warning line.

The predictor turns one image into a ``Segmentation``; this module is everything about files and folders around it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medwidit.utils import check_bool, check_int, check_seed
from medwidit.utils.files import sha256_file

from .atlas import atlas_warning
from .calibration import check_warn_dice
from .cases import DEFAULT_MODALITY_PATTERN, Case, find_cases
from .dicom import series_files
from .figure import save_overlay_figure
from .io import InputError, OutputError, OutputImage, check_output_dir, one_line, read_image, save_image, to_nibabel
from .localize import kept_warning
from .options import sampling_options
from .outputs import (
    ENTROPY_PARTS,
    CasePlan,
    changed_settings,
    check_plan,
    finish_interrupted,
    finished_with_others,
    input_files,
    interrupted_settings,
    is_finished,
    left_behind,
    missing_outputs,
    output_path,
    output_path_variants,
    plan_case,
    replaced_outputs,
    restore_interrupted,
    staged_elsewhere,
    write_case,
    write_json,
)

if TYPE_CHECKING:
    from .predictor import Predictor, Segmentation

__all__ = ["CaseResult", "predict_from_files", "warning_causes"]

logger = logging.getLogger(__name__)

ALL_KINDS = ("labels", "probabilities", "uncertainty", *ENTROPY_PARTS, "figure", "quality", "statistics")  # every kind


@dataclass
class CaseResult:
    """What ``predict_from_files`` did with one case: ``status`` is done, skipped or failed (with ``message``)."""

    name: str
    status: str
    outputs: list[Path] = field(default_factory=list)
    message: str | None = None
    seconds: float = 0.0
    quality: dict | None = None  # the case's quality estimate (Segmentation.quality), when it was segmented


def predict_from_files(
    predictor: Predictor,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    save_probabilities: bool = False,
    save_uncertainty: bool = False,
    save_figure: bool = False,
    save_quality: bool = False,
    save_statistics: bool = False,
    progress: bool = True,
    steps: int | None = None,
    num_samples: int | None = None,
    overlap: float | None = None,
    sampler: str | None = None,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    shared_steps: int | None = None,
    seed: int = 0,
    modality_pattern: str | None = DEFAULT_MODALITY_PATTERN,
    force_grid: bool = False,
    augment: int | None = None,
    weight_sets: int | None = None,
    warn_dice: float | None | str = "predictor",
    num_parts: int = 1,
    part_id: int = 0,
    on_case: Callable[[CaseResult], object] | None = None,
) -> list[CaseResult]:
    """Segment every case in ``inputs`` (files and folders, nnU-Net modality naming) into ``output_dir``.

    Each case is one unit (``outputs``): all its files appear, with a marker written last, or none. A case with
    existing outputs fails unless ``overwrite`` (replace) or ``resume`` (skip finished cases, finish or redo
    unfinished ones; with ``overwrite`` too, an unfinished case's files are replaced); under ``resume`` a case
    finished with other settings (``Predictor.output_settings``, kept in its marker) fails, naming them, unless
    ``overwrite`` too, which segments it again. Options (``steps``,
    ``num_samples``, ``overlap``, ``sampler``, ``eta``, ``guidance_scale``, ``shared_steps``) are checked, and
    every output path is planned against every input, before the first case runs. A bad case fails alone with a
    one-line message.
    Each case's ensemble is seeded with ``seed``, so results do not depend on the order or subset of cases.
    ``save_figure`` adds ``<case>_figure.png``: three orthogonal slices with the label overlay and uncertainty.
    ``save_quality`` adds ``<case>_quality.json`` (``Segmentation.quality``, also on each ``CaseResult``);
    ``save_statistics`` adds ``<case>_statistics.json``: voxels and volume (mL) per class of the written label map
    (``Segmentation.statistics``);
    ``save_uncertainty`` writes the total entropy (``_uncertainty``), its ``_aleatoric`` and ``_epistemic``
    parts, the localization pass's ``_disagreement`` (0 without the pass) and ``_error_score`` (the entropy
    normalised by ln K plus the disagreement plus the nearness to the labels' surface). ``augment`` N > 1: N test-time
    views per case, ``weight_sets`` N > 1: N sets of weights (``Predictor.segment``). A case whose predicted Dice
    of a foreground class is below ``warn_dice`` ("predictor": the predictor's ``warn_dice``, or where the case's
    calibration was skipped for missing evidence ``calibration.ENSEMBLE_WARN_DICE``; 0 or None: no warning line at
    all) gets a warning line.
    ``num_parts``, ``part_id`` (nnU-Net's names): this process segments only its share of the cases, every
    ``num_parts``-th case of the list sorted by name starting at ``part_id``, so that ``num_parts`` processes
    share the work and each writes only its own cases; the plan is still checked over every case.
    ``on_case`` is called with each case's result as it ends (the CLI's run record keeps the cases an interruption
    leaves finished).
    """
    # a bundle's command line hands these over as words ("false"), and bool("false") is True
    flags = {
        "overwrite": overwrite,
        "resume": resume,
        "force_grid": force_grid,
        "save_probabilities": save_probabilities,
        "save_uncertainty": save_uncertainty,
        "save_figure": save_figure,
        "save_quality": save_quality,
        "save_statistics": save_statistics,
    }
    flags = {name: check_bool(name, value) for name, value in flags.items()}
    overwrite, resume, force_grid = flags["overwrite"], flags["resume"], flags["force_grid"]
    sampling = predictor.resolve_sampling(steps, num_samples, overlap)
    shared_steps = predictor.resolve_shared_steps(shared_steps, sampling[0])
    options = sampling_options(*sampling, sampler, eta, guidance_scale, shared_steps)
    predictor.check_options(**options)
    seed = check_seed(seed)  # numpy's integers too: torch's manual_seed takes a plain int
    augment = predictor.resolve_augment(augment)
    weight_sets = len(predictor.select_weights(weight_sets))
    if isinstance(warn_dice, str) and warn_dice != "predictor":
        raise ValueError(f"warn_dice must be a number in [0, 1], None or 'predictor', got {warn_dice!r}.")
    own_threshold = warn_dice == "predictor"  # then a case whose calibration was skipped is judged as uncalibrated
    warn_dice = predictor.warn_dice if own_threshold else check_warn_dice(warn_dice)
    check_int("num_parts", num_parts)
    check_int("part_id", part_id, low=0, high=num_parts - 1, hint=f" (num_parts={num_parts})")
    output_dir = check_output_dir(output_dir)
    kinds = ["labels"] + ["probabilities"] * flags["save_probabilities"]
    kinds += (
        ["uncertainty", *ENTROPY_PARTS] * flags["save_uncertainty"]
        + ["figure"] * flags["save_figure"]
        + ["quality"] * flags["save_quality"]
        + ["statistics"] * flags["save_statistics"]
    )
    cases = find_cases(inputs, num_modalities=predictor.num_modalities, modality_pattern=modality_pattern)
    outputs = {c.name: [output_path(c, output_dir, k) for k in kinds] for c in cases if c.problem is None}
    # never an earlier output to remove: an input, or what this run writes for any case (case "scan_uncertainty"'s
    # labels are case "scan"'s uncertainty map by name)
    kept = {os.path.realpath(f) for c in cases for f in c.files}
    kept |= {os.path.realpath(p) for paths in outputs.values() for p in paths}

    def others(case: Case) -> list[Path]:  # every kind in every format: an earlier run's, from a.nii where now a.nii.gz
        paths = [p for k in ALL_KINDS for p in output_path_variants(case, output_dir, k)]
        return [p for p in paths if os.path.realpath(p) not in kept]

    settings = predictor.output_settings(options, seed=seed, augment=augment, weight_sets=weight_sets)
    plans = {
        c.name: plan_case(output_dir, c.name, outputs[c.name], others(c), settings) for c in cases if c.problem is None
    }
    check_plan(list(plans.values()), [f for c in cases for f in c.files])
    share = {id(c) for c in sorted(cases, key=lambda c: c.name)[part_id::num_parts]}
    results: list[CaseResult] = []
    for case in (c for c in cases if id(c) in share):
        start = time.perf_counter()
        plan = plans.get(case.name)
        if plan is not None:  # what the case is segmented from: read for this part's cases only, as each comes
            plan = replace(plan, settings={**plan.settings, "input": _input_digest(case)})
        try:
            result = _predict_case(
                predictor,
                case,
                plan,
                kinds,
                overwrite,
                resume,
                "predictor" if own_threshold else warn_dice,
                {
                    **options,
                    "progress": progress,
                    "force_grid": force_grid,
                    "augment": augment,
                    "weight_sets": weight_sets,
                },
                seed,
            )
            _warn_case(result)
        except KeyboardInterrupt:
            done = sum(r.status == "done" for r in results)
            logger.error(
                "interrupted during case %s (what this run had written of it is removed); the %d case(s) "
                "finished before it are complete.",
                case.name,
                done,
            )
            raise
        result.seconds = time.perf_counter() - start
        results.append(result)
        if on_case is not None:
            on_case(result)
    return results


def _input_digest(case: Case) -> list[str]:
    """What the case is segmented from: each modality's content, as the first 16 hex digits of a SHA-256 over its
    files' bytes (a header and its data file; a DICOM series' files by name). In the case's marker, it makes
    ``--continue`` refuse a finished case whose input was since replaced by another of the same name (it had kept the
    other scan's labels, on that scan's grid); an unreadable file reads as "unreadable" (reading the case says why)."""
    digests = []
    for path in case.files:
        digest = hashlib.sha256()
        try:  # a series folder: the files its reader reads (from a review: all below it, outputs written there too)
            files = [Path(f) for f in series_files(path)] if path.is_dir() else input_files(path)
            for file in files:
                digest.update(f"{file.name if path.is_dir() else ''}:{sha256_file(file)};".encode())
        except (OSError, InputError):
            digests.append("unreadable")
            continue
        digests.append(digest.hexdigest()[:16])
    return digests


# each caller's spelling of an option: Python's keyword, medwidit segment's flag, monai.bundle run's key (a bundle run
# has no --continue: it took that for an unused key and failed again)
SPELLINGS = {  # option -> its spelling by Python, by medwidit segment, by monai.bundle run
    "overwrite": ("overwrite=True", "--overwrite", "--overwrite true"),
    "resume": ("resume=True", "--continue", "--resume true"),
}


def _spelled(*options: str, joiner: str = " or ") -> str:
    """``options`` as each caller spells them: "(Python: ...; medwidit segment: ...; monai.bundle run: ...)"."""
    callers = ("Python", "medwidit segment", "monai.bundle run")
    spelled = (f"{caller}: {joiner.join(SPELLINGS[o][i] for o in options)}" for i, caller in enumerate(callers))
    return f"({'; '.join(spelled)})"


def _predict_case(
    predictor: Predictor, case: Case, plan: CasePlan | None, kinds, overwrite, resume, warn_dice, options, seed
) -> CaseResult:
    """One case, segmented and written whole, or skipped or failed with its reason. Its quality report keeps the
    verdict of its warning as ``warnings``: the predictor's (``warn_dice`` "predictor"), or judged again at this
    run's ``warn_dice`` (None: no warning)."""
    outputs = [output_path(case, plan.state_dir.parent, kind) for kind in kinds] if plan is not None else []
    try:
        if case.problem is not None:
            raise InputError(case.problem)
        # an overwrite cut short (or killed): the case's earlier set back before anything, but what --continue finishes
        restore_interrupted(plan, finish=resume, keep_other=resume and not overwrite)
        changed = changed_settings(plan) if resume and is_finished(plan) else None
        if changed == []:
            logger.info("%s: done before, skipped", case.name)
            return CaseResult(case.name, "skipped", outputs)
        if changed and not overwrite:  # its files are another run's result: skipping it would mix two runs' results
            inputs = any(line.startswith("input") for line in changed)
            by = "from another input file of this name" if inputs else "by a run with other settings"
            raise OutputError(
                f"{outputs[0]}: finished {by} ({'; '.join(changed)}); pass overwrite with "
                f"resume to segment it again {_spelled('overwrite', 'resume', joiner=' and ')}, or write into another "
                "folder."
            )
        if changed:
            logger.info("%s: finished before with other settings (%s): segmented again", case.name, "; ".join(changed))
        if (resume or overwrite) and finish_interrupted(plan, overwrite=overwrite, finish=resume):
            return CaseResult(case.name, "done", outputs, message="finished an interrupted commit")
        case.check_modalities(predictor.num_modalities)
        existing = [path for path in plan.files if path.exists()]
        if not existing and not overwrite and (behind := left_behind(plan)):  # its marker would list these no more
            raise OutputError(
                f"{plan.state_dir.parent / behind[0]}: case {case.name!r} was written by an earlier run "
                f"({', '.join(behind)}; another format or other outputs), which this run would leave behind; pass "
                f"overwrite to replace that case {_spelled('overwrite')}, or write into another folder."
            )
        if existing and not overwrite:
            if other := interrupted_settings(plan):
                hint = (
                    f", but an interrupted run with other settings or outputs ({'; '.join(other)}) left this case "
                    "unfinished; run with its settings and outputs and resume to finish it, or pass overwrite with "
                    f"resume to segment it again {_spelled('overwrite', 'resume', joiner=' and ')}"
                )
            elif resume and (replaced := replaced_outputs(plan)):  # before "finished with other outputs" (a review)
                hint = (
                    " but the case is unfinished ("
                    + "; ".join(f"{name} was replaced by case {by!r}'s output" for name, by in replaced.items())
                    + f"); pass overwrite with resume to redo it {_spelled('overwrite', 'resume', joiner=' and ')}"
                )
            elif resume and (written := finished_with_others(plan)):
                asked = ", ".join(sorted(f.name for f in plan.files if f.name not in written))
                hint = (
                    f" and the case was finished with other outputs ({', '.join(written)}), where this run asks for "
                    f"{asked or 'fewer'}; pass overwrite with resume to segment it again with these "
                    f"{_spelled('overwrite', 'resume', joiner=' and ')}"
                )
            elif resume:  # from a review: "no completion marker" where the marker was there, an output gone
                gone = missing_outputs(plan)
                why = (
                    f"its earlier outputs are incomplete: {', '.join(gone)} missing" if gone else "no completion marker"
                )
                hint = (
                    f" but the case is unfinished ({why}); pass overwrite with resume to redo it "
                    f"{_spelled('overwrite', 'resume', joiner=' and ')}"
                )
            elif (elsewhere := staged_elsewhere(plan)) == "finishable":  # a run killed while committing
                hint = (
                    ", but an interrupted run left this case unfinished (its staged files are in .medwidit/); pass "
                    f"resume to finish it {_spelled('resume')}"
                )
            elif elsewhere == "live":
                hint = ": another run is writing this case now; let it finish, or write into another folder"
            else:
                hint = (
                    f"; pass overwrite to replace it or resume to skip finished cases {_spelled('overwrite', 'resume')}"
                )
            raise OutputError(f"{existing[0]}: already exists{hint}.")
        result = predictor.segment(list(case.files), generator=torch.Generator().manual_seed(seed), **options)
        # the verdict travels with the case: in its quality JSON and the run record, not only on the console (from a
        # review: a batch's warned cases could not be found afterwards); the predictor judged it at its own threshold
        if warn_dice != "predictor":
            result.quality = {**result.quality, "warnings": case_warnings(result.quality, warn_dice)}
        _write_case(predictor, case, plan, kinds, result, overwrite)
    except (InputError, OSError) as e:
        logger.error("%s", e)
        return CaseResult(case.name, "failed", message=str(e))
    except Exception as e:  # one bad case must not stop the others; the traceback goes to the debug log
        logger.debug("case %s failed", case.name, exc_info=True)
        message = f"{case.files[0]}: {type(e).__name__}: {one_line(e)}"
        logger.error("%s", message)
        return CaseResult(case.name, "failed", message=message)
    logger.info("%s: wrote %s", case.name, ", ".join(path.name for path in plan.files))
    return CaseResult(case.name, "done", outputs, quality=result.quality)


def _write_case(predictor: Predictor, case: Case, plan: CasePlan, kinds, result: Segmentation, overwrite: bool) -> None:
    """Stage every output of the case, then commit them and the marker last (``outputs.write_case``)."""
    arrays = {"labels": result.label_map, "probabilities": result.probability, "uncertainty": result.entropy}
    arrays.update(aleatoric=result.aleatoric, epistemic=result.epistemic)
    nothing = np.zeros_like(result.entropy)  # no localization pass: no disagreement, as one group has no epistemic
    arrays["disagreement"] = nothing if result.disagreement is None else result.disagreement
    if "error_score" in kinds:  # computed, not stored: only where it is written
        arrays["error_score"] = result.error_score
    writes = {}
    for kind in kinds:
        path = output_path(case, plan.state_dir.parent, kind)
        if kind == "figure":
            writes[path] = partial(_figure, case, result)
        elif kind in ("quality", "statistics"):
            writes[path] = partial(write_json, getattr(result, kind))
        else:
            image_kind = "uncertainty" if kind in ENTROPY_PARTS else kind  # float32 maps
            item = OutputImage(arrays[kind], result.geometry, path, image_kind, predictor.num_classes - 1)
            writes[path] = partial(save_image, item)
    write_case(plan, writes, overwrite=overwrite)


def _figure(case: Case, result: Segmentation, staged: Path) -> None:
    image, geometry = read_image(case.files[0])
    image = to_nibabel(image, geometry, "uncertainty")
    classes = result.probability.shape[0]  # the entropy's range: ln K
    save_overlay_figure(staged, image, result.labels, result.uncertainty, title=case.name, num_classes=classes)


def warning_causes(quality: Mapping) -> list[str]:
    """What a case's warning line names besides a low predicted Dice, from its quality report: a class with no voxel,
    a class volume outside the expected range, an ensemble of one member (whose agreement estimates nothing), a
    localization region that held less than ``warn_kept`` (``localize.kept_warning``), an atlas prior that did not
    register or was not applied (``atlas.atlas_warning``).
    ``benchmarks/quality_calibration.py`` counts the same causes when it chooses ``warn_dice``."""
    empty = quality["empty_classes"]
    causes = [f"no voxel of class {', '.join(map(str, empty))}"] if empty else []
    causes += [
        f"class {k} volume {v['volume_ml']:.0f} mL outside the expected {v['expected_ml'][0]:.0f}-"
        f"{v['expected_ml'][1]:.0f} mL"
        for k, v in quality.get("unexpected_volumes", {}).items()
    ]
    members = [quality.get(key) for key in ("views", "samples_per_view", "weight_sets")]
    if all(isinstance(n, int) for n in members) and math.prod(members) == 1:
        # one member agrees with itself: its predicted Dice is 1.0 whatever the case, and the Dice warning could
        # never fire (from a review); the line says there is no estimate instead
        causes.append("one member (one sample of one set of weights): no estimate of the Dice")
    regions = (kept_warning(quality.get("localization")), atlas_warning(quality.get("atlas_prior")))
    return causes + [text for text in regions if text]


def case_warnings(quality: dict | None, warn_dice: float | None) -> list[str] | None:
    """The causes of a segmented case's warning line, [] where it has none, None where ``warn_dice`` is None (no
    warning judged): a predicted Dice of a foreground class below ``warn_dice``, no voxel of a class, a class volume
    outside the expected range, a localization region that held less than ``warn_kept`` of the full-resolution
    foreground, an atlas prior that did not register or held less than its ``min_kept`` (``atlas.atlas_warning``).
    A case the predictor segmented again with N4 (``bias_retry``) says so and which result it kept."""
    if warn_dice is None or quality is None:
        return None
    dice = quality["predicted_dice"]
    low = [f"class {k} {v:.3f}" for k, v in dice.items() if k != "0" and v < warn_dice]
    shown = f"{warn_dice:.2f}" if round(warn_dice, 2) == warn_dice else f"{warn_dice:.3f}"  # 0.915 not as 0.92
    problems = [f"predicted Dice below {shown} ({', '.join(low)})"] if low else []
    problems += warning_causes(quality)
    retry = quality.get("bias_retry")
    if problems and retry and "failed" in retry:
        problems.append(f"the retry with N4 failed ({retry['failed']})")
    elif problems and retry:  # what the retry tried is not a cause: it says N4 did not clear the warning
        first, second = retry["first_predicted_dice"], retry["retry_predicted_dice"]
        kept = "N4's" if retry["kept"] == "retry" else "the first"
        problems.append(f"retried with N4 (predicted Dice {first:.3f} without, {second:.3f} with; {kept} kept)")
    return problems


def _warn_case(result: CaseResult) -> None:
    """The warning line of a segmented case whose quality report holds warnings (:func:`case_warnings`)."""
    problems = (result.quality or {}).get("warnings")
    if problems:
        logger.warning("%s: %s: check this case before using it.", result.name, "; ".join(problems))
