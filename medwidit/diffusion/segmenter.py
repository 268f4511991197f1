"""DiffusionSegmenter: a network + a MONAI scheduler + the label encoding -> ``loss()`` and ``sample()``.

The network is only a callable ``net(x_t, t, conditioned=image)`` (DESIGN); sampling goes through a ``model_fn``
seam so that sliding-window inference can evaluate each step window by window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedules, RFlowScheduler

from medwidit.nets.contract import ConditionCache
from medwidit.nets.layers import tracing
from medwidit.utils import check_bool, check_int, check_options, check_range, choose, is_finite_number, is_integer

from .encoding import encode_labels
from .ensemble import (
    ModelFn,
    call_cached,
    call_net,
    call_rows,
    call_with_spacing,
    case_generators,
    member_generators,
    trunk_generator,
)
from .objectives import (
    OBJECTIVES,
    TIMESTEP_SAMPLINGS,
    X0_ACTIVATIONS,
    activate_x0,
    aux_dice_ce,
    check_timestep_sampling,
    check_x0_activation,
    sample_training_timesteps,
    split_output,
    training_target,
    vlb_terms,
    x0_estimate,
)
from .samplers import (
    VARIANCE_TYPES,
    check_shared_steps,
    randn_like,
    resolve_sampler,
    schedule_arguments,
    timestep_list,
)
from .self_condition import SelfConditioned, check_self_condition, training_input

__all__ = ["DiffusionSegmenter"]

logger = logging.getLogger(__name__)
_GUIDANCE_WARNED: set[float] = set()  # guidance scales already warned about in this process

SCHEDULERS = ("ddim", "ddpm", "rflow")
DEFAULT_SAMPLER = {"ddim": "ddim", "ddpm": "ddpm", "rflow": "flow_euler"}


class DiffusionSegmenter(nn.Module):
    """Segmentation by conditional diffusion of a one-hot label map in {-1, +1}, conditioned on the image.

    Args:
        net: callable ``net(x_t (B, K, *S), t (B,) float, conditioned=image (B, C_img, *S))`` returning
            (B, K, *S), or (B, 2K, *S) when ``learn_sigma``.
        num_classes: K, background included.
        objective: ``sample`` (predict x0, default), ``epsilon``, ``v_prediction`` or ``flow`` (velocity, linear path).
        scheduler: ``ddim`` or ``ddpm`` for Gaussian objectives, ``rflow`` for flow; None picks ``ddim``/``rflow``.
            It also sets the default sampler (``ddim``, ``ddpm``, ``flow_euler``).
        num_train_timesteps: T; the network sees t in [0, T] for every objective (DESIGN decision 7).
        schedule, schedule_args: MONAI noise schedule name and its arguments, e.g. ``{"beta_end": 0.02}`` (Gaussian
            objectives only; the schedule decides how much of training happens at low signal-to-noise).
        learn_sigma: the net returns 2K channels, the second K interpolate the log-variance (improved DDPM).
        variance_type: DDPM sampler variance; default ``learned_range`` with ``learn_sigma``, else ``fixed_small``.
        aux_weight: weight of Dice + CE on the x0 estimate (on the logits with ``x0_activation="softmax"``).
        vlb_weight: lambda of the hybrid loss ``L_simple + lambda L_vlb`` (improved DDPM: 0.001).
        cond_drop_prob: probability of replacing the image by zeros in training (classifier-free guidance).
        clip_sample: clip x0 estimates to [-1, 1] while sampling (the Gaussian objectives' samplers; ``"flow"``
            integrates its velocity unclipped, and its result is clamped when read as probabilities).
        timestep_sampling, timestep_args: the training timesteps' distribution, ``uniform`` (default),
            ``logit_normal`` with ``{"location": m, "scale": s}`` (SD3; m > 0 trains more where few-step samplers
            call the network) or ``noisiest_share`` with ``{"share": p}`` (a share p of the rows at the noisiest
            time, where the first sampler call is, the rest uniform); see
            ``medwidit.diffusion.objectives.sample_training_timesteps``.
        self_condition: the network also reads its own previous clean estimate (Chen et al. 2022; the net takes 2K
            input channels, ``cat(x_t, x0_prev)``; ``medwidit.diffusion.self_condition``).
        x0_activation: ``none`` (default): an x0 model's output is the estimate itself, its probabilities clamped
            from it; ``softmax`` (objective ``sample`` only): the output is K class logits and the estimate is
            ``2 softmax - 1`` (CDCD's score interpolation), so the probabilities are the softmax and the aux
            Dice + CE reads the logits, as a plain segmentation network's loss does
            (``medwidit.diffusion.objectives.activate_x0``).

    Attributes: ``noise_scheduler`` is the MONAI scheduler object that ``scheduler`` names (``scheduler_name``).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        objective: str = "sample",
        scheduler: str | None = None,
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        schedule_args: dict | None = None,
        learn_sigma: bool = False,
        variance_type: str | None = None,
        aux_weight: float = 0.5,
        vlb_weight: float = 0.001,
        cond_drop_prob: float = 0.0,
        clip_sample: bool = True,
        timestep_sampling: str = TIMESTEP_SAMPLINGS[0],
        timestep_args: dict | None = None,
        self_condition: bool = False,
        x0_activation: str = X0_ACTIVATIONS[0],
    ) -> None:
        super().__init__()
        _check_numbers(num_classes, num_train_timesteps, aux_weight, vlb_weight, cond_drop_prob)
        objective, scheduler, schedule, variance_type = _resolve_options(
            objective, scheduler, schedule, schedule_args, learn_sigma, variance_type
        )
        self.net = net
        self.num_classes = num_classes
        self.objective = objective
        self.scheduler_name = scheduler
        self.num_train_timesteps = num_train_timesteps
        self.schedule = schedule
        self.schedule_args = {k: float(v) for k, v in (schedule_args or {}).items()}  # plain floats: JSON, torch.load
        self.learn_sigma = check_bool("learn_sigma", learn_sigma)
        self.variance_type = variance_type
        self.aux_weight = float(aux_weight)
        self.vlb_weight = float(vlb_weight)
        self.cond_drop_prob = float(cond_drop_prob)
        self.clip_sample = check_bool("clip_sample", clip_sample)
        self.timestep_sampling = timestep_sampling
        self.timestep_args = check_timestep_sampling(timestep_sampling, timestep_args)
        self.self_condition = check_self_condition(self_condition, net, num_classes, self.learn_sigma)
        self.x0_activation = check_x0_activation(x0_activation, objective)
        # schedulers hold plain tensors and RFlowScheduler skips nn.Module.__init__: keep it out of the module tree
        object.__setattr__(self, "noise_scheduler", self._build_noise_scheduler())

    def _build_noise_scheduler(self):
        if self.scheduler_name == "rflow":
            return RFlowScheduler(num_train_timesteps=self.num_train_timesteps, use_discrete_timesteps=True)
        common = {"clip_sample": self.clip_sample, "prediction_type": self.objective, **self.schedule_args}
        if self.scheduler_name == "ddim":
            scheduler = DDIMScheduler(self.num_train_timesteps, self.schedule, **common)
        else:
            common["variance_type"] = self.variance_type
            scheduler = DDPMScheduler(self.num_train_timesteps, self.schedule, **common)
        betas = scheduler.betas
        if not ((betas > 0) & (betas < 1)).all():  # training ran on them; sampling failed late in a math error
            raise ValueError(
                f"schedule {self.schedule!r} with schedule_args {self.schedule_args} gives betas from "
                f"{float(betas.min()):.4g} to {float(betas.max()):.4g}; every beta must be in (0, 1)."
            )
        return scheduler

    @property
    def spacing_conditioning(self) -> bool:
        """Whether the network reads the grid's and the acquisition's spacing (WiDiT ``spacing_conditioning``):
        ``loss`` and ``sample`` then need ``spacing`` (B, 2N)."""
        return bool(getattr(self.net, "config", {}).get("spacing_conditioning", False))

    @property
    def config(self) -> dict:
        """Constructor arguments (JSON types) except ``net``: ``DiffusionSegmenter(net, **config)`` rebuilds it."""
        return {
            "num_classes": self.num_classes,
            "objective": self.objective,
            "scheduler": self.scheduler_name,
            "num_train_timesteps": self.num_train_timesteps,
            "schedule": self.schedule,
            "schedule_args": dict(self.schedule_args),
            "learn_sigma": self.learn_sigma,
            "variance_type": self.variance_type,
            "aux_weight": self.aux_weight,
            "vlb_weight": self.vlb_weight,
            "cond_drop_prob": self.cond_drop_prob,
            "clip_sample": self.clip_sample,
            "timestep_sampling": self.timestep_sampling,
            "timestep_args": dict(self.timestep_args),
            "self_condition": self.self_condition,
            "x0_activation": self.x0_activation,
        }

    ##################################################################################
    #                                    Training                                    #
    ##################################################################################

    def forward(self, image: torch.Tensor, label: torch.Tensor, *, spacing=None, generator=None) -> dict:
        """Same as :meth:`loss` (so that a DDP-wrapped segmenter trains through ``forward``)."""
        return self.loss(image, label, spacing=spacing, generator=generator)

    def loss(
        self, image: torch.Tensor, label: torch.Tensor, *, spacing: torch.Tensor | None = None, generator=None
    ) -> dict[str, torch.Tensor]:
        """Training loss for image (B, C_img, *S) and integer label (B, 1, *S): ``{"loss", "diffusion", "aux"[,
        "vlb"]}``; ``loss = diffusion + aux_weight * aux + vlb_weight * T * vlb`` (vlb is L_t in bits/voxel).
        ``spacing`` (B, 2N), when given, goes to the net: ``net(..., spacing=spacing)`` (WiDiT spacing_conditioning)."""
        _check_pair(image, label)
        image, spacing = _float_image(image, spacing)
        x0 = encode_labels(label, self.num_classes).to(image.device)  # (B, K, *S)
        t = sample_training_timesteps(
            self.objective,
            self.num_train_timesteps,
            x0.shape[0],
            generator=generator,
            device=x0.device,
            sampling=self.timestep_sampling,
            args=self.timestep_args,
        )
        noise = randn_like(x0, generator)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        cond = self._drop_condition(image, generator)
        inputs = x_t
        if self.self_condition:  # the rows that read their own estimate run the net once more, without gradient
            rows_call = partial(call_rows, self.net, spacing, t.float(), cond)

            def activated(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
                return self._activate(rows_call(x, rows))

            inputs = training_input(activated, x_t, t, self.objective, self.noise_scheduler, generator)
        output, frac = split_output(call_net(self.net, spacing, inputs, t.float(), cond), x0, self.learn_sigma)
        prediction = self._activate(output).float()
        logits = output if self.x0_activation == "softmax" else None  # the aux loss reads them (aux_dice_ce)
        parts = {
            "diffusion": F.mse_loss(prediction, training_target(self.objective, self.noise_scheduler, x0, noise, t))
        }
        x0_hat = x0_estimate(self.objective, self.noise_scheduler, prediction, x_t, t, bounded_gradient=True)
        parts["aux"] = (
            aux_dice_ce(x0_hat, label.to(image.device), logits) if self.aux_weight > 0 else x0_hat.new_zeros(())
        )
        total = parts["diffusion"] + self.aux_weight * parts["aux"]
        if self.learn_sigma:
            frozen = x0_estimate(self.objective, self.noise_scheduler, prediction.detach(), x_t, t)
            parts["vlb"] = vlb_terms(self.noise_scheduler, x0, x_t, t, frozen, frac).mean()
            total = total + self.vlb_weight * self.num_train_timesteps * parts["vlb"]
        return {"loss": total, **parts}

    def _drop_condition(self, image: torch.Tensor, generator) -> torch.Tensor:
        """Replace each sample's image by zeros with probability ``cond_drop_prob`` (classifier-free guidance)."""
        if self.cond_drop_prob == 0:
            return image
        device = generator.device if generator is not None else image.device
        drop = torch.rand(image.shape[0], generator=generator, device=device).to(image.device) < self.cond_drop_prob
        return torch.where(drop.reshape((-1,) + (1,) * (image.ndim - 1)), torch.zeros_like(image), image)

    ##################################################################################
    #                                    Sampling                                    #
    ##################################################################################

    @torch.no_grad()
    def sample(
        self,
        image: torch.Tensor,
        *,
        spacing: torch.Tensor | None = None,
        steps: int = 10,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        model_fn: ModelFn | None = None,
        progress: Callable[[dict], None] | None = None,
        chunk_size: int | None = None,
        shared_steps: int = 0,
    ) -> torch.Tensor:
        """Draw ``num_samples`` segmentations of image (B, C_img, *S) -> (S, B, K, *S) clean estimates in diffusion
        space (``to_probabilities(samples, dim=2)`` turns them into probabilities).

        ``sampler`` is a name in ``medwidit.diffusion.SAMPLERS`` that fits the objective (default: the scheduler's,
        see the class); ``eta`` is DDIM's noise (an error with any other sampler unless 0); ``steps`` is the length of
        the timestep list (Heun calls the network 2 * steps - 1 times).
        Ensemble members are sampled ``chunk_size`` at a time (default: all together) as one batch; each member draws
        its noise from its own generator, seeded from ``generator``, so chunking changes no draw (the values move by
        float rounding of batched kernels, ~1e-7); a case of a batch gets the samples it gets alone with the same
        ``generator``, to the same rounding. The image may have any real dtype (it is
        sampled in float32).
        ``guidance_scale`` w gives ``uncond + w (cond - uncond)`` on the prediction's K channels (Ho & Salimans
        2022); a learned variance (``learn_sigma``) is the conditional pass's, as in DiT and GLIDE, since mixing its
        interpolation coefficient would leave [-1, 1] and draw noise beyond beta; w = 1 is plain conditional sampling
        without the unconditional pass; with ``x0_activation="softmax"`` the channels mixed are the logits, before
        the softmax. ``model_fn(x_t, t, cond)`` replaces
        ``net(x_t, t, conditioned=cond)``; ``progress`` receives the sampler's callback dict plus ``"chunk"``.
        ``spacing`` (B, 2N), when given, goes to the net, repeated as the image is (members, guidance's pass); with a
        ``model_fn``, as ``model_fn(x_t, t, cond, spacing=...)`` (SlidingWindowDenoiser takes it so).
        A network with ``encode_condition`` (the contract) encodes the image once and every step reuses it, with
        samples identical to a run without the cache; a custom ``model_fn`` does its own (SlidingWindowDenoiser does).
        ``shared_steps`` k in 0..steps-1 runs the first k steps once for the whole ensemble (a trunk from its own
        noise), then each member re-noises the trunk's clean estimate to step k's noise level with its own noise
        (the training noising, ``add_noise``) and runs the remaining steps alone: k + (steps - k) * num_samples
        network calls instead of steps * num_samples; k = 0 is plain independent sampling. The trunk's progress
        reports steps 0..k-1 (``"chunk"`` -1; its last ``"x"`` is the trunk's clean estimate) and each chunk's
        k..steps-1. The trunk's noise is seeded from the first member's seed, so the first n members of an ensemble
        are the n-member ensemble, trunk included.
        """
        spec, options = self.check_sampling(
            image, steps=steps, num_samples=num_samples, sampler=sampler, eta=eta, guidance_scale=guidance_scale
        )
        image, spacing = _float_image(image, spacing)
        if not tracing() and not torch.isfinite(image).all():  # else sampling failed at its end, blaming the weights
            bad = int((~torch.isfinite(image)).sum())
            raise ValueError(f"image holds {bad} NaN or infinite values: give a finite image (e.g. nan_to_num).")
        chunk_size = num_samples if chunk_size is None else check_int("chunk_size", chunk_size, hint=" or None")
        check_shared_steps(shared_steps, steps)
        timesteps, schedule = timestep_list(self.noise_scheduler, steps), schedule_arguments(self.noise_scheduler)
        if model_fn is None:
            model_fn = partial(call_cached, ConditionCache(self.net), spacing)
        elif spacing is not None:
            model_fn = partial(call_with_spacing, model_fn, spacing)
        members = member_generators(generator, num_samples, image.device)
        b, shape = image.shape[0], (image.shape[0], self.num_classes, *image.shape[2:])
        trunk = None  # the shared steps' clean estimate (B, K, *S)
        if shared_steps:
            trunk_gen = case_generators([trunk_generator(members[0])], b)  # member 0's seed: n members stay a prefix
            x = randn_like(image.new_empty(shape, dtype=torch.float32), trunk_gen)
            callback = None if progress is None else partial(_with_chunk, progress, -1)
            denoise = self._self_conditioned(self._denoiser(model_fn, image, guidance_scale))
            trunk = spec.fn(denoise, x, timesteps[:shared_steps], **schedule, generator=trunk_gen, callback=callback,
                            **options)  # fmt: skip
            branch = timesteps[shared_steps]
        samples, denoisers = [], {}  # one conditioning tensor per chunk length: its encoding is reused by the chunks
        for start in range(0, num_samples, chunk_size):
            gens = case_generators(members[start : start + chunk_size], b)  # one per (member, case)
            m = len(gens) // b
            if m not in denoisers:
                cond = image.repeat(m, *([1] * (image.ndim - 1)))  # (m*B, C_img, *S)
                denoisers[m] = self._denoiser(model_fn, cond, guidance_scale)
            trunks = None if trunk is None else trunk.repeat(m, *([1] * (trunk.ndim - 1)))  # (m*B, K, *S)
            denoise = self._self_conditioned(denoisers[m], trunks)
            x = randn_like(image.new_empty((m * b, *shape[1:]), dtype=torch.float32), gens)
            callback = None if progress is None else partial(_with_chunk, progress, start // chunk_size)
            if trunk is None:
                x = spec.fn(denoise, x, timesteps, **schedule, generator=gens, callback=callback, **options)
            else:  # each member branches from the trunk: its own noise at step k's level
                t = torch.full((x.shape[0],), branch, device=x.device)
                x = self.noise_scheduler.add_noise(trunks, x, t)
                callback = None if callback is None else partial(_offset_steps, callback, shared_steps)
                x = spec.fn(denoise, x, timesteps[shared_steps:], **schedule, generator=gens, callback=callback,
                            **options)  # fmt: skip
            check_finite_samples(x)
            samples.append(x.reshape(m, *shape))
        return torch.cat(samples)  # (S, B, K, *S)

    def check_sampling(
        self,
        image: torch.Tensor,
        *,
        steps: int,
        num_samples: int,
        sampler: str | None,
        eta: float,
        guidance_scale: float,
    ) -> tuple:
        """Validate every sampling argument (ValueError naming it) -> (sampler spec, its options); only the rank of
        ``image`` is looked at, so callers can check options before any data are read."""
        spec, options = resolve_sampler(
            sampler or DEFAULT_SAMPLER[self.scheduler_name], self.objective, eta=eta, variance_type=self.variance_type
        )
        check_int("steps", steps, high=self.num_train_timesteps, hint=" (num_train_timesteps)")
        check_int("num_samples", num_samples)
        check_range("guidance_scale", guidance_scale, 0.0, math.inf)
        if guidance_scale != 1 and self.cond_drop_prob == 0 and guidance_scale not in _GUIDANCE_WARNED:
            _GUIDANCE_WARNED.add(guidance_scale)  # once: every pass and set checks it (from an audit: six lines a case)
            logger.warning(
                "guidance_scale=%s but the model was trained with cond_drop_prob=0: its unconditional pass is one it "
                "never learned.",
                guidance_scale,
            )
        if image.ndim not in (4, 5):
            raise ValueError(f"image must have shape (B, C_img, *spatial) with 2 or 3 spatial axes, got {image.shape}.")
        axes = getattr(self.net, "spatial_dim", None)  # WiDiT's; another network's rank is left to it
        if is_integer(axes) and image.ndim != axes + 2:
            raise ValueError(
                f"image must have shape (B, C_img, *spatial) with the network's {axes} spatial axes, got "
                f"{tuple(image.shape)}."
            )
        return spec, options

    def _denoiser(self, model_fn: ModelFn, cond: torch.Tensor, guidance_scale: float):
        """``denoise(x, t)`` for the samplers: network time (B,) float32 on the step scale, guidance, channel check
        (against x's first ``channels``, the noisy label's K, when x also carries a self-conditioning estimate)."""

        pair = None if guidance_scale == 1 else torch.cat([cond, torch.zeros_like(cond)])  # built once: cacheable

        def denoise(x: torch.Tensor, t, channels: int | None = None) -> torch.Tensor:
            t_vec = torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)
            if guidance_scale == 1:
                output = model_fn(x, t_vec, cond)
            else:
                both = model_fn(torch.cat([x, x]), torch.cat([t_vec, t_vec]), pair)
                conditional, unconditional = both.float().chunk(2)
                k = self.num_classes  # the prediction's channels; learned variance channels follow them
                guided = unconditional[:, :k] + guidance_scale * (conditional[:, :k] - unconditional[:, :k])
                output = torch.cat([guided, conditional[:, k:]], dim=1)  # variance: the conditional pass's (DiT)
            split_output(output, x[:, :channels], self.learn_sigma)  # the channels must match learn_sigma
            return self._activate(output).float()  # guidance above mixes the logits of a softmax x0 model

        return denoise

    def _activate(self, output: torch.Tensor) -> torch.Tensor:
        """The network's raw output -> the prediction its objective reads (``x0_activation``; K or 2K channels)."""
        return activate_x0(output, self.num_classes, self.x0_activation)

    def _self_conditioned(self, denoise, start: torch.Tensor | None = None):
        """``denoise`` itself, or with ``self_condition`` a fresh :class:`SelfConditioned` over it for one sampling
        run (its first call reads ``start``, a shared trunk's clean estimate, or zeros)."""
        if not self.self_condition:
            return denoise
        return SelfConditioned(denoise, self.objective, self.noise_scheduler, start)


def _check_numbers(num_classes, num_train_timesteps, aux_weight, vlb_weight, cond_drop_prob) -> None:
    check_int("num_classes", num_classes, low=2)
    check_int("num_train_timesteps", num_train_timesteps, low=2)
    for name, value in (("aux_weight", aux_weight), ("vlb_weight", vlb_weight)):
        check_range(name, value, 0.0, math.inf)
    check_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)


