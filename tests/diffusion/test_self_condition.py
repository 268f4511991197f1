"""Self-conditioning (``DiffusionSegmenter(self_condition=True)``, Chen et al. 2022): the network reads
``cat(x_t, x0_prev)``. In sampling x0_prev is zero at the first call and the previous call's clamped clean estimate
after it (a trunk's estimate for a branch); in training half the rows (drawn from the generator) read the network's
own estimate at the same x_t, computed without gradient. Exact oracle recovery, chunking and cache invariance, the
checkpoint round trip and the input-channel check."""

import pytest
import torch
from diffusion_standins import OracleNet, TinyConvNet, random_labels
from torch import nn

from medwidit.diffusion import DiffusionSegmenter, encode_labels, load_segmenter, save_segmenter
from medwidit.diffusion.objectives import x0_estimate
from medwidit.diffusion.self_condition import SELF_CONDITION_PROB
from medwidit.inference.sliding import SlidingWindowDenoiser
from medwidit.nets import WiDiT


class Recorder(nn.Module):
    """Wraps a net and keeps every call's input x and output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.inputs, self.outputs, self.times = net, [], [], []

    def forward(self, x, t, conditioned=None):
        out = self.net(x, t, conditioned=conditioned)
        self.inputs.append(x.detach().clone())
        self.outputs.append(out.detach().clone())
        self.times.append(t.detach().clone())
        return out


class HalfOracle(nn.Module):
    """OracleNet on the first K input channels (the noisy label); the previous estimate is ignored."""

    def __init__(self, oracle: OracleNet) -> None:
        super().__init__()
        self.oracle = oracle

    def forward(self, x, t, conditioned=None):
        return self.oracle(x[:, : self.oracle.num_classes], t, conditioned=conditioned)


def _tiny(objective: str = "sample", seed: int = 0) -> DiffusionSegmenter:
    torch.manual_seed(seed)
    net = Recorder(TinyConvNet(3, 6, out_channels=3))
    return DiffusionSegmenter(net, num_classes=3, objective=objective, self_condition=True).eval()


def _widit(classes: int = 2, seed: int = 0, **options) -> DiffusionSegmenter:
    net = WiDiT(
        spatial_dim=3, in_channels=2 * classes, out_channels=classes, cond_channels=1, hidden_size=32, depth=2,
        num_heads=2, window_size=2, patch_size=2, learn_sigma=False, **options,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return DiffusionSegmenter(net, num_classes=classes, self_condition=True).eval()


@pytest.mark.parametrize(
    ("objective", "sampler"), [("sample", "ddim"), ("epsilon", "dpmpp_2m"), ("v_prediction", "ddim"), ("flow", "heun")]
)
def test_an_oracle_is_recovered_exactly(objective, sampler):
    label = random_labels((2, 1, 6, 5, 4), 3)
    segmenter = DiffusionSegmenter(HalfOracle(OracleNet(3)), num_classes=3, objective=objective, self_condition=True)
    segmenter.net = HalfOracle(OracleNet(3, objective, segmenter.noise_scheduler))
    samples = segmenter.sample(label.float(), steps=4, num_samples=2, sampler=sampler, shared_steps=1)
    expected = encode_labels(label, 3)
    torch.testing.assert_close(samples, expected.expand_as(samples), atol=2e-3, rtol=0)


@pytest.mark.parametrize("objective", ["sample", "epsilon", "flow"])
def test_each_step_reads_the_previous_steps_clean_estimate(objective):
    segmenter, image = _tiny(objective), torch.randn(2, 1, 6, 6, 6)
    samples = segmenter.sample(image, steps=4, num_samples=1, generator=torch.Generator().manual_seed(1))
    net = segmenter.net
    assert [x.shape[1] for x in net.inputs] == [6] * 4
    assert torch.equal(net.inputs[0][:, 3:], torch.zeros_like(net.inputs[0][:, 3:]))
    for i in range(1, 4):
        x_prev, out_prev = net.inputs[i - 1][:, :3], net.outputs[i - 1]
        expected = x0_estimate(objective, segmenter.noise_scheduler, out_prev, x_prev, net.times[i - 1]).clamp(-1, 1)
        torch.testing.assert_close(net.inputs[i][:, 3:], expected, atol=1e-6, rtol=0)
        assert float(net.inputs[i][:, 3:].abs().max()) > 0
    assert samples.shape == (1, 2, 3, 6, 6, 6)


def test_runs_do_not_share_state_and_chunking_changes_nothing():
    segmenter, image = _tiny(), torch.randn(1, 1, 6, 6, 6)
    options = {"steps": 3, "num_samples": 4}
    whole = segmenter.sample(image, generator=torch.Generator().manual_seed(5), **options)
    chunked = segmenter.sample(image, generator=torch.Generator().manual_seed(5), chunk_size=1, **options)
    # every chunk starts from zeros, not from the chunk before (a leak would move the members by far more)
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=0)
    again = segmenter.sample(image, generator=torch.Generator().manual_seed(5), **options)
    assert torch.equal(whole, again)


@pytest.mark.parametrize("objective", ["sample", "flow"])
def test_a_branch_starts_from_the_trunks_estimate_clamped(objective):
    """The trunk's clean estimate is unclipped for flow (and without clip_sample): the branch reads it clamped to the
    labels' range, as every other estimate it is trained on."""
    segmenter, image = _tiny(objective), torch.randn(1, 1, 6, 6, 6)
    with torch.no_grad():
        for p in segmenter.net.parameters():
            p.mul_(20.0)  # outputs far outside [-1, 1]
    seen = []
    segmenter.sample(image, steps=3, num_samples=2, shared_steps=1, progress=seen.append)
    trunk_estimate = seen[0]["x"]  # the trunk's last "x" is its clean estimate
    branch_input = segmenter.net.inputs[1]  # first call of the members: (2 members, 6, *S)
    if objective == "flow":
        assert float(trunk_estimate.abs().max()) > 1.5  # the clamp below has something to do
    torch.testing.assert_close(branch_input[:, 3:], trunk_estimate.repeat(2, 1, 1, 1, 1).clamp(-1, 1))


