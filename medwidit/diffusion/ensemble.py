"""The ensemble's plumbing for :class:`~medwidit.diffusion.DiffusionSegmenter`: one noise generator per member (and
the shared trunk's), and the network called on members batched as ``image.repeat`` tiles the image, with the
acquisition spacing tiled alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medwidit.nets.contract import ConditionCache

__all__ = [
    "ModelFn",
    "call_cached",
    "call_net",
    "call_rows",
    "call_with_spacing",
    "case_generators",
    "member_generators",
    "tile_spacing",
    "trunk_generator",
]

# model_fn(x_t, t, cond) -> raw output; called with spacing=(m * B, 2N) too when sample() is given spacing
ModelFn = Callable[..., torch.Tensor]


def call_net(net: nn.Module, spacing: torch.Tensor | None, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
    """``net(x, t, conditioned=cond)``, plus ``spacing`` (B, 2N) tiled to x's batch as the image is tiled."""
    if spacing is None:
        return net(x, t, conditioned=cond)
    return net(x, t, conditioned=cond, spacing=tile_spacing(spacing, x))


def call_rows(net: nn.Module, spacing, t: torch.Tensor, cond, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """:func:`call_net` on the batch rows ``rows`` of ``t``, ``cond`` and ``spacing``, for those rows' input ``x``."""
    return call_net(net, None if spacing is None else spacing[rows], x, t[rows], None if cond is None else cond[rows])


def call_cached(cache: ConditionCache, spacing: torch.Tensor | None, x: torch.Tensor, t, cond) -> torch.Tensor:
    """:func:`call_net` with the image encoded once per conditioning tensor (keyed by its rows' images)."""
    kwargs = {} if spacing is None else {"spacing": tile_spacing(spacing, x)}
    return cache.call(cache.bind(cond), x, t, cond, **kwargs)


def call_with_spacing(model_fn: ModelFn, spacing: torch.Tensor, x: torch.Tensor, t, cond) -> torch.Tensor:
    """``model_fn(x, t, cond, spacing=...)`` with ``spacing`` (B, 2N) tiled to x's batch as the image is tiled."""
    return model_fn(x, t, cond, spacing=tile_spacing(spacing, x))


def tile_spacing(spacing: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, 2N) spacing tiled to x's batch (m * B) as ``image.repeat`` tiles the image: row j is spacing[j % B]."""
    return spacing.repeat(x.shape[0] // spacing.shape[0], 1)


def trunk_generator(first: torch.Generator) -> torch.Generator:
    """The shared trunk's generator, seeded from the first member's seed: the same for every ensemble size, and no
    draw from the caller's generator (a view's or a smaller ensemble's members keep their seeds)."""
    return torch.Generator(device=first.device).manual_seed(first.initial_seed() ^ 0x5DEECE66D)


def check_generator(generator) -> torch.Generator | None:
    """``generator`` if it is a torch.Generator or None, else a ValueError saying how to pass a seed."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__} "
            "(for a seed: torch.Generator().manual_seed(seed))."
        )
    return generator


def member_generators(generator: torch.Generator | None, num_samples: int, device) -> list[torch.Generator]:
    """One generator per ensemble member, seeded from ``generator`` (or torch's global generator when None)."""
    check_generator(generator)
    gen_device = generator.device if generator is not None else torch.device(device)
    seeds = torch.randint(0, 2**62, (num_samples,), generator=generator, device=gen_device)
    return [torch.Generator(device=gen_device).manual_seed(int(seed)) for seed in seeds.tolist()]


def case_generators(generators: list[torch.Generator], batch: int) -> list[torch.Generator]:
    """Each generator as ``batch`` fresh generators of its seed, member-major as ``image.repeat`` tiles the batch: row
    ``j`` of the members' batch draws from member ``j // batch``'s seed alone, so a case gets the noise it would get
    sampled alone, wherever it sits in the batch (one generator per member drew one block for the whole batch)."""
    return [torch.Generator(device=g.device).manual_seed(g.initial_seed()) for g in generators for _ in range(batch)]
