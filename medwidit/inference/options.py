"""Runtime options of the predictor: device, autocast precision, progress bars, a bundle's plain inference settings,
and the sanity check of the grid the pre-transforms resample to."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medwidit.data.transforms import check_preprocessing
from medwidit.diffusion.samplers import check_shared_steps
from medwidit.utils import check_bool, check_int, check_range, choose
from medwidit.utils.resources import PACKAGE, shipped_path

from .io import InputError, one_line

__all__ = [
    "BUNDLE_OPTIONS",
    "DEFAULT_BUNDLE",
    "DEFAULT_BUNDLE_TASK",
    "MAX_GRID_GROWTH",
    "MIN_GRID_SIZE",
    "PRECISIONS",
    "SAMPLING_DEFAULTS",
    "autocast_dtype",
    "bundle_extra_weights",
    "bundle_options",
    "check_grid",
    "check_sampling",
    "checkpoint_problem",
    "cpu_has_bf16_matmul",
    "fit_shared_steps",
    "progress_callback",
    "read_inference_config",
    "resolve_bundle",
    "resolve_device",
    "sampling_defaults",
]

logger = logging.getLogger(__name__)

PRECISIONS = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = "auto, cpu, cuda, cuda:N or mps"
# a bare checkpoint's sampling, and a bundle's where its inference.json is silent (the shipped one: 2 samples x 2 sets)
# augment: test-time views per case, 1 = none (README, "Uncertainty"; benchmarks/trust.py)
SAMPLING_DEFAULTS = {"steps": 10, "num_samples": 4, "overlap": 0.5, "shared_steps": 0, "weight_sets": 1, "augment": 1}
DEFAULT_BUNDLE = "brain_widit_segmentation"  # the model `medwidit segment` uses without --bundle
DEFAULT_BUNDLE_TASK = "brain extraction"  # what it does, for the CLI's log line
BUNDLE_OPTIONS = (
    "roi_size",
    "sw_batch_size",
    "steps",
    "num_samples",
    "overlap",
    "shared_steps",
    "weight_sets",
    "augment",
)
MAX_GRID_GROWTH = 64.0  # refuse (unless forced) a resampled grid with more than this many times the input's voxels
MIN_GRID_SIZE = 4  # refuse a resampled grid with fewer voxels than this along an axis: nothing left to segment


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (Apple
    silicon) as given, where torch has them. ``auto`` never picks MPS: ask for it (it runs float32)."""
    if isinstance(device, str):
        device = device.strip().lower()  # "CPU", "Cuda:0": torch knows lower-case types only
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be {DEVICES}, got {device!r}.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available; use 'cpu' (--device cpu).")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s).")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but MPS is not available (it needs macOS on Apple silicon and a "
            "torch built with MPS; torch.backends.mps.is_available() is False here); use 'cpu' (--device cpu)."
        )
    if device.type == "mps" and device.index:
        raise ValueError(f"device {str(device)!r} does not exist: MPS has one device, 'mps'.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be {DEVICES}, got {str(device)!r}.")
    return device


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX-BF16 tiles or AVX512-BF16), where oneDNN runs bf16
    matmuls faster than float32; elsewhere bf16 is emulated and slower. Read from ``torch.cpu.get_capabilities()``
    where this torch has it, else from torch.cpu's older private ``_is_*_supported`` queries; a torch with neither,
    without oneDNN, or whose query fails reads as False (float32)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if hasattr(torch.cpu, "get_capabilities"):
            capabilities = torch.cpu.get_capabilities()
            return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))
        queries = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in queries)
    except Exception:  # a capability query must never stop a run: float32 is always right
        logger.debug("the CPU capability query failed; running float32", exc_info=True)
        return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The network's autocast dtype for ``precision`` on ``device``; None means plain float32.

    ``auto``: bfloat16 on CUDA where supported, else float16; on a CPU, bfloat16 where it has bf16 matmul hardware
    (:func:`cpu_has_bf16_matmul`; the shipped bundle's default CLI takes 1.34x fewer CPU seconds than float32 on this
    project's AMX CPU, ``benchmarks/results/speed.json``), else float32. ``bfloat16`` runs on any CPU (with a warning
    where it is emulated); float16 autocast is CUDA only; MPS runs float32.
    """
    choose("precision", precision, PRECISIONS)  # an unknown name is an error; the value returned is a dtype
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None if precision == "float32" else PRECISIONS[precision]
    if device.type == "cpu" and precision in ("auto", "bfloat16"):
        hardware = cpu_has_bf16_matmul()
        if precision == "bfloat16" and not hardware:
            logger.warning(
                "precision bfloat16 on a CPU without bf16 matmul hardware: emulated, likely slower than float32."
            )
        return torch.bfloat16 if precision == "bfloat16" or hardware else None
    if precision in ("bfloat16", "float16"):
        logger.warning("precision %s is not used on %s; running float32.", precision, device)
    return None


def autocast_model_fn(model_fn: Callable, device_type: str, dtype: torch.dtype | None) -> Callable:
    """``model_fn(x, t, cond, **kwargs)`` (e.g. ``spacing``) run under autocast to ``dtype``; itself for None."""
    if dtype is None:
        return model_fn

    def run(x, t, cond, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return model_fn(x, t, cond, **kwargs)

    return run


def progress_callback(progress, steps: int, description: str):
    """``progress``: False (none), True (a tqdm bar over the denoising steps) or a callable given each step's dict."""
    if callable(progress):
        return progress
    if progress is None or not check_bool("progress", progress):
        return None
    from tqdm import tqdm as text_bar
    from tqdm.auto import tqdm

    try:
        bar = tqdm(total=steps, desc=description, unit="step", leave=False)
    except ImportError:  # a notebook without ipywidgets: older tqdm (4.60) raises here, newer falls back to text
        bar = text_bar(total=steps, desc=description, unit="step", leave=False)

    def update(info: dict) -> None:
        bar.update(1)
        if info.get("i") == steps - 1:
            bar.close()

    update.close = bar.close  # the predictor closes it when a case ends early, so that messages get their own line
    return update


