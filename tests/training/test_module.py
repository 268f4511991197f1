"""training/module: the schedule's values, validation on the EMA weights, a tiny fit that
writes TensorBoard scalars and images, weights-only checkpoints and an exported segmenter the loaders accept."""

import functools
import json
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from training_volumes import PREPROCESSING_3D, tiny_segmenter, whole_volume_sampler, write_dataset

from medwidit.cli import main
from medwidit.diffusion import DiffusionSegmenter, load_segmenter, save_segmenter
from medwidit.inference.sliding import sample_ensemble
from medwidit.training import (
    DiffusionSegmentationModule,
    ExportSegmenter,
    SegmentationDataModule,
    WarmupCosine,
    initial_weights,
    segmenter_state_from_checkpoint,
)
from medwidit.training.module import WarmupEMA, ema_warmup_avg_fn

NAMES = ["background", "outer box", "inner box"]


def test_warmup_cosine_values():
    schedule = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(14) == pytest.approx(0.1) and schedule(100) == pytest.approx(0.1)
    decay = [schedule(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


class Oracle:
    """Validation stand-in: predicts a fixed label map and records the weights it was called with."""

    def __init__(self, prediction=None):
        self.prediction, self.seen = prediction, []

    def __call__(self, segmenter, image, generator):
        self.seen.append(next(segmenter.parameters()).detach().clone())
        labels = self.prediction if self.prediction is not None else self.truth
        return {"labels": labels, "entropy": torch.zeros_like(labels, dtype=torch.float32)}


@pytest.mark.parametrize("mode", ["perfect", "background"])
def test_validation_metrics_per_class_and_mean(mode):
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    label[..., 2:6, 2:6, 2:6] = 1
    label[..., 3:5, 3:5, 3:5] = 2
    oracle = Oracle(label if mode == "perfect" else torch.zeros_like(label))
    module = DiffusionSegmentationModule(tiny_segmenter(), validation_sampler=oracle, class_names=NAMES, log_images=0)
    logged = {}
    module.log_dict = lambda metrics, **kw: logged.update({k: float(v) for k, v in metrics.items()})
    module.log = lambda name, value, **kw: logged.update({name: float(value)})  # the progress bar's "dice"
    module._trainer = type("T", (), {"world_size": 1, "is_global_zero": True})()
    module.on_validation_epoch_start()
    module.validation_step({"image": torch.randn(1, 1, 8, 8, 8), "label": label}, 0)
    module.on_validation_epoch_end()
    expected = {"perfect": (1.0, 1.0, 1.0), "background": (logged["val/dice_background"], 0.0, 0.0)}[mode]
    assert (logged["val/dice_background"], logged["val/dice_outer_box"], logged["val/dice_inner_box"]) == expected
    assert logged["val/mean_dice"] == pytest.approx(sum(expected[1:]) / 2) == logged["dice"]


def test_two_ranks_score_each_validation_volume_once_on_its_own_noise():
    """Under DDP, Lightning's DistributedSampler splits 3 volumes over 2 ranks as [0, 2] and [1, 0]: the padded
    repeat of volume 0 was counted twice, and each volume drew the noise of its place in its rank's share. The
    gathered Dice now equals a single process's, and every volume draws ``val_seed + its index`` on any rank."""
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    label[..., 2:6, 2:6, 2:6] = 1
    label[..., 3:5, 3:5, 3:5] = 2
    # foreground Dice (outer box, inner box): 1 and 1; 0 and 0; 2 x 56 / (56 + 64) and 0 (the inner box called outer)
    predictions = [label, torch.zeros_like(label), label.clamp(max=1)]
    seeds = []

    def sampler(segmenter, image, generator):
        seeds.append(generator.initial_seed())
        return {"labels": predictions[int(image.flatten()[0])], "entropy": None}

    def run(shares, world_size, others=None, indexed=True):
        """One rank's validation epoch -> (what it logged, the tensors it handed to all_gather)."""
        module = DiffusionSegmentationModule(
            tiny_segmenter(), validation_sampler=sampler, class_names=NAMES, log_images=0, val_seed=10
        )
        logged, sent = {}, []

        def all_gather(tensor):  # stacked by rank: rank 0's own, then the other's (rank 1's own result is unused)
            sent.append(tensor)
            return torch.stack([tensor, others.pop(0) if others else tensor])

        module.log_dict = lambda metrics, **kw: logged.update({k: float(v) for k, v in metrics.items()})
        module.log = lambda name, value, **kw: None
        module.all_gather = all_gather
        module._trainer = type("T", (), {"world_size": world_size, "is_global_zero": True})()
        module.on_validation_epoch_start()
        for batch_idx, i in enumerate(shares):
            batch = {"image": torch.full((1, 1, 8, 8, 8), float(i)), "label": label}
            module.validation_step({**batch, "index": torch.tensor([i])} if indexed else batch, batch_idx)
        module.on_validation_epoch_end()
        return logged, sent

    single, _ = run([0, 1, 2], 1)
    assert seeds == [10, 11, 12] and single["val/mean_dice"] == pytest.approx((1 + 0 + 112 / 120 / 2) / 3)
    seeds.clear()
    _, rank1 = run([1, 0], 2)
    rank0, _ = run([0, 2], 2, others=rank1)
    assert sorted(seeds) == [10, 10, 11, 12]  # the repeat of volume 0 on rank 1 draws volume 0's noise
    assert rank0 == pytest.approx(single)  # volume 0 once: counted twice, the mean Dice was 0.617, not 0.489
    # another data module's batches carry no index: batch_idx names a rank's share, so no row is merged (4 volumes
    # on 2 ranks as [0, 2] and [1, 3] would otherwise lose rank 1's)
    _, rank1 = run([1, 0], 2, indexed=False)
    unindexed, _ = run([0, 2], 2, others=rank1, indexed=False)
    assert unindexed["val/mean_dice"] == pytest.approx((1 + 112 / 120 / 2 + 0 + 1) / 4)


class StepCounter(Callback):
    def __init__(self):
        self.steps, self.first_global_step = 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.first_global_step = trainer.global_step if self.first_global_step is None else self.first_global_step
        self.steps += 1


def _fit(tmp_path, data_list, *, epochs=2, sampler=None, ema_decay=0.5, callbacks=(), resume=None, progress_bar=False,
         max_steps=-1, **options):  # fmt: skip
    L.seed_everything(0, verbose=False)
    dm = SegmentationDataModule(
        data_list=data_list,
        preprocessing=PREPROCESSING_3D,
        roi_size=[16, 16, 16],
        batch_size=1,
        num_crops=1,
        num_workers=0,
    )
    module = DiffusionSegmentationModule(
        tiny_segmenter(),
        **{"lr": 1e-2, "warmup_steps": 1, **options},
        ema_decay=ema_decay,
        validation_sampler=sampler,
        class_names=NAMES,
        preprocessing=PREPROCESSING_3D,
    )
    checkpoints = [
        ModelCheckpoint(
            dirpath=tmp_path / "ckpt", filename="last", save_on_train_epoch_end=True, enable_version_counter=False
        ),
        ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="best", monitor="val/mean_dice", mode="max"),
    ]
    trainer = L.Trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(tmp_path, name="tb", version=0),
        callbacks=[*checkpoints, ExportSegmenter(tmp_path / "models"), *callbacks],
        gradient_clip_val=1.0,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    return trainer, module


@pytest.mark.slow
def test_fit_logs_validates_on_ema_and_exports(tmp_path, capsys):
    data_list = write_dataset(tmp_path / "data", num_train=2)
    sampler = whole_volume_sampler(steps=1)
    seen = []

    def recording_sampler(segmenter, image, generator):
        seen.append({k: v.detach().clone() for k, v in segmenter.state_dict().items()})
        return sampler(segmenter, image, generator)

    trainer, module = _fit(tmp_path, data_list, sampler=recording_sampler)

    # checkpoints load with weights_only=True; state_dict holds the EMA, current_model_state the raw weights
    best = torch.load(tmp_path / "ckpt" / "best.ckpt", weights_only=True)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and set(last["hyper_parameters"]["preprocessing"]) == set(PREPROCESSING_3D)
    ema = {k.removeprefix("segmenter."): v for k, v in last["state_dict"].items()}
    raw = {k.removeprefix("segmenter."): v for k, v in last["current_model_state"].items()}
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    # validation of the last epoch ran on the EMA weights, not the raw ones
    assert all(torch.equal(seen[-1][k], ema[k]) for k in seen[-1])

    # the export = the best checkpoint's EMA weights as a bare state dict + medwidit.json, loadable by the loaders
    exported = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    config = json.loads((tmp_path / "models" / "medwidit.json").read_text())["config"]
    assert set(exported) == set(module.segmenter.net.state_dict())
    assert config["preprocessing"]["intensity"] == "zscore_nonzero" and config["roi_size"] == [16, 16, 16]
    assert config["class_names"] == NAMES
    segmenter, _ = load_segmenter(tmp_path / "models" / "model.pt")
    best_weights = segmenter_state_from_checkpoint(tmp_path / "ckpt" / "best.ckpt")
    last_weights = segmenter_state_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert all(torch.equal(v, best_weights[k]) for k, v in segmenter.state_dict().items())
    if best["global_step"] != last["global_step"]:
        assert any(not torch.equal(v, last_weights[k]) for k, v in segmenter.state_dict().items())

    # load_from_checkpoint rebuilds the module from the file alone; `medwidit export` writes the same model
    reloaded = DiffusionSegmentationModule.load_from_checkpoint(tmp_path / "ckpt" / "best.ckpt", weights_only=True)
    assert reloaded.hparams.preprocessing == module.hparams.preprocessing and reloaded.class_names == NAMES
    assert all(torch.equal(v, best_weights[k]) for k, v in reloaded.segmenter.state_dict().items())
    (tmp_path / "bundle" / "configs").mkdir(parents=True)  # a bundle folder: export refuses any other
    capsys.readouterr()
    assert main(["export", str(tmp_path / "ckpt" / "best.ckpt"), str(tmp_path / "bundle")]) == 0
    # the checkpoint named as the source (it said "the current module", from a review)
    assert f"(weights from {tmp_path / 'ckpt' / 'best.ckpt'})" in capsys.readouterr().err
    assert torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True).keys() == exported.keys()
    assert json.loads((tmp_path / "bundle" / "models" / "medwidit.json").read_text())["config"] == config
    assert main(["export", str(tmp_path / "ckpt" / "best.ckpt"), str(tmp_path / "bundle"), "-q"]) == 1  # exists
    # a bundle whose inference.json samples a second set that is not there: the export is done, so exit 0 and a
    # warning (it exited 1 after writing both files)
    (tmp_path / "bundle2" / "configs").mkdir(parents=True)
    inference = {"extra_weights": ["models/model_b.pt"], "weight_sets": 2}
    (tmp_path / "bundle2" / "configs" / "inference.json").write_text(json.dumps(inference))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "ckpt" / "best.ckpt"), str(tmp_path / "bundle2"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "extra_weights names" in err and "set weight_sets to 1 in inference.json" in err and "error" not in err
    assert (tmp_path / "bundle2" / "models" / "model.pt").is_file()
    # a checkpoint without its weights: one line naming it, not Lightning's KeyError or a list of missing keys
    for broken, edit in (("nostate", lambda s: s.pop("state_dict")), ("noweights", lambda s: s["state_dict"].clear())):
        state = torch.load(tmp_path / "ckpt" / "best.ckpt", weights_only=True)
        edit(state)
        torch.save(state, tmp_path / f"{broken}.ckpt")
        assert main(["export", str(tmp_path / f"{broken}.ckpt"), str(tmp_path / "bundle2"), "-q", "--overwrite"]) == 1
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert line.startswith(f"medwidit: error: {tmp_path / broken}.ckpt") and "Traceback" not in line

    # TensorBoard: scalars and images
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {
        "train/loss_step",
        "train/loss_epoch",
        "train/aux_epoch",
        "train/lr/decay",
        "train/lr/no_decay",
        "val/mean_dice",
    } <= scalars
    assert {f"val/dice_{n}" for n in ("background", "outer_box", "inner_box")} <= scalars
    assert {"val/overlay_label", "val/overlay_prediction", "val/overlay_uncertainty"} <= images
    assert {f"val/{n}_HWD/image" for n in ("image", "label", "prediction", "uncertainty")} <= images


def test_missing_file_fails_before_any_training_step(tmp_path):
    data_list = write_dataset(tmp_path / "data")
    listing = json.loads(data_list.read_text())
    listing["training"][1]["image"] = "missing_image.nii.gz"
    data_list.write_text(json.dumps(listing))
    counter = StepCounter()
    with pytest.raises(FileNotFoundError, match="missing_image.nii.gz"):
        _fit(tmp_path, data_list, epochs=1, callbacks=[counter])
    assert counter.steps == 0 and not (tmp_path / "ckpt").exists()


def test_options_are_checked():
    with pytest.raises(ValueError, match="class_names"):
        DiffusionSegmentationModule(tiny_segmenter(), class_names=["a", "b"])
    # two names one tag: one class's Dice was dropped from the logs; a number failed at the first validation's end
    with pytest.raises(ValueError, match=r"give the same metric tag twice .*'grey_matter', 'grey_matter'"):
        DiffusionSegmentationModule(tiny_segmenter(), class_names=["background", "grey matter", "grey-matter"])
    with pytest.raises(ValueError, match="class_names must be strings"):
        DiffusionSegmentationModule(tiny_segmenter(), class_names=["background", "a", 3])
    with pytest.raises(ValueError, match="ema_decay"):
        DiffusionSegmentationModule(tiny_segmenter(), ema_decay=1.5)
    with pytest.raises(TypeError, match="DiffusionSegmenter"):
        DiffusionSegmentationModule(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="zscroe"):
        DiffusionSegmentationModule(tiny_segmenter(), preprocessing={"intensity": "zscroe"})
    with pytest.raises(ValueError, match="model_config"):
        DiffusionSegmentationModule()
    with pytest.raises(ValueError, match="does not describe"):
        DiffusionSegmentationModule(tiny_segmenter(), model_config={"net": {}, "segmenter": {}})


def test_model_config_hyperparameter_rebuilds_the_segmenter():
    """load_from_checkpoint calls the constructor with the saved hyperparameters only: model_config must suffice."""
    module = DiffusionSegmentationModule(tiny_segmenter(), class_names=NAMES)
    rebuilt = DiffusionSegmentationModule(**module.hparams)
    assert rebuilt.segmenter.config == module.segmenter.config
    assert rebuilt.segmenter.net.config == module.segmenter.net.config
    assert type(rebuilt.segmenter.net) is type(module.segmenter.net)


def test_model_config_from_before_the_timestep_options_still_matches():
    """A checkpoint config written before timestep_sampling (or self_condition) existed describes a segmenter with
    the defaults."""
    module = DiffusionSegmentationModule(tiny_segmenter(), class_names=NAMES)
    old = json.loads(json.dumps(module.hparams["model_config"]))
    for key in ("timestep_sampling", "timestep_args", "self_condition"):
        del old["segmenter"][key]
    DiffusionSegmentationModule(tiny_segmenter(), model_config=old, class_names=NAMES)  # no "does not describe"
    partial = json.loads(json.dumps(module.hparams["model_config"]))
    partial["segmenter"].update(timestep_sampling="logit_normal", timestep_args={"location": 1})
    logit = tiny_segmenter(timestep_sampling="logit_normal", timestep_args={"location": 1.0})
    DiffusionSegmentationModule(logit, model_config=partial, class_names=NAMES)  # defaults filled in as it does
    with pytest.raises(ValueError, match="does not describe"):
        DiffusionSegmentationModule(tiny_segmenter(timestep_sampling="logit_normal"), model_config=old)


def test_progress_bar_shows_loss_and_dice(tmp_path, capsys):
    data_list = write_dataset(tmp_path / "data", num_train=1)
    trainer, _ = _fit(tmp_path, data_list, epochs=1, sampler=whole_volume_sampler(steps=1), progress_bar=True)
    bar = trainer.progress_bar_callback.get_metrics(trainer, trainer.lightning_module)
    assert {"loss", "dice"} <= set(bar)


class _OneWeight(L.LightningModule):
    """w climbs steadily from 0: a constant gradient, 0.05 per SGD step, so w = 1 after 20 steps."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return -self.w

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(40, 1), batch_size=1)


def test_ema_warms_up_instead_of_holding_on_to_the_initial_weights(tmp_path):
    """A regression: Lightning's fixed-decay EMA stays by the weights of its first update (w = 0.05) for thousands of
    steps; on the brain task it held validation and the export at Dice 0.73 while the raw weights had 0.92."""
    ema = WarmupEMA(decay=0.999)
    trainer = L.Trainer(
        max_steps=20,
        callbacks=[ema],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_OneWeight())
    assert float(ema._average_model.module.w.detach()) > 0.6  # tracks w = 1 with a short lag; without warm-up: 0.06
    update = ema_warmup_avg_fn(0.99)
    late = update(torch.zeros(()), torch.ones(()), torch.tensor(10**6))
    assert float(late) == pytest.approx(0.01)  # warm-up over: the configured decay holds


class _OneWeightAndIndex(_OneWeight):
    """_OneWeight with an int64 index buffer, as WiDiT's relative-position index (the EMA averages buffers too)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("index", torch.arange(7, 107, dtype=torch.long), persistent=False)


def _fit_with_ema(tmp_path, max_steps: int, **ema_options):
    """(the EMA's averaged module, the trained module) of ``max_steps`` steps of ``_OneWeightAndIndex``."""
    ema = WarmupEMA(decay=0.995, **ema_options)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[ema], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    module = _OneWeightAndIndex()
    trainer.fit(module)
    return ema._average_model.module, module


def test_ema_keeps_integer_buffers_and_follows_the_weights_before_its_start(tmp_path):
    """Two regressions. The EMA averaged the int64 relative-position index in float and wrote it back truncated: after
    80 steps 1767 of 4096 entries were one lower, so validation ran another network. With update_starting_at_step,
    the average kept the initial weights until the start: validation scored, and a short run exported, them."""
    averaged, module = _fit_with_ema(tmp_path, 8, update_starting_at_step=10)
    assert float(averaged.w) == pytest.approx(float(module.w)) and float(module.w) > 0.3  # not the initial 0
    averaged, _ = _fit_with_ema(tmp_path, 30)
    assert torch.equal(averaged.index, torch.arange(7, 107))
    update = ema_warmup_avg_fn(0.9)
    assert torch.equal(update(torch.arange(5), torch.arange(5), torch.tensor(3)), torch.arange(5))


def test_a_run_ending_at_the_ema_start_exports_its_last_weights(tmp_path):
    """From a mutation review: the average follows the weights through optimizer step `start` (zero-based index
    start - 1; Lightning's first EMA update is at index start). Comparing global_step itself with the start skipped
    that step's copy, and a run of exactly `start` steps exported the weights of the step before."""
    averaged, module = _fit_with_ema(tmp_path, 10, update_starting_at_step=10)
    assert float(averaged.w.detach()) == float(module.w.detach()) == pytest.approx(10 * 0.05)  # w after step 10


def test_a_run_that_would_end_before_its_first_validation_is_refused(tmp_path):
    """max_steps ended it before epoch check_val_every_n_epoch: no validation, no best.ckpt, no word (the bundle's
    90-epoch interval outlasts its 1080 steps with a data list of 36 volumes)."""
    data_list = write_dataset(tmp_path, num_train=3, num_val=1)
    module = DiffusionSegmentationModule(tiny_segmenter(), warmup_steps=1, validation_sampler=whole_volume_sampler,
                                         class_names=NAMES, preprocessing=PREPROCESSING_3D)  # fmt: skip
    dm = SegmentationDataModule(data_list=data_list, preprocessing=PREPROCESSING_3D, roi_size=[16, 16, 16],
                                batch_size=1, num_crops=1, num_workers=0)  # fmt: skip
    trainer = L.Trainer(max_steps=5, check_val_every_n_epoch=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match=r"after 5 optimizer steps, before its first validation at epoch 3 \(9 steps"):
        trainer.fit(module, datamodule=dm)
    trainer = L.Trainer(max_epochs=2, check_val_every_n_epoch=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match=r"after 6 optimizer steps, .*--val_interval 2\)"):  # an epoch-bounded run
        trainer.fit(module, datamodule=dm)
    trainer = L.Trainer(max_steps=2, check_val_every_n_epoch=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match=r"Train at least one epoch \(3 steps\) or validate within one"):
        trainer.fit(module, datamodule=dm)  # no --val_interval fits a run shorter than an epoch


def test_a_module_whose_preprocessing_is_not_the_data_modules_is_refused(tmp_path):
    """Built without preprocessing, the module exported the defaults (z-scores, no resampling) for a model trained
    on the data module's own: inference then pre-processed it otherwise, without a word."""
    data_list = write_dataset(tmp_path, num_train=2, num_val=1)
    equalised = {**PREPROCESSING_3D, "intensity": "histogram"}
    dm = SegmentationDataModule(data_list=data_list, preprocessing=equalised, roi_size=[16, 16, 16],
                                batch_size=1, num_crops=1, num_workers=0)  # fmt: skip
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)  # fmt: skip
    module = DiffusionSegmentationModule(tiny_segmenter(), warmup_steps=1)  # the defaults: z-scores
    with pytest.raises(ValueError, match=r"differs from the data module's in intensity \(intensity: 'zscore_nonzero' "
                                         r"against 'histogram'\).*give both"):  # fmt: skip
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 0  # refused before the first step


