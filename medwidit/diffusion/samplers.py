"""How to sample: pure functions over a denoiser callable and a timestep list, k-diffusion style.

A Gaussian sampler is ``sampler(denoise, x, timesteps, alphas_cumprod, *, prediction_type, clip=None,
final_alpha_cumprod=1.0, generator=None, callback=None, **options)``; a flow sampler is ``sampler(denoise, x, timesteps,
num_train_timesteps, *, generator=None, callback=None, **options)``:

- ``denoise(x_t (B, K, *S), t: int | float) -> the network's prediction`` (B, K, *S), or (B, 2K, *S) with a learned
  variance (its raw output, or for an x0 model with softmax logits the estimate: ``DiffusionSegmenter``'s
  ``x0_activation``); for Gaussian samplers its meaning is ``prediction_type`` (MONAI's names: sample, epsilon,
  v_prediction), for flow samplers it is the velocity ``x0 - eps`` of the linear path
  ``x_t = (1 - t/T) x0 + (t/T) eps``;
- ``x`` is the starting noise x_T; the result is the clean estimate (B, K, *S);
- ``timesteps`` is the list of network times, noisiest first, built once by :func:`timestep_list` (MONAI's
  ``set_timesteps`` on a private copy of the scheduler) and indexed: the step after ``timesteps[i]`` is
  ``timesteps[i + 1]``, and after the last one the data end (``final_alpha_cumprod``, or t = 0 for flow).
  (MONAI's ``DDIMScheduler.step`` re-derives the previous step as ``t - T // n``, which disagrees with its own list:
  for n = 2 the list is [999, 0] but ``step`` jumps to 499; ``DDPMScheduler.step`` always goes to ``t - 1``. So the
  updates below are written out from the papers, on MONAI's noise schedule.)
- ``clip`` is the (low, high) range x0 estimates are clamped to, or None;
- ``generator`` is a ``torch.Generator`` or a sequence of them; a sequence splits the batch into equal blocks, one
  generator each, so that an ensemble member gets the same noise whether it is sampled alone or batched;
- ``callback`` receives ``{"i", "t", "x", "denoised"}`` once per step.

Each sampler is its update rule (``_ddim``, ``_heun``, ...: options checked once, then one step) wrapped by
:func:`gaussian_sampler` or :func:`flow_sampler`, which hold the family's signature and loop once for all.
:data:`SAMPLERS` is the one registry: name -> function, the objectives it fits and the options it takes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler, Scheduler

from medwidit.utils import check_int, check_range, choose, wide_float

from .objectives import (
    GAUSSIAN_OBJECTIVES,
    learned_log_variance,
    posterior_mean_variance,
    prediction_to_x0_eps,
    split_output,
)

__all__ = [
    "SAMPLERS",
    "VARIANCE_TYPES",
    "SamplerSpec",
    "check_shared_steps",
    "ddim_sample",
    "ddpm_sample",
    "dpmpp_2m_sample",
    "euler_maruyama_sample",
    "flow_euler_sample",
    "flow_sampler",
    "gaussian_sampler",
    "heun_sample",
    "randn_like",
    "resolve_sampler",
    "schedule_arguments",
    "timestep_list",
]

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None] | None


##################################################################################
#                        The schedule, built once per call                       #
##################################################################################


def check_shared_steps(shared_steps: int, steps: int) -> int:
    """The steps an ensemble shares before it branches: an int in 0..steps-1 (ValueError naming it)."""
    return check_int("shared_steps", shared_steps, low=0, high=steps - 1, hint=" (fewer than steps)")


def timestep_list(scheduler: Scheduler, steps: int) -> list:
    """Network times, noisiest first, of ``steps`` in 1..T: MONAI's ``set_timesteps`` on a private copy (the caller's
    scheduler is left as it was)."""
    check_int("steps", steps, low=1, high=scheduler.num_train_timesteps, hint=" (num_train_timesteps)")
    rflow = isinstance(scheduler, RFlowScheduler)
    if rflow and scheduler.use_discrete_timesteps and not scheduler.use_timestep_transform:
        # MONAI's list, without its pass through float16: that is exact only up to T = 2048 (T = 4000 repeated 976
        # steps, T = 70000 gave a negative time)
        total = scheduler.num_train_timesteps
        return [int(round((1.0 - i / steps) * total)) + scheduler.steps_offset for i in range(steps)]
    private = copy.deepcopy(scheduler)
    private.set_timesteps(steps)
    return private.timesteps.tolist()


def schedule_arguments(scheduler: Scheduler) -> dict:
    """What a sampler of ``scheduler``'s family takes beside the timesteps: the flow's T, or the Gaussian ``abar``
    table (T,), prediction type, clip range and the value of ``abar`` after the last step."""
    if isinstance(scheduler, RFlowScheduler):
        return {"num_train_timesteps": scheduler.num_train_timesteps}
    clip = tuple(scheduler.clip_sample_values) if getattr(scheduler, "clip_sample", False) else None
    final = float(scheduler.final_alpha_cumprod) if isinstance(scheduler, DDIMScheduler) else 1.0
    return {
        "alphas_cumprod": scheduler.alphas_cumprod,
        "prediction_type": scheduler.prediction_type,
        "clip": clip,
        "final_alpha_cumprod": final,
    }


def randn_like(x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on each generator's own device, then moved to ``x``'s."""
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    generators = list(generator)
    if not generators or x.shape[0] % len(generators):
        raise ValueError(f"{len(generators)} generators cannot split a batch of {x.shape[0]} into equal blocks.")
    block = (x.shape[0] // len(generators), *x.shape[1:])
    draws = [torch.randn(block, generator=g, device=g.device, dtype=x.dtype).to(x.device) for g in generators]
    return torch.cat(draws)


def _predict(denoise: Denoiser, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``denoise(x, t)`` -> (prediction (B, K, *S) in x's dtype, variance channels or None)."""
    prediction, frac = split_output(denoise(x, t), x)
    return prediction.to(x.dtype), frac


def _step_pairs(timesteps: Sequence) -> list[tuple[int, int]]:
    """[(t_i, t_{i+1})] with -1 after the last step: the data end."""
    steps = [int(t) for t in timesteps]
    return list(zip(steps, [*steps[1:], -1], strict=True))


def _clip(x0: torch.Tensor, clip: Sequence[float] | None) -> torch.Tensor:
    return x0 if clip is None else x0.clamp(clip[0], clip[1])


def _report(callback: Callback, i: int, t, x: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "denoised": denoised})


##################################################################################
#                 Gaussian diffusion: sample, epsilon, v_prediction              #
##################################################################################

# step(x_t, x0, eps, variance channels or None, abar_t, abar_s, last) -> x_s; made once per call by an update rule
GaussianStep = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float, float, bool], torch.Tensor
]


