"""When not to trust a case: ensembles whose members differ by more than their noise draw, the split of the
predictive entropy into what the data leave open and what the model does not know, and a per-case Dice estimate.

Members come in G groups of S samples: a group is one *view* of the case (test-time augmentation: flips, an
integer translation, an intensity curve and optionally a coil field, the spatial ones undone exactly before
averaging) or one set of weights;
inside a group only the diffusion noise differs. With ``p_gs`` the members' class probabilities, ``p_g`` a group's
mean and ``p`` the overall mean:

    total      H(p)                    predictive entropy
    aleatoric  mean_g H(p_g)           what stays ambiguous when the model and the view are fixed (boundaries)
    epistemic  H(p) - mean_g H(p_g)    the mutual information between the prediction and the group: where views
                                       or weights disagree, the model does not know (>= 0, H is concave)

The Dice estimate of class k is the expected Dice of the final labels ``argmax p`` against a member's labels,
``mean_gs Dice_k(argmax p, argmax p_gs)``: where members agree it is 1, and it falls with their disagreement
(the ensemble's own view of how far the answer could be from the truth).

An ensemble can agree on a wrong answer (a whole head labelled brain in every member). The expected volume of a
class, a range in mL that a bundle declares for its task (``expected_volume_ml`` in ``inference.json``), is a check
that does not rely on the members: a case whose class volume falls outside it is flagged as well. So is the image
itself (``boundary_overlap``): a boundary that the members agree on but that no edge in the image supports (an
inverted contrast segmented as the T1 it is not) leaves the voxels just outside a class looking like those just
inside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandBiasField
from monai.transforms.utils import generate_spatial_bounding_box
from scipy.ndimage import distance_transform_edt

from medwidit.diffusion.encoding import class_index
from medwidit.utils import check_int, is_finite_number, wide_float

from .options import read_inference_config
from .statistics import class_statistics
from .uncertainty import check_probabilities

__all__ = [
    "View",
    "apply_view",
    "augmentation_views",
    "boundary_overlap",
    "bundle_expected_volumes",
    "bundle_view_options",
    "check_expected_volumes",
    "check_view_options",
    "coil_field",
    "decompose_entropy",
    "edge_faces",
    "entropy_of",
    "estimated_dice",
    "expected_dice",
    "fit_view",
    "invert_view",
    "outside_expected",
    "quality_report",
]


def entropy_of(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Shannon entropy in nats of probabilities ``p`` along ``dim`` (kept, size 1); 0 log 0 is 0."""
    return -(p * p.clamp_min(1e-12).log()).sum(dim=dim, keepdim=True)


