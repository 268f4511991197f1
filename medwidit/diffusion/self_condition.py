"""Self-conditioning (Chen, Zhang & Hinton 2022, "Analog Bits"): the network also reads its own previous clean estimate.

With ``DiffusionSegmenter(self_condition=True)`` the network's input is ``cat(x_t, x0_prev)`` (2K channels): in
training, x0_prev is zero for half of the batch and, for the other half, the network's own estimate at the same x_t
(computed without gradient); in sampling, it is the clean estimate of the step before (zero at the first step). A
few-step sampler's later steps then refine a whole previous answer instead of re-reading it from x_t, which at the
steps a 3-step DDIM calls (t = 500 under a linear schedule to beta 0.035) holds about 1 % of the label's power.
No kept library has it for segmentation diffusion (MONAI's schedulers and inferers take one x_t), so it is written here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from medwidit.utils import check_bool

from .objectives import x0_estimate

__all__ = ["SELF_CONDITION_PROB", "SelfConditioned", "check_self_condition", "training_input"]

SELF_CONDITION_PROB = 0.5  # the paper's: half the batch trains the first step (no estimate), half the refinement


def check_self_condition(self_condition: bool, net: nn.Module, num_classes: int, learn_sigma: bool) -> bool:
    """``self_condition`` as a bool; a network that declares ``in_channels`` must read K (off) or 2K (on) channels,
    and, self-conditioned, one that declares ``out_channels`` must return K (2K with ``learn_sigma``): else a
    ValueError naming them (WiDiT's default ``out_channels`` follows ``in_channels``, so it must be given)."""
    self_condition = check_bool("self_condition", self_condition)
    declared = getattr(net, "in_channels", None)
    expected = num_classes * (2 if self_condition else 1)
    if isinstance(declared, int) and declared != expected:
        reads = "the noisy label and its previous estimate" if self_condition else "the noisy label"
        raise ValueError(
            f"self_condition={self_condition} with num_classes={num_classes}: the network must read {reads}, "
            f"in_channels={expected}, got in_channels={declared}."
        )
    returned, outputs = getattr(net, "out_channels", None), num_classes * (2 if learn_sigma else 1)
    if self_condition and isinstance(returned, int) and returned != outputs:
        raise ValueError(
            f"self_condition=True with num_classes={num_classes} and learn_sigma={learn_sigma}: the network must "
            f"return out_channels={outputs} (its input has 2K channels, its output does not), got {returned}."
        )
    return self_condition


def clean_estimate(objective: str, scheduler: Scheduler, output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
    """The network's clean-label estimate (B, K, *S) from its raw output's first K channels, clamped to [-1, 1] (the
    labels' range), detached: what the next call reads as x0_prev."""
    t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
    prediction = output[:, : x_t.shape[1]].to(x_t.dtype)
    return x0_estimate(objective, scheduler, prediction, x_t, t).clamp(-1, 1).detach()


def training_input(
    call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    t: torch.Tensor,
    objective: str,
    scheduler: Scheduler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``cat(x_t, x0_prev)`` (B, 2K, *S) for one training step: each row draws (from ``generator``) whether it gets
    the network's own estimate ``call(rows' cat(x_t, 0), rows' t)`` (no gradient, only those rows run) or zeros.
    ``call(x, rows)`` runs the network on the rows ``rows`` (an index tensor) of the batch's other inputs."""
    device = generator.device if generator is not None else x_t.device
    chosen = torch.rand(x_t.shape[0], generator=generator, device=device).to(x_t.device) < SELF_CONDITION_PROB
    previous = torch.zeros_like(x_t)
    rows = chosen.nonzero().flatten()
    if len(rows):
        with torch.no_grad():
            x_rows = x_t[rows]
            output = call(torch.cat([x_rows, torch.zeros_like(x_rows)], dim=1), rows)
            previous[rows] = clean_estimate(objective, scheduler, output.float(), x_rows, t[rows])
    return torch.cat([x_t, previous], dim=1)


class SelfConditioned:
    """A sampler's ``denoise(x, t)`` over ``denoise(cat(x, x0_prev), t)``: it keeps the clean estimate of its last
    call (zeros, or ``start`` clamped to [-1, 1], before the first). One per sampling run: the state must not cross
    runs."""

    def __init__(self, denoise, objective: str, scheduler: Scheduler, start: torch.Tensor | None = None) -> None:
        self.denoise, self.objective, self.scheduler = denoise, objective, scheduler
        # a trunk's clean estimate is unclipped for flow (and without clip_sample); training reads clamped ones
        self.previous = None if start is None else start.clamp(-1, 1)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        previous = torch.zeros_like(x) if self.previous is None else self.previous.to(x.dtype)
        output = self.denoise(torch.cat([x, previous], dim=1), t, channels=x.shape[1])
        self.previous = clean_estimate(self.objective, self.scheduler, output, x, t)
        return output
