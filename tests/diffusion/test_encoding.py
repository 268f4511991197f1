"""Label maps <-> diffusion space: exact round trips, vote fractions, clear errors."""

import math

import pytest
import torch

from medwidit.diffusion import class_index, encode_labels, to_labels, to_probabilities


@pytest.mark.parametrize("num_classes", [2, 14])
def test_round_trip(spatial_dim, num_classes):
    shape = (2, 1) + (6,) * spatial_dim
    labels = torch.randint(0, num_classes, shape, generator=torch.Generator().manual_seed(num_classes))
    x0 = encode_labels(labels, num_classes)
    assert x0.shape == (2, num_classes) + (6,) * spatial_dim and x0.dtype == torch.float32
    assert set(x0.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal((x0 > 0).sum(1), torch.ones_like(labels[:, 0]))  # exactly one class on per voxel
    probabilities = to_probabilities(x0)
    assert torch.equal(probabilities, (x0 + 1) / 2)
    assert torch.equal(to_labels(probabilities), labels)


def test_float_labels_from_loaders_are_accepted():
    labels = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])[None]  # (1, 1, 2, 2) float, as MONAI loads them
    assert torch.equal(to_labels(to_probabilities(encode_labels(labels, 3))), labels.long())


def test_class_index_is_argmax_ties_included():
    """max's indices replace argmax (15x faster on CPU over a class axis that is not last): same first-maximum rule."""
    scores = torch.randint(0, 3, (3, 4, 5, 6, 2)).float() / 2  # every voxel has ties
    scores[0, 0, 0, 0] = float("nan")  # NaN counts as the maximum for both
    for dim in range(scores.ndim):
        assert torch.equal(class_index(scores, dim), scores.argmax(dim))
        assert torch.equal(class_index(scores, dim, keepdim=True), scores.argmax(dim, keepdim=True))
    assert torch.equal(class_index(torch.tensor([[0.5, 0.5], [0.2, 0.8]]), 1), torch.tensor([0, 1]))


@pytest.mark.parametrize("bad", [-1, 3, 7])
def test_out_of_range_labels_raise(bad):
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    labels[0, 0, 1, 2] = bad
    with pytest.raises(ValueError, match=rf"0\.\.2.*\[{bad}\]"):
        encode_labels(labels, 3)


@pytest.mark.parametrize(
    "labels, num_classes, match",
    [
        (torch.full((1, 1, 4, 4), 0.5), 2, "whole class indices"),
        (torch.zeros(1, 2, 4, 4, dtype=torch.long), 2, r"\(B, 1, \*spatial\)"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.long), 1, "num_classes"),
    ],
)
def test_bad_inputs_raise(labels, num_classes, match):
    with pytest.raises(ValueError, match=match):
        encode_labels(labels, num_classes)


def test_mean_of_samples_gives_vote_fractions():
    # 4 samples (S, B, K, H, W) of one voxel: class 0, 0, 1, 2 -> fractions 1/2, 1/4, 1/4
    votes = torch.tensor([0, 0, 1, 2]).reshape(4, 1, 1, 1, 1)
    samples = torch.stack([encode_labels(v, 3) for v in votes])  # (4, 1, 3, 1, 1)
    assert torch.allclose(to_probabilities(samples.mean(0)).flatten(), torch.tensor([0.5, 0.25, 0.25]))
    per_sample = to_probabilities(samples, dim=2)
    assert torch.allclose(per_sample.sum(2), torch.ones(4, 1, 1, 1))


def test_probabilities_are_a_distribution_everywhere():
    x = torch.randn(3, 5, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    x[0, :, 0, 0] = -3.0  # every class clamped away -> uniform
    p = to_probabilities(x)
    assert torch.allclose(p.sum(1), torch.ones(3, 8, 8)) and p.min() >= 0
    assert torch.allclose(p[0, :, 0, 0], torch.full((5,), 0.2))
    assert math.isclose(p[0, :, 0, 0].sum().item(), 1.0, rel_tol=1e-6)


def test_values_past_plus_one_count_as_certain_not_more():
    """``p = clamp((x + 1) / 2, 0, 1)`` then renormalised: a class at x = 3 weighs 1, as a clean +1 does; clamping only
    below let it outweigh a class at x = 0.5 (p = 0.75) by 2 : 0.75 instead of 1 : 0.75."""
    x = torch.tensor([3.0, 0.5]).reshape(1, 2, 1)  # (B, K, S)
    torch.testing.assert_close(to_probabilities(x).flatten(), torch.tensor([1 / 1.75, 0.75 / 1.75]))
