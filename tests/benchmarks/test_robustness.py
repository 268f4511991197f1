"""benchmarks/robustness.py: the seeded acquisition shifts are reproducible, keep the label a label, and move both
image and label alike."""

import numpy as np
import pytest
from benchmark_scripts import load_benchmark, sphere_head


@pytest.fixture(scope="module")
def robustness():
    return load_benchmark("robustness")


def test_shift_is_seeded_and_moves_image_and_label_together(robustness):
    image, label = sphere_head(label_dtype=np.uint8)
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