def test_a_crop_that_is_not_a_multiple_of_the_patch_is_refused_naming_roi_size(tmp_path):
    """From a review: roi_size [18, 18, 18] under patch 4 failed inside the first training step, in the network's
    message about its input, 192 lines of traceback from the bundle."""
    data_list = write_dataset(tmp_path, num_train=2, num_val=1)
    dm = SegmentationDataModule(data_list=data_list, preprocessing=PREPROCESSING_3D, roi_size=[16, 18, 16],
                                batch_size=1, num_crops=1, num_workers=0)  # fmt: skip
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)  # fmt: skip
    module = DiffusionSegmentationModule(tiny_segmenter(), warmup_steps=1, preprocessing=PREPROCESSING_3D)
    with pytest.raises(ValueError, match=r"roi_size must be positive integers divisible by the network's patch_size "
                                         r"\(4, 4, 4\) on every axis, got \[16, 18, 16\]"):  # fmt: skip
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 0


def test_a_run_bounded_by_time_alone_names_what_the_schedule_needs(tmp_path):
    """max_steps -1 and max_epochs -1 with max_time: int(inf) was an OverflowError in configure_optimizers."""
    trainer = L.Trainer(max_steps=-1, max_epochs=-1, max_time={"seconds": 5}, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    data_list = write_dataset(tmp_path, num_train=2, num_val=1)
    dm = SegmentationDataModule(data_list=data_list, preprocessing=PREPROCESSING_3D, roi_size=[16, 16, 16],
                                batch_size=1, num_crops=1, num_workers=0)  # fmt: skip
    module = DiffusionSegmentationModule(tiny_segmenter(), warmup_steps=1, preprocessing=PREPROCESSING_3D)
    with pytest.raises(ValueError, match="needs the run's length: set max_steps or epochs"):
        trainer.fit(module, datamodule=dm)


def test_a_run_resumed_with_more_steps_stretches_its_schedule(tmp_path, caplog):
    """LambdaLR restored the checkpoint's WarmupCosine: a run resumed with a larger length trained every added step at
    lr * min_lr_ratio. The cosine now spans the resumed run, as in a run of that length from the start."""
    data_list = write_dataset(tmp_path / "data", num_train=2, num_val=1)
    sampler = whole_volume_sampler(steps=1)
    _fit(tmp_path / "a", data_list, epochs=2, sampler=sampler)
    last = str(tmp_path / "a" / "ckpt" / "last.ckpt")
    trainer, _ = _fit(tmp_path / "a", data_list, epochs=5, sampler=sampler, resume=last)
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule.total_steps == 10 and "the cosine decays over 10 from here" in caplog.text
    # once, naming the checkpoint's length (one schedule serves both AdamW groups: it was said twice, the second
    # time with the value it had just set)
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed at step")]
    assert len(resumed) == 1 and "where the checkpoint's schedule had 4:" in resumed[0], resumed
    straight, _ = _fit(tmp_path / "b", data_list, epochs=5, sampler=sampler)
    lr = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lr == pytest.approx([g["lr"] for g in straight.optimizers[0].param_groups])


class _Draws(Callback):
    """Each training batch's crop and the global torch random state at its start."""

    def __init__(self):
        self.draws = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.draws.append(
            (trainer.current_epoch, float(batch["image"].sum()), hash(torch.get_rng_state().numpy().tobytes()))
        )


def test_a_resumed_run_goes_on_drawing_where_it_stopped(tmp_path):
    """From a review: Lightning saves no random states and every run is seeded alike, so a run resumed after its
    first epoch replayed that epoch's crops and random state bit for bit. The checkpoint now holds them: the resumed
    epoch draws anew, and alike from one checkpoint. (Not as the uninterrupted run's second epoch: MONAI's DataLoader
    seeds the transforms once, when it is built, and a resumed run builds it again.)"""
    import shutil

    data_list = write_dataset(tmp_path / "data", num_train=2, num_val=1)
    sampler = whole_volume_sampler(steps=1)
    first, resumed, again = _Draws(), _Draws(), _Draws()
    _fit(tmp_path / "b", data_list, epochs=1, sampler=sampler, callbacks=[first])
    shutil.copy(tmp_path / "b" / "ckpt" / "last.ckpt", tmp_path / "saved.ckpt")
    for draws in (resumed, again):
        _fit(
            tmp_path / "b", data_list, epochs=2, sampler=sampler, callbacks=[draws], resume=str(tmp_path / "saved.ckpt")
        )
    assert len(resumed.draws) == len(first.draws) == 2
    for (_, crop, state), (_, crop0, state0) in zip(resumed.draws, first.draws, strict=True):
        assert crop != crop0 and state != state0  # not the first epoch again
    assert resumed.draws == again.draws


def test_a_run_resumed_from_an_epochs_end_under_max_steps_trains_the_epochs_asked_for(tmp_path):
    """From a review: under max_steps (train.json's default), Lightning ran the saved epoch's end again on a resume
    and counted it twice, so a run resumed to 3 epochs after 1 trained one more, not two, and its counters came out
    skewed (Lightning issue 19617)."""
    data_list = write_dataset(tmp_path / "data", num_train=2, num_val=1)
    sampler = whole_volume_sampler(steps=1)
    first, resumed = _Draws(), _Draws()
    _fit(tmp_path / "a", data_list, epochs=1, sampler=sampler, callbacks=[first], max_steps=1000)
    trainer, _ = _fit(tmp_path / "a", data_list, epochs=3, sampler=sampler, callbacks=[resumed], max_steps=1000,
                      resume=str(tmp_path / "a" / "ckpt" / "last.ckpt"))  # fmt: skip
    assert sorted({d[0] for d in first.draws}) == [0] and sorted({d[0] for d in resumed.draws}) == [1, 2]
    assert trainer.global_step == 3 * len(first.draws)
    total = trainer.fit_loop.epoch_progress.total
    assert total.started == total.processed == total.completed == 3  # not skewed: a later resume reads it right


def test_a_run_resumed_with_other_optimizer_options_trains_with_them_and_says_so(tmp_path, caplog):
    """From a review: `--resume last --lr 1e-5` went on at the checkpoint's 2e-3 (LambdaLR and AdamW restore their
    numbers) while hparams.yaml recorded 1e-5. The resumed run's lr, weight decay, betas, warm-up and floor apply from
    the step it resumes at, as in a run started with them (the same schedule at that step), each named once."""
    data_list = write_dataset(tmp_path / "data", num_train=2, num_val=1)
    sampler = whole_volume_sampler(steps=1)
    _fit(tmp_path / "a", data_list, epochs=2, sampler=sampler)
    last = str(tmp_path / "a" / "ckpt" / "last.ckpt")
    new = {"lr": 1e-4, "weight_decay": 0.2, "betas": (0.8, 0.9), "warmup_steps": 2, "min_lr_ratio": 0.3}
    trainer, _ = _fit(tmp_path / "a", data_list, epochs=4, sampler=sampler, resume=last, **new)
    named = [r.getMessage() for r in caplog.records if "other optimizer options" in r.getMessage()]
    assert len(named) == 1, named
    for change in ("lr 0.0001 (then 0.01)", "weight_decay 0.2 (then", "betas [0.8, 0.9] (then [0.9, 0.999])",
                   "warmup_steps 2 (then 1)", "min_lr_ratio 0.3 (then"):  # fmt: skip
        assert change in named[0], named[0]
    straight, _ = _fit(tmp_path / "b", data_list, epochs=4, sampler=sampler, **new)
    for resumed, fresh in zip(trainer.optimizers[0].param_groups, straight.optimizers[0].param_groups, strict=True):
        assert resumed["lr"] == pytest.approx(fresh["lr"]) and resumed["initial_lr"] == fresh["initial_lr"] == 1e-4
        assert resumed["weight_decay"] == fresh["weight_decay"] and tuple(resumed["betas"]) == (0.8, 0.9)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.2
    assert trainer.optimizers[0].param_groups[1]["weight_decay"] == 0.0  # the no-decay group keeps none


def test_a_checkpoint_saved_before_the_groups_had_names_resumes_with_the_same_lr_tags():
    """torch's Optimizer.load_state_dict keeps the saved group dicts: unnamed groups would log train/lr/pg1."""
    from medwidit.training.module import PARAM_GROUPS, DiffusionSegmentationModule

    checkpoint = {"optimizer_states": [{"param_groups": [{"lr": 1e-3}, {"lr": 1e-3, "name": "kept"}]}]}
    DiffusionSegmentationModule.on_load_checkpoint(
        SimpleNamespace(hparams={"ema_decay": 0.5}, _trainer=None), checkpoint
    )
    assert [g["name"] for g in checkpoint["optimizer_states"][0]["param_groups"]] == [PARAM_GROUPS[0], "kept"]


def test_a_run_resumed_without_the_ema_goes_on_from_the_trained_weights(tmp_path, caplog):
    """From a review: an EMA checkpoint holds the average as state_dict and the trained weights beside it; resumed
    with ema_decay 0, Lightning loaded the average as the live weights, with AdamW's moments of the trained ones,
    and said nothing."""
    data_list = write_dataset(tmp_path / "data", num_train=2, num_val=1)
    sampler = whole_volume_sampler(steps=1)
    _fit(tmp_path / "a", data_list, epochs=2, sampler=sampler)
    last = tmp_path / "a" / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    kept = tmp_path / "ema.ckpt"  # the resumed run writes last.ckpt again
    kept.write_bytes(last.read_bytes())
    started = {}

    class Probe(Callback):
        def on_train_start(self, trainer, module):
            started.update({k: v.detach().clone() for k, v in module.state_dict().items()})

    _fit(tmp_path / "a", data_list, epochs=3, sampler=sampler, ema_decay=0, resume=str(last), callbacks=[Probe()])
    assert all(torch.equal(started[k], v) for k, v in saved["current_model_state"].items())
    assert any(not torch.equal(started[k], v) for k, v in saved["state_dict"].items())
    assert "training goes on from the trained weights" in caplog.text
    caplog.clear()  # a load outside a fit keeps what the checkpoint calls its weights: the average
    loaded = DiffusionSegmentationModule.load_from_checkpoint(kept, ema_decay=0, weights_only=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved["state_dict"].items())
    assert "training goes on" not in caplog.text


def test_the_ema_is_kept_on_the_trainers_device():
    """From a review: Lightning builds the average in the setup hook, before the strategy moves the model to the
    accelerator, so a GPU run kept it on the CPU and averaged there every step, through a device copy."""
    from medwidit.training.module import WarmupEMA

    module = DiffusionSegmentationModule(tiny_segmenter(), ema_decay=0.9, preprocessing=PREPROCESSING_3D)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    module.trainer = trainer
    (ema,) = [c for c in module.configure_callbacks() if isinstance(c, WarmupEMA)]
    assert ema._device == trainer.strategy.root_device


def _spacing_segmenter():
    net = tiny_segmenter().net
    config = {**net.config, "spacing_conditioning": True}
    return DiffusionSegmenter(type(net)(**config), num_classes=3)


def _fit_spacing(tmp_path, *, data_spacing: bool):
    """One epoch of a spacing-conditioned WiDiT, validated by the bundle's stitched sampler; the spacing rows every
    network call received."""
    seen = []
    segmenter = _spacing_segmenter()
    segmenter.net.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("spacing")), with_kwargs=True)
    dm = SegmentationDataModule(
        data_list=write_dataset(tmp_path / "data", num_train=1),
        preprocessing=PREPROCESSING_3D,
        roi_size=[16, 16, 16],
        batch_size=1,
        num_crops=2,
        num_workers=0,
        thickness_prob=1.0,
        thickness_range=(3.0, 3.0),
        spacing_conditioning=data_spacing,
    )
    sampler = functools.partial(sample_ensemble, steps=1, num_samples=1, roi_size=[16, 16, 16], max_whole_voxels=0)
    module = DiffusionSegmentationModule(segmenter, validation_sampler=sampler, ema_decay=0.0, class_names=NAMES)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return seen


