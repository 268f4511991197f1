"""medwidit.nets: the backbones (know nothing about diffusion), their contract and the registry by name."""

from .attention import FactorizedAttention, WindowAttention
from .blocks import ImageBlock, PixelBlock, PixelHead, WiDiTBlock, WiDiTFinalLayer
from .contract import NETWORKS, DenoisingNetwork, build_network, network_name, register_network
from .embed import ConvPatchEmbed, PatchEmbed, TimestepEmbedder, Unpatchify
from .layers import FinalLayer, Mlp, PixelMLP, SwiGLU, WiDiTInputError, modulate
from .unet import DiffusionUNet
from .widit import PRESETS, SpacingEmbedder, WiDiT, load_widit, save_widit, widit_preset

__all__ = [
    "NETWORKS",
    "PRESETS",
    "DenoisingNetwork",
    "ConvPatchEmbed",
    "DiffuserWiDiT",
    "DiffuserWiDiTOutput",
    "DiffusionUNet",
    "FactorizedAttention",
    "FinalLayer",
    "ImageBlock",
    "Mlp",
    "PatchEmbed",
    "PixelBlock",
    "PixelHead",
    "PixelMLP",
    "SpacingEmbedder",
    "SwiGLU",
    "TimestepEmbedder",
    "Unpatchify",
    "WiDiT",
    "WiDiTBlock",
    "WiDiTFinalLayer",
    "WiDiTInputError",
    "WindowAttention",
    "build_network",
    "load_widit",
    "modulate",
    "network_name",
    "register_network",
    "save_widit",
    "widit_preset",
]


def __getattr__(name: str):
    """``DiffuserWiDiT`` and its output load on first use: importing diffusers costs seconds (PEP 562)."""
    if name in ("DiffuserWiDiT", "DiffuserWiDiTOutput"):
        from . import diffusers

        return getattr(diffusers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
