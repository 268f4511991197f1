"""``medwidit`` command line: ``segment`` files or folders with a checkpoint or a bundle; ``demo`` needs no data.

The CLI is thin (nnU-Net style): it parses, sets process-wide flags (threads, cuDNN), configures logging, and calls
``medwidit.inference.Predictor`` -- the same code a notebook calls. Errors are one line on stderr naming the file and
the problem; one bad case never stops the others, and the exit status is non-zero when any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from medwidit.cli_parser import build_parser, package_version

__all__ = ["build_parser", "main"]

logger = logging.getLogger("medwidit.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as a shell reports them


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``), handled as Ctrl-C is: the case being written is removed and the
    run record says interrupted. Python's default ended the process at once, leaving the record "running"."""

    def __init__(self, *args) -> None:
        super().__init__(*(args or ("terminated by SIGTERM",)))


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while the command runs, once: a second SIGTERM is ignored while the first
    one's cleanup runs. Only in the main thread (no other may set a handler), and not where SIGTERM was ignored
    already (as Python leaves an ignored SIGINT); the earlier handler comes back after."""
    elsewhere = threading.current_thread() is not threading.main_thread()
    if elsewhere or signal.getsignal(signal.SIGTERM) in (signal.SIG_IGN, None):  # None: set outside Python, left so
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _configure_logging(args: argparse.Namespace) -> None:
    """medwidit's lines on stderr, one per message, at ``-v`` / ``-q``'s level (before any heavy import, so that an
    interruption during the imports is said as one too)."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = _AboveProgressBars()
    handler.setFormatter(_OneLine())
    root = logging.getLogger("medwidit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _configure(args: argparse.Namespace) -> None:
    """Process-wide settings live here only: torch threads, cuDNN autotuning, ITK's own warnings."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.verbose:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints warnings on stderr itself, beside our lines
    torch.backends.cudnn.benchmark = True  # windows have one fixed shape: autotuning pays off


class _AboveProgressBars(logging.Handler):
    """Writes each line through ``tqdm.write``: above a progress bar that is running, never onto its line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "medwidit: error: " if record.levelno >= logging.ERROR else "medwidit: "
        if getattr(record, "plain", False):  # a run's summary: its level says whether -q shows it, not a kind
            prefix = "medwidit: "
        elif record.levelno == logging.WARNING:
            prefix = "medwidit: warning: "
        text = prefix + " ".join(record.getMessage().split())
        if record.exc_info and logger.isEnabledFor(logging.DEBUG):
            text += "\n" + self.formatException(record.exc_info)
        return text


def _segment(args: argparse.Namespace) -> int:
    from medwidit.inference import Predictor
    from medwidit.inference.options import check_sampling
    from medwidit.inference.record import finish_record

    if args.part_id >= args.num_parts:  # before the model loads
        raise ValueError(
            f"--part-id must be in 0..{args.num_parts - 1} (--num-parts {args.num_parts}), got {args.part_id}."
        )
    _check_paths(args)
    model = _resolve_model(args)
    sampling = {
        "steps": args.steps,
        "num_samples": args.samples,
        "overlap": args.overlap,
        "sampler": args.sampler,
        "eta": args.eta,
        "guidance_scale": args.guidance_scale,
        "shared_steps": args.shared_steps,
    }
    check_sampling(**{k: v for k, v in sampling.items() if k != "sampler"})  # before the model loads
    options = {
        "device": args.device,
        "precision": args.precision,
        "max_whole_voxels": args.max_whole_voxels,
    }
    if args.sw_batch_size is not None:  # else the bundle's, as roi_size
        options["sw_batch_size"] = args.sw_batch_size
    if args.roi_size:
        options["roi_size"] = args.roi_size[0] if len(args.roi_size) == 1 else args.roi_size
    if args.bias_correction is not None:
        options["bias_correction"] = args.bias_correction
    if args.warn_dice is not None:  # the predictor's too: a case below it is retried with N4 under "retry"
        options["warn_dice"] = args.warn_dice or None
        options["warn_dice_given"] = True  # every case judged at it (a bundle's own keeps its calibration's rule)
    if args.anti_aliasing is not None:
        options["anti_aliasing"] = args.anti_aliasing == "on"
    if args.probability_smoothing is not None:
        options["probability_smoothing"] = args.probability_smoothing
    if args.no_localize:
        options["localization"] = None
    if args.no_atlas_prior:
        options["atlas_prior"] = None
    if args.no_calibration:
        options["quality_calibration"] = None
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, **options)
    else:
        predictor = Predictor.from_bundle(model["bundle"], weight_sets=model["weight_sets"], **options)
    if args.no_atlas_core and predictor.atlas_prior is not None:  # the cut stays, the core goes
        predictor.atlas_prior = {**predictor.atlas_prior, "core_mm": None}
    elif args.no_atlas_core:
        logger.warning("--no-atlas-core has no effect: the model has no atlas prior (or --no-atlas-prior took it off).")
    if args.augment_views is not None:  # the bundle's augment_views replaced, checked against the network's dims
        from medwidit.inference.trust import check_view_options

        predictor.view_options = check_view_options(args.augment_views, predictor.spatial_dims, "--augment-views")
        if args.augment == 1:
            logger.warning("--augment-views has no effect with --augment 1 (no test-time views are drawn).")
    predictor.check_options(**sampling)  # the sampler name too, before a record claims a name in the output folder
    predictor.select_weights(args.weight_sets)  # as many sets as asked for, before the record names them
    logger.info("%s", _model_line(args, model, predictor))
    record_path, record = _start_run_record(args, model, predictor)
    ended = []  # the cases that ended, for the record of an interrupted run
    try:
        results = predictor.predict_from_files(
            args.input,
            args.output,
            overwrite=args.overwrite,
            resume=args.resume,
            save_probabilities=args.save_probabilities,
            save_uncertainty=args.save_uncertainty,
            save_figure=args.save_figure,
            progress=not args.quiet,
            seed=args.seed,
            modality_pattern=None if args.modality_pattern.lower() == "none" else args.modality_pattern,
            force_grid=args.force_grid,
            augment=args.augment,
            weight_sets=args.weight_sets,
            save_quality=args.save_quality,
            save_statistics=args.save_statistics,
            warn_dice="predictor" if args.warn_dice is None else args.warn_dice or None,
            num_parts=args.num_parts,
            part_id=args.part_id,
            on_case=ended.append,
            **sampling,
        )
    except KeyboardInterrupt as e:  # the record says how the run ended and what it finished; the interruption goes on
        finish_record(record_path, record, ended, error=e)
        raise
    except BaseException:  # refused before any case ran (the plan is checked first): no outputs, so no record
        record_path.unlink(missing_ok=True)
        raise
    empty_part = not results and args.num_parts > 1  # more parts than cases: nothing failed (an array job's task)
    finish_record(record_path, record, results, share_empty=empty_part)
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no cases"
    summary += f" in part {args.part_id} of {args.num_parts} (the cases went to other parts)" if empty_part else ""
    logger.log(
        # shown under -q, as a part that did nothing is; plain: each failure had its error line
        logging.ERROR if counts["failed"] else logging.WARNING if empty_part else logging.INFO,
        "%s -> %s: %s (settings in %s)",
        " ".join(args.input),
        args.output,
        summary,
        record_path.name,
        extra={"plain": True},
    )
    return EXIT_FAILED if counts["failed"] or not (results or empty_part) else EXIT_OK


