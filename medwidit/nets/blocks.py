"""WiDiT's transformer block and final layer, both with adaLN-Zero (DiT) conditioning on the timestep.

With ``c=None`` (no timestep) a block is plain pre-norm ``x + attn(norm(x)); x + mlp(norm(x))`` and the final layer
is ``linear(norm(x))``: no modulation, no gates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .attention import FactorizedAttention, WindowAttention
from .embed import Unpatchify
from .layers import choose, make_mlp, make_norm, modulate

ATTENTIONS = ("window", "global", "factorized")
FINALS = ("linear", "conv")


class WiDiTBlock(nn.Module):
    """Windowed multi-head self-attention + MLP, each modulated and gated by adaLN-Zero on ``c`` (B, hidden)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        window_size: Sequence[int],
        *,
        mlp_ratio: float = 4.0,
        shifted: bool = False,
        mlp: str = "gelu",
        norm: str = "layernorm",
        position: str = "relative",
        attention: str = "window",
    ) -> None:
        super().__init__()
        attention = choose("attention", attention, ATTENTIONS)
        window_size = tuple(window_size)
        self.norm1 = make_norm(norm, hidden_size)
        if attention == "factorized":
            self.attn = FactorizedAttention(hidden_size, num_heads, window_size, shifted=shifted, position=position)
        else:
            self.attn = WindowAttention(
                hidden_size,
                num_heads,
                window_size,
                shifted=shifted,
                position=position,
                global_attention=attention == "global",
            )
        self.norm2 = make_norm(norm, hidden_size)
        self.mlp = make_mlp(mlp, hidden_size, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier inside attention and MLP; adaLN-Zero: the modulation starts at zero, so the block is the identity."""
        self.attn.init_weights()
        self.mlp.init_weights()
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, grid: tuple[int, ...]) -> torch.Tensor:
        if c is None:  # no timestep: plain pre-norm transformer block
            x = x + self.attn(self.norm1(x), grid)
            return x + self.mlp(self.norm2(x))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid)  # (B, T, C)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, T, C)


class WiDiTFinalLayer(nn.Module):
    """Norm (adaLN-modulated when ``c`` is given), then tokens -> voxels (B, out_channels, *S).

    ``final="linear"``: a Linear to ``prod(patch) * out_channels`` per token, rearranged into patches (DiT).
    ``final="conv"``: an :class:`Unpatchify` transposed convolution with zero initial weights.
    """

    def __init__(
        self,
        hidden_size: int,
        patch_size: Sequence[int],
        out_channels: int,
        *,
        norm: str = "layernorm",
        final: str = "linear",
    ) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels
        self.final = choose("final", final, FINALS)
        self.norm_final = make_norm(norm, hidden_size)
        if self.final == "linear":
            self.linear = nn.Linear(hidden_size, math.prod(self.patch_size) * out_channels)
        else:
            self.unpatchify = Unpatchify(
                hidden_size, out_channels, len(self.patch_size), self.patch_size, weight_init="zeros"
            )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.init_weights()

    def init_weights(self) -> None:
        """adaLN-Zero: modulation and output projection start at zero, so the model's output is exactly zero."""
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)
        if self.final == "linear":
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        else:
            self.unpatchify.init_weights()

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, grid: tuple[int, ...]) -> torch.Tensor:
        x = self.norm_final(x)  # (B, T, C)
        if c is not None:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            x = modulate(x, shift, scale)
        b = x.shape[0]
        if self.final == "conv":
            x = self.unpatchify(x.reshape(b, *grid, x.shape[-1]))  # (B, *S, out)
            return x.movedim(-1, 1)  # (B, out, *S)
        x = self.linear(x)  # (B, T, prod(p) * out)
        nd = len(grid)
        x = x.reshape(b, *grid, *self.patch_size, self.out_channels)  # (B, *G, *p, out)
        order = [0, 2 * nd + 1] + [v for a in range(nd) for v in (1 + a, 1 + nd + a)]
        x = x.permute(order)  # (B, out, g0, p0, g1, p1, ...)
        return x.reshape(
            b, self.out_channels, *(g * p for g, p in zip(grid, self.patch_size, strict=True))
        )  # (B, out, *S)
