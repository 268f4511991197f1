"""DiffusionSegmenter.sample(shared_steps=k): the first k steps run once for the ensemble, then every member
branches from the trunk's clean estimate with its own noise. Exact with an oracle, k + (steps - k) * S network
calls, chunking-invariant, k = 0 is plain sampling, and the members still differ."""

import pytest
import torch
from diffusion_standins import OracleNet, TinyConvNet, random_labels

from medwidit.diffusion import DiffusionSegmenter, encode_labels


@pytest.mark.parametrize(
    ("objective", "sampler"), [("sample", "ddim"), ("epsilon", "dpmpp_2m"), ("v_prediction", "ddim"), ("flow", "heun")]
)
def test_an_oracle_is_recovered_exactly_through_the_trunk(objective, sampler):
    label = random_labels((2, 1, 6, 5, 4), 3)
    segmenter = DiffusionSegmenter(OracleNet(3), num_classes=3, objective=objective)
    segmenter.net = OracleNet(3, objective, segmenter.noise_scheduler)  # the oracle needs the segmenter's schedule
    samples = segmenter.sample(label.float(), steps=6, num_samples=3, sampler=sampler, shared_steps=4)
    expected = encode_labels(label, 3)
    torch.testing.assert_close(samples, expected.expand_as(samples), atol=2e-3, rtol=0)


def test_network_calls_chunking_and_k_zero():
    torch.manual_seed(0)
    segmenter = DiffusionSegmenter(TinyConvNet(3, 3), num_classes=3).eval()
    image = torch.randn(2, 1, 6, 6, 6)
    calls = []

    def counting(x, t, cond):
        calls.append(x.shape[0])
        return segmenter.net(x, t, conditioned=cond)

    def run(shared, chunk=None):
        calls.clear()
        return segmenter.sample(
            image, steps=5, num_samples=4, shared_steps=shared, chunk_size=chunk, model_fn=counting,
            generator=torch.Generator().manual_seed(7),
        )  # fmt: skip

    branched = run(3)
    assert calls == [2, 2, 2, 8, 8]  # 3 trunk steps on B = 2, then 2 steps of 4 members x 2
    assert float(branched.std(dim=0).mean()) > 1e-3  # the members differ by their branch noise
    assert torch.equal(run(3, chunk=1), branched)  # a member's noise is its own, however it is batched
    plain = run(0)
    assert calls == [8] * 5
    assert torch.equal(
        plain, segmenter.sample(image, steps=5, num_samples=4, generator=torch.Generator().manual_seed(7))
    )
    assert not torch.equal(plain, branched)


def test_progress_counts_every_step_once_per_trunk_and_chunk():
    segmenter = DiffusionSegmenter(TinyConvNet(3, 3), num_classes=3).eval()
    seen = []
    segmenter.sample(torch.randn(1, 1, 4, 4, 4), steps=4, num_samples=2, chunk_size=1, shared_steps=2,
                     progress=lambda info: seen.append((info["chunk"], info["i"])))  # fmt: skip
    assert seen == [(-1, 0), (-1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]


@pytest.mark.parametrize("shared", [-1, 5, 1.5])
def test_shared_steps_must_be_fewer_than_steps(shared):
    segmenter = DiffusionSegmenter(TinyConvNet(3, 3), num_classes=3)
    with pytest.raises(ValueError, match=r"shared_steps must be an int in 0..4 \(fewer than steps\)"):
        segmenter.sample(torch.randn(1, 1, 4, 4, 4), steps=5, shared_steps=shared)


def test_members_branch_from_the_trunk_at_step_k_and_smaller_ensembles_are_a_prefix():
    """Each member's first branch call sees add_noise(trunk, its own noise, t_k) at t_k = timesteps[k]; and the
    first 2 members of a 4-member run are the 2-member run (trunk included)."""
    from medwidit.diffusion.ensemble import member_generators
    from medwidit.diffusion.samplers import randn_like, timestep_list

    torch.manual_seed(0)
    segmenter = DiffusionSegmenter(TinyConvNet(3, 3), num_classes=3).eval()
    image = torch.randn(1, 1, 6, 6, 6)
    calls, trunk = [], []

    def recording(x, t, cond):
        calls.append((x.clone(), t.clone()))
        return segmenter.net(x, t, conditioned=cond)

    def keep_trunk(info):
        if info["chunk"] == -1:
            trunk[:] = [info["x"]]

    def run(samples, **options):
        return segmenter.sample(image, steps=5, num_samples=samples, shared_steps=3, model_fn=recording,
                                generator=torch.Generator().manual_seed(11), **options)  # fmt: skip

    four = run(4, progress=keep_trunk)
    x_branch, t_branch = calls[3]  # three trunk calls, then the members' first
    k_time = timestep_list(segmenter.noise_scheduler, 5)[3]
    assert torch.equal(t_branch, torch.full((4,), float(k_time)))
    noise = randn_like(torch.empty(4, 3, 6, 6, 6), member_generators(torch.Generator().manual_seed(11), 4, "cpu"))
    expected = segmenter.noise_scheduler.add_noise(trunk[0].repeat(4, 1, 1, 1, 1), noise, torch.full((4,), k_time))
    torch.testing.assert_close(x_branch, expected)
    assert torch.equal(run(2), four[:2])
