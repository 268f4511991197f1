"""The network contract and the registry by name: what the diffusion and inference rooms may know of a backbone.

A denoiser is called ``net(x_t (B, in_channels, *S), t (B,) float32, conditioned=image (B, cond_channels, *S))``
and returns (B, out_channels, *S). Beside the call, the stitcher and the predictor read only the attributes of
:class:`DenoisingNetwork`; checkpoints store the registered name beside ``config`` so that a checkpoint alone
rebuilds its network, whatever the backbone (``build_network(name, config)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from monai.utils import look_up_option
from torch import nn

__all__ = [
    "NETWORKS",
    "DenoisingNetwork",
    "build_network",
    "network_alignment",
    "network_name",
    "network_size_multiple",
    "register_network",
]

NETWORKS: dict[str, type[nn.Module]] = {}
N = TypeVar("N", bound=type[nn.Module])


@runtime_checkable
class DenoisingNetwork(Protocol):
    """What a backbone exposes besides ``forward(input_tensor, timestep, *, conditioned)``.

    ``config``: JSON-typed constructor arguments (``cls(**config)`` rebuilds it); ``spatial_dim``: 2 or 3;
    ``cond_channels``: image channels it is conditioned on (None: unconditional); ``size_multiple``: every input
    axis must be a multiple of it (the patch; 2^levels for a U-Net); ``alignment``: windows that start on multiples
    of it cut the same patches and attention windows as the whole volume does (the stitcher aligns to it).
    """

    config: dict[str, Any]
    spatial_dim: int
    in_channels: int
    cond_channels: int | None
    out_channels: int

    @property
    def size_multiple(self) -> tuple[int, ...]: ...

    @property
    def alignment(self) -> tuple[int, ...]: ...

    def forward(
        self,
        input_tensor: torch.Tensor,
        timestep: torch.Tensor | None = None,
        *,
        conditioned: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def register_network(name: str) -> Callable[[N], N]:
    """Class decorator: make a backbone buildable by ``name`` from a checkpoint (``cls.network_name = name``)."""

    def register(cls: N) -> N:
        if name in NETWORKS and NETWORKS[name] is not cls:
            raise ValueError(f"network name {name!r} is already registered to {NETWORKS[name].__qualname__}.")
        missing = [attr for attr in ("size_multiple", "alignment") if not hasattr(cls, attr)]
        if missing:
            raise TypeError(f"{cls.__qualname__} cannot be registered: it lacks {missing} (see DenoisingNetwork).")
        cls.network_name = name
        NETWORKS[name] = cls
        return cls

    return register


def build_network(name: str, config: dict[str, Any]) -> nn.Module:
    """``NETWORKS[name](**config)``; an unknown name is an error that lists the registered ones."""
    return look_up_option(name, NETWORKS)(**config)


def network_name(net: nn.Module) -> str:
    """The registered name of ``net``'s class, or a ValueError saying how to register it."""
    name = getattr(type(net), "network_name", None)
    if NETWORKS.get(name) is not type(net):
        raise ValueError(
            f"{type(net).__qualname__} is not a registered network: decorate it with "
            f"@medwidit.nets.register_network('name') so that checkpoints can rebuild it."
        )
    return name


def network_size_multiple(net) -> int | tuple[int, ...]:
    """``net.size_multiple`` for a contract network; 1 for a plain callable (analytic stand-ins)."""
    return tuple(net.size_multiple) if hasattr(net, "size_multiple") else 1


def network_alignment(net) -> int | tuple[int, ...]:
    """``net.alignment`` for a contract network; 1 for a plain callable (analytic stand-ins)."""
    return tuple(net.alignment) if hasattr(net, "alignment") else 1