def _resolve_options(objective, scheduler, schedule, schedule_args, learn_sigma, variance_type) -> tuple:
    """Look the option names up (an unknown one is a ValueError naming the argument and the nearest valid name) and
    check that they fit together."""
    objective = choose("objective", objective, OBJECTIVES)
    default_scheduler = "rflow" if objective == "flow" else "ddim"
    scheduler = choose("scheduler", scheduler or default_scheduler, SCHEDULERS)
    if (scheduler == "rflow") != (objective == "flow"):
        raise ValueError(
            f"objective {objective!r} runs on scheduler {default_scheduler!r}, got scheduler={scheduler!r}."
        )
    if objective == "flow" and schedule_args:
        raise ValueError(
            f"schedule_args apply to Gaussian objectives; flow's linear path takes none, got {schedule_args}."
        )
    if learn_sigma and objective == "flow":
        raise ValueError("learn_sigma=True needs a Gaussian objective (sample, epsilon, v_prediction), not flow.")
    schedule = choose("schedule", schedule, NoiseSchedules.names)
    _check_schedule_args(schedule, schedule_args)
    variance_type = choose(
        "variance_type", variance_type or ("learned_range" if learn_sigma else "fixed_small"), VARIANCE_TYPES
    )
    if variance_type == "learned_range" and not learn_sigma:
        raise ValueError("variance_type='learned_range' needs learn_sigma=True.")
    return objective, scheduler, schedule, variance_type


