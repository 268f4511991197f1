"""medwidit.nets: the WiDiT backbone (knows nothing about diffusion)."""

from .attention import FactorizedAttention, WindowAttention
from .blocks import PixelBlock, PixelHead, WiDiTBlock, WiDiTFinalLayer
from .embed import ConvPatchEmbed, PatchEmbed, TimestepEmbedder, Unpatchify
from .layers import FinalLayer, Mlp, PixelMLP, SwiGLU, WiDiTInputError, modulate
from .widit import PRESETS, WiDiT, load_widit, save_widit, widit_preset

__all__ = [
    "PRESETS",
    "ConvPatchEmbed",
    "FactorizedAttention",
    "FinalLayer",
    "Mlp",
    "PatchEmbed",
    "PixelBlock",
    "PixelHead",
    "PixelMLP",
    "SwiGLU",
    "TimestepEmbedder",
    "Unpatchify",
    "WiDiT",
    "WiDiTBlock",
    "WiDiTFinalLayer",
    "WiDiTInputError",
    "WindowAttention",
    "load_widit",
    "modulate",
    "save_widit",
    "widit_preset",
]
