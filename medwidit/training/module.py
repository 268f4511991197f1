"""LightningModule: the segmenter's loss, AdamW with warm-up and cosine decay, an EMA of the weights, validation by
sampling whole volumes, Dice per class, TensorBoard scalars and overlays, and the export of a medwidit checkpoint.

Validation needs the stitched sliding-window sampler and the ensemble summary, which live in ``medwidit.inference``;
training never imports inference (DESIGN's rooms), so the sampler is injected: ``validation_sampler(segmenter,
image (1, C, *S), generator[, spacing=(1, 2N)]) -> {"labels" (1, 1, *S), "mean_probability" (1, K, *S), "entropy"
(1, 1, *S), ...}`` (what ``medwidit.inference.uncertainty.summarize_ensemble`` returns; ``spacing`` only for a
spacing-conditioned network). The bundle builds it from its config.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from monai.metrics import DiceMetric

from medwidit.data.transforms import check_preprocessing
from medwidit.diffusion import DiffusionSegmenter, build_segmenter, save_bundle_weights, segmenter_config
from medwidit.diffusion.checkpoint import with_config_defaults
from medwidit.nets.contract import check_roi_multiple_of_patch, network_size_multiple
from medwidit.utils import check_bool, check_int, is_finite_number

from .visualize import log_validation_images

__all__ = [
    "DiffusionSegmentationModule",
    "ExportSegmenter",
    "WarmupCosine",
    "export_checkpoint",
    "segmenter_state_from_checkpoint",
]

logger = logging.getLogger(__name__)
PARAM_GROUPS = ("decay", "no_decay")  # AdamW groups: matrices with weight decay; norms and biases without

ValidationSampler = Callable[..., Mapping[str, torch.Tensor]]
MONITOR = "val/mean_dice"


class WarmupCosine:
    """LR factor: linear warm-up from 1/warmup to 1 over ``warmup_steps``, then cosine decay to ``min_ratio``.

    By hand: MONAI's ``WarmupCosineSchedule`` starts its warm-up at ``warmup_multiplier`` on step 0 and clamps the
    decay at ``end_lr`` instead of decaying onto it (on train.json's settings: 4.8 % apart in the warm-up, up to 50 %
    in the tail), which would change the bundle's training.

    A plain object (not a lambda) so that ``LambdaLR.state_dict`` stores its numbers and checkpoints stay loadable
    with ``torch.load(weights_only=True)``.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _tag(name: str) -> str:
    """A class name as a TensorBoard tag part: 'cortical grey matter' -> 'cortical_grey_matter'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower() or "class"


def ema_warmup_avg_fn(decay: float):
    """EMA update with warm-up, ``d_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's
    ``ExponentialMovingAverage(num_updates=n)``), for ``torch.optim.swa_utils.AveragedModel(avg_fn=...)``."""

    def ema_update(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():  # an index buffer (relative_index): averaged in float and written back
            return current  # into int64 it drifted down by one, and validation ran another network
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return d * averaged + (1.0 - d) * current

    return ema_update


class WarmupEMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with the EMA warm-up of :func:`ema_warmup_avg_fn`: a fixed decay d from
    the first step keeps d^n of the initial (zero-output) weights after n steps, which dominates a short run."""

    def __init__(self, decay: float = 0.999, **kwargs) -> None:
        super().__init__(decay=decay, **kwargs)
        self._kwargs["avg_fn"] = ema_warmup_avg_fn(decay)  # WeightAveraging hands _kwargs to AveragedModel

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Before ``update_starting_at_step`` the average follows the weights; Lightning's kept the copy made at setup,
        the initial weights, so validation scored the untrained network and a run that ended before the start
        exported it. Its first update at the start copies them too (AveragedModel), then the EMA runs."""
        start = self.update_starting_at_step
        if start is not None and trainer.global_step - 1 < start and self._average_model is not None:
            with torch.no_grad():
                for averaged, current in zip(self._average_model.module.state_dict().values(),
                                             pl_module.state_dict().values(), strict=True):  # fmt: skip
                    averaged.copy_(current)
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class DiffusionSegmentationModule(L.LightningModule):
    """Trains a :class:`~medwidit.diffusion.DiffusionSegmenter` and validates it by sampling whole volumes.

    ``load_from_checkpoint(path)`` rebuilds the module from the checkpoint alone (the segmenter from the saved
    ``model_config``; no ``validation_sampler``, so validation logs only the loss unless one is passed).

    Args:
        segmenter: the segmenter to train (its ``net`` is the WiDiT); None builds it from ``model_config``.
        model_config: ``medwidit.diffusion.segmenter_config`` of a segmenter (saved as a hyperparameter); given with
            ``segmenter``, it must be that segmenter's.
        lr, weight_decay, betas: AdamW; no weight decay on biases and normalisation weights (tensors of rank < 2).
        warmup_steps, min_lr_ratio: linear warm-up, then cosine decay towards ``lr * min_lr_ratio``, which it would
            reach one step after the last (a warm-up as long as the run is warned about: the rate never decays).
        ema_decay: decay of the exponential moving average of the weights (Lightning's ``EMAWeightAveraging``,
            added by :meth:`configure_callbacks`); validation runs on the EMA weights and checkpoints store them as
            ``state_dict`` (the raw weights as ``current_model_state``). None or 0 disables the EMA.
        ema_start_step: optimizer step from which the EMA averages the weights (before it, it is a copy of the
            current weights).
        validation_sampler: see the module docstring; None skips validation metrics (the loss is still trained).
        val_seed: seed of the generator for validation noise; volume i of every epoch uses ``val_seed + i``, so that
            epochs are compared on the same noise (i: the batch's ``"index"``, the volume's place in the validation
            split, on every rank of a distributed run; the batch's place in the loader where a batch has none).
        class_names: one name per class (background first) for metric and image tags; default "class_k".
        log_images: number of validation volumes per epoch drawn to TensorBoard (image, label, prediction,
            uncertainty and overlays).
        preprocessing: the data's pre-transform settings, stored in the exported checkpoint for the predictor.
    """

    def __init__(
        self,
        segmenter: DiffusionSegmenter | None = None,
        *,
        model_config: Mapping | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.999),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.01,
        ema_decay: float | None = 0.999,
        ema_start_step: int = 0,
        validation_sampler: ValidationSampler | None = None,
        val_seed: int = 0,
        class_names: Sequence[str] | None = None,
        log_images: int = 1,
        preprocessing: Mapping | None = None,
    ) -> None:
        super().__init__()
        segmenter = _segmenter_from(segmenter, model_config)
        # numbers of any type, checked by name: `--lr fast` was a TypeError of the comparison (from a review)
        if not (is_finite_number(lr) and lr > 0):
            raise ValueError(f"lr must be a number > 0, got {lr!r}.")
        if not (is_finite_number(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}.")
        for name, value in (("warmup_steps", warmup_steps), ("ema_start_step", ema_start_step),
                            ("log_images", log_images)):  # fmt: skip
            if not (is_finite_number(value) and value >= 0 and float(value).is_integer()):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
        if not (is_finite_number(min_lr_ratio) and 0.0 <= min_lr_ratio <= 1.0):
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}.")
        if ema_decay is not None and not (is_finite_number(ema_decay) and 0.0 <= ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay!r}.")
        num_classes = segmenter.num_classes
        class_names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}: {class_names}.")
        if not all(isinstance(name, str) for name in class_names):  # a number failed at the first validation's end
            raise ValueError(f"class_names must be strings, got {class_names}.")
        tags = [_tag(name) for name in class_names]
        if len(set(tags)) != len(tags):  # 'grey matter' and 'grey-matter' logged one Dice under one tag, dropping one
            raise ValueError(f"class_names {class_names} give the same metric tag twice ({tags}): name them apart.")
        if isinstance(betas, str) or len(betas) != 2 or not all(is_finite_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}.")
        steps = getattr(validation_sampler, "keywords", {}).get("steps")  # train.json's val_steps, in its partial
        if steps is not None:  # from a review: --val_steps 2000 failed only at the first validation, after training
            check_int("val_steps", steps, high=segmenter.num_train_timesteps, hint=" (the segmenter's timesteps)")
        preprocessing = check_preprocessing(preprocessing or {})
        self.segmenter = segmenter
        self.validation_sampler = validation_sampler
        self.save_hyperparameters(
            {
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "betas": [float(b) for b in betas],
                "warmup_steps": int(warmup_steps),
                "min_lr_ratio": float(min_lr_ratio),
                "ema_decay": None if not ema_decay else float(ema_decay),
                "ema_start_step": int(ema_start_step),
                "val_seed": int(val_seed),
                "class_names": class_names,
                "log_images": int(log_images),
                "preprocessing": preprocessing,
                "model_config": segmenter_config(segmenter),
            }
        )
        # ignore_empty=False: an empty ground truth scores 1 when the prediction is empty too and 0 otherwise, so
        # that a structure absent from a volume (a crop, a lesion-free scan) is neither skipped nor a NaN.
        self.dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False, num_classes=num_classes)
        self._val_indices: list[int] = []  # the dataset index of each row of the Dice buffer (this rank's)
        self._val_unindexed = False  # a batch came without "index" (another data module): no rows are merged

    @property
    def num_classes(self) -> int:
        return self.segmenter.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    ##################################################################################################################
    # Training
    ##################################################################################################################

    def _spacing(self, batch: Mapping[str, torch.Tensor]) -> dict:
        """``{"spacing": (B, 2N)}`` for a spacing-conditioned network, else nothing."""
        if not self.segmenter.spacing_conditioning:
            return {}
        if "spacing" not in batch:
            raise ValueError(
                "the network has spacing_conditioning=True but the batch has no 'spacing' (grid and acquisition mm): "
                "build the data module with spacing_conditioning=True (train.json: --spacing_conditioning true)."
            )
        return {"spacing": batch["spacing"].float()}

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, label = batch["image"], batch["label"]  # (B, C_img, *S), (B, 1, *S) int64
        losses = self.segmenter.loss(image, label, **self._spacing(batch))
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in losses.items()},
            on_step=True,
            on_epoch=True,
            batch_size=image.shape[0],
            sync_dist=True,
        )
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False, on_step=True, batch_size=image.shape[0])
        return losses["loss"]

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for param in self.segmenter.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay, "name": PARAM_GROUPS[0]},  # LearningRateMonitor's
            {"params": no_decay, "weight_decay": 0.0, "name": PARAM_GROUPS[1]},  # tag suffixes
        ]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else hp.warmup_steps + 1
        if not math.isfinite(total):  # a run bounded by max_time alone: int(inf) was an OverflowError naming nothing
            raise ValueError(
                "the cosine learning-rate schedule needs the run's length: set max_steps or epochs (max_epochs), not "
                "max_time alone."
            )
        total = int(total)
        if hp.warmup_steps >= total:
            logger.warning(
                "warmup_steps %d >= the run's %d optimizer steps: the learning rate never decays.",
                hp.warmup_steps,
                total,
            )
        schedule = WarmupCosine(hp.warmup_steps, total, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def on_fit_start(self) -> None:
        """The data module's preprocessing is the one this module exports for the predictor (``medwidit.json``):
        built without it, the module kept the defaults (z-scores, no resampling), and a model trained on 2 mm
        equalised crops was exported to be pre-processed otherwise, without a word."""
        datamodule = getattr(self.trainer, "datamodule", None)
        self._check_crop(getattr(datamodule, "roi_size", None))
        theirs = getattr(datamodule, "preprocessing", None)
        if not isinstance(theirs, Mapping):  # not a medwidit data module (a transform, or none): nothing to compare
            return
        ours, theirs = dict(self.hparams.preprocessing), check_preprocessing(theirs)
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            raise ValueError(
                f"the training module's preprocessing differs from the data module's in {', '.join(differ)} "
                f"({', '.join(f'{k}: {ours.get(k)!r} against {theirs.get(k)!r}' for k in differ)}): the exported model "
                "would be pre-processed unlike its training data; give both the same preprocessing (train.json "
                "passes @preprocessing to both)."
            )

    def _check_crop(self, roi_size) -> None:
        """The data module's training crop (None: not a medwidit data module) must be a multiple of the network's
        ``size_multiple`` on every axis, as a sliding window's (``nets.contract.check_roi_multiple_of_patch``): a
        crop of 18 under patch 4 failed inside the first training step, in the network's message naming its input."""
        if roi_size is not None:
            check_roi_multiple_of_patch([int(r) for r in roi_size], network_size_multiple(self.segmenter.net))

    def on_train_start(self) -> None:
        """A fresh run whose first validation (every ``check_val_every_n_epoch`` epochs) would come after its end
        (``max_steps``, or ``max_epochs`` whole epochs) is refused: it ended without a validation, a ``best.ckpt`` or
        a word, and the documented export of ``best.ckpt`` then failed (the bundle's 90-epoch interval is 270 steps
        with the shipped lists, more than its 1080 with a data list of 36 volumes). Validation within an epoch
        (``val_check_interval`` other than 1.0) is left to Lightning."""
        trainer = self.trainer
        _count_the_restored_epoch_end_once(trainer)
        if (states := getattr(self, "_resumed_rng_states", None)) is not None:
            # again after the data loaders are built: MONAI's DataLoader without workers re-seeds torch's generator
            # with its initial seed when built (the bundle's seed), and the first epoch's noise came back
            set_rng_states(states, rank=trainer.global_rank)
            self._resumed_rng_states = None
        self._resize_schedule(trainer)
        every, batches = trainer.check_val_every_n_epoch, trainer.num_training_batches
        if (
            self.validation_sampler is None
            or trainer.global_step > 0
            or not every
            or trainer.val_check_interval != 1.0
            or not math.isfinite(batches)
            or not trainer.limit_val_batches
        ):
            return
        per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        ends = [n for n in (trainer.max_steps, (trainer.max_epochs or 0) * per_epoch) if n is not None and n > 0]
        if not ends or every * per_epoch <= min(ends):
            return
        end = min(ends)
        fit = (
            f"Validate more often (train.json: --val_interval {end // per_epoch})"
            if end >= per_epoch
            else f"Train at least one epoch ({per_epoch} steps) or validate within one (Lightning's val_check_interval)"
        )
        raise ValueError(
            f"this run would end after {end} optimizer steps, before its first validation at epoch {every} "
            f"({every * per_epoch} steps at {per_epoch} a epoch): no best checkpoint would be chosen. {fit}, or "
            "train longer."
        )

    def _resize_schedule(self, trainer) -> None:
        """A resumed run gets the checkpoint's optimizer and schedule back (LambdaLR and AdamW restore their numbers),
        which this run's options must still set: resumed with a larger ``max_steps`` it trained every added step at
        the floor, and resumed with another ``lr`` (or weight decay, betas, warm-up, floor) it trained on at the old
        one while its hparams.yaml recorded the new one (from a review). So the cosine is stretched to the run's
        length from here on, this run's optimizer options replace the checkpoint's, each change is named in a
        warning, and the current rate is set from them."""
        total = trainer.estimated_stepping_batches
        if trainer.global_step == 0 or not math.isfinite(total):
            return
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            # one WarmupCosine serves both AdamW groups: each schedule once (its warning named the value it had just
            # set, the second time)
            schedules = list(
                {id(f): f for f in getattr(scheduler, "lr_lambdas", []) if isinstance(f, WarmupCosine)}.values()
            )
            changes = self._apply_options(scheduler, schedules)
            stale = [f for f in schedules if f.total_steps != max(int(total), f.warmup_steps + 1)]
            for schedule in stale:
                logger.warning(
                    "resumed at step %d of a run of %d optimizer steps, where the checkpoint's schedule had %d: the "
                    "cosine decays over %d from here.",
                    trainer.global_step,
                    int(total),
                    schedule.total_steps,
                    int(total),
                )
                schedule.total_steps = max(int(total), schedule.warmup_steps + 1)
            if changes:
                logger.warning(
                    "resumed at step %d with other optimizer options than the checkpoint's run: %s; this run's apply "
                    "from here.",
                    trainer.global_step,
                    "; ".join(changes),
                )
            if stale or changes:
                for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas,
                                           strict=True):  # fmt: skip
                    group["lr"] = base * fn(scheduler.last_epoch)

    def _apply_options(self, scheduler, schedules: list[WarmupCosine]) -> list[str]:
        """This run's lr, weight_decay, betas, warmup_steps and min_lr_ratio into a restored ``scheduler`` (its
        optimizer's groups, its base rates) and its ``schedules``: each change as "lr 1e-05 (then 0.002)"."""
        hp, changes = self.hparams, {}  # an ordered set: both groups share the betas

        def changed(name, now, then) -> bool:
            if now != then:
                changes[f"{name} {now} (then {then})"] = None
            return now != then

        for schedule in schedules:
            if changed("warmup_steps", int(hp.warmup_steps), schedule.warmup_steps):
                schedule.warmup_steps = int(hp.warmup_steps)
            if changed("min_lr_ratio", float(hp.min_lr_ratio), schedule.min_ratio):
                schedule.min_ratio = float(hp.min_lr_ratio)
        lr, betas = float(hp.lr), [float(b) for b in hp.betas]
        if any(changed("lr", lr, base) for base in scheduler.base_lrs):
            scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
        for group in scheduler.optimizer.param_groups:
            group["initial_lr"] = lr
            decays = group.get("name", PARAM_GROUPS[0]) == PARAM_GROUPS[0]  # the other group keeps no decay
            if decays and changed("weight_decay", float(hp.weight_decay), group["weight_decay"]):
                group["weight_decay"] = float(hp.weight_decay)
            if changed("betas", betas, list(group["betas"])):
                group["betas"] = tuple(betas)
        return list(changes)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Name the AdamW groups of a checkpoint saved before they had names: torch's ``load_state_dict`` keeps the
        saved group dicts, and a resumed run would log ``train/lr/pg1`` instead of ``train/lr/decay``. A checkpoint
        saved with the EMA holds the averaged weights as ``state_dict`` and the trained ones beside them; resumed
        without the EMA (``ema_decay`` 0), training goes on from the trained ones, which the optimizer's moments
        belong to (from a review: it went on from the average, silently)."""
        for state in checkpoint.get("optimizer_states", []):
            for group, name in zip(state.get("param_groups", []), PARAM_GROUPS, strict=False):
                group.setdefault("name", name)
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING  # a resume, not a load
        if fitting and isinstance(checkpoint.get("rng_states"), dict):
            # now, so that the data loaders built next seed their transforms from them, and at on_train_start
            self._resumed_rng_states = checkpoint["rng_states"]
            set_rng_states(self._resumed_rng_states, rank=getattr(self.trainer, "global_rank", 0))
        if fitting and not self.hparams.get("ema_decay") and "current_model_state" in checkpoint:
            checkpoint["state_dict"] = checkpoint.pop("current_model_state")
            logger.warning(
                "this run has no EMA (ema_decay 0) and its checkpoint was saved with one: training goes on from the "
                "trained weights; the checkpoint's averaged weights are dropped."
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The random states go with the checkpoint, so that a resumed run goes on drawing where it stopped: Lightning
        saves none, and the bundle seeds every run alike, so a resume replayed the first epoch's crops, augmentations,
        timesteps and noise (from a review)."""
        checkpoint["rng_states"] = rng_states()

    def configure_callbacks(self) -> list[Callback]:
        """The EMA of the weights belongs to the model: Lightning's ``EMAWeightAveraging`` (``AveragedModel``); with a
        logger, Lightning's ``LearningRateMonitor`` logs ``train/lr/decay`` and ``train/lr/no_decay`` (every
        ``log_every_n_steps``), unless the trainer has one already."""
        callbacks: list[Callback] = []
        trainer = self._trainer
        if trainer is not None and trainer.loggers:  # the monitor refuses a trainer without a logger
            if not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
                callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.hparams.ema_decay:
            start = self.hparams.ema_start_step or None
            # the trainer's device: Lightning builds the average in the setup hook, before the strategy moves the
            # model, so on a GPU it stayed on the CPU and every step averaged there, through a device copy
            device = trainer.strategy.root_device if trainer is not None else None
            callbacks.append(WarmupEMA(decay=self.hparams.ema_decay, update_starting_at_step=start, device=device))
        return callbacks

    ##################################################################################################################
    # Validation: sample whole volumes (on the EMA weights, swapped in by the callback), Dice per class
    ##################################################################################################################

    def on_validation_epoch_start(self) -> None:
        self.dice.reset()
        self._val_indices, self._val_unindexed = [], False

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        if self.validation_sampler is None:
            return
        image, label = batch["image"], batch["label"]  # (1, C_img, *S), (1, 1, *S)
        # the volume's own index: under DDP batch_idx counts this rank's share of the split
        index = int(batch["index"][0]) if "index" in batch else batch_idx
        self._val_unindexed = self._val_unindexed or "index" not in batch
        generator = torch.Generator(device=image.device).manual_seed(self.hparams.val_seed + index)
        summary = self.validation_sampler(self.segmenter, image, generator=generator, **self._spacing(batch))
        prediction = summary["labels"].to(label.device)  # (1, 1, *S)
        self.dice(y_pred=prediction, y=label)
        self._val_indices.append(index)
        if batch_idx < self.hparams.log_images and self.trainer.is_global_zero:  # rank 0's first, by their index
            log_validation_images(
                self.logger,
                self.global_step,
                image,
                label,
                prediction,
                summary.get("entropy"),
                num_classes=self.num_classes,
                prefix="val" if self.hparams.log_images == 1 else f"val/{index}",
            )

    def on_validation_epoch_end(self) -> None:
        scores = self.dice.get_buffer()
        if self.validation_sampler is None or scores is None or not scores.numel():
            return
        scores = scores.float()  # (N, K) on this rank
        if self.trainer.world_size > 1:
            indices = torch.as_tensor(self._val_indices, device=scores.device)
            scores = self.all_gather(scores).reshape(-1, scores.shape[-1])  # (ranks * N, K)
            indices = self.all_gather(indices).reshape(-1)
            unindexed = self.all_gather(torch.tensor(self._val_unindexed, device=scores.device)).any()
            if not unindexed:  # batch_idx counts a rank's share: only the split's own index names a volume
                # DistributedSampler pads the last ranks' shares with volumes from the start of the split: each once
                seen: set[int] = set()
                first = [row for row, i in enumerate(indices.tolist()) if not (i in seen or seen.add(i))]
                scores = scores[first]
        per_class = scores.nanmean(dim=0)  # (K,)
        metrics = {f"val/dice_{_tag(name)}": per_class[k] for k, name in enumerate(self.class_names)}
        metrics[MONITOR] = per_class[1:].mean()  # foreground classes
        self.log_dict(metrics, sync_dist=True)  # identical on every rank after the gather
        self.log("dice", metrics[MONITOR], prog_bar=True, logger=False, sync_dist=True)
        self.dice.reset()

    ##################################################################################################################
    # Export
    ##################################################################################################################

    def export_segmenter(
        self,
        models_dir: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        extra_config: Mapping | None = None,
        *,
        overwrite: bool = False,
        source: str | os.PathLike | None = None,
    ) -> Path:
        """Write bundle weights into ``models_dir`` (``model.pt``, the net's bare state dict, and ``medwidit.json``:
        config with "preprocessing", "class_names" and ``extra_config``, e.g. the training "roi_size") from a
        Lightning ``checkpoint`` (its ``state_dict``: the EMA weights when the EMA is on) or, when None, from the
        module's current weights (``medwidit.diffusion.save_bundle_weights``); ``source``: where those came from, for
        the log line (``export_checkpoint``'s module holds a checkpoint's weights)."""
        segmenter = self.segmenter
        if checkpoint is not None:
            segmenter = copy.deepcopy(self.segmenter).cpu()
            segmenter.load_state_dict(segmenter_state_from_checkpoint(checkpoint))
        extra = {"preprocessing": dict(self.hparams.preprocessing), "class_names": self.class_names}
        extra.update(extra_config or {})
        saved = save_bundle_weights(segmenter, models_dir, extra_config=extra, overwrite=overwrite)
        logger.info("exported segmenter to %s (weights from %s)", saved, checkpoint or source or "the current module")
        return saved


