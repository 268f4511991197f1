"""medwidit.nets: the WiDiT backbone (knows nothing about diffusion)."""

from .attention import FactorizedAttention, WindowAttention
from .blocks import WiDiTBlock, WiDiTFinalLayer
from .embed import ConvPatchEmbed, PatchEmbed, TimestepEmbedder, Unpatchify
from .layers import Mlp, SwiGLU, WiDiTInputError, modulate
from .widit import PRESETS, SpacingEmbedder, WiDiT, load_widit, save_widit, widit_preset

__all__ = [
    "PRESETS",
    "ConvPatchEmbed",
    "DiffuserWiDiT",
    "DiffuserWiDiTOutput",
    "FactorizedAttention",
    "Mlp",
    "PatchEmbed",
    "SpacingEmbedder",
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


def __getattr__(name: str):
    """``DiffuserWiDiT`` and its output load on first use: importing diffusers costs seconds (PEP 562)."""
    if name in ("DiffuserWiDiT", "DiffuserWiDiTOutput"):
        from . import diffusers

        return getattr(diffusers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