def check_grid(
    shape: Sequence[int], affine, target_spacing: Sequence[float] | None, name: str, *, force: bool = False
) -> None:
    """An InputError when resampling ``shape`` voxels of ``affine`` to ``target_spacing`` mm would leave fewer than
    ``MIN_GRID_SIZE`` voxels along an axis, or (unless ``force``) more than ``MAX_GRID_GROWTH`` times the voxels."""
    if target_spacing is None:
        return
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, : len(shape)], axis=0)  # mm per voxel axis
    extent = np.asarray(shape) * spacing  # mm per axis (which target axis it meets depends on the orientation)
    # MONAI's Spacing spans first to last voxel centre, plus one: a single slice stays one voxel at any thickness
    # (shape x spacing passed one 8 mm slice as 4 voxels, and the case came out empty, as done)
    largest = np.round((np.asarray(shape) - 1) * spacing / min(target_spacing) + 1)  # as MONAI rounds: 2.5 + 1 -> 4
    if largest.min() < MIN_GRID_SIZE:
        raise InputError(
            f"{name}: resampling its {tuple(shape)} voxels of {_mm(spacing)} mm to the model's {_mm(target_spacing)} "
            f"mm leaves {int(math.floor(largest.min()))} voxel(s) along an axis, too small to segment; check the "
            "header's voxel spacing."
        )
    growth = float(np.prod(extent) / np.prod(target_spacing[: len(shape)]) / max(np.prod(shape), 1))
    if growth > MAX_GRID_GROWTH and not force:
        raise InputError(
            f"{name}: resampling its {tuple(shape)} voxels of {_mm(spacing)} mm to the model's {_mm(target_spacing)} "
            f"mm makes {growth:.0f} times as many voxels (more than {MAX_GRID_GROWTH:.0f}); check the header's voxel "
            "spacing, or force it (--force-grid, force_grid=True)."
        )
    if growth > MAX_GRID_GROWTH:
        logger.warning("%s: resampling makes %.0f times as many voxels (forced).", name, growth)


def _mm(values) -> str:
    return "x".join(f"{float(v):g}" for v in values)


def sampling_options(steps, num_samples, overlap, sampler, eta, guidance_scale, shared_steps=0) -> dict:
    """The sampling options as one dict (what ``sample_ensemble`` takes), the numeric ones checked."""
    numbers = {"eta": eta, "guidance_scale": guidance_scale, "shared_steps": shared_steps}
    check_sampling(steps=steps, num_samples=num_samples, overlap=overlap, **numbers)
    return {"steps": steps, "num_samples": num_samples, "overlap": overlap, "sampler": sampler, **numbers}