def _segmenter_from(segmenter: DiffusionSegmenter | None, model_config: Mapping | None) -> DiffusionSegmenter:
    """The module's segmenter: the one given (checked against ``model_config`` if both) or one built from it."""
    if segmenter is None:
        if model_config is None:
            raise ValueError("give segmenter= or model_config= (a checkpoint's hyperparameter) to build the model.")
        return build_segmenter(model_config, "model_config")
    if not isinstance(segmenter, DiffusionSegmenter):
        raise TypeError(f"segmenter must be a DiffusionSegmenter, got {type(segmenter).__name__}.")
    if model_config is not None and with_config_defaults(model_config) != segmenter_config(segmenter):
        raise ValueError("model_config does not describe the segmenter given; give one or the other.")
    return segmenter


def export_checkpoint(checkpoint: str | os.PathLike, models_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """A Lightning checkpoint of :class:`DiffusionSegmentationModule` -> bundle weights in ``models_dir`` (the
    ``medwidit export`` command); the training crop becomes the config's "roi_size" where the checkpoint has it."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model_config" not in state.get("hyper_parameters", {}):
        raise ValueError(
            f"{checkpoint} is not a Lightning checkpoint of DiffusionSegmentationModule (no hyper_parameters "
            "'model_config'; checkpoints written before it was saved cannot be exported by this command)."
        )
    _segmenter_weights(state, checkpoint)  # its weights are there (a KeyError from Lightning otherwise)
    try:
        module = DiffusionSegmentationModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    except (KeyError, RuntimeError) as e:  # missing or mismatched weights: a long traceback of key names
        raise ValueError(
            f"{checkpoint} is not a complete DiffusionSegmentationModule checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]})."
        ) from e
    roi_size = state.get("datamodule_hyper_parameters", {}).get("roi_size")
    extra = {} if roi_size is None else {"roi_size": [int(r) for r in roi_size]}
    # the module holds the checkpoint's weights
    return module.export_segmenter(models_dir, extra_config=extra, overwrite=overwrite, source=checkpoint)


def segmenter_state_from_checkpoint(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The segmenter's weights from a Lightning checkpoint of :class:`DiffusionSegmentationModule`, loaded with
    ``weights_only=True`` (its ``state_dict`` holds the EMA weights when the EMA callback was on)."""
    return _segmenter_weights(torch.load(checkpoint, map_location="cpu", weights_only=True), checkpoint)


def _segmenter_weights(state, checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``segmenter.*`` weights of a loaded Lightning checkpoint ``state``, else a ValueError naming the file."""
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{checkpoint} is not a Lightning checkpoint (no 'state_dict').")
    prefix = "segmenter."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{checkpoint} holds no '{prefix}*' weights; is it a DiffusionSegmentationModule checkpoint?")
    return weights


def _count_the_restored_epoch_end_once(trainer) -> None:
    """Lightning, resuming from a checkpoint saved at an epoch's end (``last.ckpt``) under ``max_steps``, runs that
    epoch's end again and counts it a second time: a run resumed to 3 epochs after 1 trained one more, not two, and
    its counters came out skewed (more epochs processed than started: Lightning issue 19617). Where the fit loop is
    in that state, its processed count steps back one, so that the replayed end brings it back (from a review)."""
    loop = getattr(trainer, "fit_loop", None)
    progress = getattr(loop, "epoch_progress", None)
    if progress is None or not getattr(loop, "restarted_on_epoch_end", False):
        return
    total, current = progress.total, progress.current
    if total.processed == total.started and total.completed == total.processed - 1 and current.processed > 0:
        total.processed -= 1
        current.processed -= 1


def rng_states() -> dict:
    """torch's (and CUDA's), numpy's and Python's global random states, as a checkpoint loaded with
    ``weights_only=True`` holds them (tensors, ints, strings)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [
            name,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(position),
            int(has_gauss),
            float(gauss),
        ],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping, rank: int = 0) -> None:
    """Put back what :func:`rng_states` saved; on rank ``rank`` > 0 of a multi-process run (the checkpoint holds rank
    0's states) a stream of its own, seeded from them, so that ranks do not draw alike."""
    if isinstance(states.get("torch"), torch.Tensor):
        torch.set_rng_state(states["torch"])
    numpy = states.get("numpy")
    if isinstance(numpy, (list, tuple)) and len(numpy) == 5:
        name, keys, position, has_gauss, gauss = numpy
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss), float(gauss)))
    python = states.get("python")
    if isinstance(python, (list, tuple)) and len(python) == 3:
        version, internal, gauss = python
        random.setstate((version, tuple(internal), gauss))
    cuda = states.get("cuda")
    if isinstance(cuda, (list, tuple)) and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if rank:
        L.seed_everything(int(torch.randint(0, 2**31 - 1 - rank, (1,))) + rank, workers=True, verbose=False)


