"""``medwidit``'s argument parser: every subcommand's flags, their help and their argparse types (``medwidit.cli``
runs the commands). Importing it imports nothing heavy, so that ``medwidit --help`` answers at once."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

__all__ = ["build_parser", "package_version", "version_line"]

DEFAULT_BUNDLE = "brain_widit_segmentation"  # inference.options.DEFAULT_BUNDLE (a test checks they agree)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medwidit", description="Segmentation of medical volumes by diffusion.")
    parser.add_argument("--version", action="version", version=version_line())
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
        "-i",
        "--input",
        nargs="+",
        action="extend",  # -i a -i b: both (the last list alone was kept)
        required=True,
        metavar="PATH",
        help="image files, folders, DICOM series folders (-i may be given more than once)",
    )
    seg.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    _model_arguments(seg)
    seg.add_argument(
        "--roi-size",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="window size (default: the bundle's inference.json roi_size; with --checkpoint, its training crop)",
    )
    seg.add_argument(
        "--sw-batch-size",
        type=_positive_int,
        default=None,
        help="windows per network call (default: the bundle's inference.json, else 4)",
    )
    seg.add_argument(
        "--max-whole-voxels",
        type=_non_negative_int,
        metavar="N",
        help="memory budget: run the whole volume at once up to batch x voxels N, else windows (default "
        "2^20 = 4 x 64^3, whatever --sw-batch-size is; 0 forces windows)",
    )
    seg.add_argument(
        "--sampler",
        help="sampler name: ddim, ddpm or dpmpp_2m for a noise model, flow_euler, heun or euler_maruyama for a flow "
        "model (default: the model's scheduler's own: ddim, ddpm or flow_euler)",
    )
    seg.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity in [0, 1] (default 0: deterministic)")
    seg.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance weight >= 0 (default 1: plain conditional sampling); for a model trained with "
        "cond_drop_prob > 0 (the shipped one was not)",
    )
    seg.add_argument(
        "--shared-steps",
        type=_non_negative_int,
        metavar="K",
        help="the ensemble shares its first K denoising steps, then each sample branches with its own noise: "
        "K + (steps - K) x samples network calls instead of steps x samples (default: the model's inference.json, "
        "else 0: independent samples)",
    )
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto: CUDA if any)")
    seg.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="network autocast (default auto: bfloat16 on CUDA where supported, else float16; bfloat16 on a CPU with "
        "bf16 matmul hardware, AMX or AVX512-BF16; float32 elsewhere)",
    )
    seg.add_argument("--seed", type=_seed, default=0, help="seed of every case's ensemble, 0..2**64-1 (default 0)")
    seg.add_argument("--save-probabilities", action="store_true", help="also write case_probabilities (float32, K)")
    seg.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write case_uncertainty (total predictive entropy, nats), its parts case_aleatoric (expected "
        "entropy) and case_epistemic (mutual information between groups of members: sets of weights and --augment "
        "views; 0 with one set and one view), case_disagreement (the coarse localization pass against the "
        "result; 0 without that pass) and case_error_score (the entropy over ln K, bits for two classes, plus the "
        "disagreement, plus exp(-d / 4 mm), d the distance to the written labels' surface: the map that ranks "
        "wrong voxels best)",
    )
    seg.add_argument(
        "--save-figure",
        action="store_true",
        help="also write case_figure.png: three orthogonal slices, label overlay and uncertainty",
    )
    seg.add_argument(
        "--save-statistics",
        action="store_true",
        help="also write case_statistics.json: voxel count and volume (mL) per class of the written label map",
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
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs; a case's outputs are one set: the earlier run's files this run does not write "
        "are removed",
    )
    seg.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="skip finished cases and finish or redo unfinished ones (with --overwrite: replacing "
        "an unfinished case's files); a case finished with other settings is refused (with --overwrite: redone)",
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
    demo.add_argument("--steps", type=_positive_int, help="denoising steps per sample (default: the bundle's: 3)")
    demo.add_argument(
        "--samples",
        type=_positive_int,
        help="ensemble members per set of weights (default: the bundle's; shipped: 2 from each of 2 sets)",
    )
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
    seg.add_argument(
        "--steps",
        type=_positive_int,
        help="denoising steps per sample (default: the bundle's, shipped 3; a bare checkpoint: 10)",
    )
    seg.add_argument(
        "--samples",
        type=_positive_int,
        help="ensemble members per set of weights (default: the bundle's; shipped: 2 from each of 2 sets)",
    )
    seg.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1) (default: the bundle's, 0.5)")
    seg.add_argument(
        "--bias-correction",
        choices=("n4", "none", "retry"),
        help="n4: SimpleITK's N4 bias-field correction before the intensity normalisation, for scans with a strong "
        "coil field; retry: none, and a case whose predicted Dice is below the warning threshold (--warn-dice) is "
        "segmented again with N4, keeping whichever of the two has the higher predicted Dice (recorded in its "
        "quality JSON) (default: the bundle's inference.json, else the model's preprocessing; the shipped bundle's: "
        "retry since 0.9.2)",
    )
    seg.add_argument(
        "--anti-aliasing",
        choices=("on", "off"),
        help="on: blur the image before resampling it to a coarser grid (sigma (f - 1) / 2 voxels for a factor f), "
        "so that a 1 mm scan's noise and edges are averaged, not subsampled, onto the 2 mm grid and the 4 mm "
        "localization grid; nothing for a model without a working spacing (default: the bundle's inference.json, "
        "else the model's preprocessing; the shipped bundle's: on since 0.9.1)",
    )
    seg.add_argument(
        "--probability-smoothing",
        type=_non_negative_float,
        metavar="SIGMA",
        help="smooth the class probabilities with a Gaussian of SIGMA voxels of the model's grid before the argmax "
        "(the probability map written too), so that the labels' edges leave the network's patch grid, e.g. 1.5; the "
        "uncertainty maps stay the members' (default: the bundle's inference.json probability_smoothing; the "
        "shipped bundle's: 0, none)",
    )
    seg.add_argument(
        "--no-localize",
        action="store_true",
        help="skip the bundle's localization pass (inference.json localization: the case first sampled on a coarser "
        "grid, foreground kept only near what that pass found; the shipped bundle's: 4 mm, 6 mm)",
    )
    seg.add_argument(
        "--no-atlas-prior",
        action="store_true",
        help="skip the bundle's atlas prior (inference.json atlas_prior: a template head registered to the case, "
        "foreground kept only near its brain and its brain's core filled; the shipped bundle's: MNI152 at 2 mm, "
        "within 2 mm, deeper than 1 mm)",
    )
    seg.add_argument(
        "--no-atlas-core",
        action="store_true",
        help="keep the atlas prior's cut but not its core (inference.json atlas_prior core_mm: the registered "
        "template's brain deeper than core_mm is brain in every member): for a resection cavity, a large lesion or "
        "any case whose structure is not where a template's is",
    )
    seg.add_argument(
        "--no-calibration",
        action="store_true",
        help="report the ensemble's own Dice estimate instead of the bundle's quality_calibration (inference.json: a "
        "model of the case's report fitted on validation scans), and warn below 0.955 unless --warn-dice is given",
    )


def package_version() -> str:
    """medwidit's installed version (importlib.metadata); a source checkout that is not installed: ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version("medwidit")
    except metadata.PackageNotFoundError:
        from medwidit import __version__

        return f"{__version__} (source checkout, not installed)"