######################################################################################################################
# the model, its sampling defaults, and the record of a run
######################################################################################################################


def _resolve_model(args: argparse.Namespace) -> dict:
    """The model's files (``--checkpoint``, ``--bundle DIR|NAME``, or the shipped default bundle); fills ``--steps``,
    ``--samples``, ``--overlap``, ``--shared-steps`` left unset with the bundle's ``inference.json`` values (else the
    shared defaults)."""
    from pathlib import Path

    from medwidit.inference.options import DEFAULT_BUNDLE, fit_shared_steps, resolve_bundle, sampling_defaults

    bundle = None if getattr(args, "checkpoint", None) else resolve_bundle(args.bundle)
    defaults = sampling_defaults(bundle)
    shared_by_model = getattr(args, "shared_steps", None) is None
    sets_given = getattr(args, "weight_sets", None) is not None
    names = (("steps", "steps"), ("samples", "num_samples"), ("overlap", "overlap"), ("shared_steps",) * 2)
    for name, key in (*names, ("weight_sets",) * 2, ("augment",) * 2):
        if getattr(args, name, None) is None:
            setattr(args, name, defaults[key])
    if shared_by_model:  # the model's default, not the user's flag: fitted to --steps (--steps 1 shares none)
        args.shared_steps = fit_shared_steps(args.shared_steps, args.steps)
    weights = Path(args.checkpoint) if bundle is None else bundle / "models" / "model.pt"
    default = bundle is not None and args.bundle is None
    return {
        "bundle": bundle,
        "weights": weights,
        "default": default,
        "name": DEFAULT_BUNDLE if default else None,
        "weight_sets": args.weight_sets if sets_given else None,  # None: the bundle's, its errors name inference.json
    }