def decompose_entropy(probabilities: torch.Tensor, groups: int = 1, *, check: bool = True) -> dict[str, torch.Tensor]:
    """Members (G*S, B, K, *S), group-major -> ``total``, ``aleatoric``, ``epistemic`` maps (B, 1, *S) in nats;
    ``check=False`` where the caller has checked the probabilities already (a pass over every member's voxels)."""
    members = probabilities.shape[0]
    check_int("groups", groups)
    if members % groups:
        raise ValueError(f"{members} members cannot form {groups} groups of equal size.")
    p = probabilities.float()
    if check:
        check_probabilities(p, dim=2)
    grouped = p.reshape(groups, members // groups, *p.shape[1:]).mean(dim=1)  # (G, B, K, *S)
    total = entropy_of(p.mean(dim=0), dim=1)
    aleatoric = entropy_of(grouped, dim=2).mean(dim=0)
    return {"total": total, "aleatoric": aleatoric, "epistemic": (total - aleatoric).clamp_min(0.0)}


def estimated_dice(probabilities: torch.Tensor) -> torch.Tensor:
    """Members (M, B, K, *S) -> (B, K): ``mean_m Dice_k(argmax p_bar, argmax p_m)``; 1 where a class is absent
    from both (nothing to disagree on)."""
    num_classes = probabilities.shape[2]
    final = class_index(probabilities.float().mean(dim=0), 1)  # (B, *S)
    member = class_index(probabilities, 2)  # (M, B, *S)
    dims = tuple(range(2, member.ndim))
    scores, wide = [], wide_float(member.device)  # float64 (float32 on MPS)
    for k in range(num_classes):
        a, b = (final == k).unsqueeze(0), member == k
        overlap, size = (a & b).sum(dims).to(wide), (a.sum(dims) + b.sum(dims)).to(wide)  # (M, B)
        scores.append(torch.where(size > 0, 2 * overlap / size.clamp_min(1), torch.ones_like(size)).mean(dim=0))
    return torch.stack(scores, dim=1).float()  # (B, K)


def expected_dice(probabilities: torch.Tensor) -> torch.Tensor:
    """Members (M, B, K, *S) -> (B, K): the soft Dice of the final labels ``argmax p_bar`` against the mean probability
    ``p_bar``, ``2 sum(p_bar_k [final = k]) / (sum p_bar_k + sum [final = k])`` (the answer against the ensemble's own
    belief); 1 where a class is absent from both. It is the ratio of the expectations, when the truth is drawn voxel
    by voxel from ``p_bar``, not the expected Dice: close for large structures, higher for a few voxels (one voxel
    at 0.6: 0.75 against 0.6)."""
    mean = probabilities.float().mean(dim=0)  # (B, K, *S)
    final = F.one_hot(class_index(mean, 1), mean.shape[1]).movedim(-1, 1).to(mean.dtype)
    dims = tuple(range(2, mean.ndim))
    wide = wide_float(mean.device)  # float64 (float32 on MPS)
    overlap, size = (mean * final).sum(dims).to(wide), (mean.sum(dims) + final.sum(dims)).to(wide)
    return torch.where(size > 0, 2 * overlap / size.clamp_min(1e-12), torch.ones_like(size)).float()


@dataclass(frozen=True)
class View:
    """One test-time view: ``gamma`` applied to the image's [low, high] range, then, where ``bias_range`` is set, a
    smooth multiplicative coil field (MONAI's ``RandBiasField`` with that coefficient range, seeded by
    ``bias_seed``), ``shift`` voxels of air added before each spatial axis (an integer translation: it moves the
    network's patch grid over the anatomy, and is undone exactly by cropping), then the spatial axes ``flip_axes``
    flipped. Along an axis where ``wrap`` is true the shift rolls the grid instead (:func:`fit_view`: its last
    ``shift`` voxels are air, and come round to the front), so the grid keeps its size (a larger grid can cost more
    windows: 128 -> 130 voxels takes 4 windows of 64 per axis instead of 3)."""

    flip_axes: tuple[int, ...] = ()
    gamma: float = 1.0
    shift: tuple[int, ...] = ()
    bias_range: tuple[float, ...] = ()
    bias_seed: int = 0
    wrap: tuple[bool, ...] = ()


# what a bundle's ``augment_views`` may set
VIEW_OPTIONS = ("flip_axes", "gamma_range", "max_shift", "bias_range", "spread_shifts")


def augmentation_views(
    count: int,
    spatial_dims: int = 3,
    *,
    seed: int = 0,
    max_log_gamma: float = 0.3,
    max_shift: int = 3,
    flip_axes: Sequence[int] | None = None,
    gamma_range: Sequence[float] | None = None,
    bias_range: Sequence[float] | None = None,
    spread_shifts: bool = False,
) -> list[View]:
    """``count`` views: the identity first, then flips of random axis subsets, gammas exp(U(-g, g)) and shifts of
    0..``max_shift`` voxels per axis (below the shipped networks' patch of 4, so the patch grid moves).

    ``flip_axes``: the only axes a view may flip (e.g. ``[0]``, left-right after RAS orientation: the views a
    bilateral anatomy supports); the views then take the nonempty subsets of them in turn and then none, so the
    second view already flips. ``gamma_range`` (low, high): gammas log-uniform in it instead (e.g. ``[1.0, 1.35]``:
    only curves that darken the mid-range). ``bias_range`` (low, high): every view but the identity also multiplies
    the image by a coil field whose polynomial coefficients are uniform in it (``RandBiasField``; e.g. ``[0.0, 0.2]``,
    the field the shipped weights were trained under), seeded from the same stream after the view's other draws.
    ``spread_shifts``: view k is shifted ``k * (max_shift + 1) // count`` voxels along every axis instead of a random
    amount, so the views' patch grids lie as far apart as they can: with a patch of ``max_shift + 1`` voxels, two
    views are half a patch apart on every axis, four a quarter (a random draw can leave an axis' grid where it was);
    more views than ``max_shift + 1`` repeat shifts (six views of a 4-voxel patch: 0, 0, 1, 2, 2, 3).
    Without any of them the draws are the same as before they existed."""
    check_int("count", count)
    check_int("max_shift", max_shift, low=0)
    options = check_view_options(
        {"flip_axes": flip_axes, "gamma_range": gamma_range, "bias_range": bias_range, "spread_shifts": spread_shifts},
        spatial_dims,
        source="augmentation_views",
    )
    log_low, log_high = (
        (-max_log_gamma, max_log_gamma) if gamma_range is None else tuple(math.log(g) for g in options["gamma_range"])
    )
    allowed = options.get("flip_axes")
    subsets = None if allowed is None else _flip_subsets(allowed)
    rng = np.random.default_rng(seed)
    views = [View()]
    while len(views) < count:
        axes = tuple(int(a) for a in np.flatnonzero(rng.random(spatial_dims) < 0.5))  # drawn always: same stream
        if subsets is not None:
            axes = subsets[(len(views) - 1) % len(subsets)]
        gamma = float(np.exp(rng.uniform(log_low, log_high)))
        shift = tuple(int(s) for s in rng.integers(0, max_shift + 1, spatial_dims))  # drawn always: same stream
        if spread_shifts:
            shift = (len(views) * (max_shift + 1) // count,) * spatial_dims
        field = {}
        if "bias_range" in options:  # drawn only when asked: the stream without it is unchanged
            field = {"bias_range": tuple(options["bias_range"]), "bias_seed": int(rng.integers(0, 2**31 - 1))}
        views.append(View(axes, gamma, shift if any(shift) else (), **field))
    return views


def _flip_subsets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The nonempty subsets of ``axes`` (by bit mask), then the empty one: [(0,), ()] for [0]."""
    n = len(axes)
    masks = [*range(1, 1 << n), 0]
    return [tuple(a for i, a in enumerate(axes) if m >> i & 1) for m in masks]


def check_view_options(spec: Mapping | None, spatial_dims: int, source: str = "augment_views") -> dict:
    """A bundle's or a caller's ``augment_views`` -> the :func:`augmentation_views` keywords it sets (None values
    dropped): ``flip_axes`` distinct spatial axes, ``gamma_range`` [low, high] with 0 < low <= high, ``max_shift`` an
    int >= 0, ``spread_shifts`` a bool (set only where true). A ValueError names ``source`` and the key."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source} must be a mapping of {', '.join(VIEW_OPTIONS)}, got {spec!r}.")
    unknown = sorted(set(spec) - set(VIEW_OPTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {', '.join(VIEW_OPTIONS)}.")
    out = {}
    axes = spec.get("flip_axes")
    if axes is not None:
        ok = isinstance(axes, Sequence) and not isinstance(axes, str) and len(set(axes)) == len(axes)
        if not ok or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < spatial_dims for a in axes):
            raise ValueError(
                f"{source}: flip_axes must be distinct spatial axes 0..{spatial_dims - 1}, e.g. [0], got {axes!r}."
            )
        out["flip_axes"] = [int(a) for a in axes]
    gammas = spec.get("gamma_range")
    if gammas is not None:
        ok = isinstance(gammas, Sequence) and not isinstance(gammas, str) and len(gammas) == 2
        ok = ok and all(isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) for g in gammas)
        if not ok or not 0 < gammas[0] <= gammas[1]:
            raise ValueError(f"{source}: gamma_range must be [low, high] with 0 < low <= high, got {gammas!r}.")
        out["gamma_range"] = [float(g) for g in gammas]
    coefficients = spec.get("bias_range")
    if coefficients is not None:
        ok = isinstance(coefficients, Sequence) and not isinstance(coefficients, str) and len(coefficients) == 2
        ok = ok and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coefficients
        )
        if not ok or not coefficients[0] <= coefficients[1]:
            raise ValueError(
                f"{source}: bias_range must be [low, high] coil-field coefficients with low <= high, e.g. [0.0, 0.2], "
                f"got {coefficients!r}."
            )
        out["bias_range"] = [float(c) for c in coefficients]
    if spec.get("max_shift") is not None:
        out["max_shift"] = check_int(f"{source}: max_shift", spec["max_shift"], low=0)
    spread = spec.get("spread_shifts")
    if spread is not None:
        if not isinstance(spread, bool):
            raise ValueError(f"{source}: spread_shifts must be true or false, got {spread!r}.")
        if spread:  # False is the default: left out, so that the keywords stay as they were without it
            out["spread_shifts"] = True
    return out