def check_finite_samples(x: torch.Tensor) -> None:
    """A RuntimeError where sampling gave NaN or infinite values: as probabilities they read as a confident background
    (every class clamped to 0 is the uniform distribution's branch) with members in perfect agreement."""
    if not torch.isfinite(x).all():
        raise RuntimeError(
            "sampling gave NaN or infinite values: the network's output was not finite (weights that diverged in "
            "training, or an overflow under float16: use precision 'bfloat16' or 'float32')."
        )


def _check_schedule_args(schedule: str, schedule_args: dict | None) -> None:
    """``schedule_args`` are the noise schedule's own numbers: a scheduler option there (``prediction_type``,
    ``clip_sample``) would override ``objective`` or ``clip_sample`` for sampling but not for training, and the
    model's config would not say so."""
    if schedule_args is None:
        return
    owners = {"prediction_type": " (set by objective)", "clip_sample": " (set by clip_sample)"}
    check_options(
        NoiseSchedules[schedule], schedule_args, "schedule_args", exclude=("num_train_timesteps",), notes=owners,
        name=f"schedule {schedule!r}",
    )  # fmt: skip
    for key, value in schedule_args.items():
        if not is_finite_number(value):
            raise ValueError(f"schedule_args[{key!r}] must be a finite number, got {value!r}.")