def version_line() -> str:
    """``medwidit --version``: the package's version and the default model's bundle version (from a review: "0.1.0"
    beside docs that speak of 0.9.5, the bundle's), read from its metadata.json without importing medwidit's heavy
    modules (``utils.shipped_path`` would import torch): the checkout's, else the installed package's."""
    package = Path(__file__).resolve().parent
    for place in (package.parent / "bundles", package / "bundles"):
        path = place / DEFAULT_BUNDLE / "configs" / "metadata.json"
        if path.is_file():
            try:
                bundle = json.loads(path.read_text())["version"]
            except (OSError, ValueError, KeyError, TypeError):
                bundle = "unreadable"
            return f"medwidit {package_version()}; default model: bundle {DEFAULT_BUNDLE} {bundle}"
    return f"medwidit {package_version()}"


def _trust_options(parser: argparse.ArgumentParser) -> None:
    """Epistemic members and the per-case quality warning (README, "Uncertainty")."""
    parser.add_argument(
        "--augment",
        type=_positive_int,
        default=None,
        metavar="N",
        help="test-time views per case, each with --samples members (N times the cost): flips, voxel shifts and an "
        "intensity curve, undone before averaging; they make case_epistemic and the Dice estimate in "
        "case_quality.json see more than noise (default: the bundle's inference.json augment, else 1: none)",
    )
    parser.add_argument(
        "--augment-views",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="the views --augment draws, as a bundle's inference.json augment_views: flip_axes, gamma_range, "
        'max_shift, bias_range, spread_shifts, e.g. \'{"flip_axes": [], "gamma_range": [1, 1], "spread_shifts": '
        "true}' for shifts half a patch apart with --augment 2 (default: the bundle's augment_views; a bare "
        "--checkpoint: any flip, gammas 0.74-1.35, shifts 0-3)",
    )
    parser.add_argument(
        "--weight-sets",
        type=_positive_int,
        default=None,
        metavar="N",
        help="sets of independently trained weights per case: the model's own, then the bundle's extra_weights "
        "(inference.json), each with every view (N times the cost); where they disagree, case_epistemic and the "
        "Dice estimate see it (default: the bundle's inference.json weight_sets, else 1: the model's own weights)",
    )
    parser.add_argument(
        "--save-quality",
        action="store_true",
        help="also write case_quality.json: predicted Dice and volume (mL) per class, uncertainty summary",
    )
    parser.add_argument(
        "--warn-dice",
        type=_unit_float,
        default=None,
        metavar="D",
        help="print a warning line for a case whose predicted Dice (case_quality.json) of a foreground class is "
        "below D, that has no voxel of a foreground class, whose class volume lies outside the bundle's "
        "expected_volume_ml, whose localization region held less than the bundle's warn_kept of the foreground, or "
        "whose atlas prior did not register or held less than its min_kept within its kept_margin_mm (not applied), "
        "whose image holds less than the bundle's warn_information of the registered template, or whose atlas core "
        "made more than the bundle's warn_filled of the foreground (default: the bundle's "
        "warn_dice, which belongs to its calibrated Dice estimate, shipped 0.80; a bare checkpoint's 0.955, for the "
        "ensemble's own estimate; 0 never warns); also the threshold below which --bias-correction retry "
        "segments a case again with N4 (0: never)",
    )