def test_spacing_reaches_the_network_in_training_and_validation(tmp_path):
    """Training crops: (1 mm grid, 1 mm acquisition but 3.2 mm along the thickened axis: 3 mm asked, 5 slices of a
    16-voxel crop); validation windows: the
    validation volume's own 1 mm record. Without the data module's spacing, the error says how to turn it on."""
    seen = _fit_spacing(tmp_path, data_spacing=True)
    training, validation = seen[0], torch.cat(seen[1:])
    assert training.shape == (2, 6) and torch.equal(training[:, :3], torch.ones(2, 3))
    # 3-voxel slices of a 16-voxel crop: round(16 / 3) = 5 slices, 3.2 voxels apart, what the crop got
    assert sorted(training[0, 3:].tolist()) == pytest.approx([1.0, 1.0, 16 / 5])
    assert len(seen) > 2 and torch.equal(validation, torch.ones_like(validation))
    with pytest.raises(ValueError, match="batch has no 'spacing'.*spacing_conditioning=True"):
        _fit_spacing(tmp_path / "again", data_spacing=False)


def test_init_weights_loads_a_matching_checkpoint_and_names_what_differs(tmp_path):
    """train.json's init_weights: a medwidit checkpoint's weights go into the built network; another model, or a
    file that is no checkpoint, is a ValueError naming the file (and the differing keys)."""
    source = tiny_segmenter()
    with torch.no_grad():
        for p in source.net.parameters():
            p.add_(1.0)
    path = save_segmenter(source, tmp_path / "start.pt")
    target = tiny_segmenter()
    assert initial_weights(target, None) is target
    assert initial_weights(target, path) is target
    assert all(torch.equal(a, b) for a, b in zip(target.net.parameters(), source.net.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"start.pt: its model differs .*'net.in_channels'.*'segmenter.num_classes'"):
        initial_weights(tiny_segmenter(num_classes=2), path)
    with pytest.raises(ValueError, match=r"differs .*\['segmenter.objective'\]"):
        initial_weights(tiny_segmenter(objective="epsilon"), path)
    with pytest.raises(ValueError, match=r"differs .*\['segmenter.x0_activation'\]"):  # logits, not estimates
        initial_weights(tiny_segmenter(x0_activation="softmax"), path)
    fine_tune = initial_weights(tiny_segmenter(timestep_sampling="logit_normal", aux_weight=2.0), path)
    assert torch.equal(next(fine_tune.net.parameters()), next(source.net.parameters()))  # training-only keys may differ
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError, match="init_weights .*notes.txt: could not be read as a medwidit checkpoint"):
        initial_weights(tiny_segmenter(), tmp_path / "notes.txt")