@pytest.mark.parametrize("windows", [False, True])
def test_stitched_sampling_matches_the_direct_net_and_keeps_the_cache_exact(windows):
    """SlidingWindowDenoiser gets the 2K-channel input like any x_t: whole-volume calls equal direct sampling; the
    windowed path equals itself without the image cache."""
    segmenter, image = _widit(), torch.randn(1, 1, 16, 8, 12, generator=torch.Generator().manual_seed(3))
    denoiser = SlidingWindowDenoiser(segmenter.net, (8, 8, 8), overlap=0.5, max_whole_voxels=0 if windows else None)
    options = {"steps": 3, "num_samples": 2}
    stitched = segmenter.sample(image, generator=torch.Generator().manual_seed(7), model_fn=denoiser, **options)
    assert denoiser.runs_whole((2, 4, 16, 8, 12)) is not windows
    if not windows:
        direct = segmenter.sample(image, generator=torch.Generator().manual_seed(7), **options)
        torch.testing.assert_close(stitched, direct, atol=1e-5, rtol=0)
    else:
        denoiser.condition_cache.enabled = False
        plain = segmenter.sample(image, generator=torch.Generator().manual_seed(7), model_fn=denoiser, **options)
        assert torch.equal(stitched, plain)


class ReturnsEstimate(nn.Module):
    """An analytic stand-in: returns the second half of its input (the self-conditioning estimate), unchanged."""

    def forward(self, x, t, conditioned=None):
        return x[:, x.shape[1] // 2 :] * 1.0


def test_windows_split_the_estimate_from_the_noisy_label_exactly():
    """Stitched over overlapping windows, a net that returns its input's estimate half gives that half back: the
    windows carry the 2K channels and hand the net exactly them, the image apart."""
    x = torch.randn(2, 4, 20, 12, 16, generator=torch.Generator().manual_seed(0))
    image = torch.randn(2, 1, 20, 12, 16)
    denoiser = SlidingWindowDenoiser(ReturnsEstimate(), (8, 8, 8), overlap=0.5, max_whole_voxels=0, patch_size=1,
                                     align=1)  # fmt: skip
    out = denoiser(x, torch.tensor([500.0, 500.0]), image)
    assert denoiser.num_windows > 2
    torch.testing.assert_close(out, x[:, 2:], atol=1e-5, rtol=0)


def test_training_conditions_the_drawn_rows_on_their_own_estimate():
    segmenter = _tiny().train()
    image, label = torch.randn(8, 1, 6, 6, 6), random_labels((8, 1, 6, 6, 6), 3)
    net = segmenter.net
    parts = segmenter.loss(image, label, generator=torch.Generator().manual_seed(4))
    first, second = net.inputs  # the estimate pass (chosen rows only), then the trained pass (every row)
    assert second.shape[0] == 8 and 0 < first.shape[0] < 8  # a draw at SELF_CONDITION_PROB = 0.5 picked some rows
    assert SELF_CONDITION_PROB == 0.5
    assert torch.equal(first[:, 3:], torch.zeros_like(first[:, 3:]))
    estimate_rows = [i for i in range(8) if second[i, 3:].abs().max() > 0]
    assert len(estimate_rows) == first.shape[0]
    torch.testing.assert_close(second[estimate_rows, :3], first[:, :3])  # the same x_t
    t = net.times[1][estimate_rows]
    expected = x0_estimate("sample", segmenter.noise_scheduler, net.outputs[0], first[:, :3], t).clamp(-1, 1)
    torch.testing.assert_close(second[estimate_rows, 3:], expected)
    parts["loss"].backward()  # the gradient flows through the second pass only (the first ran under no_grad)
    assert all(p.grad is not None for p in segmenter.parameters())
    net.inputs.clear()
    again = segmenter.loss(image, label, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(again["loss"], parts["loss"])


def test_a_checkpoint_keeps_self_conditioning(tmp_path):
    segmenter, image = _widit(), torch.randn(1, 1, 8, 8, 8)
    path = save_segmenter(segmenter, tmp_path / "model.pt")
    loaded, _ = load_segmenter(path)
    assert loaded.self_condition and loaded.config == segmenter.config
    options = {"steps": 2, "num_samples": 2}
    assert torch.equal(
        loaded.sample(image, generator=torch.Generator().manual_seed(1), **options),
        segmenter.sample(image, generator=torch.Generator().manual_seed(1), **options),
    )


@pytest.mark.parametrize(("in_channels", "on"), [(2, True), (4, False)])
def test_the_networks_input_channels_must_fit(in_channels, on):
    net = WiDiT(spatial_dim=3, in_channels=in_channels, out_channels=2, cond_channels=1, hidden_size=32, depth=1,
                num_heads=2, window_size=2, patch_size=2, learn_sigma=False)  # fmt: skip
    with pytest.raises(ValueError, match=f"self_condition={on} with num_classes=2.*in_channels={in_channels}"):
        DiffusionSegmenter(net, num_classes=2, self_condition=on)
    with pytest.raises(ValueError, match="self_condition"):
        DiffusionSegmenter(net, num_classes=2, self_condition="yes")


def test_a_self_conditioned_net_must_return_k_channels():
    """WiDiT's out_channels defaults to its in_channels: at 2K inputs the output must be given as K."""
    net = WiDiT(spatial_dim=3, in_channels=4, cond_channels=1, hidden_size=32, depth=1, num_heads=2, window_size=2,
                patch_size=2, learn_sigma=False)  # fmt: skip
    with pytest.raises(ValueError, match="learn_sigma=False: the network must return out_channels=2 .* got 4"):
        DiffusionSegmenter(net, num_classes=2, self_condition=True)
