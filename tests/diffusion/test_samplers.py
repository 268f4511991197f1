"""Samplers: a perfect predictor gives the label back in any step count; the update rules equal MONAI's where
MONAI's own stepping is consistent (n = T); the timestep list is the one set_timesteps built, on a private copy; the
outputs are the ones recorded before the samplers took their schedule as arguments."""

import pytest
import torch
from diffusion_standins import OracleNet, random_labels
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler
from sampler_reference import CASES, REFERENCE, VECTOR_EXP_CASES, run_case

from medwidit.diffusion import (
    SAMPLERS,
    DiffusionSegmenter,
    ddim_sample,
    ddpm_sample,
    encode_labels,
    flow_euler_sample,
    schedule_arguments,
    timestep_list,
    to_labels,
    to_probabilities,
)


def _oracle_segmenter(prediction, num_classes=3, **kwargs):
    objective = "flow" if prediction == "flow" else prediction
    net = OracleNet(num_classes, prediction, variance_channels=kwargs.get("learn_sigma", False))
    segmenter = DiffusionSegmenter(net, num_classes=num_classes, objective=objective, **kwargs)
    net.noise_scheduler = segmenter.noise_scheduler
    return segmenter, net


def _assert_recovers(segmenter, label, atol, **sample_kwargs):
    image = label.float()  # the oracle reads the label from its conditioning image
    samples = segmenter.sample(image, generator=torch.Generator().manual_seed(0), **sample_kwargs)
    assert samples.shape == (1, *encode_labels(label, segmenter.num_classes).shape)
    assert torch.equal(to_labels(to_probabilities(samples[0])), label)
    assert torch.allclose(samples[0], encode_labels(label, segmenter.num_classes), atol=atol)


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 50, 1000])
@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v_prediction"])
def test_ddim_with_the_true_prediction_recovers_the_label(prediction, steps):
    segmenter, _ = _oracle_segmenter(prediction)
    _assert_recovers(segmenter, random_labels((2, 1, 8, 8), 3), atol=1e-3, steps=steps)


def test_ddim_recovers_the_label_in_3d_with_eta():
    segmenter, _ = _oracle_segmenter("sample")
    _assert_recovers(segmenter, random_labels((1, 1, 6, 6, 6), 3), atol=0, steps=7, eta=1.0)


@pytest.mark.parametrize("steps", [1, 3, 25])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_ddpm_with_the_true_x0_recovers_the_label(steps, learn_sigma):
    segmenter, _ = _oracle_segmenter("sample", scheduler="ddpm", learn_sigma=learn_sigma)
    _assert_recovers(segmenter, random_labels((2, 1, 8, 8), 3), atol=0, steps=steps)


@pytest.mark.parametrize("steps", [1, 3, 10, 1000])
def test_flow_euler_with_the_true_velocity_recovers_the_label(spatial_dim, steps):
    segmenter, _ = _oracle_segmenter("flow")
    _assert_recovers(segmenter, random_labels((1, 1) + (6,) * spatial_dim, 3), atol=1e-4, steps=steps)


@pytest.mark.parametrize(
    "prediction, steps, expected",
    [
        ("sample", 1, [999]),
        ("sample", 2, [999, 0]),  # MONAI's DDIMScheduler.step would jump 999 -> 499 here
        ("sample", 3, [999, 500, 0]),
        ("flow", 4, [1000, 750, 500, 250]),  # RFlow: t in [0, T] with T = noise, seen on the step scale
    ],
)
def test_network_sees_the_set_timesteps_list_as_float_steps(prediction, steps, expected):
    segmenter, net = _oracle_segmenter(prediction)
    segmenter.sample(torch.zeros(2, 1, 4, 4), steps=steps)
    assert [call[1][0].item() for call in net.calls] == expected
    assert all(call[1].dtype == torch.float32 and call[1].shape == (2,) for call in net.calls)


@pytest.mark.parametrize("steps", [0, 1001, 2.0])
def test_step_count_out_of_range_raises(steps):
    segmenter, _ = _oracle_segmenter("sample")
    with pytest.raises(ValueError, match="steps must be an int in 1..1000"):
        segmenter.sample(torch.zeros(1, 1, 4, 4), steps=steps)


def _contracting(prediction_type):
    # a smooth, deterministic stand-in for a network, so that float32 differences do not grow along 1000 steps
    def denoise(x, t):
        return 0.5 * x if prediction_type == "sample" else 0.1 * torch.tanh(x)

    return denoise


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_ddim_equals_monai_step_where_monai_stride_is_consistent(prediction_type, eta):
    scheduler = DDIMScheduler(1000, "scaled_linear_beta", prediction_type=prediction_type)
    scheduler.set_timesteps(1000)  # list 999..0, stride 1: MONAI's re-derived previous step agrees with the list
    x_T = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    ours = ddim_sample(
        _contracting(prediction_type),
        x_T,
        scheduler.timesteps.tolist(),
        **schedule_arguments(scheduler),
        eta=eta,
        generator=torch.Generator().manual_seed(1),
    )
    x, g = x_T.clone(), torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:
        x, _ = scheduler.step(_contracting(prediction_type)(x, t), int(t), x, eta=eta, generator=g)
    assert torch.allclose(ours, x, atol=1e-3)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_equals_monai_step_on_the_full_chain(variance_type):
    scheduler = DDPMScheduler(1000, "scaled_linear_beta", variance_type=variance_type, prediction_type="sample")
    scheduler.set_timesteps(1000)
    x_T = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    ours = ddpm_sample(
        _contracting("sample"),
        x_T,
        scheduler.timesteps.tolist(),
        **schedule_arguments(scheduler),
        variance_type=variance_type,
        generator=torch.Generator().manual_seed(1),
    )
    x, g = x_T.clone(), torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:
        x, _ = scheduler.step(_contracting("sample")(x, t), int(t), x, generator=g)
    assert torch.allclose(ours, x, atol=1e-3)


