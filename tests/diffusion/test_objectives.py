"""Each objective trains against what MONAI's schedulers define, and the hybrid loss trains only the variance."""

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler

from medwidit.diffusion import DiffusionSegmenter, encode_labels
from medwidit.diffusion.objectives import (
    prediction_to_x0_eps,
    sample_training_timesteps,
    training_target,
    vlb_terms,
    x0_estimate,
)
from medwidit.diffusion.samplers import randn_like


class TargetNet(torch.nn.Module):
    """Records x_t and t, and returns MONAI's own training target for that x_t, so the diffusion loss must be 0."""

    def __init__(self, objective, x0, noise, t):
        super().__init__()
        self.objective, self.x0, self.noise, self.t = objective, x0, noise, t
        self.seen = {}

    def forward(self, x_t, t, conditioned=None):
        self.seen.update(x_t=x_t, t=t, cond=conditioned)
        if self.objective == "flow":
            return self.x0 - self.noise  # MONAI RFlowScheduler docstring: loss against (inputs - noise)
        if self.objective == "v_prediction":
            return DDIMScheduler(1000, "scaled_linear_beta").get_velocity(self.x0, self.noise, self.t)
        return self.x0 if self.objective == "sample" else self.noise


@pytest.mark.parametrize("objective", ["sample", "epsilon", "v_prediction", "flow"])
def test_training_pair_matches_monai(spatial_dim, objective):
    shape = (3, 1) + (8,) * spatial_dim
    label = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(1))
    image = torch.randn(shape)
    x0 = encode_labels(label, 3)
    # replay the segmenter's draws: timesteps first, then the noise, from the same generator
    g = torch.Generator().manual_seed(7)
    t = sample_training_timesteps(objective, 1000, 3, generator=g)
    noise = randn_like(x0, g)
    net = TargetNet(objective, x0, noise, t)
    segmenter = DiffusionSegmenter(net, num_classes=3, objective=objective, aux_weight=0.0)
    parts = segmenter.loss(image, label, generator=torch.Generator().manual_seed(7))
    if objective == "flow":
        expected_x_t = RFlowScheduler(1000, use_discrete_timesteps=False).add_noise(x0, noise, t)
        assert t.is_floating_point() and 0 <= t.min() and t.max() < 1000
    else:
        expected_x_t = DDIMScheduler(1000, "scaled_linear_beta").add_noise(x0, noise, t)
        assert t.dtype == torch.int64
    assert torch.allclose(net.seen["x_t"], expected_x_t, atol=1e-6)
    assert net.seen["t"].dtype == torch.float32 and torch.equal(net.seen["t"], t.float())  # step scale, DESIGN 7
    assert parts["diffusion"].item() == pytest.approx(0.0, abs=1e-10)
    assert torch.equal(net.seen["cond"], image)


@pytest.mark.parametrize("objective", ["sample", "flow"])
def test_logit_normal_timesteps_follow_their_distribution(objective):
    """t/T = sigmoid(m + s z): its quantiles are the sigmoid of the normal's, inside [0, T) for either objective."""
    g = torch.Generator().manual_seed(0)
    args = {"location": 1.0, "scale": 0.5}
    t = sample_training_timesteps(objective, 1000, 20000, generator=g, sampling="logit_normal", args=args)
    assert t.dtype == (torch.float32 if objective == "flow" else torch.int64)
    assert 0 <= t.min() and t.max() < 1000
    normal = torch.distributions.Normal(1.0, 0.5)
    for q in (0.1, 0.5, 0.9):
        expected = 1000 * torch.sigmoid(normal.icdf(torch.tensor(q)))
        assert torch.quantile(t.double(), q).item() == pytest.approx(expected.item(), abs=6.0)
    # a location far out saturates at the first or last step instead of leaving the range
    far = sample_training_timesteps(objective, 1000, 64, sampling="logit_normal", args={"location": 30.0})
    assert far.max() < 1000 and far.min() > 999 - 1e-3
    near = sample_training_timesteps(objective, 1000, 64, sampling="logit_normal", args={"location": -30.0})
    assert near.min() >= 0 and near.max() < 1e-3  # floor, not round or ceil: t = 0 for the integer steps


def test_uniform_timesteps_draw_as_before_the_option_existed():
    """The default draws are torch's own on the generator, unchanged: seeded runs repeat across the option."""
    t = sample_training_timesteps("sample", 1000, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(0)))
    flow = sample_training_timesteps("flow", 1000, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flow, torch.rand(8, generator=torch.Generator().manual_seed(0)) * 1000)


