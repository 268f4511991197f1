"""Find the structure first, then segment it: a coarse pass of the same model on a coarser working grid gives the
foreground, and the full-resolution pass keeps foreground only within ``margin_mm`` of it.

deepbet and HD-BET localise the brain in a first stage before they segment it. Here the same weights do both: at a
coarser grid each window sees more of the head, and what the full-resolution windows hallucinate far from the brain
(a neck, a face, the edge of a tight field of view; shapes no training crop showed) does not survive the region.
``configs/inference.json``'s ``localization`` declares it ({"spacing": [mm per axis], "margin_mm": mm, "min_kept":
share, "warn_kept": share}; null: off).

A coarse pass that holds less than ``min_kept`` of the full-resolution foreground disagrees with it about where the
structure is (an inverted contrast can send either pass to the scalp): then neither is trusted to cut the other, the
case is left as the full-resolution pass saw it, and the predictor warns. A region that holds more than that but
less than ``warn_kept`` was applied, and the CLI's warning line names the case all the same: where the two grids
disagree about much of the foreground, one of them is wrong.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms.utils import generate_spatial_bounding_box
from scipy import ndimage

from medwidit.utils import is_finite_number, wide_float
from medwidit.utils.checks import check_keys

from .metrics import boundary_distance
from .options import read_inference_config

LOCALIZATION_KEYS = ("spacing", "margin_mm")  # required; "min_kept" and "warn_kept" are optional
DEFAULT_MIN_KEPT = 0.5  # the coarse region must hold half of the full pass's foreground (bundle docs)
DEFAULT_WARN_KEPT = 0.85  # below it the case gets a warning line: chosen on validation cases (bundle docs)


def check_localization(spec: Mapping | None, spatial_dims: int, source: str = "localization") -> dict | None:
    """A bundle's or a caller's ``localization`` -> ``{"spacing": [mm] * spatial_dims, "margin_mm": mm, "min_kept":
    share, "warn_kept": share}`` or None (off). ``spacing``: one positive number or one per axis; ``margin_mm`` >= 0;
    ``min_kept`` <= ``warn_kept`` in [0, 1] (defaults ``DEFAULT_MIN_KEPT``, ``DEFAULT_WARN_KEPT`` or ``min_kept`` where
    that is larger). A ValueError
    names ``source``."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source} must be null or a mapping with {' and '.join(LOCALIZATION_KEYS)}, got {spec!r}.")
    check_keys(spec, LOCALIZATION_KEYS, ("min_kept", "warn_kept"), source)
    spacing = spec["spacing"]
    spacing = [spacing] * spatial_dims if is_finite_number(spacing) else spacing
    ok = isinstance(spacing, Sequence) and not isinstance(spacing, str) and len(spacing) == spatial_dims
    if not ok or not all(is_finite_number(s) and s > 0 for s in spacing):
        raise ValueError(
            f"{source}: spacing must be a positive number of mm or {spatial_dims} of them, got {spec['spacing']!r}."
        )
    margin = spec["margin_mm"]
    if not is_finite_number(margin) or margin < 0:
        raise ValueError(f"{source}: margin_mm must be a number of mm >= 0, got {margin!r}.")
    shares = {"min_kept": spec.get("min_kept", DEFAULT_MIN_KEPT), "warn_kept": spec.get("warn_kept", DEFAULT_WARN_KEPT)}
    for key, value in shares.items():
        if not is_finite_number(value) or not 0 <= value <= 1:
            raise ValueError(f"{source}: {key} must be a share in [0, 1], got {value!r}.")
    if "warn_kept" not in spec:  # the default never below the min_kept given (from a review: 0.9 was refused, naming a
        shares["warn_kept"] = max(shares["warn_kept"], shares["min_kept"])  # warn_kept the user had not set)
    if shares["min_kept"] > shares["warn_kept"]:
        raise ValueError(f"{source}: min_kept {shares['min_kept']} is above warn_kept {shares['warn_kept']}.")
    out = {"spacing": [float(s) for s in spacing], "margin_mm": float(margin)}
    return out | {key: float(value) for key, value in shares.items()}


def bundle_localization(bundle_dir, spatial_dims: int = 3) -> dict | None:
    """The checked ``localization`` of a bundle's ``configs/inference.json`` (None where it has none)."""
    path, config = read_inference_config(bundle_dir)
    return check_localization(config.get("localization"), spatial_dims, source=f"{path}: localization")


