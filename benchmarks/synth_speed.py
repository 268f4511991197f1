"""CPU cost of label-to-image synthesis: each generator step in MONAI, TorchIO and cornucopia, and medwidit's whole
generator, per 96^3 crop on one thread (process time, so a busy machine changes the numbers little).

    python benchmarks/synth_speed.py [--size 96] [--repeats 5]   -> table + benchmarks/results/synth_speed.json

Ratios are against MONAI's RandAffined measured in the same run. TorchIO and cornucopia are optional imports
(``pip install torchio cornucopia``); a missing one is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _report import environment, write_json  # benchmarks/ is on sys.path when a script runs
from monai.data import MetaTensor
from monai.transforms import Compose, Rand3DElasticd, RandAffined, RandBiasFieldd, RandTorchIOd

from medwidit.data.synth import RandLabelsToImaged, RandSliceThicknessd, synthesis_transforms

RESULTS = Path(__file__).resolve().parent / "results" / "synth_speed.json"


def head_labels(size: int, num_labels: int = 12, seed: int = 0) -> MetaTensor:
    """Random overlapping spheres, labels 0..num_labels-1, on a size^3 grid."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij")).astype(np.float32)
    label = np.zeros((size,) * 3, np.int64)
    for value in range(1, num_labels):
        centre, radius = rng.uniform(0.2, 0.8, 3) * size, rng.uniform(0.1, 0.3) * size
        label[((grid - centre[:, None, None, None]) ** 2).sum(0) < radius**2] = value
    return MetaTensor(torch.as_tensor(label[None], dtype=torch.float32), affine=torch.eye(4))


def candidates(num_labels: int) -> dict:
    """name -> (step, library, callable on the data dict)."""
    out = {
        "affine (MONAI RandAffined)": (
            "deformation",
            "monai",
            RandAffined(["label"], prob=1.0, rotate_range=0.26, scale_range=0.15, mode="nearest"),
        ),
        "elastic (MONAI Rand3DElasticd)": (
            "deformation",
            "monai",
            Rand3DElasticd(["label"], sigma_range=(5, 7), magnitude_range=(50, 150), prob=1.0, mode="nearest"),
        ),
        "labels->image (medwidit table lookup)": (
            "labels_to_image",
            "medwidit",
            RandLabelsToImaged(num_labels=num_labels),
        ),
        "thick slices (medwidit, Gaussian profile)": ("resolution", "medwidit", RandSliceThicknessd(prob=1.0)),
        "bias (MONAI RandBiasFieldd)": ("bias", "monai", RandBiasFieldd(["image"], prob=1.0)),
    }
    tio = {
        "labels->image (TorchIO RandomLabelsToImage)": (
            "labels_to_image",
            dict(
                keys=["label", "image"],
                name="RandomLabelsToImage",
                label_key="label",
                image_key="image",
                label_keys=["label"],
            ),
        ),
        "thick slices (TorchIO RandomAnisotropy)": ("resolution", dict(keys=["image"], name="RandomAnisotropy")),
        "elastic (TorchIO RandomElasticDeformation)": (
            "deformation",
            dict(keys=["image", "label"], name="RandomElasticDeformation", label_keys=["label"]),
        ),
        "bias (TorchIO RandomBiasField)": ("bias", dict(keys=["image"], name="RandomBiasField")),
    }
    for name, (step, kwargs) in tio.items():
        try:
            out[name] = (step, "torchio", RandTorchIOd(**kwargs))
        except Exception as e:  # noqa: BLE001 - an optional library: record why it is missing
            out[name] = (step, "torchio", e)
    try:
        import cornucopia as cc

        for name, step, t, key in (
            ("labels->image (cornucopia GMM)", "labels_to_image", cc.RandomGaussianMixtureTransform(), "label"),
            ("thick slices (cornucopia RandomLowRes)", "resolution", cc.RandomLowResTransform(), "image"),
            ("elastic (cornucopia RandomElastic)", "deformation", cc.RandomElasticTransform(), "image"),
            ("bias (cornucopia RandomMulField)", "bias", cc.RandomMulFieldTransform(), "image"),
        ):
            out[name] = (step, "cornucopia", lambda d, t=t, key=key: t(torch.as_tensor(d[key])))
    except ImportError as e:
        out["cornucopia"] = ("all", "cornucopia", e)
    out["whole generator (medwidit.data.synth)"] = (
        "all",
        "medwidit",
        Compose(synthesis_transforms(num_labels=num_labels, target_labels=[0] + [1] * (num_labels - 1))),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    label = head_labels(args.size)
    data = {"label": label, "image": MetaTensor(torch.rand(label.shape), affine=torch.eye(4))}
    rows = {}
    for name, (step, library, transform) in candidates(12).items():
        if isinstance(transform, Exception):
            rows[name] = {"step": step, "library": library, "error": str(transform)}
            continue
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(0)
        transform(dict(data))  # warm-up
        start = time.process_time()
        for _ in range(args.repeats):
            transform(dict(data))
        rows[name] = {"step": step, "library": library, "ms": 1000 * (time.process_time() - start) / args.repeats}
    reference = rows["affine (MONAI RandAffined)"]["ms"]
    print(f"{'transform':48s} {'ms/crop':>9s} {'x affine':>9s}")
    for name, row in rows.items():
        if "ms" in row:
            row["ratio_to_affine"] = row["ms"] / reference
            print(f"{name:48s} {row['ms']:9.1f} {row['ratio_to_affine']:9.2f}")
        else:
            print(f"{name:48s} {'missing':>9s}  {row['error'][:60]}")
    record = {
        "environment": environment(torch.device("cpu"), __file__),
        "size": args.size,
        "repeats": args.repeats,
        "clock": "process_time",
        "rows": rows,
    }
    write_json(record, RESULTS)


if __name__ == "__main__":
    main()