def test_init_new_head_loads_the_token_path_and_leaves_the_new_head_as_built(tmp_path):
    """train.json's init_new_head: a patch head's checkpoint starts a pixel-head network; every tensor but the head
    comes from the file, the pixel head keeps its initialisation (the model outputs exactly zero), and a network
    that differs beyond its head is still refused."""
    from medwidit.nets import WiDiT

    def segmenter(**net_options):
        sizes = {"patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2, "window_size": 4, **net_options}
        net = WiDiT(spatial_dim=3, in_channels=3, out_channels=3, cond_channels=1, learn_sigma=False, **sizes)
        return DiffusionSegmenter(net, num_classes=3)

    source = segmenter()
    with torch.no_grad():
        for p in source.net.parameters():
            p.add_(1.0)
    path = save_segmenter(source, tmp_path / "patch.pt")
    with pytest.raises(ValueError, match=r"differs .*'net.head'.*init_new_head true lets only the output head"):
        initial_weights(segmenter(head="pixel", pixel_dim=4, pixel_depth=1), path)
    built = segmenter(head="pixel", pixel_dim=4, pixel_depth=1)
    head = {k: v.clone() for k, v in built.net.state_dict().items() if k.startswith("pixel_head.")}
    target = initial_weights(built, path, new_head=True)
    theirs = source.net.state_dict()
    for key, value in target.net.state_dict().items():
        assert torch.equal(value, head[key] if key.startswith("pixel_head.") else theirs[key]), key
    x, image = torch.randn(1, 3, 8, 8, 8), torch.randn(1, 1, 8, 8, 8)
    assert torch.count_nonzero(target.net(x, torch.tensor([500]), conditioned=image)) == 0  # the zero FinalLayer
    with pytest.raises(ValueError, match=r"differs .*\['net.depth'\]"):
        initial_weights(segmenter(head="pixel", depth=2), path, new_head=True)
    with pytest.raises(ValueError, match="init_new_head"):
        initial_weights(segmenter(), path, new_head="yes")


def test_init_new_head_refuses_a_file_with_the_same_head_and_a_head_option_the_network_does_not_use_is_ignored(
    tmp_path,
):
    """init_new_head with a file whose head is the network's own would throw its trained head away (bundle 0.9.0's
    models/model.pt is already the pixel head): refused, as init_new_head without a file; a patch head's pixel_*
    options build nothing, so a patch checkpoint recorded with other pixel_* values still loads (0.8.0's model.pt
    into train.json's --head patch)."""
    from medwidit.nets import WiDiT

    def segmenter(**net_options):
        sizes = {"patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2, "window_size": 4, **net_options}
        net = WiDiT(spatial_dim=3, in_channels=3, out_channels=3, cond_channels=1, learn_sigma=False, **sizes)
        return DiffusionSegmenter(net, num_classes=3)

    pixel = save_segmenter(segmenter(head="pixel", pixel_dim=4, pixel_depth=1), tmp_path / "pixel.pt")
    with pytest.raises(ValueError, match=r"pixel.pt: its output head is train.json's own .*init_new_head false"):
        initial_weights(segmenter(head="pixel", pixel_dim=4, pixel_depth=1), pixel, new_head=True)
    assert initial_weights(segmenter(head="pixel", pixel_dim=4, pixel_depth=1), pixel) is not None  # loads whole
    with pytest.raises(ValueError, match="init_new_head true needs init_weights"):
        initial_weights(segmenter(), None, new_head=True)
    source = segmenter(pixel_dim=16, pixel_depth=2)  # a patch head: the pixel_* build nothing
    with torch.no_grad():
        for p in source.net.parameters():
            p.add_(1.0)
    patch = save_segmenter(source, tmp_path / "patch.pt")
    target = initial_weights(segmenter(pixel_dim=4, pixel_depth=1), patch)
    assert all(torch.equal(a, b) for a, b in zip(target.net.parameters(), source.net.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"differs .*\['net.pixel_dim'\]"):  # a pixel head's own options still count
        initial_weights(segmenter(head="pixel", pixel_dim=8, pixel_depth=1), pixel)
    wider = segmenter(head="pixel", pixel_dim=4, pixel_depth=1, pixel_kernel=5)  # the shipped 3^3 head -> a 5^3 one
    with pytest.raises(ValueError, match=r"differs .*\['net.pixel_kernel'\].*init_new_head true"):
        initial_weights(wider, pixel)
    head = {k: v.clone() for k, v in wider.net.state_dict().items() if k.startswith("pixel_head.")}
    theirs = initial_weights(segmenter(head="pixel", pixel_dim=4, pixel_depth=1), pixel).net.state_dict()
    loaded = initial_weights(wider, pixel, new_head=True)
    assert loaded.net.pixel_head.mix.kernel_size == (5, 5, 5)
    for key, value in loaded.net.state_dict().items():  # the body from the file, the wider head as built
        assert torch.equal(value, head[key] if key.startswith("pixel_head.") else theirs[key]), key


def test_head_options_name_every_head_and_the_module_that_is_it():
    """medwidit.nets.widit.HEAD_OPTIONS / HEAD_MODULES (what init_new_head leaves as built) cover WiDiT's heads, and
    each head's module is the one its network builds."""
    from medwidit.nets import WiDiT
    from medwidit.nets.blocks import HEADS
    from medwidit.nets.widit import HEAD_MODULES, HEAD_OPTIONS

    assert set(HEAD_OPTIONS) == set(HEAD_MODULES) == set(HEADS)
    for head in HEADS:
        net = WiDiT(spatial_dim=3, patch_size=4, in_channels=2, hidden_size=32, depth=1, num_heads=2, window_size=2,
                    cond_channels=1, learn_sigma=False, head=head)  # fmt: skip
        assert all(key in net.config for key in HEAD_OPTIONS[head])
        built = {name: getattr(net, module) is not None for name, module in HEAD_MODULES.items()}
        assert built == {name: name == head for name in HEADS}
        pixel_keys = {key for key in net.config if key.startswith("pixel_")}
        assert pixel_keys == set(HEAD_OPTIONS["pixel"])  # every pixel_* option belongs to the pixel head


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lr", "fast", r"lr must be a number > 0, got 'fast'"),
        ("lr", 0, r"lr must be a number > 0, got 0"),
        ("weight_decay", "x", r"weight_decay must be a number >= 0, got 'x'"),
        ("warmup_steps", 2.5, r"warmup_steps must be an integer >= 0, got 2.5"),
        ("log_images", "1", r"log_images must be an integer >= 0, got '1'"),
        ("min_lr_ratio", None, r"min_lr_ratio must be in \[0, 1\], got None"),
        ("ema_decay", "0.9", r"ema_decay must be in \[0, 1\) or None, got '0.9'"),
        ("betas", "ab", r"betas must be two numbers in \[0, 1\), got 'ab'"),
        ("betas", (0.9, 1.5), r"betas must be two numbers in \[0, 1\)"),
    ],
)
def test_optimizer_options_of_any_type_are_refused_by_name(option, value, message):
    """From a review: `--lr fast` was a TypeError of the comparison inside MONAI's "Failed to instantiate component";
    every optimizer option is refused by name, whatever its type (an override's text too). 100.0 warm-up steps, as
    JSON may give them, still count."""
    from medwidit.training.module import DiffusionSegmentationModule

    DiffusionSegmentationModule(tiny_segmenter(), warmup_steps=100.0)
    with pytest.raises(ValueError, match=message):
        DiffusionSegmentationModule(tiny_segmenter(), **{option: value})


def test_validation_steps_beyond_the_segmenters_timesteps_are_refused_when_the_module_is_built():
    """From a review: --val_steps 0 or 2000 failed only at the first validation, after the training before it; the
    module, which knows the segmenter's timesteps, checks it when train.json builds it."""
    import functools

    from medwidit.inference import sample_ensemble
    from medwidit.training.module import DiffusionSegmentationModule

    DiffusionSegmentationModule(tiny_segmenter(), validation_sampler=functools.partial(sample_ensemble, steps=1000))
    for steps in (2000, 0):
        sampler = functools.partial(sample_ensemble, steps=steps)
        with pytest.raises(ValueError, match=rf"val_steps must be an int in 1\.\.1000 .*, got {steps}"):
            DiffusionSegmentationModule(tiny_segmenter(), validation_sampler=sampler)


def test_a_resume_into_another_network_is_refused_naming_the_weights(tmp_path):
    """From a review: `--resume last --hidden_size 32` printed 157 lines of load_state_dict's error after the whole
    setup. The run is refused before fit, naming the checkpoint, the first differing shapes and how to go on."""
    from medwidit.training.bundle import _check_resumed_network
    from medwidit.training.module import DiffusionSegmentationModule

    module = DiffusionSegmentationModule(tiny_segmenter())
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict()}, checkpoint)
    _check_resumed_network(module, checkpoint)  # the same network
    other = DiffusionSegmentationModule(tiny_segmenter(num_classes=2))  # another task: other in and out channels
    with pytest.raises(ValueError, match=r"--resume: .*last.ckpt holds another network than this run builds \(shapes "
                                         r"segmenter\.net\..* \(this run: .*--init_weights"):  # fmt: skip
        _check_resumed_network(other, checkpoint)
    state = module.state_dict()
    state["segmenter.extra"] = torch.zeros(1)
    torch.save({"state_dict": state}, checkpoint)
    with pytest.raises(ValueError, match=r"weights this run lacks segmenter\.extra"):
        _check_resumed_network(module, checkpoint)


