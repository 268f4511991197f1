"""How to sample: pure functions over a denoiser callable, k-diffusion style, on MONAI schedulers.

Every sampler has the signature ``sampler(denoise, x, scheduler, *, generator=None, callback=None, **options)``:

- ``denoise(x_t (B, K, *S), t: int | float) -> raw network output`` (B, K, *S), or (B, 2K, *S) with a learned
  variance; its meaning is ``scheduler.prediction_type`` (MONAI's convention: sample, epsilon, v_prediction);
- ``x`` is the starting noise x_T; the result is the clean estimate (B, K, *S);
- the timestep list is ``scheduler.timesteps`` as set by ``scheduler.set_timesteps(n)``: it is read once and indexed,
  and the previous step is the next entry of that list. (MONAI's ``DDIMScheduler.step`` re-derives it as
  ``t - T // n``, which disagrees with its own list: for n = 2 the list is [999, 0] but ``step`` jumps to 499; and
  ``DDPMScheduler.step`` always goes to ``t - 1``. So the Gaussian updates below are written out from the papers, on
  MONAI's noise schedule. The flow Euler step is MONAI's own ``RFlowScheduler.step`` with an explicit next step.)
- ``generator`` is a ``torch.Generator`` or a sequence of them; a sequence splits the batch into equal blocks, one
  generator each, so that an ensemble member gets the same noise whether it is sampled alone or batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from monai.networks.schedulers import RFlowScheduler, Scheduler
from monai.utils import look_up_option

from .objectives import learned_log_variance, posterior_mean_variance, prediction_to_x0_eps

__all__ = ["SAMPLERS", "VARIANCE_TYPES", "ddim_sample", "ddpm_sample", "flow_euler_sample", "randn_like", "set_steps"]

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def set_steps(scheduler: Scheduler, steps: int) -> list:
    """Validate ``steps`` in 1..T, call ``scheduler.set_timesteps(steps)`` and return the list it built."""
    num_train = scheduler.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train:
        raise ValueError(f"steps must be an int in 1..{num_train} (num_train_timesteps), got {steps!r}.")
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.tolist()


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


def _split_output(output: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw output -> (prediction, variance channels or None); (B, K) or (B, 2K) channels."""
    k = x.shape[1]
    if output.shape[0] != x.shape[0] or output.shape[2:] != x.shape[2:]:
        raise ValueError(f"denoiser returned shape {tuple(output.shape)} for an input of shape {tuple(x.shape)}.")
    if output.shape[1] == k:
        return output.to(x.dtype), None
    if output.shape[1] == 2 * k:
        prediction, frac = output.to(x.dtype).split(k, dim=1)
        return prediction, frac
    raise ValueError(f"denoiser returned {output.shape[1]} channels, expected {k} or {2 * k} (learned variance).")


def _clip(scheduler: Scheduler, x0: torch.Tensor) -> torch.Tensor:
    if getattr(scheduler, "clip_sample", False):
        low, high = scheduler.clip_sample_values
        return x0.clamp(low, high)
    return x0


def _report(callback, i: int, t, x: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "denoised": denoised})


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    x: torch.Tensor,
    scheduler: Scheduler,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021): ``x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z`` (eq. 12), with
    ``sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)`` (eq. 16); eta = 0 is deterministic."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}.")
    abar = scheduler.alphas_cumprod.double().tolist()
    final = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
    steps = [int(t) for t in scheduler.timesteps.tolist()]
    for i, t in enumerate(steps):
        s = steps[i + 1] if i + 1 < len(steps) else -1
        a_t, a_s = abar[t], (abar[s] if s >= 0 else final)
        prediction, _ = _split_output(denoise(x, t), x)
        x0, eps = prediction_to_x0_eps(scheduler.prediction_type, prediction, x, a_t)
        x0 = _clip(scheduler, x0)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn_like(x, generator)
        _report(callback, i, t, x, x0)
    return x


@torch.no_grad()
def ddpm_sample(
    denoise: Denoiser,
    x: torch.Tensor,
    scheduler: Scheduler,
    *,
    variance_type: str | None = None,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, alg. 2) on the respaced chain of improved DDPM (sec. 4):
    ``x_s ~ N(mu~(x_t, x0), Sigma)``, Sigma = beta~ (``fixed_small``), beta' (``fixed_large``) or the learned
    log-space mix of eq. 15 (``learned_range``, needs the variance channels). ``variance_type`` defaults to the
    scheduler's own (MONAI ``DDPMScheduler.variance_type``), else ``fixed_small``."""
    if variance_type is None:
        variance_type = getattr(scheduler, "variance_type", "fixed_small")
    variance_type = look_up_option(str(variance_type), VARIANCE_TYPES)
    abar = scheduler.alphas_cumprod.double().to(x.device)
    steps = [int(t) for t in scheduler.timesteps.tolist()]
    for i, t in enumerate(steps):
        s = steps[i + 1] if i + 1 < len(steps) else -1
        a_t, a_s = abar[t], (abar[s] if s >= 0 else torch.ones_like(abar[t]))
        prediction, frac = _split_output(denoise(x, t), x)
        if variance_type == "learned_range" and frac is None:
            raise ValueError("variance_type='learned_range' needs a denoiser that returns 2K channels (learn_sigma).")
        x0, _ = prediction_to_x0_eps(scheduler.prediction_type, prediction, x, a_t)
        x0 = _clip(scheduler, x0)
        mean, post_var, beta = posterior_mean_variance(x0, x, a_t, a_s)
        if s < 0:
            x = mean  # the last step adds no noise
        else:
            if variance_type == "learned_range":
                log_var = learned_log_variance(frac, beta, post_var).to(x.dtype)
            else:
                log_var = (post_var if variance_type == "fixed_small" else beta).log().to(x.dtype)
            x = mean + torch.exp(0.5 * log_var) * randn_like(x, generator)
        _report(callback, i, t, x, x0)
    return x


@torch.no_grad()
def flow_euler_sample(
    denoise: Denoiser,
    x: torch.Tensor,
    scheduler: RFlowScheduler,
    *,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Euler integration of the linear-path flow ODE from t = T (noise) to 0 (data): ``x <- x + v (t - t_next) / T``
    (SiT's ODE sampler; MONAI ``RFlowScheduler.step`` with an explicit next step). ``generator`` is unused: the
    sampler is deterministic once x_T is drawn."""
    steps = scheduler.timesteps.tolist()
    for i, t in enumerate(steps):
        t_next = steps[i + 1] if i + 1 < len(steps) else 0
        velocity, _ = _split_output(denoise(x, t), x)
        x, x0 = scheduler.step(velocity, t, x, t_next)
        _report(callback, i, t, x, x0)
    return x


SAMPLERS = {"ddim": ddim_sample, "ddpm": ddpm_sample, "flow_euler": flow_euler_sample}
