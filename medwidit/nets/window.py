"""N-D windows: fit, pad, shift, partition/merge, Swin's shift mask with padded keys, relative-position index.

Every function works on per-axis tuples, so 2D and 3D share one code path. Nothing is cached at module level: a
cache keyed by shape would hand fake tensors from ``torch.export`` to later eager calls; layers keep their fixed
tables as non-persistent buffers and compute shape-dependent ones in ``forward``. Sizes may be symbolic (``SymInt``)
under dynamic-shape export, so rounding is integer arithmetic. Tokens live channels-last on their
grid, ``(B, *G, C)``; a window holds ``N = prod(window)`` tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#################################################################################
#                           Window geometry per grid                            #
#################################################################################


def fit_window(
    grid: tuple[int, ...], window: tuple[int, ...], shifted: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and shift actually used on ``grid``.

    An axis whose grid fits in one window gets a window clipped to the grid and no shift (a cyclic shift there
    would only wrap the volume onto itself). Elsewhere the shift is half a window, as in Swin.
    """
    eff = tuple(min(w, g) for w, g in zip(window, grid, strict=True))
    shift = tuple(w // 2 if (shifted and g > w) else 0 for w, g in zip(window, grid, strict=True))
    return eff, shift


def padded_grid(grid: tuple[int, ...], window: tuple[int, ...]) -> tuple[int, ...]:
    """Smallest grid >= ``grid`` that the windows tile exactly."""
    return tuple(-(-g // w) * w for g, w in zip(grid, window, strict=True))  # ceil without floats: SymInt-safe


def pad_tokens(x: torch.Tensor, padded: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad ``x`` (B, *G, C) at the high end of each axis to (B, *padded, C)."""
    grid = x.shape[1:-1]
    if tuple(grid) == tuple(padded):
        return x
    pad = [0, 0]  # channel axis, last
    for g, p in zip(reversed(grid), reversed(padded), strict=True):
        pad += [0, p - g]
    return F.pad(x, pad)


#################################################################################
#                            Partition and merge                                #
#################################################################################


def window_partition(x: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """(B, *G, C) -> (B * nW, N, C), windows in row-major order of their grid, batch-major."""
    b, *grid, c = x.shape
    nd = len(grid)
    split = [v for g, w in zip(grid, window, strict=True) for v in (g // w, w)]
    x = x.reshape(b, *split, c)  # (B, g0/w0, w0, g1/w1, w1, ..., C)
    order = [0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1]
    return x.permute(order).reshape(-1, math.prod(window), c)


def window_merge(windows: torch.Tensor, window: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
    """(B * nW, N, C) -> (B, *G, C); the inverse of :func:`window_partition`."""
    nd = len(grid)
    counts = [g // w for g, w in zip(grid, window, strict=True)]
    c = windows.shape[-1]
    x = windows.reshape(-1, *counts, *window, c)  # (B, g0/w0, g1/w1, ..., w0, w1, ..., C)
    order = [0] + [v for a in range(nd) for v in (1 + a, 1 + nd + a)] + [2 * nd + 1]
    return x.permute(order).reshape(-1, *grid, c)


def roll_tokens(x: torch.Tensor, shift: tuple[int, ...], sign: int) -> torch.Tensor:
    """Cyclically roll the grid axes of ``x`` (B, *G, C) by ``sign * shift``."""
    if not any(shift):
        return x
    dims = [1 + a for a, s in enumerate(shift) if s]
    return torch.roll(x, shifts=[sign * s for s in shift if s], dims=dims)


#################################################################################
#                       Attention mask: shift and padding                       #
#################################################################################


def window_attention_mask(
    grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> torch.Tensor | None:
    """Boolean mask (nW, N, N), True where a query may attend to a key; None when every pair may.

    The grid is padded to ``padded_grid(grid, window)`` and rolled by ``-shift`` before partitioning. A key may be
    attended iff it is a real token (not padding) and it sits in the same Swin region as the query, i.e. on every
    axis both or neither were wrapped around by the roll, so opposite faces never meet. A query always sees
    itself, so padded queries (discarded later) never get an empty row and cannot produce NaNs.
    """
    padded = padded_grid(grid, window)
    if padded == tuple(grid) and not any(shift):
        return None
    axes = []
    for a, (g, p, s) in enumerate(zip(grid, padded, shift, strict=True)):
        pos = torch.arange(p, device=device)  # rolled coordinate
        original = (pos + s) % p
        region = (pos >= p - s).long() << a if s else torch.zeros_like(pos)  # 1 << a where wrapped
        axes.append((region, original < g))
    region = torch.zeros(padded, dtype=torch.long, device=device)
    valid = torch.ones(padded, dtype=torch.bool, device=device)
    for a, (r, v) in enumerate(axes):
        view = [1] * len(padded)
        view[a] = -1
        region = region + r.view(view)
        valid = valid & v.view(view)
    region = window_partition(region[None, ..., None], window)[..., 0]  # (nW, N)
    valid = window_partition(valid[None, ..., None], window)[..., 0]  # (nW, N)
    mask = (region[:, :, None] == region[:, None, :]) & valid[:, None, :]  # (nW, N, N)
    return mask | torch.eye(mask.shape[-1], dtype=torch.bool, device=device)


#################################################################################
#                         Relative position inside windows                      #
#################################################################################


def window_coordinates(window: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """(N, nd) integer coordinates of the tokens of one window, row-major like :func:`window_partition`."""
    axes = [torch.arange(w, device=device) for w in window]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(window))


def relative_position_index(
    window: tuple[int, ...], table_window: tuple[int, ...], device: torch.device | None = None
) -> torch.Tensor:
    """(N, N) index into a table of ``prod(2 * table_window - 1)`` relative offsets.

    Offsets are clipped to ``+-(table_window - 1)`` per axis; inside a window (``window <= table_window``) the clip
    never acts, it only matters for global attention over a grid larger than the table.
    """
    coords = window_coordinates(window, device)  # (N, nd)
    offset = coords[:, None, :] - coords[None, :, :]  # (N, N, nd)
    index = torch.zeros(offset.shape[:2], dtype=torch.long, device=offset.device)
    for a, t in enumerate(table_window):
        index = index * (2 * t - 1) + offset[..., a].clamp(-(t - 1), t - 1) + (t - 1)
    return index
