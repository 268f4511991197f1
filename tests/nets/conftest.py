"""Shared helpers for the backbone tests: tiny models with every weight made non-trivial."""

import pytest
import torch

from medwidit.nets import WiDiT


def _randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std): zero-initialised gates would make dependence tests vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def randomize():
    """``randomize(model, seed=0, std=0.2)``: every parameter redrawn from N(0, std), in place."""
    return _randomize


@pytest.fixture
def tiny():
    """Factory for a tiny WiDiT (hidden 32, 2 heads) with overridable keyword arguments."""

    def make(spatial_dim: int, **kwargs) -> WiDiT:
        options = {"patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2, "window_size": 4}
        return WiDiT(spatial_dim=spatial_dim, **{**options, **kwargs})

    return make
