"""``medwidit`` command line: ``segment`` files or folders with a checkpoint or a bundle; ``demo`` needs no data.

The CLI is thin (nnU-Net style): it parses, sets process-wide flags (threads, cuDNN), configures logging, and calls
``medwidit.inference.Predictor`` -- the same code a notebook calls. Errors are one line on stderr naming the file and
the problem; one bad case never stops the others, and the exit status is non-zero when any case failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]

logger = logging.getLogger("medwidit.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medwidit", description="Segmentation of medical volumes by diffusion.")
    parser.add_argument("--version", action="version", version=f"medwidit {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{segment,demo,export}")
    seg = commands.add_parser(
        "segment",
        help="segment image files or folders",
        description="Segment images (NIfTI, NRRD, MHA, DICOM series folders) into label maps with the input's exact "
        "geometry. Multi-modal cases are named nnU-Net style: case_0000.nii.gz, case_0001.nii.gz -> case.nii.gz. A "
        "folder holding one DICOM series (given, or a subfolder of a given folder) is a case named after the folder, "
        "written as NIfTI. Without --bundle or --checkpoint the shipped brain-extraction bundle is used. The settings "
        "of each run are recorded in OUTPUT/medwidit_run.json (then _2, _3, ...; earlier records are never replaced).",
    )
    seg.add_argument(
        "-i", "--input", nargs="+", required=True, metavar="PATH", help="image files, folders, DICOM series folders"
    )
    seg.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    _model_arguments(seg)
    seg.add_argument("--roi-size", type=_positive_int, nargs="+", metavar="N", help="window size (default: model's)")
    seg.add_argument("--sw-batch-size", type=_positive_int, default=4, help="windows per network call (default 4)")
    seg.add_argument(
        "--max-whole-voxels",
        type=_non_negative_int,
        metavar="N",
        help="memory budget: run the whole volume at once up to batch x voxels N, else windows (default "
        "2^20 = 4 x 64^3, whatever --sw-batch-size is; 0 forces windows)",
    )
    seg.add_argument("--sampler", help="sampler name (default: the model's, DDIM for DDPM-trained models)")
    seg.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity in [0, 1] (default 0: deterministic)")
    seg.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance weight >= 0 (default 1: plain conditional sampling)",
    )
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto: CUDA if any)")
    seg.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="network autocast on CUDA (default auto: bfloat16 where supported)",
    )
    seg.add_argument("--seed", type=int, default=0, help="seed of every case's ensemble (default 0)")
    seg.add_argument("--save-probabilities", action="store_true", help="also write case_probabilities (float32, K)")
    seg.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write case_uncertainty (total predictive entropy, nats) and its parts case_aleatoric (expected "
        "entropy) and case_epistemic (mutual information; 0 without --augment)",
    )
    seg.add_argument(
        "--save-figure",
        action="store_true",
        help="also write case_figure.png: three orthogonal slices, label overlay and uncertainty",
    )
    seg.add_argument(
        "--modality-pattern",
        default=r"_(\d{4})",
        metavar="REGEX",
        help="what ends a modality file's name, one group the number (default '_(\\d{4})': nnU-Net's "
        "case_0000); 'none': every file is its own case. With a one-channel model, ID-like names "
        "(patient_0001, patient_0002) are separate cases either way",
    )
    seg.add_argument(
        "--force-grid",
        action="store_true",
        help="segment even when resampling to the model's spacing makes more than 64x the voxels",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="skip finished cases and finish or redo unfinished ones (with --overwrite: replacing "
        "an unfinished case's files)",
    )
    seg.add_argument("--num-parts", type=_positive_int, default=1, help="split the cases into N parts (nnU-Net)")
    seg.add_argument(
        "--part-id",
        type=_non_negative_int,
        default=0,
        help="segment only part K of --num-parts, K in 0..N-1: every N-th case sorted by name from the K-th "
        "(default 0)",
    )
    _trust_options(seg)
    _common(seg)
    demo = commands.add_parser(
        "demo",
        help="segment the shipped example scan with the shipped pretrained bundle (no data needed)",
        description="Segment the shipped example (Colin27 whole-head T1, 2 mm; held out from training) with the "
        "shipped bundle bundles/brain_widit_segmentation, as `medwidit segment --save-uncertainty --save-figure` "
        "does, and report the brain volume and the Dice against the example's reference mask.",
    )
    demo.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    demo.add_argument("--bundle", metavar="DIR|NAME", help="bundle folder or shipped bundle name (default: shipped)")
    demo.add_argument("--steps", type=_positive_int, help="denoising steps per sample (default: the bundle's, 10)")
    demo.add_argument("--samples", type=_positive_int, help="ensemble size (default: the bundle's, 4)")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto: CUDA if any)")
    _common(demo)
    _add_export(commands)
    return parser


def _model_arguments(seg: argparse.ArgumentParser) -> None:
    """The model (default: the shipped bundle) and the sampling options whose defaults the bundle sets."""
    model = seg.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", metavar="FILE", help="medwidit checkpoint (.pt)")
    model.add_argument(
        "--bundle",
        metavar="DIR|NAME",
        help="MONAI bundle folder with models/model.pt, or the name of a shipped bundle (default: "
        "brain_widit_segmentation, brain extraction from T1 MRI)",
    )
    seg.add_argument("--steps", type=_positive_int, help="denoising steps per sample (default: the bundle's, 10)")
    seg.add_argument("--samples", type=_positive_int, help="ensemble size (default: the bundle's, 4)")
    seg.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1) (default: the bundle's, 0.5)")


def package_version() -> str:
    """medwidit's installed version (importlib.metadata); a source checkout that is not installed: ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version("medwidit")
    except metadata.PackageNotFoundError:
        from medwidit import __version__

        return f"{__version__} (source checkout, not installed)"


