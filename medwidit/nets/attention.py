"""Window attention on ``torch.nn.functional.scaled_dot_product_attention``.

Position is relative: a learned bias per relative offset (Swin) or rotary embedding of the in-window coordinates.
``WindowAttention`` with ``global_attention=True`` attends over the whole grid (one window, no shift).
``FactorizedAttention`` attends in-plane, then through-plane, for anisotropic volumes.
The tables of the configured window are non-persistent buffers (not in the state dict, so old checkpoints load
strictly); tables of other windows (clipped to a small grid, global attention) and the masks are computed in
``forward``: no module-level cache, so ``torch.export``, tracing and eager calls never share tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medwidit.utils import choose, wide_float

from .window import (
    fit_window,
    pad_tokens,
    padded_grid,
    relative_position_index,
    roll_tokens,
    window_attention_mask,
    window_coordinates,
    window_merge,
    window_partition,
)

ATTENTIONS = ("window", "global", "factorized")
POSITIONS = ("relative", "rope")
ROPE_THETA = 100.0  # windows span a few to a few tens of tokens; a small base spreads frequencies over them

#################################################################################
#                                Rotary position                                #
#################################################################################


def rope_angles(
    window: tuple[int, ...], table_window: tuple[int, ...], head_dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """(N, head_dim // 2) rotation angles of the tokens of ``window``.

    The ``head_dim // 2`` frequency pairs are dealt in turn to the axes the configured ``table_window`` spans
    (length > 1), so the assignment never depends on the grid; each axis gets frequencies ``ROPE_THETA ** -r/n``.
    """
    active = torch.tensor([a for a, w in enumerate(table_window) if w > 1] or [0], device=device)
    pairs = torch.arange(head_dim // 2, device=device)
    axis = active[pairs % len(active)]  # which axis each pair encodes
    wide = wide_float(device)  # float64 (float32 on MPS)
    rank = (pairs // len(active)).to(wide)  # its rank among that axis' pairs
    per_axis = math.ceil((head_dim // 2) / len(active))
    freq = ROPE_THETA ** (-rank / per_axis)  # (P,)
    coords = window_coordinates(window, device).to(wide)  # (N, nd)
    return (coords[:, axis] * freq).float()  # (N, P)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (…, N, head_dim) by angles whose cos/sin are (N, head_dim // 2), rotate-half layout."""
    # q and k arrive as strided views of the qkv projection; on the CPU the six elementwise passes below ran 3.5x
    # slower on them than one copy plus the same passes on contiguous memory (the same values either way)
    x1, x2 = x.contiguous().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


#################################################################################
#                               Window attention                                #
#################################################################################


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (optionally shifted) N-D windows of a token grid.

    Tokens (B, T, C) on ``grid`` are padded to whole windows, rolled by half a window when ``shifted``,
    partitioned, attended with Swin's mask (no attention across the roll's wrap, padded keys ignored), merged,
    rolled back and cropped. ``global_attention`` makes the window the whole grid; relative offsets beyond the
    bias table are then clipped to its edge.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, ...],
        *,
        shifted: bool = False,
        position: str = "relative",
        global_attention: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads (a positive int), got {dim} and {num_heads}.")
        if not isinstance(window_size, (tuple, list)):
            raise ValueError(f"window_size must be a tuple with one size per spatial axis, got {window_size!r}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = tuple(window_size)
        self.shifted = shifted
        self.position = choose("position", position, POSITIONS)
        self.global_attention = global_attention
        axes = sum(w > 1 for w in self.window_size) or 1
        if self.position == "rope" and (self.head_dim % 2 or self.head_dim < 2 * axes):
            raise ValueError(
                f"position='rope' needs an even head dimension of at least {2 * axes} (two per axis), got "
                f"hidden_size // num_heads = {dim} // {num_heads} = {self.head_dim}."
            )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if self.position == "relative":
            table = math.prod(2 * w - 1 for w in self.window_size)
            self.relative_bias = nn.Parameter(torch.zeros(table, num_heads))  # (prod(2w-1), heads)
            self.register_buffer("relative_index", self._relative_index(self.window_size), persistent=False)
        else:
            cos, sin = self._rope_tables(self.window_size)  # (N, head_dim/2) each
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def _apply(self, fn, recurse: bool = True):
        """``.to``, ``.half``, ``.to_empty`` move the position tables as they move any buffer; then they are
        written again from the window, where they now lie and in their new dtype: ``to_empty`` leaves them
        uninitialised and a round trip through bf16 rounds them, and ``load_state_dict`` never restores them
        (they are not saved)."""
        super()._apply(fn, recurse)
        with torch.no_grad():  # new tensors, not copy_: a buffer made under inference_mode takes no in-place write
            if self.position == "relative":
                index = self.relative_index
                self.relative_index = relative_position_index(self.window_size, self.window_size, index.device)
            else:
                cos = self.rope_cos
                angles = rope_angles(self.window_size, self.window_size, self.head_dim, cos.device)
                self.rope_cos, self.rope_sin = angles.cos().to(cos.dtype), angles.sin().to(cos.dtype)
        return self

    def _relative_index(self, window: tuple, device: torch.device | None = None) -> torch.Tensor:
        """(N, N) index of ``window``'s offsets into the bias table; the buffer for the configured window."""
        if window == self.window_size and hasattr(self, "relative_index"):
            return self.relative_index
        return relative_position_index(window, self.window_size, device)

    def _rope_tables(self, window: tuple, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (N, head_dim/2) of ``window``'s rotary angles; the buffers when ``window`` is the configured one."""
        if window == self.window_size and hasattr(self, "rope_cos"):
            return self.rope_cos, self.rope_sin
        angles = rope_angles(window, self.window_size, self.head_dim, device)  # (N, head_dim/2)
        return angles.cos(), angles.sin()

    def init_weights(self) -> None:
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        if self.position == "relative":
            nn.init.trunc_normal_(self.relative_bias, std=0.02)

    def layout(self, grid: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(window, shift) used on ``grid``."""
        if self.global_attention:
            return tuple(grid), (0,) * len(grid)
        return fit_window(grid, self.window_size, self.shifted)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...], masks: dict | None = None) -> torch.Tensor:
        """Tokens (B, T, C) on ``grid`` -> (B, T, C). ``masks``: a table that lives for one network call, shared by
        its layers (WiDiT.forward passes one), so that each window layout's mask is built once per call."""
        b, t, c = x.shape
        grid = tuple(grid)  # ints, or SymInts under dynamic-shape export: never int() them
        window, shift = self.layout(grid)
        x = _autocast_input(x)  # pad, roll and partition move half the bytes; qkv would cast to this dtype anyway
        padded = padded_grid(grid, window)
        x = pad_tokens(x.reshape(b, *grid, c), padded)  # (B, *Gp, C)
        x = roll_tokens(x, shift, -1)
        x = window_partition(x, window)  # (B*nW, N, C)
        x = self.attend(x, grid, window, shift, masks)  # (B*nW, N, C)
        x = roll_tokens(window_merge(x, window, padded), shift, +1)  # (B, *Gp, C)
        x = x[(slice(None), *(slice(0, g) for g in grid))]  # crop the padding
        return self.proj(x.reshape(b, t, c))

    def attend(self, x: torch.Tensor, grid: tuple, window: tuple, shift: tuple, masks: dict | None = None):
        """SDPA over windows (B*nW, N, C) with this layer's position encoding and Swin's mask; ``masks`` as in
        :meth:`forward` (keyed by this layer's layout settings, which fix window and shift on one call's grid)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B*nW, heads, N, head_dim)
        _check_table_grid(masks, grid)
        # plain values (SymInt grids do not hash); the device, for a model split across devices
        layout = (self.window_size, self.shifted, self.global_attention, x.device)
        allowed = _shared(masks, ("allowed", *layout), lambda: window_attention_mask(grid, window, shift, x.device))
        if self.position == "rope":
            cos, sin = (table.to(q.dtype) for table in self._rope_tables(window, x.device))  # (N, head_dim/2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            key = ("sdpa", *layout, q.dtype)  # one call: one batch, so one B*nW per layout
            mask = None if allowed is None else _shared(masks, key, lambda: _batched(sdpa_mask(allowed, q.dtype), bw))
        else:
            index = self._relative_index(window, x.device)  # (N, N)
            # (1, heads, N, N), row-major: CUDA's fused SDPA kernels take only 4-D masks with a unit last stride
            # (the first GPU run found a permuted 3-D bias sending WiDiT-B/4 to the math kernel, 15x slower)
            bias = self.relative_bias[index].permute(2, 0, 1).contiguous().to(q.dtype)[None]
            mask = bias if allowed is None else bias.masked_fill(~allowed[:, None], float("-inf"))  # (nW, h, N, N)
            mask = _batched(mask, bw)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B*nW, heads, N, head_dim)
        return out.transpose(1, 2).reshape(bw, n, c)


def _autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in autocast's dtype where autocast is on and would cast it at the qkv projection (float32 tokens), else
    ``x``. Casting before the window shuffles instead of after gives the same values: padding, rolls and permutes
    only move them. (On an H200 the float32 rolls were 3.5% of a WiDiT-B/4 training step, benchmarks/gpu.py.)"""
    device = x.device.type
    if x.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return x
    return x.to(torch.get_autocast_dtype(device))


def sdpa_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Swin's boolean mask (nW, N, N) as SDPA's ``attn_mask`` (nW, 1, N, N): boolean off the CPU (CUDA's fused
    kernels take it as it is), additive (0 / -inf in ``dtype``) on the CPU, whose flash kernel otherwise converts a
    boolean mask with two ``where`` in every call (a quarter of its time on the shipped model's windows)."""
    if allowed.device.type != "cpu":
        return allowed[:, None]
    return torch.where(allowed, 0.0, float("-inf")).to(dtype)[:, None]


def _batched(mask: torch.Tensor | None, bw: int) -> torch.Tensor | None:
    """A mask per window (nW, h|1, N, N) repeated for every batch element of B*nW windows."""
    if mask is None or mask.shape[0] == 1:
        return mask
    n_win = mask.shape[0]
    return mask.expand(bw // n_win, *mask.shape).reshape(bw, *mask.shape[1:])  # (B*nW, h|1, N, N)


def _check_table_grid(masks: dict | None, grid: tuple) -> None:
    """A mask table serves one call, so one token grid: a table reused on another grid would hand out masks of the
    wrong layout (the same window count can hide it). Checked where the grid is plain ints (under export it is
    symbolic, and one trace is one call)."""
    if masks is None or not all(isinstance(g, int) for g in grid):
        return
    first = masks.setdefault("grid", tuple(grid))
    if first != tuple(grid):
        raise ValueError(
            f"a mask table serves one network call's token grid {first}, not {tuple(grid)}: pass a new one."
        )


def _shared(masks: dict | None, key: tuple, build: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
    """``masks[key]``, built by ``build`` the first time; without a table, built every time."""
    if masks is None:
        return build()
    if key not in masks:
        masks[key] = build()
    return masks[key]


#################################################################################
#                   Factorized in-plane / through-plane attention               #
#################################################################################


class FactorizedAttention(nn.Module):
    """In-plane window attention over axes 1.. (e.g. H, W), then through-plane attention along axis 0 (e.g. D).

    The through-plane branch reads the in-plane result and adds to it; its output projection starts at zero, so at
    initialisation the layer is exactly its in-plane attention. :func:`make_attention` builds the two layers.
    """

    def __init__(self, in_plane: WindowAttention, through_plane: WindowAttention) -> None:
        super().__init__()
        self.in_plane = in_plane
        self.through_plane = through_plane
        self.init_weights()

    def init_weights(self) -> None:
        self.in_plane.init_weights()
        self.through_plane.init_weights()
        nn.init.zeros_(self.through_plane.proj.weight)
        nn.init.zeros_(self.through_plane.proj.bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...], masks: dict | None = None) -> torch.Tensor:
        y = self.in_plane(x, grid, masks)  # (B, T, C)
        return y + self.through_plane(x + y, grid, masks)


def make_attention(
    attention: str, dim: int, num_heads: int, window_size: tuple[int, ...], shifted: bool, position: str
) -> nn.Module:
    """The attention named by ``attention``: shifted-window (Swin), one global window, or factorized."""
    attention = choose("attention", attention, ATTENTIONS)
    if attention != "factorized":
        return WindowAttention(
            dim, num_heads, window_size, shifted=shifted, position=position, global_attention=attention == "global"
        )
    in_plane = (1, *window_size[1:])
    through = (window_size[0],) + (1,) * (len(window_size) - 1)
    return FactorizedAttention(*(WindowAttention(dim, num_heads, w, shifted=shifted, position=position)
                                 for w in (in_plane, through)))  # fmt: skip
