"""Token-wise layers: GELU MLP, SwiGLU, the norm factory, adaLN ``modulate``, PixelDiT's ``PixelMLP`` and
``FinalLayer``, and the nets' error class."""

from __future__ import annotations

import torch
from torch import nn

from medwidit.utils import choose

MLPS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")


class WiDiTInputError(ValueError, AssertionError):
    """Misuse the seed promises to reject with an assertion (e.g. conditioning); also a ValueError (DESIGN 8)."""


def tracing() -> bool:
    """Whether a trace (torch.export, torch.compile, torch.jit.trace) records this call: per-call state (kept masks,
    size-dependent loops) must not enter it."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample (B, C) shift/scale over tokens (B, T, C)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def make_norm(norm: str, dim: int) -> nn.Module:
    """Parameter-free LayerNorm or RMSNorm (adaLN supplies scale and shift, as in DiT)."""
    norm = choose("norm", norm, NORMS)
    if norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6, elementwise_affine=False)
    return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)


class Mlp(nn.Module):
    """Linear(dim -> mlp_ratio * dim) -> GELU -> Linear(-> dim), both with biases: DiT's feed-forward (``approximate=
    "tanh"``, the default) and PixelDiT's pixel MLP (exact GELU, :class:`PixelMLP`)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, *, approximate: str = "tanh") -> None:
        super().__init__()
        hidden = max(1, int(dim * mlp_ratio))
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)
        self.init_weights()

    def init_weights(self) -> None:
        for linear in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (..., dim)


class SwiGLU(nn.Module):
    """SwiGLU feed-forward ``w2(silu(w1 x) * w3 x)`` with ``int(2/3 * dim * mlp_ratio)`` hidden units, no biases."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = max(1, int(2 * dim * mlp_ratio / 3))
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        for linear in (self.w1, self.w2, self.w3):
            nn.init.xavier_uniform_(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


def make_mlp(mlp: str, dim: int, mlp_ratio: float) -> nn.Module:
    """The feed-forward named by ``mlp`` ("gelu" or "swiglu")."""
    return SwiGLU(dim, mlp_ratio) if choose("mlp", mlp, MLPS) == "swiglu" else Mlp(dim, mlp_ratio)


#################################################################################
#                     PixelDiT's pixel-level layers (seed 001)                  #
#################################################################################


class PixelMLP(Mlp):
    """PixelDiT's pixel MLP (seed 001): :class:`Mlp` with the exact (erf) GELU."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__(dim, mlp_ratio, approximate="none")


class FinalLayer(nn.Module):
    """RMSNorm, then a zero-initialised Linear(hidden -> out_channels): exactly the zero map at init (PixelDiT)."""

    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(hidden_size, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.init_weights()

    def init_weights(self) -> None:
        self.norm.reset_parameters()
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))  # (..., out_channels)
