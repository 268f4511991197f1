"""MONAI baselines trained on a bundle's own data module for a wall-clock budget, selected on validation Dice, and
their predictions on the input grid through the Predictor's inversion (so every method is scored alike)."""

from __future__ import annotations

import copy
import math
import time

import lightning as L
import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.transforms import Compose

from medwidit.inference import Predictor
from medwidit.inference.metrics import dice_per_class

BASELINES = {  # name -> AdamW learning rate (fixed beforehand, not tuned here)
    "basic_unet": 1e-3,
    "swin_unetr": 5e-4,
}


def build_baseline(name: str, num_classes: int, in_channels: int, args) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet, SwinUNETR

    if name == "basic_unet":
        return BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes)
    return SwinUNETR(
        in_channels=in_channels, out_channels=num_classes, feature_size=args.swin_feature_size, spatial_dims=3
    )


def validation_dice(net, datamodule, inferer, num_classes: int, device) -> float:
    """Mean foreground Dice of ``net`` over the validation split (whole volumes, pre-transforms only)."""
    scores = []
    net.eval()
    with torch.no_grad():
        for item in datamodule.val_dataset:
            logits = inferer(item["image"][None].to(device), net)  # (1, K, *S)
            scores.append(dice_per_class(logits.argmax(1, keepdim=True).cpu(), item["label"][None], num_classes))
    net.train()
    return float(torch.cat(scores)[:, 1:].mean())  # over volumes and foreground classes


def train_baseline(name: str, net, recipe: dict, inferer, budget: float, args, device) -> dict:
    """Train ``net`` with DiceCE for ``budget`` seconds of wall clock, validations included; keep the weights of the
    best validation Dice (validated every ``args.val_every`` of the budget and once at the end)."""
    dm, k = recipe["datamodule"], len(recipe["class_names"])
    lr = BASELINES[name]
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    amp = device.type == "cuda"
    L.seed_everything(recipe["seed"], workers=True)  # the crop stream of the bundle's own training
    loader = dm.train_dataloader()
    history, best, best_state, steps, val_cost = [], -1.0, None, 0, 0.0
    start = time.perf_counter()
    next_val = args.val_every * budget

    def validate() -> None:
        nonlocal best, best_state, val_cost
        t = time.perf_counter()
        dice = validation_dice(net, dm, inferer, k, device)
        val_cost = time.perf_counter() - t
        history.append({"step": steps, "seconds": round(t - start, 1), "val_mean_dice": dice})
        print(f"  {name}: step {steps}, {t - start:.0f} s, validation mean Dice {dice:.4f}", flush=True)
        if dice > best:
            best, best_state = dice, copy.deepcopy(net.state_dict())

    net.to(device).train()
    while time.perf_counter() - start + val_cost < budget:
        for batch in loader:
            elapsed = time.perf_counter() - start
            if elapsed + val_cost >= budget:
                break
            for group in optimizer.param_groups:  # warm-up over 5 steps, cosine over the wall-clock budget
                group["lr"] = lr * min(1.0, (steps + 1) / 5) * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1)))
            image, label = batch["image"].to(device), batch["label"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(net(image), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            steps += 1
            if time.perf_counter() - start >= next_val:
                validate()
                next_val += args.val_every * budget
    if not history or history[-1]["step"] != steps:
        validate()
    del loader  # stops its workers
    net.load_state_dict(best_state)
    net.eval()
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "lr": lr,
        "weight_decay": 0.01,
        "parameters": sum(p.numel() for p in net.parameters()),
        "best_val_mean_dice": best,
        "best_step": max(history, key=lambda h: h["val_mean_dice"])["step"],
        "validations": history,
    }


def predict_baseline(net, image_path: str, pre: Compose, inferer, predictor: Predictor) -> dict:
    """Softmax probabilities and their entropy on the input grid (the Predictor's ``Invertd``), with the seconds."""
    start = time.perf_counter()
    data = pre({"image": image_path})
    with torch.no_grad():
        image = data["image"].as_tensor()[None].to(predictor.device)
        probability = torch.softmax(inferer(image, net).float(), 1)[0].cpu()  # (K, *S')
    probability, entropy = predictor.invert(data, pre, probability)  # the Predictor's own inversion, and H(p)
    return {"probability": probability, "entropy": entropy[0], "seconds": time.perf_counter() - start}


def train_baselines(args, recipe: dict, predictor: Predictor, config: dict, budget: float, device) -> tuple:
    """Each baseline built with the same seed and trained for ``budget`` seconds -> ({name: (net, inferer)},
    {name: training record}); they predict with MONAI sliding windows of the training crop."""
    dm = recipe["datamodule"]
    inferer = SlidingWindowInferer(
        dm.roi_size, sw_batch_size=predictor.sw_batch_size, overlap=config["overlap"], mode="gaussian"
    )
    methods, training = {}, {}
    k, in_channels = len(recipe["class_names"]), predictor.num_modalities
    for name in args.baselines:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            net = build_baseline(name, k, in_channels, args)
        print(f"training {name} for {budget:.0f} s", flush=True)
        training[name] = train_baseline(name, net, recipe, inferer, budget, args, device)
        methods[name] = (net, inferer)
    return methods, training