def gaussian_sampler(update: Callable[..., GaussianStep]) -> Callable[..., torch.Tensor]:
    """A Gaussian sampler of the family signature from its update rule; the loop over the timestep list, the x0/eps
    estimate of ``prediction_type`` (clipped), and the callback are this one, shared by every Gaussian sampler.

    ``update(*, generator, **options)`` checks the sampler's options once, before the first network call, and
    returns the ``GaussianStep`` of this call (its state, if any, lives in the closure)."""

    @torch.no_grad()
    def sample(
        denoise: Denoiser,
        x: torch.Tensor,
        timesteps: Sequence[int],
        alphas_cumprod: torch.Tensor,
        *,
        prediction_type: str,
        clip: Sequence[float] | None = None,
        final_alpha_cumprod: float = 1.0,
        generator: Generators = None,
        callback: Callback = None,
        **options,
    ) -> torch.Tensor:
        step = update(generator=generator, **options)  # an unknown option is update's TypeError
        abar = alphas_cumprod.double().tolist()
        for i, (t, s) in enumerate(_step_pairs(timesteps)):
            a_t, a_s = abar[t], (abar[s] if s >= 0 else final_alpha_cumprod)
            prediction, frac = _predict(denoise, x, t)
            x0, eps = prediction_to_x0_eps(prediction_type, prediction, x, a_t)
            x0 = _clip(x0, clip)
            x = step(x, x0, eps, frac, a_t, a_s, s < 0)
            _report(callback, i, t, x, x0)
        return x

    return _named(sample, update)


def _named(sample: Callable, update: Callable) -> Callable:
    """``sample`` named ``<rule>_sample`` and documented by its update rule's docstring."""
    sample.__name__ = sample.__qualname__ = update.__name__.lstrip("_") + "_sample"
    sample.__doc__ = update.__doc__
    return sample


def _ddim(*, eta: float = 0.0, generator: Generators = None) -> GaussianStep:
    """DDIM (Song et al. 2021): ``x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z`` (eq. 12), with
    ``sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)`` (eq. 16); eta = 0 is deterministic."""
    check_range("eta", eta, 0.0, 1.0, closed_high=True)

    def step(x, x0, eps, frac, a_t, a_s, last):
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) if eta > 0 else 0.0
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        return x + sigma * randn_like(x, generator) if sigma > 0 else x

    return step


