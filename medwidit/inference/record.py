"""The record of a run beside its outputs, as nnU-Net writes its arguments: ``medwidit_run.json`` for the first run
into a folder, ``medwidit_run_2.json``, ``_3`` ... for the next ones. A run claims its name atomically when it starts
(never replacing another run's record, with or without ``--overwrite``) and rewrites only its own record when it ends.

Per-case class volumes are not repeated here: they belong to the per-case statistics and quality JSON files.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from medwidit.utils import atomic_write, sha256_file

__all__ = [
    "RECORD_NAME",
    "extra_weight_settings",
    "finish_record",
    "library_versions",
    "model_settings",
    "runtime_settings",
    "start_record",
]

RECORD_NAME = "medwidit_run"
MAX_RECORDS = 10_000  # names tried before giving up (a folder with this many runs is almost certainly a mistake)
LIBRARIES = ("torch", "monai", "numpy", "nibabel", "SimpleITK", "lightning")


def library_versions() -> dict:
    """Python, the platform and the installed versions of the libraries results depend on (None: not installed)."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write(record: dict):
    text = json.dumps(record, indent=2, default=str) + "\n"
    return lambda path: Path(path).write_text(text)


def start_record(output_dir: str | os.PathLike, record: dict) -> tuple[Path, dict]:
    """Write ``record`` plus its ``started`` time under the first free record name in ``output_dir`` (claimed in one
    system call, so concurrent runs never share one) -> (its path, the record as written, for ``finish_record``)."""
    record = {**record, "started": now()}
    for n in range(1, MAX_RECORDS + 1):
        path = Path(output_dir) / (f"{RECORD_NAME}.json" if n == 1 else f"{RECORD_NAME}_{n}.json")
        try:
            return atomic_write(path, _write({**record, "status": "running"}), overwrite=False), record
        except FileExistsError:
            continue
    raise FileExistsError(
        f"{output_dir}: {MAX_RECORDS} run records ({RECORD_NAME}*.json) already; clean up the folder."
    )


def model_settings(weights: str | os.PathLike, bundle: str | os.PathLike | None, shipped_default: bool) -> dict:
    """Which model ran: its bundle folder (None for a bare checkpoint), its weights file and that file's SHA-256."""
    weights = Path(weights).resolve()
    return {
        "bundle": None if bundle is None else str(Path(bundle).resolve()),
        "shipped_default": shipped_default,
        "weights": str(weights),
        "sha256": sha256_file(weights),
    }


def extra_weight_settings(weights: str | os.PathLike) -> dict:
    """One of the further weights a run sampled (``--weight-sets``): its file and that file's SHA-256."""
    weights = Path(weights).resolve()
    return {"weights": str(weights), "sha256": sha256_file(weights)}


def runtime_settings(predictor) -> dict:
    """Where and how a ``Predictor`` runs: device, autocast dtype, windows, memory budget, torch threads."""
    import torch

    from .sliding import DEFAULT_WHOLE_VOXELS  # the budget that applied where none was given (it read null)

    dtype = predictor.autocast_dtype
    return {
        "device": str(predictor.device),
        "precision": predictor.precision,
        "autocast_dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "roi_size": list(predictor.roi_size),
        "sw_batch_size": predictor.sw_batch_size,
        "max_whole_voxels": DEFAULT_WHOLE_VOXELS if predictor.max_whole_voxels is None else predictor.max_whole_voxels,
        "threads": torch.get_num_threads(),
    }


def finish_record(
    path: str | os.PathLike, record: dict, results: list, error: BaseException | None = None, *, share_empty=False
) -> str:
    """Replace this run's own record (``start_record``'s) by ``record`` with its end time, one entry per case of
    ``predict_from_files``' ``results`` and its status (done, failed, interrupted) -> the status."""
    from .io import one_line

    if error is not None:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        record = {**record, "error": one_line(error)}
    else:
        # a part of --num-parts that holds no case (more parts than cases) did all it had to
        status = "failed" if not (results or share_empty) or any(r.status == "failed" for r in results) else "done"
    cases = [
        {
            "name": r.name,
            "status": r.status,
            "outputs": [Path(p).name for p in r.outputs],
            "seconds": round(r.seconds, 3),
            "message": r.message,
            # a case segmented again with N4 (bias_retry): both estimates and which result was written
            **({"bias_retry": r.quality["bias_retry"]} if r.quality and "bias_retry" in r.quality else {}),
            # its warning line's causes ([] none; absent where none was judged or the case was not segmented)
            **({"warnings": r.quality["warnings"]} if r.quality and r.quality.get("warnings") is not None else {}),
        }
        for r in results
    ]
    record = {**record, "status": status, "finished": now(), "cases": cases}
    atomic_write(path, _write(record), overwrite=True)
    return status