def bundle_view_options(bundle_dir, spatial_dims: int = 3) -> dict:
    """The checked ``augment_views`` of a bundle's ``configs/inference.json`` ({} where it has none)."""
    path, config = read_inference_config(bundle_dir)
    return check_view_options(config.get("augment_views"), spatial_dims, source=f"{path}: augment_views")


def apply_view(image: torch.Tensor, view: View, value_range: Sequence[float] | None = None) -> torch.Tensor:
    """(B, C, *S) -> the view of it (B, C, *S + shift): a monotone curve ``low + (high - low) u^gamma`` on ``u`` in
    [0, 1] and the coil field on ``u`` (clipped to [0, 1]), the shift padded with ``low`` (air), then flips;
    ``value_range`` None: each channel's own min and max."""
    dims = tuple(range(2, image.ndim))
    if value_range is None:
        low, high = image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True)  # (B, C, 1...)
    else:
        low, high = (
            torch.full((1,) * image.ndim, float(v), dtype=image.dtype, device=image.device) for v in value_range
        )
    out = image
    if view.gamma != 1.0 or view.bias_range:
        u = ((image - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
        if view.gamma != 1.0:
            u = u.pow(view.gamma)
        if view.bias_range:
            u = (u * coil_field(image.shape[2:], view).to(u)).clamp(0, 1)
        out = low + (high - low) * u
    if any(view.shift):
        shift, wrap = _per_axis(view.shift, image.ndim - 2), _wrapped(view, image.ndim - 2)
        pad = [v for s, w in zip(reversed(shift), reversed(wrap), strict=True) for v in ((0 if w else s), 0)]
        if any(pad):
            out = F.pad(out - low, pad) + low  # constant padding with each channel's own floor
        rolled = [(s, 2 + a) for a, (s, w) in enumerate(zip(shift, wrap, strict=True)) if w and s]
        if rolled:
            out = torch.roll(out, [s for s, _ in rolled], [d for _, d in rolled])
    return _flip(out, view.flip_axes)


def fit_view(image: torch.Tensor, view: View, value_range: Sequence[float] | None = None) -> View:
    """``view`` with ``wrap`` set for ``image`` (B, C, *S): true along each axis whose last ``shift`` voxels are at
    the air's level in every channel and case (each channel's minimum, or ``value_range``'s low end as
    :func:`apply_view` pads with it), so rolling them round to the front moves the anatomy as padding would, on a grid
    of the same size: the network sees the padded grid's first voxels along that axis, without its last ``shift``
    slices of air. False (padding) where anything but air reaches that face, e.g. without an air step that sets the
    air to the minimum, where the view then costs the larger grid's windows."""
    if not any(view.shift):
        return view
    shift = _per_axis(view.shift, image.ndim - 2)
    if value_range is None:
        floor = image.amin(dim=tuple(range(2, image.ndim)), keepdim=True)  # (B, C, 1...)
    else:
        floor = torch.full((1,) * image.ndim, float(value_range[0]), dtype=image.dtype, device=image.device)
    wrap = []
    for axis, s in enumerate(shift):
        size = image.shape[2 + axis]
        far = image.narrow(2 + axis, size - s, s) if 0 < s < size else None
        wrap.append(bool(far is not None and torch.equal(far, floor.expand_as(far))))
    return replace(view, wrap=tuple(wrap))


def coil_field(spatial_shape: Sequence[int], view: View) -> torch.Tensor:
    """The multiplicative field (*S) of a view with ``bias_range``: MONAI's ``RandBiasField`` (degree 3, coefficients
    uniform in the range, seeded by ``bias_seed``) applied to ones."""
    field = RandBiasField(coeff_range=tuple(view.bias_range), prob=1.0)
    field.set_random_state(view.bias_seed)
    return torch.as_tensor(np.asarray(field(np.ones((1, *spatial_shape), dtype=np.float32)))[0])


def invert_view(maps: torch.Tensor, view: View, spatial_start: int = 2) -> torch.Tensor:
    """Undo a view's flips and shift on maps whose spatial axes start at ``spatial_start`` (exact: a flip is its own
    inverse, the shift's padding is cropped off, and a wrapped axis is rolled back)."""
    out = _flip(maps, view.flip_axes, spatial_start)
    if any(view.shift):
        shift, wrap = _per_axis(view.shift, maps.ndim - spatial_start), _wrapped(view, maps.ndim - spatial_start)
        rolled = [(-s, spatial_start + a) for a, (s, w) in enumerate(zip(shift, wrap, strict=True)) if w and s]
        if rolled:
            out = torch.roll(out, [s for s, _ in rolled], [d for _, d in rolled])
        crop = tuple(slice(0 if w else s, None) for s, w in zip(shift, wrap, strict=True))
        out = out[(slice(None),) * spatial_start + crop]
    return out


def _per_axis(shift: tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    if len(shift) != spatial_dims or any(s < 0 for s in shift):
        raise ValueError(f"a view's shift must be {spatial_dims} voxel counts >= 0, got {shift}.")
    return shift


def _wrapped(view: View, spatial_dims: int) -> tuple[bool, ...]:
    """The view's ``wrap`` per axis (all false where it sets none: padding)."""
    if not view.wrap:
        return (False,) * spatial_dims
    if len(view.wrap) != spatial_dims:
        raise ValueError(f"a view's wrap must be {spatial_dims} flags, got {view.wrap}.")
    return tuple(bool(w) for w in view.wrap)


def _flip(x: torch.Tensor, axes: tuple[int, ...], spatial_start: int = 2) -> torch.Tensor:
    return torch.flip(x, dims=[spatial_start + a for a in axes]) if axes else x


def check_expected_volumes(
    spec: Mapping | None, num_classes: int | None = None, source: str = "expected_volume_ml"
) -> dict[str, list[float]]:
    """``{class: [low, high]}`` in mL (class: a foreground index, as an int or a string) -> ``{"k": [low, high]}``;
    None: {}. A ValueError naming ``source`` and the entry that is not a foreground class below ``num_classes`` or
    not a range ``0 <= low < high``."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source} must map foreground classes to [low, high] in mL, e.g. {{'1': [900, 2200]}}.")
    out = {}
    for key, bounds in spec.items():
        text = str(key)
        if isinstance(key, bool) or not text.isdigit() or int(text) < 1 or (num_classes and int(text) >= num_classes):
            raise ValueError(f"{source}: {key!r} is not a foreground class (1 to {(num_classes or 0) - 1 or 'K-1'}).")
        valid = isinstance(bounds, Sequence) and not isinstance(bounds, str) and len(bounds) == 2
        valid = valid and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        if not valid or not 0 <= bounds[0] < bounds[1] or not math.isfinite(bounds[1]):
            raise ValueError(f"{source}[{text!r}] must be [low, high] in mL with 0 <= low < high, got {bounds!r}.")
        out[str(int(text))] = [float(bounds[0]), float(bounds[1])]
    return out


def outside_expected(volume_ml: float, bounds: Sequence[float] | None) -> bool:
    """Whether a class volume lies outside its expected ``[low, high]`` mL (the bounds belong to it; None: never)."""
    return bounds is not None and not bounds[0] <= volume_ml <= bounds[1]


def bundle_expected_volumes(bundle_dir, num_classes: int | None = None) -> dict[str, list[float]]:
    """The checked ``expected_volume_ml`` of a bundle's ``configs/inference.json`` ({} where it has none), its
    classes below ``num_classes`` where given (the error then names the file)."""
    path, config = read_inference_config(bundle_dir)
    return check_expected_volumes(config.get("expected_volume_ml"), num_classes, f"{path}: expected_volume_ml")


BOUNDARY_MM = 3.0  # the shells' depth: a few voxels at 1-2 mm; at 4 mm a tight mask's outer shell reached the air
BOUNDARY_PERCENTILES = (10.0, 90.0)  # the inner shell's central range of intensities


def boundary_overlap(
    image: np.ndarray, mask: np.ndarray, affine: np.ndarray, depth_mm: float = BOUNDARY_MM
) -> float | None:
    """How little the image changes across the boundary of ``mask`` (bool (*S)), from ``image`` (C, *S) on the grid of
    ``affine``: the share of the voxels outside the mask within ``depth_mm`` of it whose intensity lies within the
    10th-90th percentile of the voxels inside it within ``depth_mm`` of its edge, in [0, 1]; with several channels
    the lowest share (the channel where the boundary is clearest). Well below 1 where the boundary lies on an edge
    (brain against CSF and bone: 0.41-0.69 on the validation cases above Dice 0.85); about 0.8 where nothing changes
    across it (outside values drawn like the inside's fall within its 10th-90th percentile 80 % of the time: 0.79 on
    a noisy uniform ball, from a review), 1 only on a constant image. None where the mask or its outside is empty,
    where a shell holds no voxel (voxels coarser than ``depth_mm`` across the boundary), or where no value is
    finite. A ValueError where ``image`` is not (C, *S) on the mask's grid or ``depth_mm`` is not a positive number.
    The volume's own faces are not a boundary (a field of view that cuts the mask). Distances in mm (an anisotropic
    grid's shells are as deep along each axis); computed in the mask's bounding box grown by the depth. A mask that
    takes in part of a zero-filled region (a field of view cut inside the grid) brings the air's value into the
    inner range, and the share reads high though the boundary lies on an edge (0.93 on Colin27 cut by a third, Dice
    0.85; 0.46 without the mask's zero voxels): the shipped calibration does not use it (bundle docs, "The boundary
    feature").
    """
    mask = np.asarray(mask, dtype=bool)
    image = np.asarray(image)
    if image.shape[1:] != mask.shape:
        raise ValueError(f"image {image.shape} must be (C, *S) on the mask's grid {mask.shape}.")
    if not is_finite_number(depth_mm) or depth_mm <= 0:
        raise ValueError(f"depth_mm must be a positive number of mm, got {depth_mm!r}.")
    if not mask.any() or mask.all():
        return None
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, : mask.ndim], axis=0)
    pad = np.ceil(depth_mm / spacing).astype(int) + 1  # the box holds both shells (as localize.foreground_region)
    start, end = generate_spatial_bounding_box(mask[None], margin=[int(p) for p in pad], allow_smaller=True)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, end, strict=True))
    inside = mask[box]
    inner = inside & (distance_transform_edt(inside, sampling=spacing) <= depth_mm)
    outer = ~inside & (distance_transform_edt(~inside, sampling=spacing) <= depth_mm)
    if not outer.any():  # the mask fills its box up to the faces, or its voxels are coarser than the depth
        return None
    shares = []
    for channel in image:
        values = np.asarray(channel[box], dtype=np.float64)
        inner_values, outer_values = values[inner], values[outer]
        inner_values, outer_values = inner_values[np.isfinite(inner_values)], outer_values[np.isfinite(outer_values)]
        if inner_values.size and outer_values.size:
            low, high = np.percentile(inner_values, BOUNDARY_PERCENTILES)
            shares.append(float(np.mean((outer_values >= low) & (outer_values <= high))))
    return min(shares) if shares else None


# nibabel's axis labels in world directions: the face towards each axis's positive end, then towards its negative
FACES = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))


def edge_faces(label_map: np.ndarray, affine: np.ndarray, num_classes: int) -> dict[str, list[str]]:
    """Per foreground class, the faces of the grid its voxels touch, named by the world direction they face (RAS
    ``affine``: "superior" for the face towards +S): a structure cut by the field of view has a partial volume. From
    a review: a brain cut at the top by the field of view was 1395 of 1758 mL, inside the expected range, and the
    report said nothing of it."""
    labels = np.asarray(label_map)
    last = nib.aff2axcodes(np.asarray(affine, dtype=np.float64), labels=FACES)  # the face of each axis's last slice
    first = nib.aff2axcodes(np.asarray(affine, dtype=np.float64), labels=[pair[::-1] for pair in FACES])
    faces = [(np.take(labels, i, axis=a), (first if i == 0 else last)[a]) for a in range(labels.ndim) for i in (0, -1)]
    return {str(k): [name for face, name in faces if (face == k).any()] for k in range(1, num_classes)}


def quality_report(
    label_map: np.ndarray,
    affine: np.ndarray,
    predicted_dice: Sequence[float],
    maps: dict[str, np.ndarray],
    *,
    views: int,
    num_samples: int,
    weight_sets: int = 1,
    expected_volume_ml: Mapping | None = None,
    image: np.ndarray | None = None,
) -> dict:
    """One case's quality estimate, JSON types: ``predicted_dice`` and ``volume_ml`` per class (label map (*S) on the
    grid of ``affine``), ``min_predicted_dice`` over the foreground classes, and per uncertainty map (*S) its mean over
    the predicted foreground and over the volume, in nats; ``empty_classes``: foreground classes with no voxel (their
    Dice estimate is 1 where every member agrees on nothing, which says nothing about a missed structure);
    ``unexpected_volumes``: the classes whose volume lies outside ``expected_volume_ml`` (``check_expected_volumes``),
    each with its volume and the range, the range itself as ``expected_volume_ml``; ``boundary_overlap`` per
    foreground class (``boundary_overlap`` of the class against the rest, with ``image`` (C, *S) on the same grid;
    None for an empty class; no entry without ``image``); ``edge_faces``: per foreground class, the faces of the
    field of view it touches (:func:`edge_faces`), where its volume may be partial."""
    num_classes = len(predicted_dice)
    high = int(np.max(label_map)) if np.size(label_map) else 0
    if high >= num_classes:  # else class_statistics blamed the label map's values
        raise ValueError(
            f"predicted_dice has {num_classes} entries, one per class, but the label map holds class {high}."
        )
    for name, values in maps.items():
        if np.shape(values) != np.shape(label_map):
            raise ValueError(f"maps[{name!r}] has shape {np.shape(values)}, not the label map's {np.shape(label_map)}.")
    expected = check_expected_volumes(expected_volume_ml, num_classes)
    classes = class_statistics(label_map, affine, num_classes)["classes"]
    unexpected = {
        k: {"volume_ml": classes[k]["volume_ml"], "expected_ml": bounds}
        for k, bounds in expected.items()
        if outside_expected(classes[k]["volume_ml"], bounds)
    }
    foreground = np.asarray(label_map) > 0
    summary = {}
    for name, values in maps.items():
        values = np.asarray(values, dtype=np.float64)
        inside = float(values[foreground].mean()) if foreground.any() else 0.0
        summary[name] = {"mean_foreground_nats": inside, "mean_volume_nats": float(values.mean())}
    dice = [float(d) for d in predicted_dice]
    edges = edge_faces(label_map, affine, num_classes)
    overlap = {}
    if image is not None:
        labels = np.asarray(label_map)
        overlap = {str(k): boundary_overlap(image, labels == k, affine) for k in range(1, num_classes)}
    return {
        "predicted_dice": {str(k): dice[k] for k in range(num_classes)},
        "min_predicted_dice": min(dice[1:]) if num_classes > 1 else dice[0],
        "empty_classes": [k for k in range(1, num_classes) if classes[str(k)]["voxels"] == 0],  # agreeing on none
        "volume_ml": {k: stats["volume_ml"] for k, stats in classes.items()},
        "expected_volume_ml": expected,
        "unexpected_volumes": unexpected,
        "uncertainty": summary,
        "boundary_overlap": overlap,
        "edge_faces": edges,
        "views": views,
        "weight_sets": weight_sets,
        "samples_per_view": num_samples,
    }
