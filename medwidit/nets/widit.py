"""WiDiT: a 2D/3D windowed diffusion transformer (DiT with Swin windows), its presets and checkpoints.

No absolute position anywhere: position lives inside windows (relative bias or rotary), so a network trained on
crops runs on any size divisible by its patch.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medwidit.utils import atomic_write, check_bool, check_int, check_options, check_per_axis, choose, is_integer

from .attention import ATTENTIONS, POSITIONS
from .blocks import FINALS, HEADS, PixelHead, WiDiTBlock, WiDiTFinalLayer, check_kernel
from .contract import register_network
from .embed import EMBEDS, ConvPatchEmbed, PatchEmbed, TimestepEmbedder, check_divisible, weight_dtype
from .layers import MLPS, NORMS, WiDiTInputError, tracing

logger = logging.getLogger(__name__)

CONDITIONINGS = ("embed", "concat")  # image embedded on its own (hidden split in two), or channels of the one input
# per head (HEADS): the WiDiT options only it reads, and the module (attribute) that is it; what a fine-tune under a
# new head (medwidit.training.initial_weights(new_head=True)) leaves as built
HEAD_OPTIONS = {
    "patch": ("final",),
    "pixel": ("pixel_dim", "pixel_depth", "pixel_mlp_ratio", "pixel_image_depth", "pixel_kernel"),
}
HEAD_MODULES = {"patch": "final_layer", "pixel": "pixel_head"}

#################################################################################
#                                 Validation                                    #
#################################################################################


def _count(name: str, value) -> int:
    """``value`` as a plain positive int (numpy's too: a config must save as JSON and load with ``weights_only``),
    else a ValueError naming ``name`` (a float such as 2.0 is refused, not truncated)."""
    if not is_integer(value):
        raise ValueError(f"{name} must be an int, got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}.")
    return int(value)


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:  # numpy too
        raise ValueError(f"{name} must be positive, got {value}.")


def _check_widit_sizes(spatial_dim: int, hidden_size: int, num_heads: int, **positive: float) -> None:
    """The seed's size rules: 2D or 3D, hidden even and divisible by heads, and positive counts."""
    if spatial_dim not in (2, 3):
        raise ValueError(f"spatial_dim must be 2 or 3, got {spatial_dim}.")
    for name, value in {"num_heads": num_heads, **positive}.items():
        _positive(name, value)
    if hidden_size <= 0 or hidden_size % 2:
        raise ValueError(f"hidden_size must be positive and even, got {hidden_size}.")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size must be divisible by num_heads, got {hidden_size} and {num_heads}.")


#################################################################################
#                          Acquisition conditioning                             #
#################################################################################


class SpacingEmbedder(nn.Module):
    """Spacings (B, 2N) in mm (working grid's N axes, then the acquisition's original N) -> (B, hidden) added to the
    timestep embedding: log-spacing, Linear -> SiLU -> Linear; the last layer starts at zero (adaLN-Zero's habit), so
    a new model starts as one without it."""

    def __init__(self, spatial_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.spatial_dim = spatial_dim
        self.mlp = nn.Sequential(
            nn.Linear(2 * spatial_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.zeros_(self.mlp[0].bias)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, spacing: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=spacing.device.type, enabled=False):  # log of mm in float32, as time is
            return self.mlp(spacing.float().log().to(weight_dtype(self.mlp[0])))  # (B, hidden); a cast model's dtype


#################################################################################
#                                    WiDiT                                      #
#################################################################################


@register_network("widit")
class WiDiT(nn.Module):
    """Windowed diffusion transformer for (B, C, H, W) images or (B, C, D, H, W) volumes.

    ``forward(x, t, conditioned=image)``: the noisy input and the conditioning image are patch-embedded to
    ``hidden_size / 2`` each (``embed="patch"``: one linear map per patch; ``"conv"``: a stride-2 convolutional stem,
    :class:`ConvPatchEmbed`) and concatenated; ``depth`` blocks alternate plain and shifted windows; the final layer
    maps tokens back to voxels. ``timestep=None`` turns off adaLN everywhere (plain LayerNorm + residual).
    ``conditioning="concat"`` instead concatenates the image to the noisy input along channels before one embedding of
    the full width (STDiT's ``cond_image``, SegDiT's ``segmentation``). ``spacing_conditioning=True`` makes
    ``forward(..., spacing=(B, 2 * spatial_dim))`` required: :class:`SpacingEmbedder` adds it to the adaLN input
    (to the timestep embedding, or alone when ``timestep=None``).

    ``head="pixel"`` replaces the final layer by :class:`PixelHead` (PixelDiT): a full-resolution pathway of width
    ``pixel_dim`` and ``pixel_depth`` blocks (hidden width ``pixel_mlp_ratio * pixel_dim``), modulated per voxel by
    its patch's token, so outputs are not tied to the patch grid; its modulation comes from the tokens even without
    a timestep. ``pixel_image_depth`` N > 0 deepens the image's voxel features by N residual depthwise-separable
    convolutions (:class:`ImageBlock`): they read the image alone, so :meth:`encode_condition` computes them once per
    volume and no denoising step pays for them. ``pixel_kernel`` k (odd) is the side of the head's two depthwise
    convolutions (k^N; the patch head takes only the default 3): each voxel's output sees (k - 1) voxels of
    full-resolution context each way. On the phantoms' thin tubes 5 scored above 3 in one run per budget, and level
    with it in a paired run; on the brain bundle's head it raised sampling from 1.34 to 1.55 times the patch head's
    (``benchmarks/README.md``).
    """

    def __init__(
        self,
        *,
        spatial_dim: int,
        patch_size: int | Sequence[int] = 2,
        in_channels: int = 1,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        window_size: int | Sequence[int] = 8,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = True,
        use_conditioning: bool = True,
        cond_channels: int | None = None,
        out_channels: int | None = None,
        mlp: str = "gelu",
        norm: str = "layernorm",
        final: str = "linear",
        embed: str = "patch",
        position: str = "relative",
        attention: str = "window",
        grad_checkpointing: bool = False,
        conditioning: str = "embed",
        spacing_conditioning: bool = False,
        head: str = "patch",
        pixel_dim: int = 16,
        pixel_depth: int = 2,
        pixel_mlp_ratio: float = 4.0,
        pixel_image_depth: int = 0,
        pixel_kernel: int = 3,
    ) -> None:
        super().__init__()
        spatial_dim, in_channels, hidden_size, depth, num_heads = (
            _count(name, value)
            for name, value in (
                ("spatial_dim", spatial_dim),
                ("in_channels", in_channels),
                ("hidden_size", hidden_size),
                ("depth", depth),
                ("num_heads", num_heads),
            )
        )
        cond_channels = None if cond_channels is None else _count("cond_channels", cond_channels)
        out_channels = None if out_channels is None else _count("out_channels", out_channels)
        _check_widit_sizes(
            spatial_dim, hidden_size, num_heads, in_channels=in_channels, depth=depth, mlp_ratio=mlp_ratio
        )
        use_conditioning, learn_sigma = (
            check_bool("use_conditioning", use_conditioning),
            check_bool("learn_sigma", learn_sigma),
        )
        if cond_channels is not None and not use_conditioning:
            raise ValueError(f"cond_channels={cond_channels} needs use_conditioning=True.")
        conditioning = choose("conditioning", conditioning, CONDITIONINGS)
        if conditioning == "concat" and not use_conditioning:
            raise ValueError("conditioning='concat' needs use_conditioning=True (there is no image to concatenate).")
        cond_channels = (in_channels if cond_channels is None else cond_channels) if use_conditioning else None
        out_channels = in_channels * (2 if learn_sigma else 1) if out_channels is None else out_channels
        _positive("out_channels", out_channels)
        if cond_channels is not None:
            _positive("cond_channels", cond_channels)
        _positive("pixel_mlp_ratio", pixel_mlp_ratio)
        self.config: dict[str, Any] = {
            "spatial_dim": spatial_dim,
            "patch_size": list(check_per_axis("patch_size", patch_size, spatial_dim)),
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "window_size": list(check_per_axis("window_size", window_size, spatial_dim)),
            "mlp_ratio": float(mlp_ratio),
            "learn_sigma": learn_sigma,
            "use_conditioning": use_conditioning,
            "cond_channels": cond_channels,
            "out_channels": out_channels,
            "mlp": choose("mlp", mlp, MLPS),
            "norm": choose("norm", norm, NORMS),
            "final": choose("final", final, FINALS),
            "embed": choose("embed", embed, EMBEDS),
            "position": choose("position", position, POSITIONS),
            "attention": choose("attention", attention, ATTENTIONS),
            "grad_checkpointing": check_bool("grad_checkpointing", grad_checkpointing),
            "conditioning": conditioning,
            "spacing_conditioning": check_bool("spacing_conditioning", spacing_conditioning),
            "head": choose("head", head, HEADS),
            "pixel_dim": check_int("pixel_dim", pixel_dim),
            "pixel_depth": check_int("pixel_depth", pixel_depth),  # >= 1: the tokens reach voxels through it
            "pixel_mlp_ratio": float(pixel_mlp_ratio),
            "pixel_image_depth": check_int("pixel_image_depth", pixel_image_depth, low=0),
            "pixel_kernel": check_kernel("pixel_kernel", pixel_kernel),
        }
        if self.config["pixel_image_depth"] and (self.config["head"] != "pixel" or not use_conditioning):
            raise ValueError(
                f"pixel_image_depth={pixel_image_depth} needs head='pixel' and use_conditioning=True "
                f"(got head={head!r}, use_conditioning={use_conditioning})."
            )
        if self.config["pixel_kernel"] != 3 and self.config["head"] != "pixel":  # it would build nothing
            raise ValueError(f"pixel_kernel={pixel_kernel} needs head='pixel' (got head={head!r}).")
        self.spatial_dim = spatial_dim
        self.patch_size = tuple(self.config["patch_size"])
        self.in_channels, self.cond_channels, self.out_channels = in_channels, cond_channels, out_channels
        self.use_conditioning = self.config["use_conditioning"]
        self.grad_checkpointing = self.config["grad_checkpointing"]
        self._build()

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """Every input axis must be a multiple of the patch."""
        return self.patch_size

    @property
    def alignment(self) -> tuple[int, ...]:
        """Patch x attention window: windows starting on its multiples see the whole volume's token windows."""
        return tuple(p * w for p, w in zip(self.patch_size, self.config["window_size"], strict=True))

    def _build(self) -> None:
        cfg = self.config
        split = self.use_conditioning and cfg["conditioning"] == "embed"  # else one embedding of [x, image] or x
        hidden, embed = cfg["hidden_size"], cfg["hidden_size"] // (2 if split else 1)
        embedder = {"patch": PatchEmbed, "conv": ConvPatchEmbed}[cfg["embed"]]
        x_channels = self.in_channels + (self.cond_channels if self.use_conditioning and not split else 0)
        self.x_embedder = embedder(x_channels, embed, self.patch_size, self.spatial_dim)
        self.c_embedder = embedder(self.cond_channels, embed, self.patch_size, self.spatial_dim) if split else None
        self.t_embedder = TimestepEmbedder(hidden)
        self.s_embedder = SpacingEmbedder(self.spatial_dim, hidden) if cfg["spacing_conditioning"] else None
        options = {key: cfg[key] for key in ("mlp_ratio", "mlp", "norm", "position", "attention")}
        self.blocks = nn.ModuleList(
            WiDiTBlock(hidden, cfg["num_heads"], cfg["window_size"], shifted=i % 2 == 1, **options)
            for i in range(cfg["depth"])
        )
        norm, channels = cfg["norm"], (self.in_channels, self.cond_channels, self.out_channels)
        self.final_layer = self.pixel_head = None
        if cfg["head"] == "pixel":
            sizes = {"dim": cfg["pixel_dim"], "depth": cfg["pixel_depth"], "mlp_ratio": cfg["pixel_mlp_ratio"]}
            sizes.update(image_depth=cfg["pixel_image_depth"], kernel=cfg["pixel_kernel"])
            self.pixel_head = PixelHead(hidden, self.patch_size, *channels, **sizes, norm=norm)
        else:
            self.final_layer = WiDiTFinalLayer(hidden, self.patch_size, channels[2], norm=norm, final=cfg["final"])

    def init_weights(self) -> None:
        """Every component's own init: Xavier projections, Normal(0.02) timestep MLP, adaLN-Zero blocks and head."""
        heads = (self.final_layer, self.pixel_head)  # one of them is None
        for module in (self.x_embedder, self.c_embedder, self.t_embedder, self.s_embedder, *self.blocks, *heads):
            if module is not None:
                module.init_weights()

    #############################################################################
    #                                 Forward                                   #
    #############################################################################

    def _check_inputs(
        self, x: torch.Tensor, timestep: torch.Tensor | None, conditioned: torch.Tensor | None
    ) -> torch.Tensor | None:
        if x.dim() != self.spatial_dim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input_tensor must be (B, {self.in_channels}, *spatial) with {self.spatial_dim} spatial axes, "
                f"got {tuple(x.shape)}."
            )
        check_divisible("input_tensor", x.shape[2:], self.patch_size)
        weights = next(self.x_embedder.parameters()).dtype  # a convolution: dynamic quantisation keeps it float
        for name, tensor in (("input_tensor", x), ("conditioned", conditioned)):
            if tensor is not None and tensor.dtype != weights and not torch.is_autocast_enabled(tensor.device.type):
                raise WiDiTInputError(
                    f"{name} is {tensor.dtype} but the network's weights are {weights}: cast the input "
                    f"(e.g. .to({weights})) or the network, or run under torch.autocast."
                )
        if self.use_conditioning and conditioned is None:
            raise WiDiTInputError("conditioned is required: this WiDiT was built with use_conditioning=True.")
        if not self.use_conditioning and conditioned is not None:
            raise WiDiTInputError("conditioned was given, but this WiDiT was built with use_conditioning=False.")
        if conditioned is not None:
            expected = (x.shape[0], self.cond_channels, *x.shape[2:])
            if tuple(conditioned.shape) != expected:
                raise WiDiTInputError(f"conditioned must have shape {expected}, got {tuple(conditioned.shape)}.")
        if timestep is None:
            return None
        timestep = torch.as_tensor(timestep, device=x.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(x.shape[0])
        if tuple(timestep.shape) != (x.shape[0],):
            raise ValueError(f"timestep must be a scalar or have shape ({x.shape[0]},), got {tuple(timestep.shape)}.")
        return timestep

    def _check_spacing(self, x: torch.Tensor, spacing: torch.Tensor | None) -> torch.Tensor | None:
        if self.s_embedder is None:
            if spacing is not None:
                raise WiDiTInputError("spacing was given, but this WiDiT was built with spacing_conditioning=False.")
            return None
        expected = (x.shape[0], 2 * self.spatial_dim)  # working grid's spacing per axis, then the acquisition's
        if spacing is None:
            raise WiDiTInputError(f"spacing {expected} is required: this WiDiT has spacing_conditioning=True.")
        spacing = torch.as_tensor(spacing, dtype=torch.float32, device=x.device)
        if tuple(spacing.shape) != expected:
            raise WiDiTInputError(f"spacing must have shape {expected} (grid, then acquisition), got {spacing.shape}.")
        if tracing():  # a check on values: export cannot guard on data (it failed to trace); eager calls check
            return spacing
        if not bool((spacing > 0).all()) or not bool(spacing.isfinite().all()):
            raise WiDiTInputError(f"spacing must be positive finite mm, got {spacing.tolist()}.")
        return spacing

    def encode_condition(self, conditioned: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parts of the forward pass that read only the image (B, cond_channels, *S), computed once and passed
        back as ``forward(..., condition_cache=...)`` by every step: ``"tokens"`` (B, T, C/2) with
        ``conditioning="embed"``, ``"pixel"`` (B, *S, pixel_dim) with ``head="pixel"`` (DESIGN decision 11)."""
        if not self.use_conditioning:
            raise WiDiTInputError("encode_condition needs a WiDiT built with use_conditioning=True.")
        spatial = tuple(conditioned.shape[2:])
        if conditioned.dim() != self.spatial_dim + 2 or conditioned.shape[1] != self.cond_channels:
            raise WiDiTInputError(
                f"conditioned must be (B, {self.cond_channels}, *spatial) with {self.spatial_dim} spatial axes, "
                f"got {tuple(conditioned.shape)}."
            )
        check_divisible("conditioned", spatial, self.patch_size)
        cache = {}
        if self.c_embedder is not None:
            cache["tokens"] = self.c_embedder(conditioned)  # (B, T, C/2)
        if self.pixel_head is not None and self.pixel_head.stem_c is not None:
            cache["pixel"] = self.pixel_head.encode_condition(conditioned)  # (B, *S, D)
        return cache

    def _check_cache(self, conditioned: torch.Tensor, cache: dict[str, torch.Tensor] | None) -> dict:
        """``condition_cache`` must hold exactly what :meth:`encode_condition` makes for ``conditioned``'s shape."""
        if cache is None:
            return {}
        b, spatial = conditioned.shape[0], tuple(conditioned.shape[2:])
        tokens = math.prod(s // p for s, p in zip(spatial, self.patch_size, strict=True))
        expected = {}
        if self.c_embedder is not None:
            expected["tokens"] = (b, tokens, self.config["hidden_size"] // 2)
        if self.pixel_head is not None and self.pixel_head.stem_c is not None:
            expected["pixel"] = (b, *spatial, self.config["pixel_dim"])
        shapes = {key: tuple(value.shape) for key, value in cache.items()} if isinstance(cache, dict) else cache
        if shapes != expected:
            raise WiDiTInputError(
                f"condition_cache must be encode_condition(conditioned), shapes {expected}, got {shapes}."
            )
        return cache

    @staticmethod
    def _mask_table(table: dict | None, batch: int) -> dict:
        """The attention-mask table of a call: the caller's, or a new one without it or under a trace (its tensors
        must not outlive the trace). A kept table serves one batch size (the layers check the token grid)."""
        if table is None or tracing():
            return {}
        if table.setdefault("batch", batch) != batch:
            raise WiDiTInputError(
                f"attention_masks holds the masks of batch size {table['batch']}, not {batch}: pass a new dict."
            )
        return table

    def forward(
        self,
        input_tensor: torch.Tensor,
        timestep: torch.Tensor | None = None,
        *,
        conditioned: torch.Tensor | None = None,
        spacing: torch.Tensor | None = None,
        condition_cache: dict[str, torch.Tensor] | None = None,
        attention_masks: dict | None = None,
    ) -> torch.Tensor:
        """(B, in_channels, *S), (B,) or None, conditioned (B, cond_channels, *S), spacing (B, 2N) mm with
        ``spacing_conditioning``, ``condition_cache`` = :meth:`encode_condition` (conditioned) -> (B, out_channels,
        *S); the cache gives exactly the output computed without it. ``attention_masks``: a dict, empty at first,
        that keeps the attention masks for later calls of the same input shape (``ConditionCache`` passes one per
        shape); without it they are built for this call alone, and a trace (export, compile, jit) never keeps them."""
        timestep = self._check_inputs(input_tensor, timestep, conditioned)
        spacing = self._check_spacing(input_tensor, spacing)
        if condition_cache is not None and conditioned is None:
            raise WiDiTInputError("condition_cache was given without conditioned (the image it encodes).")
        cache = self._check_cache(conditioned, condition_cache) if conditioned is not None else {}
        grid = tuple(s // p for s, p in zip(input_tensor.shape[2:], self.patch_size, strict=True))  # token grid G
        noisy = input_tensor  # the pixel head reads it alone, whatever the token path's conditioning
        if self.use_conditioning and self.c_embedder is None:  # conditioning="concat"
            input_tensor = torch.cat([input_tensor, conditioned], dim=1)  # (B, C_in + C_cond, *S)
        x = self.x_embedder(input_tensor)  # (B, T, C or C/2), T = prod(G)
        if self.c_embedder is not None:
            image_tokens = cache["tokens"] if "tokens" in cache else self.c_embedder(conditioned)  # (B, T, C/2)
            x = torch.cat([x, image_tokens], dim=-1)  # (B, T, C)
        c = None if timestep is None else self.t_embedder(timestep)  # (B, C)
        if self.s_embedder is not None:
            s = self.s_embedder(spacing)  # (B, C)
            c = s if c is None else c + s
        masks = self._mask_table(attention_masks, input_tensor.shape[0])  # each window layout's mask, built once
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, grid, masks, use_reentrant=False)
            else:
                x = block(x, c, grid, masks)  # (B, T, C)
        if self.pixel_head is not None:
            return self.pixel_head(noisy, conditioned, x, c, grid, cond_features=cache.get("pixel"))  # (B, out, *S)
        return self.final_layer(x, c, grid)  # (B, out_channels, *S)


#################################################################################
#                           Checkpoints: {state_dict, config}                   #
#################################################################################


def save_widit(model: WiDiT, path: str | os.PathLike) -> None:
    """Write ``{"state_dict", "config", "version"}`` atomically (temporary file in the same folder, then rename)."""
    from medwidit import __version__  # late: the top-level package may import the rooms above this one

    payload = {"state_dict": model.state_dict(), "config": dict(model.config), "version": __version__}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_widit(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> WiDiT:
    """Rebuild a WiDiT from a :func:`save_widit` checkpoint alone (``torch.load(weights_only=True)``)."""
    target = map_location if isinstance(map_location, (str, torch.device)) else None  # else torch.load's mapping
    checkpoint_ = torch.load(os.fspath(path), map_location=map_location if target is None else "cpu", weights_only=True)
    if not isinstance(checkpoint_, dict) or not {"state_dict", "config"} <= checkpoint_.keys():
        raise ValueError(f"{path} is not a WiDiT checkpoint: expected a dict with 'state_dict' and 'config'.")
    if {"net", "segmenter"} <= set(checkpoint_["config"]):
        raise ValueError(
            f"{path} is a diffusion segmenter's checkpoint, not a bare WiDiT's: load it with "
            "medwidit.diffusion.load_segmenter (its .net is the WiDiT)."
        )
    model = WiDiT(**check_options(WiDiT, checkpoint_["config"], f"{path}: config"))
    model.load_state_dict(checkpoint_["state_dict"])  # into a model built on the CPU: moved where asked after
    if target is not None:
        model = model.to(target)
    logger.info("loaded WiDiT from %s (version %s)", path, checkpoint_.get("version"))
    return model


#################################################################################
#                         Presets named after SiT's table                       #
#################################################################################

_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}  # depth, hidden, heads
PRESETS: dict[str, dict[str, int]] = {
    f"WiDiT-{size}/{patch}": {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": patch}
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}


def widit_preset(name: str, **overrides: Any) -> WiDiT:
    """The preset ``name`` (e.g. "WiDiT-S/2") with ``overrides`` (``spatial_dim`` is required) on top."""
    return WiDiT(**{**choose("name", name, PRESETS), **overrides})