def _ddpm(*, variance_type: str = "fixed_small", generator: Generators = None) -> GaussianStep:
    """DDPM ancestral sampling (Ho et al. 2020, alg. 2) on the respaced chain of improved DDPM (sec. 4):
    ``x_s ~ N(mu~(x_t, x0), Sigma)``, Sigma = beta~ (``fixed_small``), beta' (``fixed_large``) or the learned
    log-space mix of eq. 15 (``learned_range``, needs the variance channels); the last step adds no noise."""
    variance_type = choose("variance_type", variance_type, VARIANCE_TYPES)

    def step(x, x0, eps, frac, a_t, a_s, last):
        if variance_type == "learned_range" and frac is None:
            raise ValueError("variance_type='learned_range' needs a denoiser that returns 2K channels (learn_sigma).")
        a_t, a_s = (torch.tensor(a, dtype=wide_float(x.device), device=x.device) for a in (a_t, a_s))
        mean, post_var, beta = posterior_mean_variance(x0, x, a_t, a_s)
        if last:
            return mean
        if variance_type == "learned_range":
            log_var = learned_log_variance(frac, beta, post_var).to(x.dtype)
        else:
            log_var = (post_var if variance_type == "fixed_small" else beta).log().to(x.dtype)
        return mean + torch.exp(0.5 * log_var) * randn_like(x, generator)

    return step


def _half_log_snr(alpha_bar: float) -> float:
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2 (DPM-Solver, sec. 3.1)."""
    return 0.5 * math.log(alpha_bar / (1 - alpha_bar))


def _dpmpp_2m(*, generator: Generators = None) -> GaussianStep:
    """DPM-Solver++(2M) (Lu et al. 2022, alg. 2) on the data prediction, first order on the first and a final step."""
    # x_s = (sigma_s / sigma_t) x_t - alpha_s (e^-h - 1) D, h the step in lambda = log(alpha / sigma),
    # D = x0 + (x0 - x0_prev) / (2r), r = h_prev / h; deterministic once x_T is drawn (``generator`` is unused)
    previous: tuple[torch.Tensor, float] | None = None  # (x0, h) of the step before

    def step(x, x0, eps, frac, a_t, a_s, last):
        nonlocal previous
        if a_s >= 1:  # sigma_s = 0: lambda is infinite and the step lands on the data estimate
            return math.sqrt(a_s) * x0
        h = _half_log_snr(a_s) - _half_log_snr(a_t)
        d = x0 if previous is None else x0 + (x0 - previous[0]) * (h / (2 * previous[1]))
        previous = (x0, h)
        return math.sqrt((1 - a_s) / (1 - a_t)) * x - math.sqrt(a_s) * math.expm1(-h) * d

    return step


ddim_sample = gaussian_sampler(_ddim)
ddpm_sample = gaussian_sampler(_ddpm)
dpmpp_2m_sample = gaussian_sampler(_dpmpp_2m)


##################################################################################
#                Flow: velocity of the linear path, t = T noise -> 0 data         #
##################################################################################

# step(denoise, x_t, velocity, t, t_next, T) -> x at t_next; made once per call by an update rule
FlowStep = Callable[[Denoiser, torch.Tensor, torch.Tensor, float, float, int], torch.Tensor]


def _flow_pairs(timesteps: Sequence) -> list[tuple]:
    """[(t_i, t_{i+1})] with 0 (the data end) after the last step; times stay as given (int or float)."""
    steps = list(timesteps)
    return list(zip(steps, [*steps[1:], 0], strict=True))


def flow_sampler(update: Callable[..., FlowStep]) -> Callable[..., torch.Tensor]:
    """A flow sampler of the family signature from its update rule (see :func:`gaussian_sampler`); the loop, the
    velocity at ``t``, the x0 estimate ``x + v t / T`` and the callback are shared."""

    @torch.no_grad()
    def sample(
        denoise: Denoiser,
        x: torch.Tensor,
        timesteps: Sequence,
        num_train_timesteps: int,
        *,
        generator: Generators = None,
        callback: Callback = None,
        **options,
    ) -> torch.Tensor:
        step = update(generator=generator, **options)
        for i, (t, t_next) in enumerate(_flow_pairs(timesteps)):
            velocity, _ = _predict(denoise, x, t)
            x0 = x + velocity * t / num_train_timesteps
            x = step(denoise, x, velocity, t, t_next, num_train_timesteps)
            _report(callback, i, t, x, x0)
        return x

    return _named(sample, update)


def _flow_euler(*, generator: Generators = None) -> FlowStep:
    """Euler on the flow ODE from t = T to 0, ``x <- x + v (t - t_next) / T`` (SiT; MONAI RFlowScheduler.step)."""

    def step(denoise, x, velocity, t, t_next, num_train_timesteps):
        return x + velocity * (float(t - t_next) / num_train_timesteps)

    return step


def _heun(*, generator: Generators = None) -> FlowStep:
    """Heun's method on the flow ODE (SiT's ODE sampler; Karras et al. 2022, alg. 1, Euler on the last step)."""
    # x <- x + (v(x, t) + v(x_euler, t_next)) dt / 2; at t = 0 the velocity is not identifiable, so n steps make
    # 2n - 1 network calls; deterministic once x_T is drawn (``generator`` is unused)

    def step(denoise, x, velocity, t, t_next, num_train_timesteps):
        dt = float(t - t_next) / num_train_timesteps
        euler = x + velocity * dt
        if t_next > 0:
            corrector, _ = _predict(denoise, euler, t_next)
            euler = x + (velocity + corrector) * (dt / 2)
        return euler

    return step


def _euler_maruyama(*, diffusion_norm: float = 1.0, generator: Generators = None) -> FlowStep:
    """Euler–Maruyama on SiT's flow SDE (Ma et al. 2024; ``diffusion_form="sigma"``, ``last_step="Euler"``)."""
    # dx = (v + w score) ds + sqrt(2 w) dW with s = t / T, w = diffusion_norm * s, score = ((1 - s) v - x) / s;
    # the last step to t = 0 is a noiseless Euler step, so the sample ends on the x0 estimate
    check_range("diffusion_norm", diffusion_norm, 0.0, math.inf)

    def step(denoise, x, velocity, t, t_next, num_train_timesteps):
        s, dt = t / num_train_timesteps, float(t - t_next) / num_train_timesteps
        if t_next <= 0:
            return x + velocity * dt
        drift = velocity + diffusion_norm * ((1 - s) * velocity - x)  # v + w * score, the 1/s cancels
        return x + drift * dt + math.sqrt(2 * diffusion_norm * s * dt) * randn_like(x, generator)

    return step


