"""WiDiT's transformer block and final layer, both with adaLN-Zero (DiT) conditioning on the timestep, and the
pixel-level head (PixelDiT, Yu et al. 2025) that can replace the final layer.

With ``c=None`` (no timestep) a block is plain pre-norm ``x + attn(norm(x)); x + mlp(norm(x))`` and the final layer
is ``linear(norm(x))``: no modulation, no gates.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn

from medwidit.utils import choose, is_integer

from .attention import make_attention
from .embed import Unpatchify
from .layers import FinalLayer, PixelMLP, make_mlp, make_norm, modulate, tracing

FINALS = ("linear", "conv")
HEADS = ("patch", "pixel")  # WiDiT(head=...): tokens -> voxels by WiDiTFinalLayer, or by the PixelHead


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
        self.norm1 = make_norm(norm, hidden_size)
        self.attn = make_attention(attention, hidden_size, num_heads, tuple(window_size), shifted, position)
        self.norm2 = make_norm(norm, hidden_size)
        self.mlp = make_mlp(mlp, hidden_size, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier inside attention and MLP; adaLN-Zero: the modulation starts at zero, so with a timestep the block
        is the identity (without one, ``c`` is None and the block is a plain pre-norm residual)."""
        self.attn.init_weights()
        self.mlp.init_weights()
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None, grid: tuple[int, ...], masks: dict | None = None
    ) -> torch.Tensor:
        """``masks``: the attention masks' table of one network call (``WindowAttention.forward``)."""
        if c is None:  # no timestep: plain pre-norm transformer block
            x = x + self.attn(self.norm1(x), grid, masks)
            return x + self.mlp(self.norm2(x))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid, masks)  # (B, T, C)
        x = x + gate_msa.unsqueeze(1) * h
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
        return patches_to_voxels(self.linear(x), grid, self.patch_size)  # (B, out, *S)


def patches_to_voxels(x: torch.Tensor, grid: tuple[int, ...], patch: tuple[int, ...]) -> torch.Tensor:
    """(B, T, prod(p) * C) per-token patches -> (B, C, *S), S = G * p: DiT's unpatchify, N-D."""
    b, nd = x.shape[0], len(grid)
    x = x.reshape(b, *grid, *patch, -1)  # (B, *G, *p, C)
    order = [0, 2 * nd + 1] + [v for a in range(nd) for v in (1 + a, 1 + nd + a)]
    x = x.permute(order)  # (B, C, g0, p0, g1, p1, ...)
    return x.reshape(b, x.shape[1], *(g * p for g, p in zip(grid, patch, strict=True)))  # (B, C, *S)


#################################################################################
#                      Pixel-level head (PixelDiT, seed 001)                    #
#################################################################################


def check_kernel(name: str, value) -> int:
    """``value`` as an odd int >= 1 (a depthwise "same" convolution's side: an even kernel has no centre, so no
    padding keeps the grid), else a ValueError naming ``name``."""
    if not is_integer(value) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd int >= 1, got {value!r}.")
    return int(value)


