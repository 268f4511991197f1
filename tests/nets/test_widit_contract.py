"""The seed's API contract: shapes, channels, conditioning, timestep=None, init-zero output, config, errors."""

import pytest
import torch

SHAPES = {2: (12, 20), 3: (6, 10, 14)}


def _inputs(spatial_dim, channels=1, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *SHAPES[spatial_dim], generator=g)


@pytest.mark.parametrize("spatial_dim", [2, 3])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shape_and_exact_zero_at_init(tiny, spatial_dim, learn_sigma):
    model = tiny(spatial_dim, in_channels=2, learn_sigma=learn_sigma, window_size=(2, 3, 4)[-spatial_dim:])
    x, image = _inputs(spatial_dim, 2), _inputs(spatial_dim, 2, seed=1)
    out = model(x, torch.tensor([0.0, 999.0]), conditioned=image)
    assert out.shape == (2, 4 if learn_sigma else 2, *SHAPES[spatial_dim])
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero head: exactly zero, not merely small