flow_euler_sample = flow_sampler(_flow_euler)
heun_sample = flow_sampler(_heun)
euler_maruyama_sample = flow_sampler(_euler_maruyama)


##################################################################################
#                                  The registry                                  #
##################################################################################


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, the objectives whose predictions it integrates, the options it takes."""

    fn: Callable[..., torch.Tensor]
    objectives: tuple[str, ...]
    options: tuple[str, ...] = ()


SAMPLERS = {
    "ddim": SamplerSpec(ddim_sample, GAUSSIAN_OBJECTIVES, ("eta",)),
    "ddpm": SamplerSpec(ddpm_sample, GAUSSIAN_OBJECTIVES, ("variance_type",)),
    "dpmpp_2m": SamplerSpec(dpmpp_2m_sample, GAUSSIAN_OBJECTIVES),
    "flow_euler": SamplerSpec(flow_euler_sample, ("flow",)),
    "heun": SamplerSpec(heun_sample, ("flow",)),
    "euler_maruyama": SamplerSpec(euler_maruyama_sample, ("flow",)),
}


def resolve_sampler(
    name: str, objective: str, *, eta: float = 0.0, variance_type: str | None = None
) -> tuple[SamplerSpec, dict]:
    """Look ``name`` up (an unknown one is a ValueError naming ``sampler`` and the nearest valid name) -> (its entry,
    the options it takes). It must fit ``objective``; ``eta`` other than 0 is an error for a sampler without it;
    ``variance_type`` (the model's) goes to the samplers that take it."""
    name = choose("sampler", name, tuple(SAMPLERS))
    spec = SAMPLERS[name]
    if objective not in spec.objectives:
        fitting = [n for n, s in SAMPLERS.items() if objective in s.objectives]
        raise ValueError(f"sampler {name!r} does not fit objective {objective!r}; samplers for it: {fitting}.")
    eta = check_range("eta", eta, 0.0, 1.0, closed_high=True)  # above 1, sigma^2 > 1 - abar_s: over-noised
    if eta != 0 and "eta" not in spec.options:
        takes = [n for n, s in SAMPLERS.items() if "eta" in s.options]
        raise ValueError(f"eta is an option of {takes} only, got eta={eta} with sampler {name!r}.")
    given = {"eta": eta, "variance_type": variance_type}
    return spec, {key: given[key] for key in spec.options if given[key] is not None}