def test_a_resume_with_settings_that_change_what_the_weights_mean_is_refused(tmp_path):
    """From a review: `--resume last --objective epsilon` on an x0 run kept training its weights as epsilon, exit 0,
    and exported them labelled epsilon (and so with --x0_activation softmax); init_weights refuses the same change.
    Settings that only shape training (the aux weight, the timestep sampling) may change."""
    from medwidit.training.bundle import _check_resumed_network
    from medwidit.training.module import DiffusionSegmentationModule

    module = DiffusionSegmentationModule(tiny_segmenter())
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, checkpoint)
    assert _check_resumed_network(module, checkpoint) == 0  # the checkpoint's step (none saved: 0)
    _check_resumed_network(DiffusionSegmentationModule(tiny_segmenter(aux_weight=3.0)), checkpoint)
    # a second review: a checkpoint that predates a network option (pixel_kernel) was refused; it built the network
    # the option's default builds. Gradient checkpointing and a tuple for a list change nothing either.
    hparams = dict(module.hparams)
    config = hparams["model_config"] = {**hparams["model_config"], "net": dict(hparams["model_config"]["net"])}
    del config["net"]["conditioning"]  # as a config from before the option
    config["net"].update(grad_checkpointing=True, patch_size=tuple(config["net"]["patch_size"]))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, checkpoint)
    _check_resumed_network(module, checkpoint)
    config["net"]["conditioning"] = "concat"  # not the default: another network
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, checkpoint)
    with pytest.raises(ValueError, match=r"other settings in \['net\.conditioning'\]"):
        _check_resumed_network(module, checkpoint)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, checkpoint)
    for options, key in (({"objective": "epsilon"}, "objective"), ({"x0_activation": "softmax"}, "x0_activation")):
        other = DiffusionSegmentationModule(tiny_segmenter(**options))
        with pytest.raises(ValueError, match=rf"--resume: .*last.ckpt was trained with other settings in "
                                             rf"\['segmenter\.{key}'\]"):  # fmt: skip
            _check_resumed_network(other, checkpoint)
    # the preprocessing gives the weights their meaning too (from a review: a resume with another spacing exported
    # the checkpoint's 2 mm weights described as 1 mm ones)
    other = DiffusionSegmentationModule(tiny_segmenter(), preprocessing={"spacing": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match=r"other settings in \['preprocessing\.spacing'\]"):
        _check_resumed_network(other, checkpoint)


def test_export_into_a_bundle_whose_train_json_builds_another_network_says_what_to_set(tmp_path, capsys):
    """From a review: a copy of the brain bundle with exported weights for three classes loaded 76 of 80 tensors in
    `monai.bundle.load` and `ckpt_export` (which build train.json's network_def), the rest left random, with no
    error. The export names each plain train.json value that differs from the exported network, and says nothing
    where they agree."""
    import shutil
    from pathlib import Path

    data_list = write_dataset(tmp_path / "data", num_train=2, num_val=1)
    _fit(tmp_path, data_list, epochs=1, sampler=whole_volume_sampler(steps=1))
    shipped = Path(__file__).resolve().parents[2] / "bundles" / "brain_widit_segmentation" / "configs"
    bundle = tmp_path / "my_bundle"
    shutil.copytree(shipped, bundle / "configs")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "ckpt" / "last.ckpt"), str(bundle), "-q"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "its configs/train.json builds another network than the exported one (num_classes 2 (the export's 3);" in err
    for differs in (
        "hidden_size 64 (the export's 32)",
        "depth 4 (the export's 1)",
        'class_names ["background", "brain"]',
        'schedule_args {"beta_start": 0.0001, "beta_end": 0.035} (the export\'s {}',  # a later review: not named
    ):
        assert differs in err, err
    assert "patch_size" not in err  # 4 against [4, 4, 4]: the same
    config = json.loads((bundle / "models" / "medwidit.json").read_text())["config"]
    train = json.loads((bundle / "configs" / "train.json").read_text())
    train.update(num_classes=3, class_names=config["class_names"], **{k: config["net"][k] for k in ("hidden_size",
                 "depth", "num_heads", "window_size", "embed", "position", "head", "pixel_dim", "pixel_depth",
                 "pixel_mlp_ratio", "spacing_conditioning")}, **{k: config["segmenter"][k] for k in ("schedule",
                 "schedule_args")})  # fmt: skip
    (bundle / "configs" / "train.json").write_text(json.dumps(train))
    assert main(["export", str(tmp_path / "ckpt" / "last.ckpt"), str(bundle), "-q", "--overwrite"]) == 0
    assert "builds another network" not in capsys.readouterr().err