def _model_line(args: argparse.Namespace, model: dict, predictor) -> str:
    """One line: version, which model (saying when it is the shipped default), device, precision, sampling."""
    from medwidit.inference.options import DEFAULT_BUNDLE_TASK

    if model["default"]:
        what = f"the shipped default bundle {model['name']} ({DEFAULT_BUNDLE_TASK}, {model['bundle']})"
    elif model["bundle"] is not None:
        what = f"bundle {model['bundle']}"
    else:
        what = f"checkpoint {model['weights']}"
    precision = str(predictor.autocast_dtype or "float32").removeprefix("torch.")
    sigma = predictor.probability_smoothing
    smoothing = f", probabilities smoothed (sigma {sigma:g} voxels)" if sigma else ""
    return (
        f"model: {what} on {predictor.device} ({precision}); {args.steps} step(s) x {args.samples} sample(s)"
        f"{f' x {args.weight_sets} sets of weights' if args.weight_sets > 1 else ''}"
        f"{f' x {args.augment} test-time views' if args.augment > 1 else ''}"
        f"{f' (the first {args.shared_steps} shared)' if args.shared_steps else ''}{smoothing}, sampler "
        f"{_sampler(args, predictor)}, seed {args.seed}; medwidit {package_version()}"
    )


def _sampler(args: argparse.Namespace, predictor) -> str:
    from medwidit.diffusion.segmenter import DEFAULT_SAMPLER

    return args.sampler or DEFAULT_SAMPLER[predictor.segmenter.scheduler_name]


def _start_run_record(args: argparse.Namespace, model: dict, predictor):
    """Claim OUTPUT/medwidit_run[_N].json with every setting of this run -> (path, record)."""
    import os
    import shlex

    from medwidit.inference.io import check_output_dir
    from medwidit.inference.record import (
        extra_weight_settings,
        library_versions,
        model_settings,
        runtime_settings,
        start_record,
    )

    sampling = {"steps": args.steps, "num_samples": args.samples, "sampler": _sampler(args, predictor)}
    sampling |= {"eta": args.eta, "guidance_scale": args.guidance_scale, "overlap": args.overlap, "seed": args.seed}
    sampling["shared_steps"] = args.shared_steps
    sampling["weight_sets"] = args.weight_sets
    sampling["augment"] = args.augment
    sampling["view_options"] = predictor.view_options  # the limits of the views when augment > 1
    sampling["localization"] = predictor.localization
    prior = predictor.atlas_prior  # its files as text, for the JSON record
    sampling["atlas_prior"] = (
        None if prior is None else {**prior, "image": str(prior["image"]), "label": str(prior["label"])}
    )
    sampling["probability_smoothing"] = predictor.probability_smoothing  # sigma, voxels of the model's grid
    sampling["quality_calibration"] = predictor.quality_calibration  # what the quality JSON's predicted Dice is
    sampling["warn_dice"] = predictor.warn_dice  # --warn-dice's, given one (the predictor holds it for the retry)
    # N4 again where the predicted Dice warns; without a threshold (--warn-dice 0) nothing is retried
    sampling["bias_retry"] = predictor.bias_retry and predictor.warn_dice is not None
    record = {
        "medwidit": package_version(),
        "command": shlex.join(["medwidit", *args.argv]),
        "cwd": os.getcwd(),
        "model": model_settings(model["weights"], model["bundle"], model["default"]),
        "extra_weights": [extra_weight_settings(f) for f in predictor.extra_weight_files[: args.weight_sets - 1]],
        "sampling": sampling,
        "runtime": runtime_settings(predictor),
        "preprocessing": predictor.preprocessing,
        "arguments": {k: v for k, v in vars(args).items() if k != "argv"},
        "environment": library_versions(),
    }
    return start_record(check_output_dir(args.output), record)