def test_callback_reports_every_step():
    segmenter, _ = _oracle_segmenter("sample")
    seen = []
    segmenter.sample(torch.zeros(1, 1, 4, 4), steps=4, num_samples=2, chunk_size=1, progress=seen.append)
    assert [(info["chunk"], info["i"]) for info in seen] == [(c, i) for c in range(2) for i in range(4)]
    assert seen[-1]["t"] == 0 and seen[-1]["x"].shape == (1, 3, 4, 4)


def test_flow_euler_equals_monai_rflow_step_bit_for_bit():
    scheduler = RFlowScheduler(1000, use_discrete_timesteps=True)
    scheduler.set_timesteps(7)
    x_T = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    ours = flow_euler_sample(_contracting("epsilon"), x_T, scheduler.timesteps.tolist(), 1000)
    x, steps = x_T.clone(), scheduler.timesteps.tolist()
    for t, t_next in zip(steps, [*steps[1:], 0], strict=True):
        x, _ = scheduler.step(_contracting("epsilon")(x, t), t, x, t_next)
    assert torch.equal(ours, x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_equal_the_recorded_ones_bit_for_bit(name):
    # recorded at commit 317c463 (samplers that read a mutated MONAI scheduler); re-recorded when each case of a batch
    # got its own noise (sampler_reference.py's docstring); a per-voxel exp is held to float32 rounding, since CPUs'
    # vector units round it differently by an ulp (VECTOR_EXP_CASES)
    actual, recorded = run_case(name), torch.load(REFERENCE)[name]
    if name in VECTOR_EXP_CASES:
        torch.testing.assert_close(actual, recorded, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(actual, recorded)


@pytest.mark.parametrize("prediction", ["sample", "flow"])
def test_sampling_leaves_the_segmenter_scheduler_untouched(prediction):
    segmenter, _ = _oracle_segmenter(prediction)
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in vars(segmenter.noise_scheduler).items()}
    segmenter.sample(torch.zeros(1, 1, 4, 4), steps=3)
    after = vars(segmenter.noise_scheduler)
    assert before.keys() == after.keys()  # no num_inference_steps / timesteps set by the call
    assert all(torch.equal(v, after[k]) if torch.is_tensor(v) else v == after[k] for k, v in before.items())


def test_timestep_list_uses_a_private_copy():
    scheduler = DDIMScheduler(1000, "scaled_linear_beta")
    scheduler.set_timesteps(10)
    assert timestep_list(scheduler, 3) == [999, 500, 0]
    assert len(scheduler.timesteps) == 10


def test_flow_timesteps_are_monai_s_up_to_2048_and_distinct_beyond():
    """MONAI's RFlowScheduler passes its list through float16: exact up to T = 2048; T = 4000 repeated 976 steps and
    T = 70000 gave a negative time. timestep_list builds the same list in ints."""
    for total in (1000, 2048):
        scheduler = RFlowScheduler(num_train_timesteps=total, use_discrete_timesteps=True)
        for steps in (1, 2, 3, 10, 333, total):
            monai_list = scheduler.__class__(num_train_timesteps=total, use_discrete_timesteps=True)
            monai_list.set_timesteps(steps)
            assert timestep_list(scheduler, steps) == monai_list.timesteps.tolist(), (total, steps)
    for total in (4000, 70000):
        times = timestep_list(RFlowScheduler(num_train_timesteps=total, use_discrete_timesteps=True), 4000)
        assert times[0] == total and min(times) > 0 and len(set(times)) == 4000
        assert times == sorted(times, reverse=True)


@pytest.mark.parametrize("objective", ["sample", "epsilon", "v_prediction", "flow"])
def test_every_fitting_sampler_is_reachable_and_the_others_are_refused(objective):
    segmenter, _ = _oracle_segmenter(objective)
    label = random_labels((1, 1, 6, 6), 3)
    for name, spec in SAMPLERS.items():
        if objective in spec.objectives:
            samples = segmenter.sample(label.float(), steps=4, sampler=name)
            assert torch.allclose(samples[0], encode_labels(label, 3), atol=1e-3), name
        else:
            with pytest.raises(ValueError, match=f"sampler '{name}' does not fit objective '{objective}'"):
                segmenter.sample(label.float(), steps=4, sampler=name)


@pytest.mark.parametrize("objective, sampler", [("sample", "ddpm"), ("sample", "dpmpp_2m"), ("flow", "heun")])
def test_eta_is_refused_where_it_means_nothing(objective, sampler):
    segmenter, _ = _oracle_segmenter(objective)
    with pytest.raises(ValueError, match=rf"eta is an option of \['ddim'\] only, got eta=0.5 with sampler '{sampler}'"):
        segmenter.sample(torch.zeros(1, 1, 4, 4), sampler=sampler, eta=0.5)
    segmenter.sample(torch.zeros(1, 1, 4, 4), sampler=sampler, eta=0.0)  # the neutral value is accepted
