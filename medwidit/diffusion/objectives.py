"""What the network predicts and what it is trained against (SiT's ``path`` + ``transport`` split).

How x_t is made comes from MONAI's schedulers: ``DDPMScheduler/DDIMScheduler.add_noise`` (Ho et al. 2020, eq. 4:
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``) and ``RFlowScheduler.add_noise`` (the linear path of SiT / rectified
flow: ``x_t = (1 - t/T) x0 + (t/T) eps``). The network sees ``t`` on the discrete-step scale [0, T] in both cases
(DESIGN decision 7). Objectives:

- ``sample``: predict x0; ``epsilon``: predict the noise; ``v_prediction``: predict
  ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022, eq. 8; MONAI ``get_velocity``);
- ``flow``: predict the velocity ``x0 - eps`` of the linear path, integrated from t = T (noise) to 0 (data).

An x0 model's output is the estimate itself (``x0_activation`` ``none``) or K class logits whose softmax gives it,
``x0 = 2 softmax - 1`` (``softmax``: :func:`activate_x0`).

With a learned variance the improved-DDPM hybrid loss adds ``lambda * L_vlb`` with the mean frozen
(Nichol & Dhariwal 2021, sec. 3.1, eq. 15 for the interpolated log-variance).
"""

from __future__ import annotations

import math

import torch
from monai.losses import DiceCELoss
from monai.networks.schedulers import Scheduler

from medwidit.utils import choose, wide_float

from .encoding import to_probabilities

__all__ = [
    "GAUSSIAN_OBJECTIVES",
    "OBJECTIVES",
    "TIMESTEP_SAMPLINGS",
    "X0_ACTIVATIONS",
    "activate_x0",
    "aux_dice_ce",
    "check_timestep_sampling",
    "check_x0_activation",
    "learned_log_variance",
    "posterior_mean_variance",
    "prediction_to_x0_eps",
    "sample_training_timesteps",
    "split_output",
    "training_target",
    "vlb_terms",
    "x0_estimate",
]

GAUSSIAN_OBJECTIVES = ("sample", "epsilon", "v_prediction")
OBJECTIVES = (*GAUSSIAN_OBJECTIVES, "flow")
X0_ACTIVATIONS = ("none", "softmax")  # the first is DiffusionSegmenter's default
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal", "noisiest_share")  # the first is DiffusionSegmenter's default
TIMESTEP_ARGS = {"uniform": {}, "logit_normal": {"location": 0.0, "scale": 1.0}, "noisiest_share": {"share": 0.5}}