def _check_paths(args: argparse.Namespace) -> None:
    """An empty ``-i`` or ``-o`` (a script's unset variable) is an error: ``-o ''`` wrote into the current folder."""
    if not all(str(path).strip() for path in getattr(args, "input", [])):
        raise ValueError("-i/--input: an input path is empty (''); give files or folders ('.' for this folder).")
    if not str(args.output).strip():
        raise ValueError(f"-o/--output: the output folder is empty ({args.output!r}); give one ('.' for this folder).")
    pattern = getattr(args, "modality_pattern", None)
    if pattern is not None and pattern.lower() != "none":  # before the output folder is made (from an audit)
        from medwidit.inference.cases import modality_regex

        modality_regex(pattern)


def _demo(args: argparse.Namespace) -> int:
    from medwidit.inference.demo import run_demo

    _check_paths(args)
    model = _resolve_model(args)
    report = run_demo(
        args.output,
        bundle=model["bundle"],
        device=args.device,
        steps=args.steps,
        num_samples=args.samples,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(report)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from medwidit.inference.io import InputError, OutputError
    from medwidit.inference.options import checkpoint_problem
    from medwidit.training import export_checkpoint

    checkpoint, bundle = Path(args.checkpoint), Path(args.bundle)
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such checkpoint file.")
    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True)  # here: training may not import inference
    except Exception as e:  # torch raises KeyError, EOFError, RuntimeError, UnpicklingError for other files
        raise InputError(f"{checkpoint}: not a readable checkpoint ({checkpoint_problem(checkpoint, e)}).") from e
    if not (bundle / "configs").is_dir():  # a mistyped bundle path "succeeded" into a new folder; a file, a traceback
        raise InputError(
            f"BUNDLE_DIR {bundle}: not a bundle folder (no configs/ in it); export into a bundle, e.g. a copy of the "
            f"one you trained with (cp -r bundles/brain_widit_segmentation {bundle})."
        )
    try:
        weights = export_checkpoint(checkpoint, bundle / "models", overwrite=args.overwrite)
    except FileExistsError as e:
        raise OutputError(str(e)) from e
    logger.info("%s -> %s (and %s)", checkpoint, weights, weights.with_name("medwidit.json"))
    _warn_other_weight_sets(bundle)
    _warn_monai_network(bundle, weights.with_name("medwidit.json"))
    return EXIT_OK


# train.json's keys that build the network; with the segmenter's WEIGHT_DEFINING keys, the train.json keys that
# _warn_monai_network compares with the export's config
NET_KEYS = (
    "hidden_size depth num_heads patch_size window_size embed position spacing_conditioning head pixel_dim pixel_depth "
    "pixel_mlp_ratio"
)