class ExportSegmenter(Callback):
    """At the end of ``fit``, export the best checkpoint's weights (else the last one's, else the module's) as bundle
    weights in ``models_dir`` (``model.pt`` + ``medwidit.json``, what the predictor and the bundle configs load).

    train.json points it at the run folder (``runs/models``), never at the bundle's shipped ``models/``: those change
    only by ``medwidit export``. ``overwrite`` (default True: the run folder is the run's own) replaces an earlier
    export there. The config also records the datamodule's training crop as "roi_size" (the predictor's default
    window) unless ``extra_config`` says otherwise.
    """

    def __init__(
        self, models_dir: str | os.PathLike, extra_config: Mapping | None = None, *, overwrite: bool = True
    ) -> None:
        self.models_dir = Path(models_dir)
        self.extra_config = dict(extra_config or {})
        self.overwrite = check_bool("overwrite", overwrite)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not isinstance(pl_module, DiffusionSegmentationModule):
            return
        callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        candidates = [c.best_model_path for c in callbacks if c.monitor]  # best by the monitored metric first
        candidates += [path for c in callbacks for path in (c.last_model_path, c.best_model_path)]
        source = next((path for path in candidates if path and os.path.exists(path)), None)
        extra = {}
        roi_size = getattr(trainer.datamodule, "roi_size", None)
        if roi_size is not None:
            extra["roi_size"] = [int(r) for r in roi_size]
        pl_module.export_segmenter(self.models_dir, source, {**extra, **self.extra_config}, overwrite=self.overwrite)