@pytest.mark.parametrize("objective", ["sample", "flow"])
@pytest.mark.parametrize("sampling, args", [("logit_normal", {"location": 2.0}), ("noisiest_share", {"share": 0.5})])
def test_segmenter_trains_at_the_timesteps_its_sampling_draws(objective, sampling, args):
    """The segmenter's loss sees exactly the draws of its configured distribution, on the same generator."""
    shape = (4, 1, 8, 8)
    label, image = torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(1)), torch.randn(shape)
    options = {"timestep_sampling": sampling, "timestep_args": args}
    g = torch.Generator().manual_seed(5)
    t = sample_training_timesteps(objective, 1000, 4, generator=g, sampling=sampling, args=args)
    x0 = encode_labels(label, 2)
    net = TargetNet(objective, x0, randn_like(x0, g), t)
    segmenter = DiffusionSegmenter(net, num_classes=2, objective=objective, aux_weight=0.0, **options)
    segmenter.loss(image, label, generator=torch.Generator().manual_seed(5))
    assert torch.equal(net.seen["t"], t.float())
    assert segmenter.config["timestep_sampling"] == sampling
    filled = {"location": 2.0, "scale": 1.0} if sampling == "logit_normal" else {"share": 0.5}  # defaults filled in
    assert segmenter.config["timestep_args"] == filled


@pytest.mark.parametrize(
    "options, match",
    [
        ({"timestep_sampling": "lognormal"}, "timestep_sampling must be one of"),
        ({"timestep_sampling": "logit_normal", "timestep_args": {"shift": 1.0}}, "timestep_args .*'shift'"),
        ({"timestep_args": {"location": 1.0}}, "timestep_args for 'uniform' takes nothing"),
        ({"timestep_sampling": "logit_normal", "timestep_args": {"scale": 0.0}}, "scale > 0"),
        ({"timestep_sampling": "logit_normal", "timestep_args": {"location": "a"}}, r"timestep_args\['location'\]"),
        ({"timestep_sampling": "logit_normal", "timestep_args": {"scale": float("inf")}}, "finite number"),
    ],
)
def test_bad_timestep_sampling_names_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        DiffusionSegmenter(lambda x, t, conditioned=None: x, num_classes=2, **options)


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_x0_from_prediction_matches_monai_ddim_step(prediction_type):
    scheduler = DDIMScheduler(1000, "scaled_linear_beta", prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(10)
    x_t, output = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    _, monai_x0 = scheduler.step(output, 500, x_t)
    x0, _ = prediction_to_x0_eps(prediction_type, output, x_t, scheduler.alphas_cumprod[500])
    assert torch.allclose(x0, monai_x0, atol=1e-5)


@pytest.mark.parametrize("objective", ["sample", "epsilon", "v_prediction", "flow"])
def test_x0_estimate_of_the_training_target_is_x0(objective):
    """A network that predicts its training target exactly implies the clean labels: the x0 that the auxiliary loss
    and self-conditioning read back (a sign slip in the flow velocity sent x0 to the other side of x_t)."""
    if objective == "flow":
        scheduler, t = RFlowScheduler(1000, use_discrete_timesteps=False), torch.tensor([1.5, 400.25, 999.0])
    else:
        scheduler, t = DDIMScheduler(1000, "scaled_linear_beta"), torch.tensor([0, 400, 999])
    x0 = encode_labels(torch.randint(0, 3, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0)), 3)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_t = scheduler.add_noise(x0, noise, t)
    target = training_target(objective, scheduler, x0, noise, t)
    torch.testing.assert_close(x0_estimate(objective, scheduler, target, x_t, t), x0, atol=1e-4, rtol=0)


def test_cond_dropout_replaces_the_image_by_zeros():
    seen = []

    def net(x, t, conditioned=None):
        seen.append(conditioned.flatten(1).abs().sum(1) == 0)
        return torch.zeros_like(x)

    segmenter = DiffusionSegmenter(net, num_classes=2, cond_drop_prob=0.5)
    image, label = torch.ones(64, 1, 4, 4), torch.zeros(64, 1, 4, 4, dtype=torch.long)
    segmenter.loss(image, label, generator=torch.Generator().manual_seed(0))
    dropped = seen[0].float().mean().item()
    assert 0.25 < dropped < 0.75  # about half of the batch sees zeros, the rest the image