def _offset_steps(callback: Callable[[dict], None], offset: int, info: dict) -> None:
    callback({**info, "i": info["i"] + offset})


def _with_chunk(progress: Callable[[dict], None], chunk: int, info: dict) -> None:
    progress({**info, "chunk": chunk})


def _float_image(image: torch.Tensor, spacing: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(image, spacing): the image in float32, the samplers' and the network's dtype (autocast lowers it inside), from
    any real dtype (float64 from nibabel's get_fdata, integer CT); ``spacing`` with one row per case, one row for all
    expanded (rows are tiled as the batch is, so another count gave cases each other's spacing)."""
    if image.is_complex():
        raise ValueError(f"image must be real-valued, got dtype {image.dtype}.")
    if spacing is not None and (spacing.ndim != 2 or spacing.shape[0] not in (1, image.shape[0])):
        raise ValueError(
            f"spacing must have shape (B, 2N): one row per image of the batch (B = {image.shape[0]}) or one row "
            f"for all, got {tuple(spacing.shape)}."
        )
    if spacing is not None:
        spacing = spacing.expand(image.shape[0], -1)  # self-conditioning's rows index it per case
    return (image if image.dtype == torch.float32 else image.float()), spacing


def _check_pair(image: torch.Tensor, label: torch.Tensor) -> None:
    if image.ndim not in (4, 5):
        raise ValueError(f"image must have shape (B, C_img, *spatial) with 2 or 3 spatial axes, got {image.shape}.")
    if label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:] or label.shape[1] != 1:
        raise ValueError(f"label shape {tuple(label.shape)} does not fit image shape {tuple(image.shape)}.")