MAX_BALL_SHIFTS = 256  # foreground_region dilates by the ball with up to this many shifted ORs, else scipy's EDT
# a distance this much (relative) past the margin is within it: a header's voxel size of 2.0000005 mm (float32
# rounding, or a NIfTI in metres) put the next voxel 1e-6 mm past a 2 mm margin, so the atlas prior left the network
# no voxel, and a 1 mm scan's core grew by a voxel all round (+2 % volume); float32 spacings are good to about 1e-7
DISTANCE_RTOL = 1e-5


def foreground_region(label_map: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
    """The voxels of ``label_map`` (*S, on the grid of ``affine``) within ``margin_mm`` of a foreground voxel (label
    > 0), as bool (*S): a Euclidean distance in mm with the grid's voxel sizes (which a voxel-count dilation would get
    wrong on thick slices), measured as scipy's exact transform measures it, up to ``DISTANCE_RTOL`` of the margin."""
    foreground = np.asarray(label_map) > 0
    if margin_mm == 0 or not foreground.any():  # no foreground: no region (a transform of nothing measures nothing)
        return foreground
    margin_mm = margin_mm * (1 + DISTANCE_RTOL)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, : foreground.ndim], axis=0)
    # only the foreground's bounding box, grown by the margin, can be within it: the work happens there, not on the
    # whole input grid
    pad = np.ceil(margin_mm / spacing).astype(int) + 1
    start, end = generate_spatial_bounding_box(foreground[None], margin=[int(p) for p in pad], allow_smaller=True)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, end, strict=True))
    region = np.zeros_like(foreground)
    region[box] = _within(foreground[box], spacing, margin_mm)
    return region


