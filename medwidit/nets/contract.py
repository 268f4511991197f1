"""The network contract and the registry by name: what the diffusion and inference rooms may know of a backbone.

A denoiser is called ``net(x_t (B, in_channels, *S), t (B,) float32, conditioned=image (B, cond_channels, *S))`` and
returns (B, out_channels, *S). A network may also offer ``encode_condition(image) -> dict of tensors`` and take
``forward(..., condition_cache=that dict)``: the image's features, computed once and reused by every denoising step
(DESIGN decision 11); a network whose forward takes ``attention_masks`` gets a table to keep its attention masks in
across the calls of one input shape. :class:`ConditionCache` does the bookkeeping, and networks without either keep
working. Beside the call, the stitcher and the predictor read only the attributes of :class:`DenoisingNetwork`;
checkpoints store the registered name beside ``config`` so that a checkpoint alone rebuilds its network, whatever
the backbone (``build_network(name, config)``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from monai.utils import ensure_tuple
from torch import nn

from medwidit.utils import check_int, check_options, choose, is_integer

__all__ = [
    "NETWORKS",
    "ConditionCache",
    "DenoisingNetwork",
    "build_network",
    "check_roi_multiple_of_patch",
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


def build_network(name: str, config: dict[str, Any], source: str = "net config") -> nn.Module:
    """``NETWORKS[name](**config)``; an unknown name is an error that lists the registered ones, and so is a config
    key the network does not take (``check_options``, naming ``source``)."""
    network = choose("network", name, NETWORKS)
    return network(**check_options(network, config, source))


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


class ConditionCache:
    """Encodings of conditioning images, computed once and reused while the image stays the same (DESIGN 11).

    ``bind(cond)`` starts a new cache whenever ``cond`` is a different tensor (or was modified in place) and returns
    its rows' classes: row b's class is the first row holding the same image (``torch.equal``), so ensemble members
    that repeat one image share keys. ``call(key, x, t, cond)`` runs ``net(x, t, conditioned=cond,
    condition_cache=...)`` with the encoding stored under ``key``, encoding ``cond`` on the first call; the caller
    makes keys such that equal keys mean equal ``cond`` tensors (same rows, same crop), so reuse is exact. Networks
    without ``encode_condition`` are called as they are. Past ``max_bytes`` of stored encodings (per-voxel features
    of many windows add up), further keys are encoded at every call and not stored.

    A network whose ``forward`` takes ``attention_masks`` (WiDiT) gets one table per input shape, kept while the
    image stays bound: every denoising step and every window of one size reuses the masks of the first call, which
    depend on the shape alone (rebuilt in each call, they cost the shipped model a tenth of its sampling time).
    """

    def __init__(self, net: Callable[..., torch.Tensor], *, max_bytes: int = 2**31) -> None:
        self.net = net
        self.enabled = callable(getattr(net, "encode_condition", None))
        self.max_bytes = check_int("max_bytes", max_bytes, low=0)
        self.num_bytes = 0
        self.source: tuple[torch.Tensor, int] | None = None  # the bound tensor and its version counter
        self.rows: tuple[int, ...] = ()
        self.entries: dict[Any, dict[str, torch.Tensor]] = {}
        self.num_encoded = 0
        self.keeps_masks = self.enabled and "attention_masks" in inspect.signature(net.forward).parameters
        self.mask_tables: dict[tuple[int, ...], dict] = {}  # input shape -> the network's attention-mask table

    def bind(self, cond: torch.Tensor | None) -> tuple[int, ...]:
        """Row classes of ``cond`` (B, C, *S): equal images get the first one's index; a new tensor clears the cache."""
        if cond is None:
            return ()
        # an inference tensor (made under torch.inference_mode, as Lightning's validate makes its batches) has no
        # version counter: it is the same image while it is the same tensor
        version = None if cond.is_inference() else cond._version
        if self.source is None or self.source[0] is not cond or self.source[1] != version:
            self.entries.clear()
            self.mask_tables.clear()
            self.num_bytes = 0
            self.source = (cond, version)
            classes: list[int] = []
            for b in range(cond.shape[0]):
                classes.append(next((c for c in dict.fromkeys(classes) if torch.equal(cond[c], cond[b])), b))
            self.rows = tuple(classes)
        return self.rows

    def call(self, key: Any, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, **kwargs) -> torch.Tensor:
        """``net(x, t, conditioned=cond, **kwargs)`` with the encoding of ``cond`` stored under ``key`` (made on first
        use); ``kwargs`` (e.g. ``spacing``) go to the net as they are."""
        if not self.enabled or cond is None:
            return self.net(x, t, conditioned=cond, **kwargs)
        encoding = self.entries.get(key)
        if encoding is None:
            encoding = self.net.encode_condition(cond)
            self.num_encoded += 1
            size = sum(v.numel() * v.element_size() for v in encoding.values())
            if self.num_bytes + size <= self.max_bytes:
                self.entries[key], self.num_bytes = encoding, self.num_bytes + size
        if self.keeps_masks:
            kwargs["attention_masks"] = self.mask_tables.setdefault(tuple(x.shape), {})
        return self.net(x, t, conditioned=cond, condition_cache=encoding, **kwargs)


def check_roi_multiple_of_patch(roi_size, patch_size) -> None:
    """Every roi axis a positive multiple of the patch (a network's ``size_multiple``) on that axis (int or per-axis
    sequences of equal length): a sliding window's and a training crop's."""
    roi, patch = ensure_tuple(roi_size), ensure_tuple(patch_size)
    n = max(len(roi), len(patch))
    if len(roi) not in (1, n) or len(patch) not in (1, n):
        raise ValueError(f"roi_size {roi_size!r} and patch_size {patch_size!r} have different numbers of axes.")
    if not all(is_integer(p) and p >= 1 for p in patch):
        raise ValueError(f"patch_size must be positive integers, got {patch_size!r}.")
    roi, patch = (roi * n if len(roi) == 1 else roi), (patch * n if len(patch) == 1 else patch)
    for r, p in zip(roi, patch, strict=True):
        if not is_integer(r) or r < 1 or r % p:
            raise ValueError(
                f"roi_size must be positive integers divisible by the network's patch_size {patch_size!r} on every "
                f"axis, got {roi_size!r}."
            )