def check_sampling(*, steps, num_samples, overlap, eta, guidance_scale, shared_steps=0) -> None:
    """The numeric sampling options, checked once before any case is read (the sampler name and the pairing of eta
    and sampler are the segmenter's to check)."""
    check_int("steps", steps)
    check_int("num_samples", num_samples)
    check_shared_steps(shared_steps, steps)
    check_range("overlap", overlap, 0.0, 1.0)
    check_range("eta", eta, 0.0, 1.0, closed_high=True)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}.")


def fit_shared_steps(default: int, steps) -> int:
    """A model's default ``shared_steps`` for a run of ``steps`` steps: at most ``steps - 1`` (the last step is each
    member's own; the shipped bundle's default is 0, nothing shared). Only a default is fitted; a caller's own value is
    checked."""
    if isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= default:
        logger.debug("%d steps: the model's default shares the first %d; sharing %d.", steps, default, steps - 1)
        return steps - 1
    return default  # a bad ``steps`` is check_sampling's to name


def bundle_options(bundle_dir: str | os.PathLike, configs: Sequence[str] = ("inference.json", "train.json")) -> dict:
    """Plain (non-expression) ``roi_size``, ``sw_batch_size``, ``steps``, ``num_samples``, ``overlap`` from a bundle's
    ``configs/inference.json``, falling back to ``configs/train.json`` key by key (``configs``: the files, in order)."""
    found: dict = {}
    for name in configs:
        path = Path(bundle_dir) / "configs" / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: not readable JSON ({e}).") from e
        if not isinstance(config, dict):
            raise InputError(f"{path}: a bundle config must be a JSON object, got {type(config).__name__}.")
        for key in BUNDLE_OPTIONS:
            value = config.get(key)
            if key not in found and value is not None and not (isinstance(value, str) and value[:1] in "$@%"):
                found[key] = _check_bundle_value(path, key, value)
    return found


# the checkpoint's preprocessing a caller (from_checkpoint's arguments, the CLI, inference.json) may replace
PREPROCESSING_OVERRIDES = ("bias_correction", "anti_aliasing")
# bias_correction's third value beside "n4" and none: none, then N4 again where the case warns (Predictor's bias_retry)
BIAS_RETRY = "retry"
BIAS_RETRY_CORRECTION = "n4"


def inference_preprocessing(preprocessing: Mapping | None, bias_correction="model", anti_aliasing="model") -> dict:
    """A checkpoint's ``preprocessing`` with a caller's ``bias_correction`` and ``anti_aliasing`` (the CLI's,
    ``inference.json``'s; "model" keeps the checkpoint's): what ``Predictor.from_checkpoint`` pre-processes with, and
    what ``inference.json``'s MONAI ``preprocessing`` builds, one rule for both. ``bias_correction`` "retry" is its
    first pass, without N4 (the predictor adds N4 where a case warns). Unchecked: the caller checks and says whose
    value is wrong."""
    out = dict(preprocessing or {})
    for name, value in zip(PREPROCESSING_OVERRIDES, (bias_correction, anti_aliasing), strict=True):
        if isinstance(value, str) and value == BIAS_RETRY and name == "bias_correction":
            out[name] = None
        elif not (isinstance(value, str) and value == "model"):
            out[name] = value
    return out


def bundle_preprocessing_overrides(bundle_dir: str | os.PathLike) -> dict:
    """The ``bias_correction`` (None, "n4" or "retry") and ``anti_aliasing`` a bundle's ``configs/inference.json`` sets
    to other than "model" (an expression is left to ``monai.bundle run``), checked: what ``Predictor.from_bundle`` and
    ``evaluate.json`` hand to ``from_checkpoint``, so that they sample what ``monai.bundle run`` with inference.json
    does."""
    path, declared = read_inference_config(bundle_dir)
    found = {}
    for key in PREPROCESSING_OVERRIDES:
        value = declared.get(key, "model")
        if isinstance(value, str) and (value == "model" or value.startswith(("$", "@", "%"))):
            continue
        if key == "bias_correction" and value == BIAS_RETRY:
            found[key] = value
            continue
        try:
            check_preprocessing({key: value})
        except ValueError as e:
            raise InputError(f"{path}: {key}: {e}") from e
        found[key] = value
    return found


def read_inference_config(bundle_dir: str | os.PathLike) -> tuple[Path, dict]:
    """A bundle's ``configs/inference.json`` path and content ({} where there is none); InputError if unreadable."""
    path = Path(bundle_dir) / "configs" / "inference.json"
    if not path.is_file():
        return path, {}
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not readable JSON ({e}).") from e
    return path, config if isinstance(config, dict) else {}