def _within(foreground: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` of ``foreground``: the dilation by the ball of voxel offsets d with
    sqrt(sum((d * spacing)^2)) <= margin_mm (scipy's distance of a voxel to its nearest foreground voxel, the same
    sum in the same order), as columns along the first axis, each shifted over the others; scipy's
    ``distance_transform_edt`` where the ball's box across the other axes holds more than ``MAX_BALL_SHIFTS`` columns.
    The transform took 12 s of gpu.py's 512x512x300 volume (2026-12-04): it measures every distance, where the margin
    asks only which are short."""
    # one voxel past the quotient: floor(4.55 / 0.65) is 6, and 7 voxels of 0.65 mm are still within 4.55 mm; an offset
    # as long as the grid across an axis reaches nothing
    radius = np.minimum(np.floor(margin_mm / spacing).astype(int) + 1, np.asarray(foreground.shape) - 1)
    if math.prod(2 * int(r) + 1 for r in radius[1:]) > MAX_BALL_SHIFTS:  # a ball too wide for shifts
        return ndimage.distance_transform_edt(~foreground, sampling=spacing) <= margin_mm

    def distance(offset) -> float:
        return float(np.sqrt(np.sum((np.asarray(offset, dtype=np.float64) * spacing) ** 2)))

    columns: dict[tuple[int, ...], int] = {}  # offset along the other axes -> the column's half-height along the first
    for rest in itertools.product(*(range(-int(r), int(r) + 1) for r in radius[1:])):
        height = next((h for h in range(int(radius[0]), -1, -1) if distance((h, *rest)) <= margin_mm), None)
        if height is not None:
            columns[rest] = height
    stretched = {}  # the foreground dilated along the first axis by each half-height
    for height in set(columns.values()):
        stretched[height] = ndimage.maximum_filter1d(foreground.view(np.uint8), 2 * height + 1, axis=0, mode="constant")
    region = np.zeros(foreground.shape, np.uint8)
    for offset, height in columns.items():
        sizes = list(zip(offset, foreground.shape[1:], strict=True))
        target = tuple(slice(max(o, 0), n + min(o, 0)) for o, n in sizes)
        source = tuple(slice(max(-o, 0), n + min(-o, 0)) for o, n in sizes)
        region[(slice(None), *target)] |= stretched[height][(slice(None), *source)]
    return region.view(bool)


def encode_regions(
    shape,
    region: np.ndarray | None,
    prior: np.ndarray | None,
    core: np.ndarray | None = None,
    guard: np.ndarray | None = None,
) -> np.ndarray | None:
    """The localization's ``region``, the atlas prior's ``prior`` (bool (*S) each, or None: everywhere), its ``core``
    (bool (*S), or None: nowhere) and its ``guard`` (bool (*S), or None: the prior's region) as one uint8 label (*S),
    bit 0 the region's, bit 1 the prior's, bit 2 the core's and bit 3 the guard's, to be resampled by nearest
    neighbour as one label; None where all four are None. :func:`decode_regions` splits it."""
    if region is None and prior is None and core is None and guard is None:
        return None
    everywhere = np.ones(tuple(shape), bool)
    bits = (everywhere if region is None else np.asarray(region, bool)).astype(np.uint8)
    bits |= (everywhere if prior is None else np.asarray(prior, bool)).astype(np.uint8) << 1
    for mask, bit in ((core, 2), (guard, 3)):
        if mask is not None:
            bits |= np.asarray(mask, bool).astype(np.uint8) << bit
    return bits


def decode_regions(
    bits: torch.Tensor, *, region: bool, prior: bool, core: bool = False, guard: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """:func:`encode_regions`'s label (any integer dtype, any shape) -> (region, prior, core, guard) bool of the same
    shape, each None where it was not given (``region``, ``prior``, ``core``, ``guard`` False)."""
    bits = bits.to(torch.uint8)
    return tuple((bits & (1 << i)).bool() if given else None for i, given in enumerate((region, prior, core, guard)))


def outside_to_background(
    probability: np.ndarray, region: np.ndarray, core: np.ndarray | None = None, label: int = 1
) -> np.ndarray:
    """Class probabilities (K, *S) with every voxel outside ``region`` (bool (*S)) background (class 0 with
    probability 1) and every voxel of ``core`` (bool (*S), or None) class ``label``, as :func:`restrict_to_region`
    and :func:`fill_core` leave the members: a new array."""
    out = np.array(probability, copy=True)
    outside = ~np.asarray(region, bool)
    out[:, outside] = 0
    out[0, outside] = 1
    if core is not None:
        core = np.asarray(core, bool)
        out[:, core] = 0
        out[label, core] = 1
    return out


def foreground_share(probabilities: torch.Tensor, mask: torch.Tensor, name: str = "region") -> torch.Tensor:
    """The share (B,) float64 of the members' mean foreground (argmax not 0; probabilities (M, B, K, *S)) inside
    ``mask`` (B, 1, *S) bool (``name`` in the shape error); 1 where there is no foreground."""
    expected = (probabilities.shape[1], 1, *probabilities.shape[3:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"{name} must be (B, 1, *S) = {expected}, got {tuple(mask.shape)}.")
    foreground = probabilities.mean(0).argmax(1, keepdim=True) > 0  # (B, 1, *S)
    dims = tuple(range(1, foreground.ndim))
    wide = wide_float(foreground.device)  # float64 (float32 on MPS): the share compares to min_kept as Python does
    total = foreground.sum(dims).to(wide)
    inside = (foreground & mask.to(foreground.device, torch.bool)).sum(dims).to(wide)
    return torch.where(total > 0, inside / total.clamp_min(1), torch.ones_like(total))


def restrict_to_region(
    probabilities: torch.Tensor, region: torch.Tensor | None, min_kept: float = 0.0, guard: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Members' probabilities (M, B, K, *S) with every voxel outside ``region`` (B, 1, *S) bool set to background
    (class 0 with probability 1), so that the mean, the entropies and the Dice estimate all describe the restricted
    ensemble -> (probabilities, kept (B,) float64, applied (B,) bool): ``kept`` is the share of the members' mean
    foreground inside the region (:func:`foreground_share`); an item whose share is below ``min_kept`` is left as it
    is (``applied`` False), the share inside ``guard`` (B, 1, *S) bool where given: a looser region that decides
    whether the tight one cuts. ``region`` None: unchanged, kept and applied None."""
    if region is None:
        return probabilities, None, None
    kept = foreground_share(probabilities, region)
    applied = (kept if guard is None else foreground_share(probabilities, guard, "guard")) >= min_kept  # (B,)
    background = torch.zeros_like(probabilities[:1])
    background[:, :, 0] = 1
    region = region.to(probabilities.device, torch.bool)
    keep = region | ~applied.view(-1, *([1] * (region.ndim - 1)))  # (B, 1, *S)
    return torch.where(keep[None], probabilities, background), kept, applied


def fill_core(
    probabilities: torch.Tensor, core: torch.Tensor | None, label: int, applied: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Members' probabilities (M, B, K, *S) with every voxel of ``core`` (B, 1, *S) bool set to class ``label``
    with probability 1 in every member, in the items where ``applied`` (B,) bool (default: all), so that the mean,
    the entropies and the Dice estimate describe the filled ensemble -> (probabilities, filled (B,) float64): the
    share of the filled ensemble's foreground (argmax not 0) that the members' mean had called background (0 where
    there is no foreground or the core was not applied). ``core`` None: unchanged, filled None."""
    if core is None:
        return probabilities, None
    batch, classes = probabilities.shape[1], probabilities.shape[2]
    if tuple(core.shape) != (batch, 1, *probabilities.shape[3:]):
        raise ValueError(f"core must be (B, 1, *S) = {(batch, 1, *probabilities.shape[3:])}, got {tuple(core.shape)}.")
    if not 1 <= label < classes:
        raise ValueError(f"core label must be a foreground class in [1, {classes - 1}], got {label}.")
    core = core.to(probabilities.device, torch.bool)
    if applied is not None:
        core = core & applied.to(core.device).view(-1, *([1] * (core.ndim - 1)))
    before = probabilities.mean(0).argmax(1, keepdim=True) > 0  # (B, 1, *S)
    dims = tuple(range(1, before.ndim))
    wide = wide_float(core.device)  # float64 (float32 on MPS)
    added, total = (core & ~before).sum(dims).to(wide), (core | before).sum(dims).to(wide)
    onehot = torch.zeros_like(probabilities[:1])
    onehot[:, :, label] = 1
    filled = torch.where(total > 0, added / total.clamp_min(1), torch.zeros_like(total))
    return torch.where(core[None], onehot, probabilities), filled


def kept_warning(localized: Mapping | None) -> str | None:
    """The warning-line text for a case's quality ``localization`` (settings, ``kept``, ``applied``): the two grids
    disagree where the region was not applied (below ``min_kept``) or held less than ``warn_kept``; else None."""
    if not localized:
        return None
    held = f"the localization pass's region held {localized['kept']:.4f} of the full-resolution foreground"
    if not localized["applied"]:
        return (
            f"{held} (below min_kept {localized['min_kept']:g}: the two grids disagree about where it is, so it was "
            "not localised)"
        )
    if localized["kept"] < localized["warn_kept"]:
        return f"{held} (below {localized['warn_kept']:g}: the two grids disagree)"
    return None


SURFACE_MM = 4.0  # the error score's surface term's length: the better of 2 and 4 mm on the validation scans (0.8.0)


def error_score(
    entropy: np.ndarray,
    disagreement: np.ndarray | None,
    num_classes: int,
    label_map: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """How likely each voxel's label is wrong, one map: the total predictive entropy over ln ``num_classes`` (in
    [0, 1]; bits for two classes) plus :func:`scale_disagreement` (0 without the localization pass), plus (with the
    written ``label_map`` and its voxel ``spacing``, mm per array axis) ``exp(-d / SURFACE_MM)``, d the distance in mm
    to the label map's nearest boundary between any two classes (``metrics.boundary_distance``, Euclidean on the
    axes' spacings: approximate for sheared voxels; 0 where it has none); in [0, 3] -> (*S) float32. The distance
    transform costs a few CPU seconds and about 70 bytes a voxel at its peak (a 256^3 volume: ~5 s, ~1.1 GB). The
    entropy sees where the members disagree, the disagreement where the two grids do, and the surface term what no
    member sees: an atlas core's voxels have no entropy, and the brain's edge (the template's, registered, or the
    network's) is where a reference drawn otherwise differs. On the validation scans with bundle 0.8.0 the three ranked
    wrong voxels inside the head at a mean AUROC of 0.912, against 0.815 for the first two and 0.900 for the distance
    alone (``benchmarks/validation_maps.py``; README, "Uncertainty")."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    score = np.asarray(entropy, np.float32) / np.float32(np.log(num_classes))
    if disagreement is not None:
        if np.shape(disagreement) != score.shape:
            raise ValueError(f"entropy {score.shape} and disagreement {np.shape(disagreement)} are not on one grid.")
        score = score + np.asarray(disagreement, np.float32)
    if label_map is not None:
        if spacing is None:
            raise ValueError("spacing (mm per axis of label_map) is required with label_map: the term is in mm.")
        if np.shape(label_map) != score.shape:
            raise ValueError(f"entropy {score.shape} and label map {np.shape(label_map)} are not on one grid.")
        distance = boundary_distance([np.asarray(label_map)], spacing=spacing).numpy()
        score = score + np.exp(-distance / np.float32(SURFACE_MM))  # inf (no boundary): 0
    return score.astype(np.float32)


def scale_disagreement(probability: np.ndarray, coarse_probability: np.ndarray) -> np.ndarray:
    """Where the localization pass and the full-resolution pass disagree, voxel by voxel: the total variation
    distance between their class probabilities (K, *S), both on the input's grid, ``0.5 * sum_k |p_k - q_k|`` in
    [0, 1] -> (*S) float32. The two grids fail differently, so it sees errors the members agree on (bundle docs)."""
    if probability.shape != coarse_probability.shape:
        raise ValueError(f"probabilities {probability.shape} and {coarse_probability.shape} are not on one grid.")
    diff = np.abs(np.asarray(probability, np.float32) - np.asarray(coarse_probability, np.float32))
    return (0.5 * diff.sum(axis=0)).astype(np.float32)
