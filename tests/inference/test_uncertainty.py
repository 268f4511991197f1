"""summarize_ensemble on hand-made ensembles whose summaries are known exactly."""

import math

import pytest
import torch

from medwidit.diffusion import encode_labels, to_probabilities
from medwidit.inference.uncertainty import summarize_ensemble


@pytest.mark.parametrize("spatial", [(3, 4), (2, 3, 4)], ids=["2d", "3d"])
def test_shapes_and_uniform_distribution(spatial):
    k = 5
    uniform = torch.full((3, 2, k, *spatial), 1.0 / k)
    summary = summarize_ensemble(uniform)
    assert summary["mean_probability"].shape == (2, k, *spatial)
    for name in ("labels", "entropy", "variance", "agreement"):
        assert summary[name].shape == (2, 1, *spatial)
    assert summary["labels"].dtype == torch.int64
    assert torch.allclose(summary["entropy"], torch.full((2, 1, *spatial), math.log(k)))
    assert torch.allclose(summary["variance"], torch.zeros(2, 1, *spatial), atol=1e-12)  # float32 mean of thirds


def test_identical_samples_agree_fully_with_zero_variance_and_entropy():
    labels = torch.randint(0, 3, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    one = to_probabilities(encode_labels(labels, 3))
    summary = summarize_ensemble(one.expand(4, *one.shape))
    assert torch.equal(summary["labels"], labels)
    assert torch.equal(summary["agreement"], torch.ones(2, 1, 4, 4))
    assert torch.equal(summary["variance"], torch.zeros(2, 1, 4, 4))
    assert torch.allclose(summary["entropy"], torch.zeros(2, 1, 4, 4), atol=1e-6)


def test_entropy_is_never_negative_on_the_probabilities_it_accepts():
    """The check allows -1e-3; the entropy used the unclamped mean: [-0.0009, 1.0009] gave -0.026 nats."""
    p = torch.tensor([-0.0009, 1.0009]).reshape(1, 1, 2, 1, 1, 1).expand(2, 1, 2, 2, 2, 2)
    assert summarize_ensemble(p)["entropy"].min() >= 0


def test_split_votes():
    # 4 one-hot samples of one voxel, K = 2: classes 1, 1, 1, 0 -> p = (1/4, 3/4)
    votes = torch.tensor([1, 1, 1, 0]).reshape(4, 1, 1, 1, 1)
    samples = to_probabilities(torch.stack([encode_labels(v, 2) for v in votes]), dim=2)  # (4, 1, 2, 1, 1)
    summary = summarize_ensemble(samples)
    assert torch.allclose(summary["mean_probability"].flatten(), torch.tensor([0.25, 0.75]))
    assert summary["labels"].item() == 1
    assert summary["agreement"].item() == pytest.approx(0.75)
    assert summary["variance"].item() == pytest.approx(0.25 * 0.75)  # Bernoulli variance, same for both classes
    assert summary["entropy"].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-5)


def test_rejects_diffusion_space_and_bad_shapes():
    with pytest.raises(ValueError, match="to_probabilities"):
        summarize_ensemble(encode_labels(torch.zeros(1, 1, 4, 4, dtype=torch.long), 2)[None])
    with pytest.raises(ValueError, match=r"\(S, B, K, \*spatial\)"):
        summarize_ensemble(torch.full((2, 4, 4), 0.5))


def test_sample_ensemble_returns_members_whose_prefix_is_the_smaller_ensemble():
    """``return_members``: the members average to the summary, and the first n are the n-member ensemble of the same
    generator (what benchmarks/quality.py reads its ensemble sweep from)."""
    from inference_volumes import random_tiny_segmenter

    from medwidit.inference import sample_ensemble

    segmenter = random_tiny_segmenter()  # random weights: at initialisation every member is 0.5 everywhere
    image = torch.rand(1, 1, 16, 16, 8, generator=torch.Generator().manual_seed(1))
    options = {"steps": 2, "roi_size": [8, 8, 8], "overlap": 0.5}
    three = sample_ensemble(segmenter, image, num_samples=3, generator=torch.Generator().manual_seed(7),
                            return_members=True, **options)  # fmt: skip
    assert three["members"].shape == (3, 1, 2, 16, 16, 8)
    assert not torch.equal(three["members"][0], three["members"][1])  # members differ, so the prefix is a finding
    other = sample_ensemble(segmenter, image, num_samples=2, generator=torch.Generator().manual_seed(99), **options)
    torch.testing.assert_close(three["members"].mean(0), three["mean_probability"])
    two = sample_ensemble(segmenter, image, num_samples=2, generator=torch.Generator().manual_seed(7), **options)
    assert "members" not in two
    torch.testing.assert_close(summarize_ensemble(three["members"][:2])["mean_probability"], two["mean_probability"])
    assert not torch.allclose(other["mean_probability"], two["mean_probability"])  # another seed, other members


def test_nan_or_unnormalised_probabilities_are_refused_by_the_summary_and_the_decomposition():
    """From a review: NaN fails every comparison, so the summary's check passed NaN probabilities and reported NaN
    entropy with full agreement; decompose_entropy checked nothing (0.4 x 3 gave an entropy above log 3)."""
    from medwidit.inference.trust import decompose_entropy

    nan = torch.full((2, 1, 2, 2, 2, 2), 0.5)
    nan[0, 0, :, 0, 0, 0] = float("nan")
    unnormalised = torch.full((2, 1, 3, 2, 2, 2), 0.4)
    for bad in (nan, unnormalised):
        with pytest.raises(ValueError, match=r"probabilities must be finite, >= 0 and sum to 1 over the class axis"):
            summarize_ensemble(bad)
        with pytest.raises(ValueError, match=r"probabilities must be finite, >= 0 and sum to 1 over the class axis"):
            decompose_entropy(bad)