def _trust_options(parser: argparse.ArgumentParser) -> None:
    """Epistemic members and the per-case quality warning (README, "Uncertainty")."""
    parser.add_argument(
        "--augment",
        type=_positive_int,
        default=1,
        metavar="N",
        help="test-time views per case, each with --samples members (N times the cost): flips, voxel shifts and an "
        "intensity curve, undone before averaging; they make case_epistemic and the Dice estimate in "
        "case_quality.json see more than noise (default 1: none)",
    )
    parser.add_argument(
        "--save-quality",
        action="store_true",
        help="also write case_quality.json: predicted Dice and volume (mL) per class, uncertainty summary",
    )
    parser.add_argument(
        "--warn-dice",
        type=_unit_float,
        default=0.97,
        metavar="D",
        help="print a warning line for a case whose predicted Dice (case_quality.json) of a foreground class is "
        "below D, or that has no voxel of a foreground class (default 0.97: the estimate is optimistic, see "
        "benchmarks/trust.py; 0 never warns)",
    )


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _add_export(commands) -> None:
    export = commands.add_parser(
        "export",
        help="export a Lightning training checkpoint as a bundle's weights",
        description="Write the model of a Lightning checkpoint of training (runs/checkpoints/best.ckpt: its EMA "
        "weights) into BUNDLE_DIR/models/ as the MONAI model zoo lays it out: model.pt (the network's bare state "
        "dict) and medwidit.json (architecture, preprocessing, classes), each written atomically. Training never "
        "touches the shipped weights; this command is how they change.",
    )
    export.add_argument(
        "checkpoint", metavar="CKPT", help="Lightning checkpoint (.ckpt) of DiffusionSegmentationModule"
    )
    export.add_argument("bundle", metavar="BUNDLE_DIR", help="bundle folder (models/ is created if needed)")
    export.add_argument("--overwrite", action="store_true", help="replace existing models/model.pt and medwidit.json")
    _common(export)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _int_at_least(low: int, expected: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``; anything else is a usage error saying ``expected``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _configure(args: argparse.Namespace) -> None:
    """Process-wide settings live here only: logging, torch threads, cuDNN autotuning."""
    import torch

    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = _AboveProgressBars()
    handler.setFormatter(_OneLine())
    root = logging.getLogger("medwidit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
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
        if record.levelno == logging.WARNING:
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
    if not all(str(path).strip() for path in args.input):
        raise ValueError("-i/--input: an input path is empty (''); give files or folders ('.' for this folder).")
    model = _resolve_model(args)
    sampling = {
        "steps": args.steps,
        "num_samples": args.samples,
        "overlap": args.overlap,
        "sampler": args.sampler,
        "eta": args.eta,
        "guidance_scale": args.guidance_scale,
    }
    check_sampling(**{k: v for k, v in sampling.items() if k != "sampler"})  # before the model loads
    options = {
        "device": args.device,
        "precision": args.precision,
        "sw_batch_size": args.sw_batch_size,
        "max_whole_voxels": args.max_whole_voxels,
    }
    if args.roi_size:
        options["roi_size"] = args.roi_size[0] if len(args.roi_size) == 1 else args.roi_size
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, **options)
    else:
        predictor = Predictor.from_bundle(model["bundle"], **options)
    predictor.check_options(**sampling)  # the sampler name too, before a record claims a name in the output folder
    logger.info("%s", _model_line(args, model, predictor))
    record_path, record = _start_run_record(args, model, predictor)
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
            save_quality=args.save_quality,
            warn_dice=args.warn_dice or None,
            num_parts=args.num_parts,
            part_id=args.part_id,
            **sampling,
        )
    except KeyboardInterrupt as e:  # the record says how the run ended, then the interruption goes on
        finish_record(record_path, record, [], error=e)
        raise
    except BaseException:  # refused before any case ran (the plan is checked first): no outputs, so no record
        record_path.unlink(missing_ok=True)
        raise
    finish_record(record_path, record, results)
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no cases"
    logger.log(
        logging.WARNING if counts["failed"] else logging.INFO,
        "%s -> %s: %s (settings in %s)",
        " ".join(args.input),
        args.output,
        summary,
        record_path.name,
    )
    return EXIT_FAILED if counts["failed"] or not results else EXIT_OK