def test_the_export_warning_compares_the_image_channels_too(tmp_path, caplog):
    """From a second review: train.json builds the network's cond_channels from preprocessing's num_modalities, a
    nested value the warning did not compare, so an export for two modalities into a one-modality train.json (the
    conditioning embedder left random by MONAI's loaders) said nothing."""
    from pathlib import Path

    from medwidit.cli import _warn_monai_network

    shipped = Path(__file__).resolve().parents[2] / "bundles" / "brain_widit_segmentation"
    train = json.loads((shipped / "configs" / "train.json").read_text())
    config = json.loads((shipped / "models" / "medwidit.json").read_text())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps(train))
    exported = tmp_path / "medwidit.json"
    exported.write_text(json.dumps(config))
    _warn_monai_network(tmp_path, exported)
    assert "builds another network" not in caplog.text  # the shipped pair agrees
    config["config"]["preprocessing"]["num_modalities"] = 2
    config["config"]["net"]["cond_channels"] = 2
    exported.write_text(json.dumps(config))
    _warn_monai_network(tmp_path, exported)
    assert "(preprocessing#num_modalities 1 (the export's 2))" in caplog.text


def test_the_export_warning_names_softmax_logits_that_train_json_would_read_as_estimates(tmp_path, caplog):
    """x0_activation changes no tensor's shape: MONAI's loaders load softmax weights into train.json's network whole,
    and with train.json's "none" the model would read its logits as estimates. An export that predates the key meant
    "none" (the shipped medwidit.json holds no such key and agrees with train.json)."""
    from pathlib import Path

    from medwidit.cli import _warn_monai_network

    shipped = Path(__file__).resolve().parents[2] / "bundles" / "brain_widit_segmentation"
    train = json.loads((shipped / "configs" / "train.json").read_text())
    config = json.loads((shipped / "models" / "medwidit.json").read_text())
    assert "x0_activation" not in config["config"]["segmenter"] and train["x0_activation"] == "none"
    (tmp_path / "configs").mkdir()
    exported = tmp_path / "medwidit.json"
    for train_value, export_value, warned in [
        ("none", "softmax", True),
        ("softmax", None, True),
        ("none", None, False),
    ]:
        caplog.clear()
        (tmp_path / "configs" / "train.json").write_text(json.dumps({**train, "x0_activation": train_value}))
        segmenter = {k: v for k, v in config["config"]["segmenter"].items() if k != "x0_activation"}
        if export_value is not None:
            segmenter["x0_activation"] = export_value
        exported.write_text(json.dumps({**config, "config": {**config["config"], "segmenter": segmenter}}))
        _warn_monai_network(tmp_path, exported)
        expected = f'x0_activation "{train_value}" (the export\'s "{export_value or "none"}")'
        assert (expected in caplog.text) is warned, caplog.text
