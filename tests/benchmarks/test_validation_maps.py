"""benchmarks/validation_maps.py: the geometry-only reference map measures millimetres to the predicted surface."""

import numpy as np
import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def maps():
    return load_benchmark("validation_maps")


def test_boundary_distance_is_millimetres_to_the_surface_on_an_anisotropic_grid(maps):
    found = np.zeros((20, 20, 20), bool)
    found[5:15, 5:15, 5:15] = True  # its surface: the cube's outer shell of voxels
    distance = maps.boundary_distance(found, [1.0, 1.0, 2.0])
    assert distance.dtype == np.float32 and distance.shape == found.shape
    assert distance[5, 10, 10] == 0 and distance[14, 10, 10] == 0  # on the shell
    assert distance[7, 10, 10] == pytest.approx(2.0)  # two 1 mm voxels inside along the first axis
    assert distance[10, 10, 5] == 0 and distance[10, 10, 3] == pytest.approx(4.0)  # two 2 mm voxels outside
    assert distance[10, 10, 10] == pytest.approx(4.0)  # the centre: 4 voxels of 1 mm from the shell in x and y


def test_boundary_distance_of_nothing_found_is_infinite_everywhere(maps):
    distance = maps.boundary_distance(np.zeros((6, 6, 6), bool), [1.0, 1.0, 1.0])
    assert np.isinf(distance).all()