def _right(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with ``ndim`` axes in all (k-diffusion's ``append_dims``)."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _alpha_bar(scheduler: Scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``abar_t`` for integer steps (B,), shaped to broadcast against ``like`` (B, K, *S)."""
    # float64, float32 on MPS (no float64 there): cast before the move
    abar = scheduler.alphas_cumprod.to(dtype=wide_float(like.device)).to(like.device)[t.long().to(like.device)]
    return _right(abar, like.ndim)


##################################################################################
#                           Training: timesteps and targets                      #
##################################################################################


def check_timestep_sampling(sampling: str = TIMESTEP_SAMPLINGS[0], args: dict | None = None) -> dict:
    """``args`` of a training-timestep distribution with its defaults filled in; an error names the bad key."""
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {sampling!r}.")
    args = dict(args or {})
    unknown = sorted(set(args) - set(TIMESTEP_ARGS[sampling]))
    if unknown:
        raise ValueError(
            f"timestep_args for {sampling!r} takes {sorted(TIMESTEP_ARGS[sampling]) or 'nothing'}, got {unknown}."
        )
    for key, value in args.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"timestep_args[{key!r}] must be a finite number, got {value!r}.")
    args = {**TIMESTEP_ARGS[sampling], **{k: float(v) for k, v in args.items()}}
    if sampling == "logit_normal" and not args["scale"] > 0:
        raise ValueError(f"timestep_args needs a scale > 0, got {args}.")
    if sampling == "noisiest_share" and not 0 <= args["share"] <= 1:
        raise ValueError(f"timestep_args needs a share in [0, 1], got {args}.")
    return args


def sample_training_timesteps(
    objective: str,
    num_train_timesteps: int,
    batch: int,
    *,
    generator=None,
    device=None,
    sampling: str = TIMESTEP_SAMPLINGS[0],
    args: dict | None = None,
) -> torch.Tensor:
    """Training times (B,): integer steps in [0, T) for Gaussian diffusion, continuous t in [0, T) for flow.

    ``sampling`` ``uniform``: t/T uniform. ``logit_normal``: t/T = sigmoid(location + scale * z), z ~ N(0, 1)
    (Esser et al. 2024, SD3, sec. 3.1); a positive ``location`` spends training where the noise hides most of the
    label, the steps a few-step sampler calls the network at (3 DDIM steps: t = 999, 500, 0). ``noisiest_share``:
    each row, with probability ``share``, at the noisiest time (T - 1; flow: just below T), where every sampler's
    first call is and the image alone decides; the other rows uniform, so the later, refining calls keep their whole
    range. Hand-written: MONAI's ``RFlowScheduler(sample_method="logit-normal")`` draws them for flow only and without
    a generator, and its DDPM and DDIM schedulers leave training timesteps to the caller.
    """
    args = check_timestep_sampling(sampling, args)
    gen_device = generator.device if generator is not None else "cpu"
    if sampling == "noisiest_share":
        noisiest = torch.rand(batch, generator=generator, device=gen_device) < args["share"]
        t = sample_training_timesteps(objective, num_train_timesteps, batch, generator=generator, device=gen_device)
        top = num_train_timesteps * (1 - 1e-6) if objective == "flow" else num_train_timesteps - 1
        return torch.where(noisiest, torch.full_like(t, top), t).to(device)
    if sampling == "logit_normal":
        u = torch.sigmoid(args["location"] + args["scale"] * torch.randn(batch, generator=generator, device=gen_device))
        if objective == "flow":  # continuous, below T even where the sigmoid rounds to 1
            return (u * num_train_timesteps).clamp(max=num_train_timesteps * (1 - 1e-6)).to(device)
        return (u * num_train_timesteps).long().clamp(max=num_train_timesteps - 1).to(device)
    if objective == "flow":
        t = torch.rand(batch, generator=generator, device=gen_device) * num_train_timesteps
    else:
        t = torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=gen_device)
    return t.to(device)


