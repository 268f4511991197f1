"""Per-case class statistics (``medwidit segment --save-statistics``): voxel count and volume per class of a label map.

The volume is the voxel count times one voxel's volume, ``|det(affine[:3, :3])|`` in mm³, of the grid the label map is
written on (the input's), so that anyone can recompute it from the written file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["class_statistics", "voxel_volume_ml"]


def voxel_volume_ml(affine) -> float:
    """One voxel's volume in mL (cm³) on the grid of a 4 x 4 voxel-to-world ``affine`` in mm."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def class_statistics(label_map, affine, num_classes: int, class_names: Sequence[str] | None = None) -> dict:
    """JSON types: ``voxel_volume_ml`` and, per class k (``"0"`` .. ``"K-1"``), its ``name``, ``voxels`` and
    ``volume_ml`` (= voxels x voxel_volume_ml) in ``label_map`` (int, values in 0..num_classes-1)."""
    labels = np.asarray(label_map)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"label map values must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}.")
    names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes.")
    voxel_ml = voxel_volume_ml(affine)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=num_classes)
    classes = {
        str(k): {"name": names[k], "voxels": int(counts[k]), "volume_ml": int(counts[k]) * voxel_ml}
        for k in range(num_classes)
    }
    return {"voxel_volume_ml": voxel_ml, "classes": classes}
