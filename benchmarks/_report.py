"""What every benchmark script writes beside its numbers: the environment of the run, per-case means, and the JSON
file (atomically, with inf/NaN as null). Imported by the scripts as a sibling (``benchmarks/`` is on ``sys.path``
when a script runs)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import lightning as L
import monai
import numpy as np
import SimpleITK as sitk
import torch

import medwidit
from medwidit.inference.options import cpu_has_bf16_matmul
from medwidit.utils import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def fmt(value, digits: int = 3) -> str:
    """A table cell: ``value`` to ``digits`` decimals, or an em dash for None, inf and NaN."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def mean_over_cases(values):
    """Average matching numeric leaves of per-case results (dicts, lists, numbers); other leaves from the first."""
    first = values[0]
    if isinstance(first, dict):
        return {key: mean_over_cases([v[key] for v in values]) for key in first}
    if isinstance(first, list):
        return [mean_over_cases(list(items)) for items in zip(*values, strict=True)]
    if isinstance(first, (int, float)) and not isinstance(first, bool) and any(v != first for v in values):
        return float(np.mean(values))
    return first


def finite(x):
    """JSON has no inf/NaN: write them as null (HD95 of a class absent from the truth or the prediction)."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def environment(device: torch.device, script: str | os.PathLike) -> dict:
    """Versions, machine, and the checkout as the run starts (commit, locally modified and untracked files, the
    script's hash: the tree is shared and may hold others' uncommitted edits)."""

    def git(*cmd) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "lightning": L.__version__,
        "numpy": np.__version__,
        "simpleitk": sitk.Version.VersionString(),  # the atlas prior's registration (0.7.0) and N4 depend on it
        "medwidit": medwidit.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        # precision="auto" autocasts CPU predictors to bf16 on such a CPU (since 262a40a; float32 before)
        "cpu_bf16_matmul": cpu_has_bf16_matmul(),
        # CPU timings move with the processor as well as the load, not only with the core count: results from
        # different machines are not one series
        "cpu_model": cpu_model(),
        "commit": git("rev-parse", "HEAD"),
        # tracked files changed, and new files not yet committed (a module the run imports may be one)
        "modified_files": git("status", "--porcelain", "--untracked-files=all").splitlines(),
        "script_sha256": hashlib.sha256(Path(script).read_bytes()).hexdigest(),
        "load_average_start": os.getloadavg(),
    }


def cpu_model() -> str:
    """The processor's name as Linux reports it (``/proc/cpuinfo``'s first "model name"), else ``platform.processor()``
    (which is often just the architecture)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def publish(result: dict, table: str, path: Path) -> dict:
    """Print the markdown ``table``, store it as ``result["markdown"]`` and write ``result`` to ``path``."""
    result["markdown"] = table
    print(table)
    print(f"wrote {write_json(result, path)}")
    return result


def write_json(result: dict, path: Path) -> Path:
    """``result`` as indented JSON at ``path`` (folders made, written atomically, inf/NaN as null) -> the path written.

    A committed result that holds a ``decision`` (a rule written before the run and its verdict, added to the file by
    hand) is evidence a rerun must not erase: a result without one goes to ``<name>.rerun.json`` beside it instead,
    with a line that says so."""
    path = Path(path)
    if "decision" not in result and _holds_decision(path):
        rerun = path.with_name(f"{path.stem}.rerun.json")
        print(f"{path} holds a recorded decision and is left as it is; this run's result goes to {rerun}")
        path = rerun
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(finite(result), indent=1) + "\n"))
    return path


def _holds_decision(path: Path) -> bool:
    try:
        return "decision" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):  # no file, not JSON, not an object: nothing recorded to keep
        return False


def best_threshold(pred: np.ndarray, low: np.ndarray, also: np.ndarray | None = None) -> dict:
    """The threshold on predicted Dice (0.80 .. 0.99 by 0.005) that flags every low case with the fewest false flags,
    or, where none flags them all, the most low cases (ties: the lowest threshold); ``also``: cases flagged whatever
    the threshold (the rest of the warning line: the volume, the localization's share). trust.py scores thresholds
    with it, quality_calibration.py chooses a bundle's ``warn_dice`` with it."""
    also = np.zeros_like(low) if also is None else also
    rows = [
        (t, int(((pred < t) | also)[low].sum()), int(((pred < t) | also)[~low].sum()))
        for t in np.arange(0.8, 0.9901, 0.005)
    ]
    t, flagged, false = max(rows, key=lambda r: (r[1], -r[2]))
    return {"threshold": round(float(t), 3), "flagged": flagged, "of": int(low.sum()), "false_flags": false}