def test_vlb_is_zero_for_the_true_posterior_and_trains_only_the_variance():
    scheduler = DDIMScheduler(1000, "scaled_linear_beta")
    x0 = encode_labels(torch.randint(0, 2, (4, 1, 6, 6), generator=torch.Generator().manual_seed(0)), 2)
    t = torch.tensor([5, 100, 500, 999])
    x_t = scheduler.add_noise(x0, torch.randn(x0.shape), t)
    # frac = -1 selects the posterior variance beta~: with the true x0 the KL is exactly 0
    kl = vlb_terms(scheduler, x0, x_t, t, x0, torch.full_like(x0, -1.0))
    assert torch.allclose(kl, torch.zeros(4), atol=1e-5)
    # at t = 0 the decoder NLL of a confident correct mean is ~0 and of a wrong one is large
    t0 = torch.zeros(4, dtype=torch.long)
    good = vlb_terms(scheduler, x0, x0, t0, x0, torch.full_like(x0, -1.0))
    bad = vlb_terms(scheduler, x0, x0, t0, -x0, torch.full_like(x0, -1.0))
    assert good.max() < 1e-3 and bad.min() > 10


def test_hybrid_loss_gradient_reaches_variance_channels_only_through_vlb():
    net = torch.nn.Conv2d(3, 4, 3, padding=1)  # [x_t (2), image (1)] -> [prediction (2), variance (2)]

    def call(x, t, conditioned=None):
        return net(torch.cat([x, conditioned], 1))

    segmenter = DiffusionSegmenter(call, num_classes=2, learn_sigma=True, scheduler="ddpm")
    image, label = torch.randn(4, 1, 8, 8), torch.randint(0, 2, (4, 1, 8, 8))
    parts = segmenter.loss(image, label, generator=torch.Generator().manual_seed(3))
    assert set(parts) == {"loss", "diffusion", "aux", "vlb"}
    grad_vlb = torch.autograd.grad(parts["vlb"], net.weight, retain_graph=True)[0]
    grad_simple = torch.autograd.grad(parts["diffusion"] + parts["aux"], net.weight)[0]
    assert grad_vlb[:2].abs().max() == 0 and grad_vlb[2:].abs().max() > 0  # stop-gradient on the mean
    assert grad_simple[2:].abs().max() == 0 and grad_simple[:2].abs().max() > 0


@pytest.mark.parametrize("objective", ["sample", "epsilon", "v_prediction", "flow"])
def test_aux_x0_estimate_keeps_its_value_and_bounds_its_gradient(objective):
    scheduler = (RFlowScheduler if objective == "flow" else DDIMScheduler)(1000)
    t = torch.tensor([0, 500, 999])
    x_t = torch.randn(3, 2, 4, 4)
    output = torch.randn(3, 2, 4, 4, requires_grad=True)
    plain = x0_estimate(objective, scheduler, output, x_t, t)
    bounded = x0_estimate(objective, scheduler, output, x_t, t, bounded_gradient=True)
    assert torch.equal(plain, bounded)
    (grad,) = torch.autograd.grad(bounded.sum(), output)
    assert grad.abs().max() <= 1.0 + 1e-6  # |d x0 / d prediction| <= 1 for every objective and time
    if objective == "epsilon":  # without the bound the noisiest sample's gradient is ~100x
        (raw,) = torch.autograd.grad(plain.sum(), output)
        assert raw[2].abs().max() > 50


@pytest.mark.parametrize("objective", ["sample", "flow"])
def test_noisiest_share_puts_that_share_at_the_noisiest_time_and_the_rest_uniform(objective):
    """A share p of the rows at T - 1 (flow: just below T), the others uniform over [0, T); p = 0 is uniform, p = 1
    all noisiest; a share outside [0, 1] is refused naming it."""
    g = torch.Generator().manual_seed(0)
    t = sample_training_timesteps(objective, 1000, 20000, generator=g, sampling="noisiest_share", args={"share": 0.3})
    top = 1000 * (1 - 1e-6) if objective == "flow" else 999
    at_top = t == top
    assert t.dtype == (torch.float32 if objective == "flow" else torch.int64) and t.max() < 1000 and t.min() >= 0
    assert at_top.float().mean().item() == pytest.approx(0.3 + 0.7 / 1000 * (objective != "flow"), abs=0.01)
    rest = t[~at_top].double() / 1000
    for q in (0.1, 0.5, 0.9):  # uniform below
        assert torch.quantile(rest, q).item() == pytest.approx(q, abs=0.02)
    for share, expected in ((0.0, 0), (1.0, 64)):
        t = sample_training_timesteps(objective, 1000, 64, sampling="noisiest_share", args={"share": share})
        assert int((t == top).sum()) in ((expected,) if objective == "flow" or share else range(0, 3))
    with pytest.raises(ValueError, match="share in \\[0, 1\\]"):
        sample_training_timesteps(objective, 1000, 4, sampling="noisiest_share", args={"share": 1.5})
    with pytest.raises(ValueError, match="takes \\['share'\\]"):
        sample_training_timesteps(objective, 1000, 4, sampling="noisiest_share", args={"location": 1.0})
