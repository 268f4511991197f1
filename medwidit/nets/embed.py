"""Embeddings in and out of token space: PatchEmbed, ConvPatchEmbed, Unpatchify (transposed conv), TimestepEmbedder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.utils import ensure_tuple_rep
from torch import nn

from medwidit.utils import choose

from .layers import WiDiTInputError

UNPATCHIFY_INITS = ("default", "zeros", "fan_in")
EMBEDS = ("patch", "conv")  # WiDiT(embed=...): one linear projection per patch, or a stride-2 convolutional stem


def check_divisible(name: str, spatial: Sequence[int], patch: Sequence[int]) -> None:
    """Raise ValueError unless every spatial size of ``name`` is a multiple of the patch on that axis."""
    for axis, (s, p) in enumerate(zip(spatial, patch, strict=True)):
        if s % p:
            raise ValueError(
                f"{name} has spatial size {s} on axis {axis}, which is not divisible by patch_size {p} on that axis "
                f"(spatial shape {tuple(spatial)}, patch_size {tuple(patch)}); pad or crop it to a multiple first."
            )


#################################################################################
#                                Patch embedding                                #
#################################################################################


class PatchEmbed(nn.Module):
    """(B, C, *S) -> (B, T, hidden) tokens by a Conv{N}d with kernel = stride = patch, T = prod(S / patch)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: Sequence[int] | int, spatial_dim: int) -> None:
        super().__init__()
        self.patch_size = ensure_tuple_rep(patch_size, spatial_dim)
        conv = (nn.Conv2d, nn.Conv3d)[spatial_dim - 2]
        self.proj = conv(in_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier on the flattened kernel, as a Linear over the patch (DiT)."""
        w = self.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible("input", x.shape[2:], self.patch_size)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T, hidden)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each voxel of (B, C, *S): local statistics only, unlike batch or instance norm,
    so a sliding window computes what the whole volume computes away from its border."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ConvPatchEmbed(nn.Module):
    """(B, C, *S) -> (B, T, hidden) tokens by an early-convolution stem (Xiao et al. 2021, "Early convolutions help
    transformers see better") instead of one linear map per patch.

    Each factor 2 of the patch is one stage: a 3^N convolution with stride 2 on the axes still to be reduced (1 on
    the others), :class:`ChannelLayerNorm` and GELU, the width doubling up to ``hidden_size / 2``; a 1^N convolution
    projects to ``hidden_size``. The token grid is the same as :class:`PatchEmbed`'s, but a token sees its patch's
    neighbourhood through non-linear filters, not a single linear function of its own voxels' intensities. Patch
    sizes must be powers of two (a patch of 1 is one stride-1 stage).

    The neighbourhood is lopsided: with kernel 3, stride 2 and padding 1, a 4-voxel patch's token reads 3 voxels
    before the patch and none after it (tested in ``test_conv_embed``); the attention that follows mixes in the
    neighbours. A kernel of 4 would centre it; the shipped bundle's weights were trained with this stem, so changing
    it means retraining them.
    """

    def __init__(self, in_channels: int, hidden_size: int, patch_size: Sequence[int] | int, spatial_dim: int) -> None:
        super().__init__()
        self.patch_size = ensure_tuple_rep(patch_size, spatial_dim)
        if any(p < 1 or p & (p - 1) for p in self.patch_size):
            raise ValueError(f"embed='conv' needs power-of-two patch sizes, got patch_size {self.patch_size}.")
        conv = (nn.Conv2d, nn.Conv3d)[spatial_dim - 2]
        factors = [int(math.log2(p)) for p in self.patch_size]
        num_stages = max(1, *factors)
        layers: list[nn.Module] = []
        width_in = in_channels
        for stage in range(num_stages):
            width = max(hidden_size // 2 ** (num_stages - stage), 8)
            stride = tuple(2 if factor > stage else 1 for factor in factors)
            layers += [conv(width_in, width, 3, stride=stride, padding=1), ChannelLayerNorm(width), nn.GELU()]
            width_in = width
        self.stem = nn.Sequential(*layers)
        self.proj = conv(width_in, hidden_size, kernel_size=1)
        self.init_weights()

    def init_weights(self) -> None:
        """PyTorch's default for the stem convolutions and unit norms; Xavier and zero bias on the projection."""
        for module in self.stem.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.LayerNorm)):
                module.reset_parameters()
        w = self.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible("input", x.shape[2:], self.patch_size)
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (B, T, hidden)