def training_target(
    objective: str, scheduler: Scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The regression target of each objective for x_t made from ``x0`` and ``noise`` at ``t``."""
    if objective == "sample":
        return x0
    if objective == "epsilon":
        return noise
    if objective == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)  # v = sqrt(abar) eps - sqrt(1 - abar) x0
    if objective == "flow":
        return x0 - noise  # d x_t / d(-t/T) on the linear path
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")


##################################################################################
#                      Converting a prediction into x0 and eps                   #
##################################################################################


def split_output(
    output: torch.Tensor, x: torch.Tensor, learn_sigma: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw network output -> (prediction (B, K, *S), variance channels (B, K, *S) or None) for x (B, K, *S).

    The output must have K channels, or 2K with ``learn_sigma`` (improved DDPM's variance channels); None accepts
    either. Anything else is a ValueError that says which setting to change.
    """
    k = x.shape[1]
    allowed = (k, 2 * k) if learn_sigma is None else ((2 * k,) if learn_sigma else (k,))
    if output.shape[0] != x.shape[0] or output.shape[2:] != x.shape[2:] or output.shape[1] not in allowed:
        hint = " (build the net with out_channels=K or set learn_sigma to match)" if output.ndim == x.ndim else ""
        expected = " or ".join(str((x.shape[0], c, *x.shape[2:])) for c in allowed)
        raise ValueError(
            f"net returned shape {tuple(output.shape)}, expected {expected} for num_classes={k}, "
            f"learn_sigma={learn_sigma}{hint}."
        )
    if output.shape[1] == 2 * k:
        prediction, frac = output.split(k, dim=1)
        return prediction, frac
    return output, None


def prediction_to_x0_eps(
    prediction_type: str, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian prediction -> (x0, eps), from ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` (DDIM eq. 12 / 'v' eq. 8)."""
    a = torch.as_tensor(alpha_bar, dtype=wide_float(x_t.device), device=x_t.device)
    sa, sb = a.sqrt().to(x_t.dtype), (1 - a).sqrt().to(x_t.dtype)
    if prediction_type == "sample":
        return output, (x_t - sa * output) / sb
    if prediction_type == "epsilon":
        return (x_t - sb * output) / sa, output
    if prediction_type == "v_prediction":
        return sa * x_t - sb * output, sa * output + sb * x_t
    raise ValueError(f"prediction_type must be one of {GAUSSIAN_OBJECTIVES}, got {prediction_type!r}.")


def x0_estimate(
    objective: str,
    scheduler: Scheduler,
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    bounded_gradient: bool = False,
) -> torch.Tensor:
    """The clean-label estimate implied by a prediction at per-sample times ``t`` (B,).

    For ``epsilon``, ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` amplifies the gradient that reaches the
    prediction by ``sqrt((1 - abar) / abar)`` (about 150 at t = T on ``linear_beta``), so that a loss on x0 would
    swamp the epsilon loss. ``bounded_gradient`` keeps the value and scales that gradient by
    ``min(1, sqrt(abar / (1 - abar)))``; the other objectives never amplify (|dx0/dprediction| <= 1).
    """
    if objective == "flow":
        return x_t + output * _right(t.to(x_t.dtype) / scheduler.num_train_timesteps, x_t.ndim)
    alpha_bar = _alpha_bar(scheduler, t, x_t)
    x0, _ = prediction_to_x0_eps(objective, output, x_t, alpha_bar)
    if bounded_gradient and objective == "epsilon":
        scale = (alpha_bar / (1 - alpha_bar)).sqrt().clamp(max=1.0).to(x0.dtype)
        x0 = x0.detach() + scale * (x0 - x0.detach())
    return x0


def aux_dice_ce(x0_hat: torch.Tensor, label: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Dice + cross-entropy of ``to_probabilities(x0_hat)`` against the integer label (B, 1, *S).

    MONAI's DiceCELoss takes logits; ``log p`` are logits whose softmax is ``p`` itself, so Dice is computed on p and
    the cross-entropy is ``-log p[label]``. Where p is clamped to 0 (an estimate at or below -1) neither term has a
    gradient. ``logits`` (B, K, *S), the network's own when x0_hat is ``2 softmax(logits) - 1``
    (:func:`activate_x0`), are read instead: the same p, and a gradient everywhere.
    """
    if logits is None:
        logits = to_probabilities(x0_hat).clamp_min(1e-6).log()
    return DiceCELoss(to_onehot_y=True, softmax=True)(logits.float(), label.long())


def check_x0_activation(activation: str, objective: str) -> str:
    """``activation`` if it is one of :data:`X0_ACTIVATIONS` and fits ``objective`` (``softmax`` turns an x0
    prediction into the estimate: objective ``sample``), else a ValueError naming the argument (``choose``)."""
    activation = choose("x0_activation", activation, X0_ACTIVATIONS)
    if activation != "none" and objective != "sample":
        raise ValueError(
            f"x0_activation={activation!r} makes the network's output an x0 estimate: it needs objective 'sample', "
            f"got objective={objective!r}."
        )
    return activation


def activate_x0(output: torch.Tensor, num_classes: int, activation: str) -> torch.Tensor:
    """The network's raw output (B, K or 2K, *S) -> the prediction the objective reads, in float32.

    ``none``: the output itself. ``softmax``: its first K channels are class logits and become ``2 softmax - 1``, the
    expectation of the one-hot code in {-1, +1} under the class probabilities (the score interpolation of CDCD,
    Dieleman et al. 2022): an estimate inside the codes' simplex, whose probabilities (:func:`to_probabilities`) are
    the softmax itself; variance channels (learn_sigma) pass unchanged.
    """
    if activation == "none":
        return output
    # out of place: softmax's backward reads its output
    estimate = 2 * torch.softmax(output[:, :num_classes].float(), dim=1) - 1
    if output.shape[1] == num_classes:
        return estimate
    return torch.cat([estimate, output[:, num_classes:].float()], dim=1)


##################################################################################
#                   Learned variance: the improved-DDPM hybrid loss              #
##################################################################################


def posterior_mean_variance(
    x0: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(x_s | x_t, x0) for s < t on any (respaced) chain: mean, variance beta~ and beta' (DDPM eqs. 6-7).

    ``beta' = 1 - abar_t / abar_s`` is the step's own beta (the respacing of improved DDPM, sec. 4);
    ``beta~ = (1 - abar_s) / (1 - abar_t) * beta'``. Alphas may be tensors broadcasting against x (float64 is best).
    """
    beta = 1 - alpha_bar_t / alpha_bar_s
    coef_x0 = alpha_bar_s.sqrt() * beta / (1 - alpha_bar_t)
    coef_xt = (1 - beta).sqrt() * (1 - alpha_bar_s) / (1 - alpha_bar_t)
    mean = coef_x0.to(x0.dtype) * x0 + coef_xt.to(x_t.dtype) * x_t
    variance = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta
    return mean, variance, beta


def learned_log_variance(frac_output: torch.Tensor, beta: torch.Tensor, posterior_variance: torch.Tensor):
    """Improved DDPM eq. 15: ``log Sigma = f log beta + (1 - f) log beta~`` with ``f = (v + 1) / 2`` from the net.

    Unlike MONAI's ``learned_range`` (which mixes the variances linearly), the mix is in log space, as in the paper.
    """
    frac = (frac_output.float() + 1) / 2
    max_log = beta.log().float()
    min_log = posterior_variance.log().float()
    return frac * max_log + (1 - frac) * min_log


def _normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def vlb_terms(
    scheduler: Scheduler,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_hat: torch.Tensor,
    frac_output: torch.Tensor,
) -> torch.Tensor:
    """Per-sample L_t in bits per voxel (B,): KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, and at t = 0 the
    decoder NLL of the labels in {-1, +1}, discretised with one bin per sign: ``-log Phi(x0 * mu / sigma)``.

    Callers pass ``x0_hat`` detached, so the term trains only the variance channels (improved DDPM, sec. 3.1).
    """
    t = t.long()
    abar = scheduler.alphas_cumprod.to(dtype=wide_float(x0.device)).to(x0.device)
    abar_t = _right(abar[t], x0.ndim)
    abar_s = _right(torch.where(t > 0, abar[(t - 1).clamp_min(0)], torch.ones_like(abar[t])), x0.ndim)
    true_mean, post_var, beta = posterior_mean_variance(x0, x_t, abar_t, abar_s)
    # at t = 0 beta~ is 0: clip its log to the value at t = 1, as improved DDPM does
    var1 = (1 - abar[0]) / (1 - abar[1]) * (1 - abar[1] / abar[0])
    post_var = torch.where(_right(t, x0.ndim) == 0, var1.expand_as(post_var), post_var)
    model_mean, _, _ = posterior_mean_variance(x0_hat, x_t, abar_t, abar_s)
    model_log_var = learned_log_variance(frac_output, beta, post_var)
    kl = _normal_kl(true_mean.float(), post_var.log().float(), model_mean.float(), model_log_var)
    nll = -torch.special.log_ndtr(x0.float() * model_mean.float() * torch.exp(-0.5 * model_log_var))
    per_voxel = torch.where(_right(t, x0.ndim) == 0, nll, kl)
    return per_voxel.flatten(1).mean(1) / math.log(2.0)
