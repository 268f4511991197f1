"""The higher-order and stochastic solvers: exact recovery with an oracle denoiser, their order of convergence on
Gaussian data (where the probability-flow ODE has a closed-form solution), and the SDE's stationary marginals."""

import math

import pytest
import torch
from diffusion_standins import OracleNet, random_labels
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler

from medwidit.diffusion import (
    DiffusionSegmenter,
    ddim_sample,
    dpmpp_2m_sample,
    encode_labels,
    euler_maruyama_sample,
    flow_euler_sample,
    heun_sample,
    schedule_arguments,
    timestep_list,
    to_labels,
    to_probabilities,
)

C = 0.5  # the data: x0 ~ N(0, C^2) per voxel, whose ideal denoiser is linear in x_t


def _recovers(prediction, sampler, label, steps, atol):
    net = OracleNet(3, prediction)
    segmenter = DiffusionSegmenter(net, num_classes=3, objective=prediction)
    net.noise_scheduler = segmenter.noise_scheduler
    generator = torch.Generator().manual_seed(0)
    samples = segmenter.sample(label.float(), steps=steps, sampler=sampler, num_samples=2, generator=generator)
    assert all(torch.equal(to_labels(to_probabilities(member)), label) for member in samples)
    assert torch.allclose(samples, encode_labels(label, 3).expand_as(samples), atol=atol)
    return net


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 50, 1000])
@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v_prediction"])
def test_dpmpp_2m_with_the_true_prediction_recovers_the_label(prediction, steps):
    _recovers(prediction, "dpmpp_2m", random_labels((2, 1, 8, 8), 3), steps, atol=1e-3)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 1000])
@pytest.mark.parametrize("sampler", ["heun", "euler_maruyama"])
def test_flow_solvers_with_the_true_velocity_recover_the_label(spatial_dim, sampler, steps):
    _recovers("flow", sampler, random_labels((1, 1) + (6,) * spatial_dim, 3), steps, atol=1e-4)


def test_heun_calls_the_network_at_each_step_and_each_next_step_but_the_data_end():
    net = _recovers("flow", "heun", random_labels((1, 1, 4, 4), 3), 4, atol=1e-4)
    assert [call[1][0].item() for call in net.calls] == [1000, 750, 750, 500, 500, 250, 250]  # 2 * 4 - 1 calls


def _gaussian_x0(alphas_cumprod):
    def denoise(x, t):  # E[x0 | x_t] for x0 ~ N(0, C^2): sqrt(abar) C^2 / (abar C^2 + 1 - abar) x_t
        a = alphas_cumprod[int(t)].item()
        return (math.sqrt(a) * C**2 / (a * C**2 + 1 - a)) * x

    return denoise


def _gaussian_velocity(x, t):
    s = t / 1000  # E[x0 - eps | x_s] on x_s = (1 - s) x0 + s eps
    return ((1 - s) * C**2 - s) / ((1 - s) ** 2 * C**2 + s**2) * x