#################################################################################
#                    Unpatchify: tokens back to voxels                          #
#################################################################################


class Unpatchify(nn.Module):
    """Trainable inverse of patch embedding: a ConvTranspose{N}d with kernel = patch, step = ``stride``.

    Channels-last in and out: [B, *grid, in_features] -> [B, *spatial, out_features], each axis growing to
    ``(s - 1) * stride + patch`` (``s * patch`` for the default ``stride = patch``) unless ``output_spatial_shape``
    names the size. ``weight_init``: "default" (PyTorch's, fan from out_features), "zeros" (exactly zero output,
    DiT-style), "fan_in" (Kaiming-uniform bound ``1/sqrt(in_features * prod(patch))`` on weight and bias).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        data_dim: int,
        patch_size: Sequence[int] | int,
        stride: Sequence[int] | int | None = None,
        bias: bool = True,
        weight_init: str = "default",
    ) -> None:
        super().__init__()
        if data_dim not in (1, 2, 3):
            raise ValueError(f"data_dim must be 1, 2 or 3, got {data_dim}.")
        self.data_dim = data_dim
        self.patch_size = ensure_tuple_rep(patch_size, data_dim)
        self.stride = self.patch_size if stride is None else ensure_tuple_rep(stride, data_dim)
        if any(s < 1 or s > p for s, p in zip(self.stride, self.patch_size, strict=True)):
            raise ValueError(f"stride must be in [1, patch_size] per axis, got {self.stride} for {self.patch_size}.")
        self.weight_init = choose("weight_init", weight_init, UNPATCHIFY_INITS)
        deconv = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[data_dim - 1]
        self.deconv = deconv(in_features, out_features, self.patch_size, stride=self.stride, bias=bias)
        self.init_weights()

    def init_weights(self) -> None:
        if self.weight_init == "default":
            self.deconv.reset_parameters()
            return
        if self.weight_init == "zeros":
            bound = 0.0
        else:  # "fan_in": the true fan-in of each output voxel is in_features * prod(patch)
            bound = 1.0 / math.sqrt(self.deconv.in_channels * math.prod(self.patch_size))
        nn.init.uniform_(self.deconv.weight, -bound, bound)
        if self.deconv.bias is not None:
            nn.init.uniform_(self.deconv.bias, -bound, bound)

    def forward(self, x: torch.Tensor, output_spatial_shape: Sequence[int] | None = None) -> torch.Tensor:
        if x.dim() != self.data_dim + 2:
            raise WiDiTInputError(
                f"Unpatchify expects x of rank {self.data_dim + 2} [B, *grid, C], got shape {tuple(x.shape)}."
            )
        if output_spatial_shape is not None and len(output_spatial_shape) != self.data_dim:
            raise ValueError(f"output_spatial_shape must have {self.data_dim} entries, got {output_spatial_shape}.")
        x = x.movedim(-1, 1).contiguous()  # (B, C, *grid)
        size = None if output_spatial_shape is None else [int(s) for s in output_spatial_shape]
        x = self.deconv(x, output_size=size)  # (B, C_out, *S)
        return x.movedim(1, -1).contiguous()  # (B, *S, C_out)


#################################################################################
#                               Timestep embedding                              #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Scalar timesteps (B,) -> (B, hidden): float32 sinusoids, then Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.init_weights()

    def init_weights(self) -> None:
        for linear in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """(B,) -> (B, dim) ``[cos(t f), sin(t f)]``, ``f_i = max_period ** (-i / half)`` (DiT), always float32.

        MONAI's ``get_timestep_embedding`` computes exactly this (tested bit for bit); autocast is off around it
        (DESIGN 7) and the time is cast to float32 before it.
        """
        with torch.autocast(device_type=t.device.type, enabled=False):
            return get_timestep_embedding(t.float(), dim, max_period=max_period)  # (B, dim) float32

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.timestep_embedding(t, self.frequency_embedding_size)  # (B, F) float32
        # in the weights' dtype: float32 unless the model itself was cast (a half-precision model failed here)
        return self.mlp(freq.to(weight_dtype(self.mlp[0])))  # (B, hidden)


def weight_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype of ``layer``'s weight; float32 where its weight is not a tensor (a dynamically quantised Linear's is
    a method)."""
    return getattr(layer.weight, "dtype", torch.float32)
