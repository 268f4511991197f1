"""A convolutional reference backbone: MONAI's ``DiffusionModelUNet`` behind the network contract.

The image conditions the U-Net by channel concatenation (``cat([x_t, image])``, as Diff-UNet and MedSegDiff's
baselines do); MONAI's network does the rest (sinusoidal time embedding, residual blocks, optional attention).
It exists so that the benchmarks can put a U-Net denoiser beside WiDiT through the very same diffusion, stitching
and file paths, and as the worked example of adding a backbone (CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from medwidit.utils import check_bool, check_int

from .contract import register_network
from .layers import WiDiTInputError

__all__ = ["DiffusionUNet"]


@register_network("diffusion_unet")
class DiffusionUNet(nn.Module):
    """``net(x_t (B, in_channels, *S), t (B,), conditioned=image (B, cond_channels, *S)) -> (B, out_channels, *S)``.

    Args:
        spatial_dim: 2 or 3.
        in_channels: channels of the noisy input (K classes).
        cond_channels: image channels (modalities).
        out_channels: output channels; None means ``in_channels`` (no learned variance).
        channels: features per level; the input must be divisible by ``2 ** (len(channels) - 1)``.
        attention_levels: self-attention per level (off by default). MONAI's middle block always attends over the
            whole coarsest grid, so unlike WiDiT this network is not local: stitched windows approximate a whole
            volume run rather than equal it.
        num_res_blocks, norm_num_groups, num_head_channels: as MONAI's ``DiffusionModelUNet``.
    """

    def __init__(
        self,
        *,
        spatial_dim: int,
        in_channels: int,
        cond_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] | None = None,
        num_res_blocks: int = 1,
        norm_num_groups: int = 16,
        num_head_channels: int = 8,
    ) -> None:
        super().__init__()
        spatial_dim = check_int("spatial_dim", spatial_dim, low=2, high=3)
        in_channels, cond_channels = check_int("in_channels", in_channels), check_int("cond_channels", cond_channels)
        out_channels = in_channels if out_channels is None else check_int("out_channels", out_channels)
        attention_levels = [False] * len(channels) if attention_levels is None else list(attention_levels)
        self.config: dict[str, Any] = {
            "spatial_dim": spatial_dim,
            "in_channels": in_channels,
            "cond_channels": cond_channels,
            "out_channels": out_channels,
            "channels": [int(c) for c in channels],
            "attention_levels": [check_bool(f"attention_levels[{i}]", a) for i, a in enumerate(attention_levels)],
            "num_res_blocks": num_res_blocks,
            "norm_num_groups": norm_num_groups,
            "num_head_channels": num_head_channels,
        }
        self.spatial_dim = spatial_dim
        self.in_channels, self.cond_channels, self.out_channels = in_channels, cond_channels, out_channels
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dim,
            in_channels=in_channels + cond_channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            channels=self.config["channels"],
            attention_levels=self.config["attention_levels"],
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Each level halves the grid: every axis must be a multiple of 2^(levels - 1)."""
        return (2 ** (len(self.config["channels"]) - 1),) * self.spatial_dim

    @property
    def alignment(self) -> tuple[int, ...]:
        """Windows starting on multiples of the down-sampling factor pool the same voxels as the whole volume."""
        return self.size_multiple

    def forward(self, input_tensor: torch.Tensor, timestep: torch.Tensor, *, conditioned: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S), (B,), conditioned (B, cond_channels, *S) -> (B, out_channels, *S)."""
        if conditioned is None:
            raise WiDiTInputError("conditioned is required: DiffusionUNet is conditioned on the image.")
        if input_tensor.dim() != self.spatial_dim + 2 or input_tensor.shape[1] != self.in_channels:
            raise ValueError(
                f"input_tensor must be (B, {self.in_channels}, *spatial) with {self.spatial_dim} spatial axes, "
                f"got {tuple(input_tensor.shape)}."
            )
        expected = (input_tensor.shape[0], self.cond_channels, *input_tensor.shape[2:])
        if tuple(conditioned.shape) != expected:
            raise WiDiTInputError(f"conditioned must have shape {expected}, got {tuple(conditioned.shape)}.")
        if timestep is None:
            raise ValueError("DiffusionUNet needs a timestep (B,); it has no unconditioned-on-time mode.")
        for axis, (size, multiple) in enumerate(zip(input_tensor.shape[2:], self.size_multiple, strict=True)):
            if size % multiple:
                raise ValueError(f"input_tensor axis {axis} has {size} voxels, not a multiple of {multiple}.")
        timestep = torch.as_tensor(timestep, device=input_tensor.device)
        if timestep.dim() > 1 or timestep.numel() not in (1, input_tensor.shape[0]):
            raise ValueError(
                f"timestep must be a scalar or have shape ({input_tensor.shape[0]},), got {tuple(timestep.shape)}."
            )
        timestep = timestep.reshape(-1).expand(input_tensor.shape[0])
        return self.unet(torch.cat([input_tensor, conditioned.to(input_tensor.dtype)], dim=1), timestep)