def _warn_monai_network(bundle, exported) -> None:
    """After ``export``: MONAI's loaders (``monai.bundle.load`` with its defaults, ``ckpt_export``,
    ``verify_net_in_out``) build ``train.json``'s ``network_def`` and copy in only the weights whose shapes fit it,
    so a copy of the brain bundle with weights for three classes loaded 76 of 80 tensors, the others left random,
    without an error (from a review). Name each plain train.json value that differs from the exported network's
    (expressions are not evaluated: a bundle's configs run code)."""
    import json

    from medwidit.diffusion.checkpoint import WEIGHT_DEFINING, with_config_defaults

    try:
        train = json.loads((bundle / "configs" / "train.json").read_text())
        # a segmenter key the export predates reads as its default then (x0_activation: "none")
        config = with_config_defaults(json.loads(exported.read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no train.json (a bundle for inference only), or none to compare with

    def plain(value) -> bool:
        return not (isinstance(value, str) and value.startswith(("$", "@", "%")))

    def same(ours, theirs) -> bool:  # a patch size 4 is [4, 4, 4]
        if isinstance(ours, list) and not isinstance(theirs, list):
            theirs = [theirs] * len(ours)
        elif isinstance(theirs, list) and not isinstance(ours, list):
            ours = [ours] * len(theirs)
        return ours == theirs

    # from a review: the schedule (schedule, schedule_args) was missing from a hand-kept list of the segmenter's keys
    keys = {key: ("segmenter", key) for key in WEIGHT_DEFINING} | {key: ("net", key) for key in NET_KEYS.split()}
    differ = []
    for key, (part, name) in keys.items():
        if key in train and plain(train[key]) and name in config.get(part, {}):
            if not same(train[key], config[part][name]):
                differ.append(f"{key} {json.dumps(train[key])} (the export's {json.dumps(config[part][name])})")
    ours, theirs = train.get("preprocessing"), config.get("preprocessing")  # cond_channels: the image's channels
    if isinstance(ours, dict) and isinstance(theirs, dict) and plain(ours.get("num_modalities")):
        if ours.get("num_modalities") != theirs.get("num_modalities"):
            differ.append(
                f"preprocessing#num_modalities {json.dumps(ours.get('num_modalities'))} "
                f"(the export's {json.dumps(theirs.get('num_modalities'))})"
            )
    if "class_names" in train and plain(train["class_names"]) and train["class_names"] != config.get("class_names"):
        differ.append(
            f"class_names {json.dumps(train['class_names'])} (the export's {json.dumps(config['class_names'])})"
        )
    if differ:
        logger.warning(
            "%s: its configs/train.json builds another network than the exported one (%s): MONAI's loaders "
            "(monai.bundle.load, ckpt_export, verify_net_in_out) build train.json's network_def and load only the "
            "weights whose shapes fit it; set these in train.json (and metadata.json's network_data_format) so that "
            "they load every weight.",
            bundle,
            "; ".join(differ),
        )


def _warn_other_weight_sets(bundle) -> None:
    """After ``export``: a bundle whose inference.json samples further weights by default would now ensemble the
    exported weights with ones trained separately; say so, and how to stop it."""
    from medwidit.inference.options import bundle_extra_weights, sampling_defaults

    sets = sampling_defaults(bundle)["weight_sets"]
    try:
        extra = bundle_extra_weights(bundle, used=sets - 1)  # a missing file that weight_sets never loads is no matter
    except ValueError as e:  # a bundle whose second set is not there: the export is done, so a warning, not exit 1
        if sets > 1:
            logger.warning("%s; set weight_sets to 1 in inference.json (and evaluate.json), or add that file.", e)
        return
    if extra and sets > 1:
        logger.warning(
            "%s: its inference.json (and evaluate.json) also samples %s by default (weight_sets %d), weights trained "
            "apart from the ones just exported; set weight_sets to 1 in both (or --weight-sets 1) unless you mean to "
            "ensemble them.",
            bundle,
            ", ".join(str(f.relative_to(bundle)) for f in extra[: sets - 1]),
            sets,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medwidit``; returns the exit status (0 ok, 1 a case or the run failed, 2 bad usage, 130
    interrupted by Ctrl-C, 143 by SIGTERM)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the run record
    _configure_logging(args)
    try:
        # the imports take seconds: Ctrl-C there printed Python's traceback, SIGTERM ended the process unsaid
        with _sigterm_as_interrupt():
            _configure(args)
            return _run(args)
    except Terminated:
        logger.error("terminated (SIGTERM).")
        return EXIT_TERMINATED
    except KeyboardInterrupt:  # the predictor has said which case was cut short and what it removed
        logger.error("interrupted.")
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    """The command itself; bad input or options are one line, no traceback."""
    from medwidit.inference.io import InputError, OutputError

    try:
        return {"segment": _segment, "demo": _demo, "export": _export}[args.command](args)
    except (InputError, OutputError, ValueError, TypeError) as e:
        logger.debug("failed", exc_info=True)
        logger.error("%s", e)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