def depthwise_same(spatial_dim: int, dim: int, kernel: int) -> nn.Module:
    """A depthwise ``kernel``^N convolution of ``dim`` channels, zero-padded to the input's size (N = 2 or 3)."""
    return (nn.Conv2d, nn.Conv3d)[spatial_dim - 2](dim, dim, kernel, padding=kernel // 2, groups=dim)


class PixelBlock(nn.Module):
    """Pixel-wise adaLN block on a voxel stream (B, *S, D): ``x + PixelMLP(norm(x) * (1 + scale) + shift)`` with a
    shift and scale per voxel (PixelDiT's pixel-wise AdaLN); no gate, the head's zero FinalLayer gives the zero init."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm = make_norm("rmsnorm", dim)
        self.mlp = PixelMLP(dim, mlp_ratio)

    def init_weights(self) -> None:
        self.mlp.init_weights()

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, shift, 1 + scale)  # (B, *S, D)

    def modulated(
        self, x: torch.Tensor, shift: torch.Tensor, scale_plus_one: torch.Tensor, inplace: bool = False
    ) -> torch.Tensor:
        """:meth:`forward` given ``1 + scale`` (the head folds the 1 into its modulation's bias). ``self.norm``'s
        RMSNorm is written out (:func:`_mean_square`, then one ``addcmul`` for the modulation): fewer passes over the
        voxels than RMSNorm, a product and a sum, at the same values. ``inplace`` (honoured without gradients and
        outside a trace only: a backward reads them, and a trace would keep the writes for calls with gradients):
        ``x``, ``shift`` and ``scale_plus_one`` are the caller's to overwrite, and the result is written into ``x``.
        The same values, with three fresh voxel maps fewer: on the CPU each is a pass over memory out of cache (and
        partly not yet mapped)."""
        inplace = inplace and _may_write_in_place()
        mean_square = _mean_square(x, dim=-1)  # (B, *S, 1)
        if inplace:
            u = shift.addcmul_(x, scale_plus_one.mul_(mean_square.add_(self.norm.eps).rsqrt_().to(x.dtype)))
        else:
            u = torch.addcmul(shift, x, torch.rsqrt(mean_square + self.norm.eps).to(x.dtype) * scale_plus_one)
        mlp = self.mlp
        # fc1 read column-major: with as few input channels as the head's (4), the CPU's GEMM on the (out, in) row-major
        # weight runs at half the speed (0.52 against 0.26 ms a slab on an AMD EPYC, with the bias in the GEMM); the
        # same values up to rounding, and no gain (nor loss beyond the timing noise) at 8 or 16 channels
        hidden = _linear(u, mlp.fc1.weight.t().contiguous().t(), mlp.fc1.bias)
        if inplace and isinstance(mlp.act, nn.GELU):
            hidden = torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
        else:
            hidden = mlp.act(hidden)
        out = _linear(hidden, mlp.fc2.weight, mlp.fc2.bias)
        if inplace and torch.result_type(x, out) == x.dtype:  # a float32 stream takes a bf16 output too
            return x.add_(out)
        return out.add_(x) if out.dtype == x.dtype else x + out  # (B, *S, D); under autocast, x's float32 sum


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``nn.functional.linear(x, weight, bias)`` on voxels (B, *S, in). On the CPU in float32, the bias-free product
    and then the bias added in place (:func:`_add_bias_`): with the head's few channels (4 -> 8 -> 4) about 3x faster
    than one GEMM with a bias, whose broadcast bias takes a slow path (bit for bit the same values on an Intel Xeon).
    Elsewhere (other devices, half precision, autocast: not measured; a rounding between product and bias in half
    precision) the plain call."""
    if not _cpu_float32(x) or bias is None:
        return nn.functional.linear(x, weight, bias)
    return _add_bias_(nn.functional.linear(x, weight), bias)


def _add_bias_(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x.add_(bias)`` for a bias along x's last axis, in place; on a contiguous x as rows of up to 64 values (a
    multiple of the bias's length) with the bias repeated along them: broadcasting a few channels runs an inner loop
    as short as the bias, which the CPU's vector lanes do not fill (32768 voxels x 8 channels, one thread, an Intel
    Xeon: 0.020 against 0.083 ms; x 4 channels: 0.011 against 0.088 ms). The same sums, element for element. Under a
    trace the plain broadcast (the rows' width depends on the traced size)."""
    width = bias.numel() * max(1, 64 // bias.numel())
    if tracing() or not x.is_contiguous() or x.shape[-1] != bias.numel() or x.numel() % width:
        return x.add_(bias)
    x.view(-1, width).add_(bias.repeat(width // bias.numel()))
    return x


def _mean_square(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of squares over the channel axis ``dim`` (-1: channels last; -2: channels first), which stays as size 1:
    a matmul with a 1/D vector (about 2x a reduction over a few channels on the CPU); from half precision or under
    autocast, a float32 reduction, as RMSNorm accumulates (half-precision squares overflow past about 256)."""
    if x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(x.device.type):
        return x.float().square().mean(dim, keepdim=True)
    d = x.shape[dim]
    if dim == -1:
        return torch.matmul(x * x, x.new_full((d, 1), 1 / d))
    if d <= 8:
        # channels first on channels-last memory: a one-row product takes a matrix-vector path about 3x slower than
        # the same product with a zero second row (0.25 against 0.76 ms at 64^3 with 4 channels, one thread, an Intel
        # Xeon; 0.46 against 0.62 ms with 8; slower from 16); the same sums up to rounding
        weights = torch.zeros(2, d, dtype=x.dtype, device=x.device)
        weights[0] = 1 / d
        return torch.matmul(weights, x * x)[..., :1, :]
    return torch.matmul(x.new_full((1, d), 1 / d), x * x)


class ImageBlock(nn.Module):
    """A residual depthwise-separable convolution on the image's voxel features (B, *S, D):
    ``h + Linear(GELU(depthwise 3^N(h)))``, ConvNeXt's block without its norm and expansion. The pixel head stacks
    them on the image alone, which is encoded once per volume, so they deepen what each voxel knows of its image
    neighbourhood (texture, local contrast) at no cost per denoising step."""

    def __init__(self, dim: int, spatial_dim: int) -> None:
        super().__init__()
        self.depthwise = depthwise_same(spatial_dim, dim, 3)
        self.pointwise = nn.Linear(dim, dim)
        self.init_weights()

    def init_weights(self) -> None:
        self.depthwise.reset_parameters()
        self.pointwise.reset_parameters()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.pointwise(nn.functional.gelu(_depthwise(self.depthwise, h)))  # (B, *S, D)


class PixelHead(nn.Module):
    """Tokens -> voxels through a full-resolution pathway (PixelDiT): a depthwise-separable stem (per-voxel Linear of
    the noisy input and the image, then a depthwise k^N convolution, ``kernel`` k odd) reads the voxels; each patch
    token (+ timestep) is projected to a shift and scale for every voxel of its patch and every block; ``depth``
    :class:`PixelBlock` refine the voxels, a second depthwise k^N convolution makes neighbours agree, and the seed's
    :class:`FinalLayer` (RMSNorm + zero Linear) makes the output exactly zero at init. ``image_depth``
    :class:`ImageBlock` (3^N) deepen the image's stem features; they read the image alone, so they are part of
    :meth:`encode_condition` (once per volume).

    Everything is local: a voxel sees its patch's token and its (k - 1)-voxel neighbourhood (k - 1 + ``image_depth``
    voxels of the image), so sliding windows stitch it as they stitch the token path. Depthwise rather than full k^N
    convolutions, run channels-last: on the CPU a full convolution of a few channels at full resolution costs as much
    as the whole token path.
    """

    def __init__(
        self,
        hidden_size: int,
        patch_size: Sequence[int],
        in_channels: int,
        cond_channels: int | None,
        out_channels: int,
        *,
        dim: int = 16,
        depth: int = 2,
        mlp_ratio: float = 4.0,
        norm: str = "layernorm",
        image_depth: int = 0,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        self.patch_size, self.dim = tuple(patch_size), dim
        if image_depth and cond_channels is None:
            raise ValueError(f"image_depth={image_depth} needs a conditioning image (cond_channels is None).")
        kernel = check_kernel("kernel", kernel)
        self.stem_x = nn.Linear(in_channels, dim)
        # the image's own projection (bias-free: encode_condition adds stem_x's bias): it does not change across
        # steps, so it can be encoded once
        self.stem_c = None if cond_channels is None else nn.Linear(cond_channels, dim, bias=False)
        self.image_blocks = nn.ModuleList(ImageBlock(dim, len(self.patch_size)) for _ in range(image_depth))
        self.stem_mix = depthwise_same(len(self.patch_size), dim, kernel)
        self.norm_tokens = make_norm(norm, hidden_size)
        # per token: a (shift, scale) pair of width D for each voxel of its patch and each block, in one matmul
        self.modulation = nn.Linear(hidden_size, math.prod(self.patch_size) * 2 * dim * depth)
        self.blocks = nn.ModuleList(PixelBlock(dim, mlp_ratio) for _ in range(depth))
        self.mix = depthwise_same(len(self.patch_size), dim, kernel)
        self.final = FinalLayer(dim, out_channels)
        self.init_weights()

    def init_weights(self) -> None:
        """PyTorch's defaults for stem, convolutions and image blocks, Xavier blocks, zero modulation (plain RMSNorm),
        zero output."""
        for layer in (self.stem_x, self.stem_c, self.stem_mix, self.mix):
            if layer is not None:
                layer.reset_parameters()
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        for block in (*self.image_blocks, *self.blocks):
            block.init_weights()
        self.final.init_weights()

    def encode_condition(self, conditioned: torch.Tensor) -> torch.Tensor:
        """The image's stem projection, through the image blocks, plus ``stem_x``'s bias (B, cond, *S) -> (B, *S, D):
        it does not change across denoising steps. In float32 under a CPU autocast, as :meth:`forward`."""
        if _cpu_autocast(conditioned):
            with torch.autocast("cpu", enabled=False):
                return self.encode_condition(conditioned.float())
        h = self.stem_c(conditioned.movedim(1, -1))  # (B, *S, D)
        for block in self.image_blocks:
            h = block(h)
        return _add_bias_(h, self.stem_x.bias)  # h is this call's own (its values are in no backward)

    def forward(
        self,
        x: torch.Tensor,
        conditioned: torch.Tensor | None,
        tokens: torch.Tensor,
        c: torch.Tensor | None,
        grid: tuple[int, ...],
        cond_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, in, *S), (B, cond, *S) or None, tokens (B, T, C), c (B, C) or None -> (B, out, *S);
        ``cond_features`` = :meth:`encode_condition` (conditioned), when the caller kept it.

        Under a CPU autocast the head's voxel work runs in float32, its output too: its per-voxel work on a few
        channels is memory-bound, and autocast's casts at each product add passes over the voxels, so float32 is the
        faster there (about 30 against 40 ms at 64^3 with 4 channels, one thread, an Intel Xeon with AMX); only the
        modulation's token-level product runs in autocast's dtype (:meth:`_blocks`), in training too. Other devices
        keep their autocast (not measured)."""
        autocast = _cpu_autocast(x)
        product_dtype = torch.get_autocast_dtype("cpu") if autocast else None
        with torch.autocast("cpu", enabled=False) if autocast else contextlib.nullcontext():
            if autocast:
                x, conditioned, tokens, c, cond_features = (
                    None if t is None else t.float() for t in (x, conditioned, tokens, c, cond_features)
                )
            h = self._stem(x, conditioned, cond_features)  # (B, *S, D)
            h = _depthwise(self.stem_mix, h, residual=True)  # h + stem_mix(h)
            if self.blocks:
                h = self._blocks(h, tokens, c, grid, product_dtype)
            h = _depthwise(self.mix, h, residual=True)  # h + mix(h): (B, *S, D)
            return self._final(h)  # (B, out, *S)

    def _blocks(
        self, h: torch.Tensor, tokens: torch.Tensor, c: torch.Tensor | None, grid: tuple[int, ...], product_dtype
    ) -> torch.Tensor:
        """The pixel blocks on the stem's voxels h (B, *S, D) under the tokens (B, T, C) and timestep c (B, C) or
        None. ``product_dtype`` (a CPU autocast's, or None): the modulation's token-level product runs in it, as
        autocast would run it (a matmul over the tokens' C channels, compute-bound where the voxel work is
        memory-bound: 0.64 against 1.36 ms for 2048 tokens of 64 channels to 512 values, one thread, an Intel Xeon
        with AMX, the copy to voxel order into float32 included); the voxel work stays in float32."""
        s = self.norm_tokens(tokens) if c is None else self.norm_tokens(tokens) + c.unsqueeze(1)  # (B, T, C)
        modulation = self._modulation()
        if product_dtype is not None:
            s, modulation = s.to(product_dtype), tuple(t.to(product_dtype) for t in modulation)
        rows = _slab_rows(h, grid, self.blocks[0].mlp.fc1.out_features)
        # without gradients the blocks write into h and the modulation maps (both this call's own)
        inplace = _may_write_in_place()
        if rows >= grid[0]:
            return self._refine(h, s, grid, modulation, inplace)
        # voxel by voxel, so slabs of token rows give exactly the whole volume's values; split, not h[:, a:b]: each
        # slice's backward would fill a zero tensor of h's whole size (16 of them at 64^3: the bundle network's
        # training step 0.71 against 0.73 CPU-s); split's backward concatenates
        row = math.prod(grid[1:])  # tokens per row of the first grid axis
        parts, conditioning = h.split(rows * self.patch_size[0], dim=1), s.split(rows * row, dim=1)
        # written in place, each slab's result is in its part of h: no concatenation copies the volume again
        slabs = [
            self._refine(part, cond, (cond.shape[1] // row, *grid[1:]), modulation, inplace)
            for part, cond in zip(parts, conditioning, strict=True)
        ]
        return h if inplace else torch.cat(slabs, dim=1)

    # The stem and the final layer below compute stem_x(x) + stem_c(image) and final(h).movedim(-1, 1) with fewer
    # passes over the voxels: a Linear of a few channels on channels-last voxels (and the copy that moves the
    # channels) costs several times its arithmetic on the CPU. Tests hold them to the plain modules' values.

    def _stem(self, x: torch.Tensor, conditioned: torch.Tensor | None, features: torch.Tensor | None) -> torch.Tensor:
        """``stem_x`` of the noisy input (B, in, *S), read channels-first by a batched matmul, plus the image's
        encoding -> (B, *S, D)."""
        b, spatial = x.shape[0], x.shape[2:]
        if self.stem_c is None:
            base = self.stem_x.bias.view(1, 1, -1)
        else:
            base = self.encode_condition(conditioned) if features is None else features
            base = base.reshape(b, -1, self.dim)
        weight = self.stem_x.weight.t().expand(b, -1, -1)  # (B, in, D)
        noisy = x.reshape(b, x.shape[1], -1).transpose(1, 2)  # (B, N, in)
        if _cpu_float32(x):  # the product, then base added in place: on the CPU ~4x faster than baddbmm (_linear)
            return torch.bmm(noisy, weight).add_(base).view(b, *spatial, self.dim)
        return torch.baddbmm(base, noisy, weight).view(b, *spatial, self.dim)

    def _final(self, h: torch.Tensor) -> torch.Tensor:
        """The seed's FinalLayer (RMSNorm with its gain, then Linear) on voxels (B, *S, D), written channels-first:
        ``(W diag(g)) h / rms(h) + bias`` -> (B, out, *S)."""
        b, spatial = h.shape[0], h.shape[1:-1]
        flat = h.reshape(b, -1, self.dim).transpose(1, 2)  # (B, D, N)
        norm, linear = self.final.norm, self.final.linear
        mean_square = _mean_square(flat, dim=-2)  # (B, 1, N)
        out = torch.matmul(linear.weight * norm.weight, flat)  # (B, out, N)
        bias = linear.bias.view(1, -1, 1)
        if not _may_write_in_place():
            out = torch.addcmul(bias, out, torch.rsqrt(mean_square + norm.eps).to(out.dtype))
        else:  # in place, the same values: three fresh maps fewer (as PixelBlock.modulated)
            out = torch.addcmul(bias, out, mean_square.add_(norm.eps).rsqrt_().to(out.dtype), out=out)
        return out.view(b, -1, *spatial)

    def _modulation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The modulation's (weight, bias), their outputs reordered from (voxel of the patch, pair, D) to (pair, voxel
        of the patch, D), with 1 added to every scale's bias: per token the Linear then gives each block's shift and
        1 + scale, and a voxel map's rows of D channels lie side by side along the patch's last axis, which makes
        the permute to voxel order copy runs of p * D values instead of D (about 9x faster; the same values)."""
        nd, pairs, weight = len(self.patch_size), 2 * len(self.blocks), self.modulation.weight
        order = [nd, *range(nd), nd + 1]
        bias = self.modulation.bias.view(*self.patch_size, pairs // 2, 2, self.dim)
        bias = bias + torch.tensor([0.0, 1.0], dtype=bias.dtype, device=bias.device).view(2, 1)
        bias = bias.reshape(*self.patch_size, pairs, self.dim).permute(order).reshape(-1)
        weight = weight.view(*self.patch_size, pairs, self.dim, -1).permute(*order, nd + 2).reshape(-1, weight.shape[1])
        return weight, bias

    def _refine(
        self,
        h: torch.Tensor,
        s: torch.Tensor,
        grid: tuple[int, ...],
        modulation: tuple[torch.Tensor, torch.Tensor],
        inplace: bool = False,
    ) -> torch.Tensor:
        """The pixel blocks on voxels (B, *S, D) under their tokens' conditioning s (B, T, C), S = grid * patch;
        ``modulation`` = :meth:`_modulation`; ``inplace``: the result is written into h
        (:meth:`PixelBlock.modulated`)."""
        b, nd, pairs = h.shape[0], len(grid), 2 * len(self.blocks)
        m = nn.functional.linear(s, *modulation).view(b, *grid, pairs, *self.patch_size, self.dim)
        order = [nd + 1, 0] + [v for a in range(nd) for v in (1 + a, nd + 2 + a)] + [2 * nd + 2]
        m = m.permute(order)
        if m.dtype != h.dtype:  # a product in autocast's dtype: the copy to voxel order casts to h's in one pass
            m = torch.empty(m.shape, dtype=h.dtype, device=h.device).copy_(m)
        m = m.reshape(pairs, *h.shape)  # (2 depth, B, *S, D): each a contiguous voxel map
        # unbind, not m[i]: each index's backward would fill a zero tensor of m's whole size (24 of a phantom model's
        # 278 ms training step went to those fills); unbind's backward stacks the gradients once
        maps = m.unbind(0)
        for k, block in enumerate(self.blocks):
            h = block.modulated(h, maps[2 * k], maps[2 * k + 1], inplace)  # (B, *S, D)
        return h


def _may_write_in_place() -> bool:
    """Whether the head may overwrite the maps it made: no gradients (a backward reads them), and no trace (a trace
    made without gradients would keep the writes for calls with them)."""
    return not torch.is_grad_enabled() and not tracing()


def _cpu_autocast(x: torch.Tensor) -> bool:
    """Whether ``x`` is on the CPU under an enabled CPU autocast."""
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def _cpu_float32(x: torch.Tensor) -> bool:
    """Whether ``x`` is a float32 CPU tensor outside autocast: where the head's faster CPU forms were measured."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


# voxels per CPU slab of the pixel blocks: SLAB_SCALE / (hidden width)^2, at least one token row. Measured on one
# thread of an Intel Xeon (2 MiB L2): the bundle's head (width 8) sampled at 64^3 in 16.7 ms a call with slabs of
# 131072 voxels, 17.9 with 32768 and 26.6 with the whole volume; the phantoms' 16-channel head (width 64) at 32^3 in
# 19.5 ms with 4096 (one token row), 22-24 with 8192 and 26-33 with 16384 or more, and its training step took 0.20
# against 0.23 CPU-s with 32768. A wide MLP wants its activations in cache, a narrow one fewer, larger calls.
SLAB_SCALE = 1 << 23


def _slab_rows(h: torch.Tensor, grid: tuple[int, ...], width: int) -> int:
    """Token rows (first grid axis) per slab of the pixel blocks on voxels ``h`` (B, *S, D) whose MLP is ``width``
    wide: on the CPU, as many as fit in ``SLAB_SCALE / width^2`` voxels, at least one. Other devices, and a trace
    (export, compile, jit) so that it holds at every size, get one slab."""
    if h.device.type != "cpu" or tracing():
        return grid[0]
    per_row = math.prod(h.shape[:-1]) // grid[0]  # voxels of one token row, the batch included
    return max(1, SLAB_SCALE // (width * width) // per_row)


def _depthwise(conv: nn.Module, h: torch.Tensor, residual: bool = False) -> torch.Tensor:
    """``conv`` on channels-last voxels (B, *S, D): the moved view is channels_last memory, PyTorch's fast layout for
    depthwise convolutions on the CPU (about 5x the default's speed); no copy either way. Where a CPU backward will
    follow (eager, float32, no autocast), :class:`_DepthwiseSame` computes the same convolution with the input's
    gradient at the forward's speed. ``residual``: ``h + conv(h)`` (a depthwise "same" ``conv``); on the CPU in float32
    as one convolution whose kernel has the identity added to its centre tap (the same values up to rounding, without
    a separate pass to add h: 2.6 against 3.3 ms at 64^3 with 4 channels on one thread); elsewhere as the sum (in
    half precision the centre tap plus one would lose the tap's low bits; other devices not measured)."""
    if residual and not _same_depthwise(conv):
        raise ValueError(f"residual=True needs a depthwise, stride-1 'same' convolution, got {conv}.")
    x = h.movedim(-1, 1)  # (B, D, *S)
    weight = conv.weight
    folded = residual and _cpu_float32(x) and weight.dtype == torch.float32
    if folded:
        weight = weight + _centre_tap(conv)
    if _fast_backward(conv, x):
        out = _DepthwiseSame.apply(x, weight, conv.bias)
    else:
        out = _conv_nd(x, weight, conv.bias) if folded else conv(x)
    out = out.movedim(1, -1)  # (B, *S, D)
    return h + out if residual and not folded else out


def _centre_tap(conv: nn.Module) -> torch.Tensor:
    """A depthwise kernel of ``conv``'s shape, one at the centre tap and zero elsewhere: the identity."""
    identity = torch.zeros_like(conv.weight)
    identity[(slice(None), 0, *(k // 2 for k in conv.kernel_size))] = 1.0
    return identity


def _fast_backward(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`_DepthwiseSame` replaces ``conv`` on ``x``: a gradient is wanted, on the CPU, in float32
    without autocast, outside any trace (export and compile record PyTorch's own convolution), for a depthwise,
    stride-1, odd-kernel convolution padded to the same size."""
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
    return wants_grad and _cpu_float32(x) and not tracing() and _same_depthwise(conv)


def _same_depthwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is depthwise, stride 1, with an odd kernel zero-padded to the input's size."""
    kernel = conv.kernel_size
    return (
        conv.groups == conv.in_channels == conv.out_channels
        and all(k % 2 for k in kernel)
        and tuple(conv.padding) == tuple(k // 2 for k in kernel)
        and set(conv.stride) == set(conv.dilation) == {1}
        and conv.padding_mode == "zeros"
    )


class _DepthwiseSame(torch.autograd.Function):
    """A depthwise convolution, stride 1 and "same" zero padding, on (B, C, *S) with weight (C, 1, *k) and a bias (C)
    or None: PyTorch's own forward and kernel gradient, and the input's gradient written out as the same convolution
    of the output's gradient with the kernel flipped, which runs at the forward's speed. PyTorch's CPU backward
    computes that gradient 4-10x slower than its forward (11 ms against 1-2.5 ms for 16 channels on 2 x 32^3 voxels,
    one thread), which made the pixel head's two convolutions a fifth of a phantom model's training step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _conv_nd(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        spatial = tuple(range(2, x.dim()))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv_nd(grad, weight.flip(spatial), None)  # the adjoint of a "same" correlation
        if ctx.needs_input_grad[1]:
            conv_weight = (nn.grad.conv2d_weight, nn.grad.conv3d_weight)[x.dim() - 4]  # PyTorch's kernel gradient
            padding = tuple(k // 2 for k in weight.shape[2:])
            grad_w = conv_weight(x, weight.shape, grad, padding=padding, groups=x.shape[1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, *spatial))
        return grad_x, grad_w, grad_b


def _conv_nd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The depthwise "same" convolution of :class:`_DepthwiseSame` on (B, C, *S), 2-D or 3-D."""
    conv = (nn.functional.conv2d, nn.functional.conv3d)[x.dim() - 4]
    return conv(x, weight, bias, padding=tuple(k // 2 for k in weight.shape[2:]), groups=x.shape[1])
