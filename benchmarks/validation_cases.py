"""Validation scans for choosing a brain-extraction recipe without looking at the held-out test scan (Colin27).

Writes into ``--out`` (from a built brain-data cache, ``python -m medwidit.datasets.brain build``):
    mni152_2mm_image / _label      the real MNI152 T1 at 2 mm and its brain mask (the brain task's validation file)
    painted_K_image / _label       K = 0..n-1: images painted from the Neuromorphometrics head label map of the 2 mm
                                   template (labels 1-4 are brain), with seeded random per-label intensities
                                   (``medwidit.data.synth.RandLabelsToImaged``): contrasts no scanner made

Then, per candidate bundle (the acquisition variants are generalisation.py's):

    python benchmarks/validation_cases.py --out /tmp/val
    python benchmarks/generalisation.py --no-colin27 --tools medwidit --bundle CANDIDATE \\
        --base mni152_2mm /tmp/val/mni152_2mm_image.nii.gz /tmp/val/mni152_2mm_label.nii.gz \\
        --base painted_0 /tmp/val/painted_0_image.nii.gz /tmp/val/painted_0_label.nii.gz --output val.json

The painted maps come from the same anatomy as the training label maps (the registries hold two whole-head
anatomies and Colin27 is the test), through another atlas at another resolution: they test contrast, not anatomy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from medwidit.data.synth import RandLabelsToImaged
from medwidit.datasets.brain import default_cache_dir
from medwidit.datasets.brain.head import BRAIN_LABELS, HEAD_CLASSES

TEMPLATE = "mni152nlin6asym_2mm"


def paint(label: nib.Nifti1Image, seed: int) -> nib.Nifti1Image:
    """An image painted from a head label map: per-label mean in [0, 255], noise up to 5 % of the range."""
    paint = RandLabelsToImaged(num_labels=len(HEAD_CLASSES), mean_range=(0.0, 255.0), std_range=(0.0, 12.0))
    paint.set_random_state(seed)
    values = torch.as_tensor(np.asarray(label.dataobj).astype(np.int64))[None]
    image = paint({"label": MetaTensor(values)})["image"][0].numpy()
    return nib.Nifti1Image(np.clip(image, 0, None).astype(np.float32), label.affine)


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the validation scans")
    parser.add_argument("--cache", help="brain-data cache (default $MEDWIDIT_CACHE or ~/.cache/medwidit)")
    parser.add_argument("--painted", type=int, default=2, help="how many painted scans (default 2)")
    args = parser.parse_args(argv)
    cache = default_cache_dir(args.cache)
    sources = {
        "image": cache / "brain" / f"{TEMPLATE}_image.nii.gz",
        "label": cache / "brain" / f"{TEMPLATE}_label.nii.gz",
        "head": cache / "head" / f"{TEMPLATE}_neuromorphometrics_label.nii.gz",
    }
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        sys.exit(f"not in the cache: {missing}; run `python -m medwidit.datasets.brain build --cache {cache}`.")
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in ("image", "label"):
        written.append(args.out / f"mni152_2mm_{key}.nii.gz")
        nib.save(nib.load(sources[key]), str(written[-1]))
    head = nib.load(sources["head"])
    brain = np.isin(np.asarray(head.dataobj), BRAIN_LABELS).astype(np.uint8)
    for k in range(args.painted):
        written += [args.out / f"painted_{k}_image.nii.gz", args.out / f"painted_{k}_label.nii.gz"]
        nib.save(paint(head, seed=1000 + k), str(written[-2]))
        nib.save(nib.Nifti1Image(brain, head.affine), str(written[-1]))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
