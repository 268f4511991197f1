"""When not to trust a case: ensembles whose members differ by more than their noise draw, the split of the
predictive entropy into what the data leave open and what the model does not know, and a per-case Dice estimate.

Members come in G groups of S samples: a group is one *view* of the case (test-time augmentation: flips and an
intensity curve, each undone exactly before averaging) or one set of weights; inside a group only the diffusion
noise differs. With ``p_gs`` the members' class probabilities, ``p_g`` a group's mean and ``p`` the overall mean:

    total      H(p)                    predictive entropy
    aleatoric  mean_g H(p_g)           what stays ambiguous when the model and the view are fixed (boundaries)
    epistemic  H(p) - mean_g H(p_g)    the mutual information between the prediction and the group: where views
                                       or weights disagree, the model does not know (>= 0, H is concave)

The Dice estimate of class k is the expected Dice of the final labels ``argmax p`` against a member's labels,
``mean_gs Dice_k(argmax p, argmax p_gs)``: where members agree it is 1, and it falls with their disagreement
(the ensemble's own view of how far the answer could be from the truth).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medwidit.utils import check_int

__all__ = ["View", "apply_view", "decompose_entropy", "estimated_dice", "invert_view", "augmentation_views"]


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(dim=dim, keepdim=True)


def decompose_entropy(probabilities: torch.Tensor, groups: int = 1) -> dict[str, torch.Tensor]:
    """Members (G*S, B, K, *S), group-major -> ``total``, ``aleatoric``, ``epistemic`` maps (B, 1, *S) in nats."""
    members = probabilities.shape[0]
    check_int("groups", groups)
    if members % groups:
        raise ValueError(f"{members} members cannot form {groups} groups of equal size.")
    p = probabilities.float()
    grouped = p.reshape(groups, members // groups, *p.shape[1:]).mean(dim=1)  # (G, B, K, *S)
    total = _entropy(p.mean(dim=0), dim=1)
    aleatoric = _entropy(grouped, dim=2).mean(dim=0)
    return {"total": total, "aleatoric": aleatoric, "epistemic": (total - aleatoric).clamp_min(0.0)}


def estimated_dice(probabilities: torch.Tensor) -> torch.Tensor:
    """Members (M, B, K, *S) -> (B, K): ``mean_m Dice_k(argmax p_bar, argmax p_m)``; 1 where a class is absent
    from both (nothing to disagree on)."""
    num_classes = probabilities.shape[2]
    final = probabilities.float().mean(dim=0).argmax(dim=1)  # (B, *S)
    member = probabilities.argmax(dim=2)  # (M, B, *S)
    dims = tuple(range(2, member.ndim))
    scores = []
    for k in range(num_classes):
        a, b = (final == k).unsqueeze(0), member == k
        overlap, size = (a & b).sum(dims).double(), (a.sum(dims) + b.sum(dims)).double()  # (M, B)
        scores.append(torch.where(size > 0, 2 * overlap / size.clamp_min(1), torch.ones_like(size)).mean(dim=0))
    return torch.stack(scores, dim=1).float()  # (B, K)


@dataclass(frozen=True)
class View:
    """One test-time view: the spatial axes flipped, and ``gamma`` applied to the image's [low, high] range."""

    flip_axes: tuple[int, ...] = ()
    gamma: float = 1.0


def augmentation_views(count: int, spatial_dims: int = 3, *, seed: int = 0, max_log_gamma: float = 0.3) -> list[View]:
    """``count`` views: the identity first, then flips of random axis subsets and gammas exp(U(-g, g))."""
    check_int("count", count)
    rng = np.random.default_rng(seed)
    views = [View()]
    while len(views) < count:
        axes = tuple(int(a) for a in np.flatnonzero(rng.random(spatial_dims) < 0.5))
        views.append(View(axes, float(np.exp(rng.uniform(-max_log_gamma, max_log_gamma)))))
    return views


def apply_view(image: torch.Tensor, view: View, value_range: Sequence[float] = (-1.0, 1.0)) -> torch.Tensor:
    """(B, C, *S) -> the view of it: a monotone curve ``low + (high - low) u^gamma`` on ``u`` in [0, 1], then flips."""
    out = image
    if view.gamma != 1.0:
        low, high = value_range
        u = ((image - low) / (high - low)).clamp(0, 1)
        out = low + (high - low) * u.pow(view.gamma)
    return _flip(out, view.flip_axes)


def invert_view(maps: torch.Tensor, view: View, spatial_start: int = 2) -> torch.Tensor:
    """Undo a view's flips on maps whose spatial axes start at ``spatial_start`` (exact: a flip is its inverse)."""
    return _flip(maps, view.flip_axes, spatial_start)


def _flip(x: torch.Tensor, axes: tuple[int, ...], spatial_start: int = 2) -> torch.Tensor:
    return torch.flip(x, dims=[spatial_start + a for a in axes]) if axes else x
