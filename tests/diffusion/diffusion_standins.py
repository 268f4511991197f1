"""Stand-in networks for the diffusion tests: a tiny conv net and analytic oracles that know the true label."""

from __future__ import annotations

import torch
import torch.nn as nn

from medwidit.diffusion import encode_labels
from medwidit.nets import register_network


@register_network("test_tiny_conv")
class TinyConvNet(nn.Module):
    """``net(x_t, t, conditioned=image)``: two convolutions over [x_t, image, t / 1000]; registered so that
    checkpoints rebuild it by name like any backbone."""

    size_multiple = property(lambda self: (1,) * self.config["spatial_dim"])
    alignment = size_multiple

    def __init__(self, spatial_dim: int, num_classes: int, cond_channels: int = 1, out_channels: int | None = None):
        super().__init__()
        conv = nn.Conv2d if spatial_dim == 2 else nn.Conv3d
        out_channels = out_channels or num_classes
        self.config = {
            "spatial_dim": spatial_dim,
            "num_classes": num_classes,
            "cond_channels": cond_channels,
            "out_channels": out_channels,
        }
        self.body = nn.Sequential(
            conv(num_classes + cond_channels + 1, 16, 3, padding=1), nn.SiLU(), conv(16, out_channels, 3, padding=1)
        )

    def forward(self, x, t, conditioned=None):
        tt = (t.float() / 1000).reshape((-1,) + (1,) * (x.ndim - 1)).expand(-1, 1, *x.shape[2:])
        return self.body(torch.cat([x, conditioned, tt], dim=1))


class OracleNet(nn.Module):
    """Knows the truth: the conditioning image *is* the label map (float), so x0 = encode(image) exactly.

    ``prediction`` says what it returns for x_t at t: the true x0 ("sample"), the true noise ("epsilon"), the true
    velocity ("v_prediction", with ``noise_scheduler``'s alphas) or the flow velocity x0 - eps ("flow").
    """

    def __init__(
        self, num_classes: int, prediction: str = "sample", noise_scheduler=None, variance_channels: bool = False
    ):
        super().__init__()
        self.num_classes, self.prediction, self.noise_scheduler = num_classes, prediction, noise_scheduler
        self.variance_channels = variance_channels
        self.calls: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def forward(self, x, t, conditioned=None):
        self.calls.append((tuple(x.shape), t.clone()))
        x0 = encode_labels(conditioned.round().long(), self.num_classes)
        tb = t.reshape((-1,) + (1,) * (x.ndim - 1)).double()
        if self.prediction == "flow":
            s = tb / 1000  # RFlow: x_t = (1 - s) x0 + s eps
            out = x0 - (x - (1 - s) * x0) / s
        elif self.prediction == "sample":
            out = x0
        else:
            abar = self.noise_scheduler.alphas_cumprod.double()[t.long()].reshape(tb.shape)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
            out = eps if self.prediction == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
        out = out.float()
        if self.variance_channels:
            out = torch.cat([out, torch.zeros_like(out)], dim=1)
        return out


def random_labels(shape, num_classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, num_classes, shape, generator=torch.Generator().manual_seed(seed))