def bundle_extra_weights(bundle_dir: str | os.PathLike, used: int | None = None) -> list[Path]:
    """A bundle's further weights: ``configs/inference.json``'s ``extra_weights``, a list of files relative to the
    bundle (e.g. ``["models/model_b.pt"]``; none where the key is absent), each checked to exist (with ``used``, the
    first ``used`` of them: the ones a run loads)."""
    path, config = read_inference_config(bundle_dir)
    names = config.get("extra_weights", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n and n[0] not in "$@%/" for n in names):
        raise InputError(f"{path}: extra_weights must be a list of files relative to the bundle, got {names!r}.")
    files = [Path(bundle_dir) / name for name in names]
    missing = [str(f) for f in files[:used] if not f.is_file()]
    if missing:
        raise InputError(f"{path}: extra_weights names {', '.join(missing)}, which does not exist.")
    return files


def resolve_bundle(bundle: str | os.PathLike | None = None) -> Path:
    """The folder of ``bundle``: None -> the shipped default (``DEFAULT_BUNDLE``); an existing folder -> itself; else
    the name of a shipped bundle (``utils.shipped_path``: the checkout's, else the installed package's); InputError,
    naming what was looked for, else."""
    if bundle is not None and Path(bundle).is_dir():
        return Path(bundle)
    name = DEFAULT_BUNDLE if bundle is None else str(bundle)
    places = [PACKAGE.parent / "bundles", PACKAGE / "bundles"]  # where shipped_path looks
    shipped = sorted({p.parent.name for place in places for p in place.glob("*/configs")})
    if name in shipped:
        return shipped_path("bundles", name)
    given = "the default bundle" if bundle is None else f"bundle {name!r}"
    raise InputError(
        f"{given}: no such folder and no shipped bundle of that name (shipped: {', '.join(shipped) or 'none'}, in "
        f"{' or '.join(map(str, places))}); give a MONAI bundle folder (--bundle DIR; bundle= in Python) or a "
        "checkpoint (--checkpoint FILE; Predictor.from_checkpoint)."
    )


def sampling_defaults(bundle_dir: str | os.PathLike | None = None) -> dict:
    """``steps``, ``num_samples``, ``overlap``, ``shared_steps``, ``weight_sets``, ``augment``: a bundle's plain values
    (``bundle_options``) over ``SAMPLING_DEFAULTS``; the CLI's defaults, so that ``medwidit segment --bundle B``
    samples as B's ``inference.json`` says."""
    found = bundle_options(bundle_dir, ["inference.json"]) if bundle_dir is not None else {}  # train.json's are
    return {key: found.get(key, value) for key, value in SAMPLING_DEFAULTS.items()}  # validation's (overlap 0.25)


def _check_bundle_value(path: Path, key: str, value):
    """A bundle's plain ``value`` of ``key`` in its JSON type (a string "64" is not the roi [6, 4]), else InputError."""
    try:
        if key == "roi_size":
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ValueError(f"roi_size must be an int or a list of ints, got {value!r}.")
            checked = [check_int("roi_size", v) for v in values]
            return checked if isinstance(value, list) else checked[0]
        if key == "overlap":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"overlap must be a number in [0, 1), got {value!r}.")
            return check_range("overlap", value, 0.0, 1.0)
        return check_int(key, value, low=0 if key == "shared_steps" else 1)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from e


def checkpoint_problem(path: Path, error: Exception) -> str:
    """What is wrong with a checkpoint torch could not load, in one line that keeps what matters."""
    if path.stat().st_size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        first = f.read(1)
    if not zipfile.is_zipfile(path) and first != b"\x80":  # torch.save writes a zip archive (a pickle before 1.6)
        return f"not a PyTorch file: neither a zip archive nor a pickle (torch.load: {type(error).__name__})"
    text = " ".join(str(error).split())
    refused = re.search(r"(Unsupported global: .*?)(?: This| Check|$)", text)
    if "Weights only load failed" in text:
        what = refused[1].rstrip(".") if refused else one_line(error)
        return (
            f"refused: it holds Python objects, not only tensors ({what}); medwidit loads weights only, so "
            "resave it with save_segmenter, and load others only from a source you trust"
        )
    return one_line(error)
