"""medwidit.nets: the backbones (know nothing about diffusion), their contract and the registry by name."""

from .attention import FactorizedAttention, WindowAttention
from .blocks import WiDiTBlock, WiDiTFinalLayer
from .contract import NETWORKS, DenoisingNetwork, build_network, network_name, register_network
from .embed import ConvPatchEmbed, PatchEmbed, TimestepEmbedder, Unpatchify
from .layers import Mlp, SwiGLU, WiDiTInputError, modulate
from .unet import DiffusionUNet
from .widit import PRESETS, WiDiT, load_widit, save_widit, widit_preset

__all__ = [
    "NETWORKS",
    "PRESETS",
    "DenoisingNetwork",
    "ConvPatchEmbed",
    "DiffusionUNet",
    "FactorizedAttention",
    "Mlp",
    "PatchEmbed",
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