######################################################################################################################
# the model, its sampling defaults, and the record of a run
######################################################################################################################


def _resolve_model(args: argparse.Namespace) -> dict:
    """The model's files (``--checkpoint``, ``--bundle DIR|NAME``, or the shipped default bundle); fills ``--steps``,
    ``--samples``, ``--overlap`` left unset with the bundle's ``inference.json`` values (else the shared defaults)."""
    from pathlib import Path

    from medwidit.inference.options import DEFAULT_BUNDLE, resolve_bundle, sampling_defaults

    bundle = None if getattr(args, "checkpoint", None) else resolve_bundle(args.bundle)
    defaults = sampling_defaults(bundle)
    for name, key in (("steps", "steps"), ("samples", "num_samples"), ("overlap", "overlap")):
        if getattr(args, name, None) is None:
            setattr(args, name, defaults[key])
    weights = Path(args.checkpoint) if bundle is None else bundle / "models" / "model.pt"
    default = bundle is not None and args.bundle is None
    return {"bundle": bundle, "weights": weights, "default": default, "name": DEFAULT_BUNDLE if default else None}


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
    return (
        f"model: {what} on {predictor.device} ({precision}); {args.steps} step(s) x {args.samples} sample(s), sampler "
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
    from medwidit.inference.record import library_versions, model_settings, runtime_settings, start_record

    sampling = {"steps": args.steps, "num_samples": args.samples, "sampler": _sampler(args, predictor)}
    sampling |= {"eta": args.eta, "guidance_scale": args.guidance_scale, "overlap": args.overlap, "seed": args.seed}
    record = {
        "medwidit": package_version(),
        "command": shlex.join(["medwidit", *args.argv]),
        "cwd": os.getcwd(),
        "model": model_settings(model["weights"], model["bundle"], model["default"]),
        "sampling": sampling,
        "runtime": runtime_settings(predictor),
        "arguments": {k: v for k, v in vars(args).items() if k != "argv"},
        "environment": library_versions(),
    }
    return start_record(check_output_dir(args.output), record)


def _demo(args: argparse.Namespace) -> int:
    from medwidit.inference.demo import run_demo

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

    from medwidit.inference.io import InputError, OutputError
    from medwidit.training import export_checkpoint

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such checkpoint file.")
    try:
        weights = export_checkpoint(checkpoint, Path(args.bundle) / "models", overwrite=args.overwrite)
    except FileExistsError as e:
        raise OutputError(str(e)) from e
    logger.info("%s -> %s (and %s)", checkpoint, weights, weights.with_name("medwidit.json"))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medwidit``; returns the exit status (0 ok, 1 a case or the run failed, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the run record
    _configure(args)
    from medwidit.inference.io import InputError, OutputError

    try:
        return {"segment": _segment, "demo": _demo, "export": _export}[args.command](args)
    except (InputError, OutputError, ValueError, TypeError) as e:  # bad input or options: one line, no traceback
        logger.debug("failed", exc_info=True)
        logger.error("%s", e)
        return EXIT_FAILED
    except KeyboardInterrupt:  # the predictor has said which case was cut short and what it removed
        logger.error("interrupted.")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
