"""benchmarks/robustness.py: the seeded acquisition shifts are reproducible, keep the label a label, and move both
image and label alike."""

import numpy as np
import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def robustness():
    return load_benchmark("robustness")


def _head(shape=(40, 44, 36)):
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < 0.6
    image = np.where(brain, 800.0, np.where(radius < 0.8, 1500.0, 0.0)).astype(np.float32)
    return image, brain.astype(np.uint8)


def test_shift_is_seeded_and_moves_image_and_label_together(robustness):
    image, label = _head()
    a_image, a_label = robustness.shift(image, label, seed=3)
    b_image, b_label = robustness.shift(image, label, seed=3)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_label, b_label)
    c_image, _ = robustness.shift(image, label, seed=4)
    assert not np.allclose(a_image, c_image)
    assert a_image.shape == a_label.shape == image.shape
    assert set(np.unique(a_label)) <= {0, 1} and a_image.min() >= 0  # a label map and a magnitude image
    volume_ratio = a_label.sum() / label.sum()
    assert 0.9**3 - 0.05 < volume_ratio < 1.1**3 + 0.05  # scaled by 0.9-1.1 per axis, not destroyed
    inside, outside = a_image[a_label == 1].mean(), a_image[(a_label == 0)].mean()
    assert inside > outside  # the moved brain is where the moved label says
