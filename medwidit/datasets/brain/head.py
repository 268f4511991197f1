"""Whole-head label maps for label-to-image synthesis: brain tissue classes plus non-brain intensity classes.

SynthSeg (Billot et al. 2023) and SynthStrip (Hoopes et al. 2022) train on images drawn from label maps that
cover the whole head, so that the generator paints scalp, skull and air as well as brain, each with a random
intensity. The registries hold no traced head segmentations, so the non-brain classes are derived: the head is
the template's T1 above an Otsu threshold (largest component, holes filled); inside the head and outside the
brain, the T1 intensities are split into a few k-means clusters, ordered dark to bright (CSF and bone, then
muscle and dura, then scalp, fat and marrow). Inside the brain the atlas' tissue classes are kept. Clusters are
classes of intensity, not anatomy: enough for a generator that redraws every class's intensity anyway.

Label values (HEAD_CLASSES): 0 air outside the head, 1-4 the brain's tissue classes (TISSUE_CLASSES), then
``NON_BRAIN_CLUSTERS`` non-brain classes from 5 upwards. Brain extraction's target is labels 1-4.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.cluster.vq import kmeans2

from .atlas import TISSUE_CLASSES

__all__ = ["HEAD_CLASSES", "BRAIN_LABELS", "NON_BRAIN_CLUSTERS", "head_mask", "head_label_map"]

NON_BRAIN_CLUSTERS = 3
HEAD_CLASSES: dict[int, str] = {
    0: "air outside the head",
    **{k: v for k, v in TISSUE_CLASSES.items() if k},
    5: "non-brain, dark (extra-cerebral CSF, bone, sinus air)",
    6: "non-brain, intermediate (muscle, dura, eyes)",
    7: "non-brain, bright (scalp, fat, marrow)",
}
BRAIN_LABELS = tuple(k for k in TISSUE_CLASSES if k)  # (1, 2, 3, 4): the brain-extraction target


def head_mask(t1: np.ndarray) -> np.ndarray:
    """The head of a whole-head T1: above Otsu's threshold, the largest connected component, holes filled."""
    image = sitk.GetImageFromArray(np.asarray(t1, dtype=np.float32))
    foreground = sitk.OtsuThreshold(image, 0, 1)  # inside value 0 (below), outside value 1 (above)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(foreground), sortByObjectSize=True)
    largest = sitk.BinaryThreshold(components, 1, 1, 1, 0)
    filled = sitk.BinaryFillhole(largest, fullyConnected=False, foregroundValue=1)
    return sitk.GetArrayFromImage(filled) > 0


def head_label_map(t1: np.ndarray, tissue: np.ndarray, *, name: str = "template") -> np.ndarray:
    """(head label map uint8) from a whole-head T1 and its brain tissue classes (0 outside the brain, 1-4 inside).

    Non-brain head voxels get 5 + their intensity cluster (k-means on the T1, started from evenly spaced
    quantiles so that the build is deterministic; clusters sorted dark to bright)."""
    t1 = np.asarray(t1, dtype=np.float64)
    tissue = np.asarray(tissue)
    if t1.shape != tissue.shape:
        raise ValueError(f"{name}: T1 shape {t1.shape} and tissue label shape {tissue.shape} differ.")
    unknown = sorted(set(np.unique(tissue).tolist()) - {0, *BRAIN_LABELS})
    if unknown:
        raise ValueError(f"{name}: tissue label has values {unknown}; expected 0 and {list(BRAIN_LABELS)}.")
    brain = tissue > 0
    if not brain.any():
        raise ValueError(f"{name}: the tissue label marks no brain voxel.")
    non_brain = (head_mask(t1) | brain) & ~brain
    if non_brain.sum() < 10 * NON_BRAIN_CLUSTERS:
        raise ValueError(f"{name}: only {int(non_brain.sum())} non-brain head voxels; is the T1 brain-extracted?")
    values = t1[non_brain][:, None]
    start = np.quantile(values, (np.arange(NON_BRAIN_CLUSTERS) + 0.5) / NON_BRAIN_CLUSTERS)[:, None]
    centres, assignment = kmeans2(values, start, minit="matrix", iter=20)
    rank = np.argsort(np.argsort(centres[:, 0]))  # cluster index -> its place from dark to bright
    label = tissue.astype(np.uint8)  # 0 outside the head
    label[non_brain] = (1 + len(BRAIN_LABELS) + rank[assignment]).astype(np.uint8)
    return label