def test_dpmpp_2m_is_second_order_where_ddim_is_first():
    # a schedule uniform in lambda = log(alpha / sigma) from -4 to 4; the ODE maps x_t to x_t * sd(0) / sd(t) exactly
    abar = torch.sigmoid(2 * torch.linspace(4, -4, 961, dtype=torch.float64))
    x = torch.randn(1, 1, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = x * math.sqrt((abar[0] * C**2 + 1 - abar[0]) / (abar[960] * C**2 + 1 - abar[960]))
    errors = {}
    for name, solver in (("ddim", ddim_sample), ("dpmpp_2m", dpmpp_2m_sample)):
        for stride in (48, 24, 12):
            out = solver(
                _gaussian_x0(abar),
                x,
                list(range(960, -1, -stride)),
                abar,
                prediction_type="sample",
                final_alpha_cumprod=abar[0].item(),
            )
            errors[name, stride] = (out - exact).abs().max().item()
    assert 3.5 < errors["dpmpp_2m", 24] / errors["dpmpp_2m", 12] < 4.5  # halving the step quarters the error
    assert 1.8 < errors["ddim", 24] / errors["ddim", 12] < 2.2
    assert errors["dpmpp_2m", 48] < errors["ddim", 48] / 5


def test_dpmpp_2m_takes_ddim_steps_until_it_has_a_history():
    scheduler = DDIMScheduler(1000, "scaled_linear_beta", clip_sample=False)
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    denoise = _gaussian_x0(scheduler.alphas_cumprod)
    for steps, equal in ((1, True), (2, True), (3, False)):
        timesteps = timestep_list(scheduler, steps)
        ours = dpmpp_2m_sample(denoise, x, timesteps, **schedule_arguments(scheduler))
        ddim = ddim_sample(denoise, x, timesteps, **schedule_arguments(scheduler))
        assert torch.allclose(ours, ddim, atol=1e-5) == equal, steps


def test_heun_is_second_order_where_euler_is_first():
    x = torch.randn(1, 1, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = x * C  # the flow ODE maps N(0, 1) at t = T onto N(0, C^2) at t = 0 monotonically, hence linearly
    errors = {}
    for name, solver in (("euler", flow_euler_sample), ("heun", heun_sample)):
        for steps in (10, 20, 40):
            out = solver(_gaussian_velocity, x, timestep_list(RFlowScheduler(1000), steps), 1000)
            errors[name, steps] = (out - exact).abs().max().item()
    assert 3.5 < errors["heun", 20] / errors["heun", 40] < 4.5
    assert 1.8 < errors["euler", 20] / errors["euler", 40] < 2.2
    assert errors["heun", 10] < errors["euler", 10] / 5


@pytest.mark.parametrize("diffusion_norm", [1.0, 3.0])
def test_euler_maruyama_keeps_the_data_marginal(diffusion_norm):
    x = torch.randn(1, 1, 20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    timesteps = timestep_list(RFlowScheduler(1000), 100)
    out = euler_maruyama_sample(
        _gaussian_velocity,
        x,
        timesteps,
        1000,
        diffusion_norm=diffusion_norm,
        generator=torch.Generator().manual_seed(1),
    )
    ode = flow_euler_sample(_gaussian_velocity, x, timesteps, 1000)
    assert abs(out.std().item() - C) < 0.015 and abs(out.mean().item()) < 0.015  # N(0, C^2) again
    correlation = torch.corrcoef(torch.stack([out.flatten(), ode.flatten()]))[0, 1].item()
    assert correlation < 0.95  # the noise changed the path, not just the rounding


def test_euler_maruyama_without_diffusion_is_flow_euler():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    timesteps = timestep_list(RFlowScheduler(1000), 6)
    ode = flow_euler_sample(_gaussian_velocity, x, timesteps, 1000)
    assert torch.equal(euler_maruyama_sample(_gaussian_velocity, x, timesteps, 1000, diffusion_norm=0.0), ode)
    with pytest.raises(ValueError, match="diffusion_norm"):
        euler_maruyama_sample(_gaussian_velocity, x, timesteps, 1000, diffusion_norm=-1.0)


def test_euler_maruyama_reproduces_with_the_same_generators_per_member():
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    timesteps = timestep_list(RFlowScheduler(1000), 5)

    def draw(seeds):
        return euler_maruyama_sample(
            _gaussian_velocity, x, timesteps, 1000, generator=[torch.Generator().manual_seed(s) for s in seeds]
        )

    assert torch.equal(draw([1, 2]), draw([1, 2]))
    assert torch.equal(draw([1, 2])[:2], draw([1, 3])[:2]) and not torch.equal(draw([1, 2]), draw([1, 3]))


def test_an_update_rule_becomes_a_sampler_of_the_family():
    """CONTRIBUTING's recipe: one update rule, wrapped by gaussian_sampler, is a sampler with the family's signature
    (here the one-step jump to the x0 estimate, which an oracle makes exact); its options are checked once, by name."""
    from medwidit.diffusion.samplers import gaussian_sampler

    def _jump(*, scale: float = 1.0, generator=None):
        """Jump to the (scaled) x0 estimate."""
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}.")
        return lambda x, x0, eps, frac, a_t, a_s, last: scale * x0

    jump_sample = gaussian_sampler(_jump)
    assert jump_sample.__name__ == "jump_sample" and jump_sample.__doc__ == _jump.__doc__
    scheduler = DDIMScheduler(1000, prediction_type="sample")
    x0 = encode_labels(random_labels((1, 1, 4, 4), 3), 3)
    steps = []
    out = jump_sample(lambda x, t: x0, torch.randn(x0.shape), timestep_list(scheduler, 3),
                      **schedule_arguments(scheduler), callback=steps.append)  # fmt: skip
    assert torch.equal(out, x0) and [s["t"] for s in steps] == timestep_list(scheduler, 3)
    with pytest.raises(ValueError, match="scale must be positive"):
        jump_sample(lambda x, t: x0, x0, [999], **schedule_arguments(scheduler), scale=0)
    with pytest.raises(TypeError, match="scal"):
        jump_sample(lambda x, t: x0, x0, [999], **schedule_arguments(scheduler), scal=2)