def _json_object(text: str) -> dict:
    """A JSON object (a mapping) given on the command line."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e.msg})") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_export(commands) -> None:
    export = commands.add_parser(
        "export",
        help="export a Lightning training checkpoint as a bundle's weights",
        description="Write the model of a Lightning checkpoint of training (runs/checkpoints/best.ckpt: its EMA "
        "weights) into BUNDLE_DIR/models/ as the MONAI model zoo lays it out: model.pt (the network's bare state "
        "dict) and medwidit.json (architecture, preprocessing, classes), as one pair: each written atomically, and "
        "model.pt put back as it was if medwidit.json cannot be written. Training never "
        "touches the shipped weights; this command is how they change.",
    )
    export.add_argument(
        "checkpoint", metavar="CKPT", help="Lightning checkpoint (.ckpt) of DiffusionSegmentationModule"
    )
    export.add_argument(
        "bundle", metavar="BUNDLE_DIR", help="bundle folder, with its configs/ (models/ is created if needed)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace existing models/model.pt and medwidit.json")
    _common(export)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _int_at_least(low: int, expected: str, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (and <= ``high``); anything else is a usage error saying
    ``expected``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _float_where(accept: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: a float that ``accept`` takes (never NaN); anything else is a usage error saying
    ``expected``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isnan(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")
_seed = _int_at_least(0, "an integer in 0..2**64-1", 2**64 - 1)  # utils.checks.SEED_HIGH (nothing heavy imported here)
_unit_float = _float_where(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
_non_negative_float = _float_where(lambda v: 0.0 <= v < math.inf, "a finite number >= 0")
