"""Fixtures for the diffusion tests."""

import pytest


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dim(request):
    return request.param
