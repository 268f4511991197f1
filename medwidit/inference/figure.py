"""A figure a person looks at: three orthogonal slices with the label overlay and the uncertainty map.

Built on matplotlib's object API (``Figure`` + Agg canvas) so that no global backend or pyplot state is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from medwidit.utils import atomic_write, check_int

AXES = ("sagittal", "coronal", "axial")  # slicing axis 0, 1, 2 of a RAS-ordered (x, y, z) volume


def _slice_centre(labels: np.ndarray) -> tuple[int, ...]:
    """Voxel index of the foreground's centre of mass, or the volume centre when there is no foreground."""
    fg = np.argwhere(labels > 0)
    if len(fg) == 0:
        return tuple(s // 2 for s in labels.shape)
    return tuple(int(round(c)) for c in fg.mean(axis=0))


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice of ``volume`` at ``index`` along ``axis``, turned so that up is superior / anterior."""
    return np.rot90(np.take(volume, index, axis=axis))


def _label_cmap(num_classes: int) -> ListedColormap:
    base = np.array(
        [[0.0, 0.0, 0.0, 0.0], [1.0, 0.25, 0.2, 0.5], [0.2, 0.6, 1.0, 0.5], [0.3, 0.9, 0.3, 0.5], [1.0, 0.85, 0.1, 0.5]]
    )
    colours = [base[i % (len(base) - 1) + 1] if i else base[0] for i in range(max(num_classes, 2))]
    return ListedColormap(colours)


def overlay_figure(
    image: np.ndarray,
    labels: np.ndarray,
    uncertainty: np.ndarray | None = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    num_classes: int | None = None,
) -> Figure:
    """Three orthogonal slices through the segmentation's centre: image with labels, and the uncertainty beneath.

    ``image``, ``labels`` and ``uncertainty`` are 3D arrays on one RAS-ordered voxel grid with ``spacing`` in mm.
    The uncertainty's colours span 0 to ln K nats, K = ``num_classes`` (None: the labels' count, at least 2), the
    entropy's range: scaled to each case's own maximum, a case certain to 1e-13 nats was painted as brightly as one
    at ln 2 (from a review).
    """
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(f"image and labels must be 3D arrays of one shape, got {image.shape} and {labels.shape}.")
    if uncertainty is not None and uncertainty.shape != image.shape:
        raise ValueError(f"uncertainty must have the image's shape {image.shape}, got {uncertainty.shape}.")
    centre = _slice_centre(labels)
    rows = 1 if uncertainty is None else 2
    fig = Figure(figsize=(12, 4.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    lo, hi = np.percentile(image, [1, 99.5])
    cmap = _label_cmap(int(labels.max()) + 1)
    classes = max(2, int(labels.max()) + 1) if num_classes is None else check_int("num_classes", num_classes, low=2)
    umax = math.log(classes)  # the entropy's range
    for col, axis in enumerate(range(3)):
        # aspect: height / width of a voxel in the plane after rot90 (rows = remaining axis 1, cols = axis 0)
        kept = [a for a in range(3) if a != axis]
        aspect = spacing[kept[1]] / spacing[kept[0]]
        ax = fig.add_subplot(rows, 3, col + 1)
        ax.imshow(_plane(image, axis, centre[axis]), cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
        ax.imshow(
            _plane(labels, axis, centre[axis]),
            cmap=cmap,
            vmin=0,
            vmax=cmap.N - 1,
            aspect=aspect,
            interpolation="nearest",
        )
        ax.set_title(f"{AXES[axis]} {centre[axis]}")
        ax.axis("off")
        if uncertainty is not None:
            ax = fig.add_subplot(rows, 3, 3 + col + 1)
            shown = ax.imshow(_plane(uncertainty, axis, centre[axis]), cmap="magma", vmin=0, vmax=umax, aspect=aspect)
            ax.set_title(f"uncertainty (entropy), {AXES[axis]}")
            ax.axis("off")
            if col == 2:
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="nats")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_figure(
    image: nib.Nifti1Image,
    labels: nib.Nifti1Image,
    uncertainty: nib.Nifti1Image | None = None,
    *,
    title: str = "",
    num_classes: int | None = None,
) -> Figure:
    """:func:`overlay_figure` of nibabel images on one grid, reoriented to RAS so that every view comes out upright."""
    ras = [nib.as_closest_canonical(img) if img is not None else None for img in (image, labels, uncertainty)]
    arrays = [np.asanyarray(img.dataobj) if img is not None else None for img in ras]
    arrays = [a[..., 0] if a is not None and a.ndim == 4 and a.shape[-1] == 1 else a for a in arrays]
    return overlay_figure(
        arrays[0].astype(np.float32),
        arrays[1],
        arrays[2],
        spacing=ras[0].header.get_zooms()[:3],
        title=title,
        num_classes=num_classes,
    )


def save_overlay_figure(path: str | os.PathLike, *args, overwrite: bool = False, **kwargs) -> Path:
    """Write :func:`overlay_figure` (arrays) or :func:`image_figure` (nibabel images) to a PNG atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    fig = (
        image_figure(*args, **kwargs)
        if isinstance(args[0], nib.spatialimages.SpatialImage)
        else overlay_figure(*args, **kwargs)
    )
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite=overwrite)
