"""Proof that medwidit learns: a small WiDiT trained on seeded synthetic 3D phantoms on the CPU, per objective and head.

Trains one model per objective (sample = x0, epsilon, v_prediction, flow) for a fixed budget of process CPU seconds
each, on one thread (fair between models on a machine shared with others, where a second thread's spin-waits would
inflate CPU time; the wall clock is recorded too), samples held-out phantoms
with the EMA weights (DDIM 1/2/5/10/25 steps for the x0 model, 10 steps for the others) and prints Dice per class. A
MONAI BasicUNet trained with DiceCE for the x0 model's budget is the reference, and an intensity-threshold oracle
(thresholds tuned on the test set itself) shows what intensity alone achieves. ``--heads`` trains the x0 model once
per output head (``patch``: WiDiT's final layer; ``pixel-D-L``: the PixelDiT pixel head of width D and depth L; a
``-tM`` suffix trains at logit-normal timesteps of location M instead of uniform ones, ``-s1`` with self-conditioning,
``-x1`` with softmax logits as the x0 output),
each for the same budget; the best head and step count are chosen on a validation split (seeds 2*10^6 + i) and only
then read on the test split (``--fit-phantoms N`` also scores every model on its first N training phantoms: a model
that scores low there under-fits; each test phantom's Dice is kept too, ``dice_per_case``, for paired comparisons;
``--unet-batch`` trains BasicUNet at a batch of its own). Writes benchmarks/results/learn_phantoms.json.

Phantoms (``medwidit.data.phantoms``, 32^3, K = 3): class 1 ellipsoids at mean intensity 1.0, class 2 tubes at 1.8
striped by a multiplicative texture 1 +- 0.6 (so their voxels span 0.7..2.9 and overlap class 1 and background),
background 0; plus a smooth bias field (0.25), random gain (0.8..1.2) and offset (+-0.2) and Gaussian noise 0.35.

    .venv/bin/python benchmarks/learn_phantoms.py            # about 520 CPU seconds on one thread: ~9 min
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.networks.nets import BasicUNet

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from _report import write_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from medwidit.data.phantoms import make_phantom  # noqa: E402
from medwidit.diffusion import DiffusionSegmenter, to_labels, to_probabilities  # noqa: E402
from medwidit.diffusion.objectives import check_timestep_sampling  # noqa: E402
from medwidit.nets import WiDiT  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "learn_phantoms.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="phantom side (voxels)")
    parser.add_argument("--classes", type=int, default=3, help="K, background included")
    parser.add_argument("--object-scale", type=float, default=2.0, help="phantom object size factor")
    parser.add_argument("--class-contrast", type=float, default=0.8, help="mean intensity step between classes")
    parser.add_argument("--train-pool", type=int, default=192, help="training phantoms (seeds 0..n-1)")
    parser.add_argument("--test", type=int, default=8, help="held-out phantoms (seeds --test-start + i)")
    parser.add_argument(
        "--test-start",
        type=int,
        default=10**6,
        help="the first test phantom's seed: a fresh held-out split for a new question (0..10^6 - 1 and 2*10^6 "
        "onwards are the training and validation seeds)",
    )
    parser.add_argument("--val", type=int, default=8, help="validation phantoms for choosing a head (seeds 2*10^6 + i)")
    parser.add_argument(
        "--fit-phantoms",
        type=int,
        default=0,
        help="also score every model on the first N training phantoms ('fit_dice'): how well it fits what it trained "
        "on, against its validation Dice (under-fitting or a generalisation gap)",
    )
    parser.add_argument("--heads", default="patch,pixel-16-2", help=f"x0-model heads, comma-separated: {HEAD_GRAMMAR}")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--unet-batch",
        type=int,
        default=None,
        help="BasicUNet's batch (default: --batch), so that each model trains at its better batch size in one run",
    )
    parser.add_argument(
        "--unet-ema",
        action="store_true",
        help="score BasicUNet on the EMA of its weights (--ema's decay), as the WiDiT is; without it, on its raw "
        "weights (every recorded run), the EMA's test Dice recorded beside as dice_with_ema",
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--x0-seconds", type=float, default=200.0, help="CPU-second budget of the x0 model and of the UNet"
    )
    parser.add_argument("--other-seconds", type=float, default=45.0, help="CPU-second budget of epsilon, v and flow")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument(
        "--embed", choices=("patch", "conv"), default="patch", help="the token path's patch embedding (WiDiT embed=)"
    )
    parser.add_argument(
        "--position",
        choices=("relative", "rope"),
        default="relative",
        help="the token path's positions (WiDiT position=)",
    )
    parser.add_argument("--objectives", default="sample,epsilon,v_prediction,flow")
    parser.add_argument("--x0-steps", default="1,2,5,10,25", help="DDIM step counts for the x0 model")
    parser.add_argument(
        "--samples",
        default="1",
        help="ensemble sizes to score at each DDIM step count, comma-separated (the mean of the members' "
        "probabilities; N > 1 is recorded under 'STEPSxN'; the members of one draw, so N = 1 is the first of them; "
        "sample_seconds is the wall time of the whole draw, under 'STEPSxMAX')",
    )
    parser.add_argument("--aux-weight", type=float, default=1.0)
    parser.add_argument("--ema", type=float, default=0.99, help="EMA decay of the diffusion models' weights")
    parser.add_argument("--schedule", default="linear_beta", help="MONAI noise schedule (Gaussian objectives)")
    parser.add_argument(
        "--schedule-args",
        type=schedule_arguments,
        default={},
        help="the schedule's arguments as JSON, e.g. '{\"beta_end\": 0.035}' (the brain bundle's)",
    )
    parser.add_argument("--mlp-ratio", type=float, default=4.0)
    parser.add_argument("--no-unet", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = work, no spin-waits)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--add-to", type=Path, default=None, help="an earlier results file of the same settings: add these heads to it"
    )
    return parser.parse_args(argv)


def schedule_arguments(text: str) -> dict:
    """``--schedule-args``: a JSON object of numbers."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--schedule-args must be a JSON object, got {text!r} ({error}).") from None
    numbers = isinstance(value, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    )
    if not numbers:
        raise argparse.ArgumentTypeError(f"--schedule-args must be a JSON object of numbers, got {text!r}.")
    return value


def phantoms(seeds, args) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [
        make_phantom(
            (args.size,) * 3,
            num_classes=args.classes,
            seed=s,
            object_scale=args.object_scale,
            class_contrast=args.class_contrast,
        )
        for s in seeds
    ]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])  # (N, 1, D, H, W)


def case_dice(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The Dice of each foreground class in each volume (argmax labels (N, 1, *S)): (N, K-1), NaN where the label
    lacks the class (MONAI's ``compute_dice``, whatever the prediction holds)."""
    onehot = lambda x: F.one_hot(x[:, 0].long(), num_classes).movedim(-1, 1)  # noqa: E731
    return compute_dice(onehot(pred), onehot(label), include_background=False)


def dice_per_class(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> list[float]:
    """Mean over volumes of the Dice of each foreground class (argmax labels (N, 1, *S))."""
    return class_means(case_dice(pred, label, num_classes))


def class_means(cases: torch.Tensor) -> list[float]:
    """Per-volume Dice (N, K-1) -> each class's mean over the volumes that hold it, to 6 decimals: the validation
    choice reads these, and at 4 two cells tied (1 and 1x8 of the 400 CPU-s seed-0 run), the first listed winning."""
    return [round(float(v), 6) for v in torch.nanmean(cases, dim=0)]


def per_case_dice(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> tuple[list[float], list[list]]:
    """The class means and the per-volume rows (NaN rows are written as null by ``write_json``), one Dice pass."""
    cases = case_dice(pred, label, num_classes)
    return class_means(cases), cases.double().round(decimals=4).tolist()


def cosine_lr(optimizer, base_lr: float, fraction: float, warmup: float = 0.05) -> None:
    lr = base_lr * min(1.0, fraction / warmup) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = max(lr, base_lr * 0.02)


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """Exponential moving average of the weights, with the usual warm-up ``min(decay, (1 + n) / (10 + n))``."""
    rate = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for averaged, current in zip(ema.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current, 1 - rate)


def train_for(model, loss_fn, data, seconds: float, args, generator, ema=None) -> dict:
    """AdamW with warm-up and a cosine decay over the budget; batches drawn from the training pool.

    The budget is process CPU time (all threads), so that models get the same compute on a machine shared with others;
    wall-clock time is recorded beside it.
    """
    images, labels = data
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    losses, start, wall, step = [], time.process_time(), time.perf_counter(), 0
    while (elapsed := time.process_time() - start) < seconds:
        cosine_lr(optimizer, args.lr, elapsed / seconds)
        index = torch.randint(0, images.shape[0], (args.batch,), generator=generator)
        loss = loss_fn(images[index], labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            update_ema(ema, model, step, args.ema)
        losses.append(loss.item())
        step += 1
    head, tail = np.mean(losses[:10]), np.mean(losses[-10:])
    return {
        "steps": step,
        "cpu_seconds": round(time.process_time() - start, 1),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "loss_first10": round(float(head), 4),
        "loss_last10": round(float(tail), 4),
    }


HEAD_GRAMMAR = (
    "patch or pixel-<dim>-<depth>[-r<mlp ratio>][-i<image blocks>][-k<kernel>], either with [-t<location>] "
    "(logit-normal training timesteps) or [-n<share>] (that share of them at the noisiest time, the rest uniform), "
    "and [-s1] (self-conditioning) and [-x1] (softmax logits as the x0 output), optionally after p<patch>w<window>: "
    "(e.g. p8w4:pixel-8-1, pixel-16-1-i2, pixel-16-2-k5, patch-t1, pixel-16-2-n0.5, pixel-16-2-s1, pixel-16-2-x1)"
)
SUFFIXES = {
    "r": ("pixel_mlp_ratio", float),
    "i": ("pixel_image_depth", int),
    "k": ("pixel_kernel", int),
    "t": ("timestep_location", float),
    "n": ("noisiest_share", float),
    "s": ("self_condition", int),
    "x": ("x0_softmax", int),
}
TRAINING_OPTIONS = ("timestep_location", "noisiest_share", "self_condition", "x0_softmax")  # the segmenter's
SEGMENTER_SUFFIXES = {"t", "n", "s", "x"}  # allowed on either head
SWITCHES = ("self_condition", "x0_softmax")  # suffixes that take 0 or 1


def head_options(spec: str) -> dict:
    """``patch`` -> {}; ``pixel-16-2`` -> head="pixel", pixel_dim=16, pixel_depth=2; ``pixel-8-1-r2`` adds
    pixel_mlp_ratio=2, ``-i2`` pixel_image_depth=2 and ``-k5`` pixel_kernel=5; ``-t1`` (either head)
    timestep_location=1: the model trains at logit-normal timesteps of that location
    (``DiffusionSegmenter(timestep_sampling="logit_normal")``); ``-n0.5`` (either head, not with ``-t``)
    noisiest_share=0.5: half its training rows at the noisiest time (``timestep_sampling="noisiest_share"``);
    ``-s1`` (either head) self_condition=1 (``DiffusionSegmenter(self_condition=True)``; ``-s0`` is plain); ``-x1``
    (either head) x0_softmax=1 (``DiffusionSegmenter(x0_activation="softmax")``; ``-x0`` is plain); a
    ``p8w4:`` prefix also sets the token path's patch_size=8 and window_size=4."""
    options, head = {}, spec
    if ":" in spec:
        prefix, head = spec.split(":", 1)
        patch, _, window = prefix.partition("w")
        if not (patch[:1] == "p" and patch[1:].isdigit() and window.isdigit()):
            raise ValueError(f"--heads entries must be {HEAD_GRAMMAR}, got {spec!r}.")
        options = {"patch_size": int(patch[1:]), "window_size": int(window)}
    parts = head.split("-")  # patch or pixel, dim, depth, then suffixes
    if parts[0] == "patch":
        suffixes, allowed = parts[1:], SEGMENTER_SUFFIXES
    elif parts[0] == "pixel" and len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
        options.update({"head": "pixel", "pixel_dim": int(parts[1]), "pixel_depth": int(parts[2])})
        suffixes, allowed = parts[3:], set(SUFFIXES)
    else:
        raise ValueError(f"--heads entries must be {HEAD_GRAMMAR}, got {spec!r}.")
    for part in suffixes:
        key, kind = SUFFIXES.get(part[:1], (None, None)) if part[:1] in allowed else (None, None)
        value = part[1:]
        digits = value.replace(".", "", 1 if kind is float else 0).isdigit()
        if key is None or key in options or not digits or (key in SWITCHES and value not in ("0", "1")):
            raise ValueError(f"--heads entries must be {HEAD_GRAMMAR}, got {spec!r}.")
        options[key] = kind(value)
    if "timestep_location" in options and "noisiest_share" in options:
        raise ValueError(f"--heads entries take -t or -n, not both: {spec!r}.")
    return options


def network_options(head: str) -> dict:
    """The WiDiT arguments a head spec names (:func:`head_options` less the segmenter's)."""
    return {k: v for k, v in head_options(head).items() if k not in TRAINING_OPTIONS}


def segmenter_options(head: str) -> dict:
    """The DiffusionSegmenter arguments a head spec names (its ``-t``, ``-n``, ``-s`` and ``-x`` suffixes)."""
    options = head_options(head)
    segmenter = {"self_condition": True} if options.get("self_condition") else {}
    if options.get("x0_softmax"):
        segmenter["x0_activation"] = "softmax"
    location, share = options.get("timestep_location"), options.get("noisiest_share")
    if location is not None:
        segmenter.update(timestep_sampling="logit_normal", timestep_args={"location": location, "scale": 1.0})
    if share is not None:
        segmenter.update(timestep_sampling="noisiest_share", timestep_args={"share": share})
    return segmenter


def input_channels(head: str, classes: int) -> int:
    """The network's input channels for a head spec: the noisy label, and with ``-s1`` its previous estimate."""
    return classes * (2 if segmenter_options(head).get("self_condition") else 1)


def check_heads(args) -> None:
    """Builds every ``--heads`` entry's network once and checks its training timesteps: a spec the grammar takes but
    WiDiT or the segmenter refuses (``-k4``, an even kernel; ``-n2``, a share above 1) exits naming it before any
    model trains."""
    for head in args.heads.split(","):
        try:
            widit(args, head)
            options = segmenter_options(head)
            check_timestep_sampling(options.get("timestep_sampling", "uniform"), options.get("timestep_args"))
        except ValueError as error:
            raise SystemExit(f"--heads entry {head!r}: {error}") from error


def widit(args, head: str = "patch") -> WiDiT:
    sizes = {"patch_size": args.patch, "window_size": args.window}
    return WiDiT(
        **{**sizes, **network_options(head)},
        embed=args.embed,  # the recorded runs before these options: "patch" and "relative", WiDiT's defaults
        position=args.position,
        spatial_dim=3,
        in_channels=input_channels(head, args.classes),
        out_channels=args.classes,
        cond_channels=1,
        hidden_size=args.hidden,
        depth=args.depth,
        num_heads=4,
        mlp_ratio=args.mlp_ratio,  # the token blocks' (the recorded runs used WiDiT's default, 4.0)
        learn_sigma=False,
    )


def run_objective(objective: str, train, test, args, head: str = "patch", val=None, fit=None) -> dict:
    torch.manual_seed(args.seed)
    net = widit(args, head)
    segmenter = DiffusionSegmenter(
        net,
        num_classes=args.classes,
        objective=objective,
        aux_weight=args.aux_weight,
        schedule=args.schedule,
        schedule_args=args.schedule_args,
        **segmenter_options(head),
    )
    ema = copy.deepcopy(segmenter).requires_grad_(False)
    generator = torch.Generator().manual_seed(args.seed)
    seconds = args.x0_seconds if objective == "sample" else args.other_seconds
    record = train_for(
        segmenter, lambda x, y: segmenter.loss(x, y, generator=generator)["loss"], train, seconds, args, generator, ema
    )
    step_counts = [int(s) for s in args.x0_steps.split(",")] if objective == "sample" else [10]
    sizes = ensemble_sizes(args.samples)
    for name, model in (("dice", ema.eval()), ("dice_without_ema", segmenter.eval())):
        record[name] = {}
        for steps in step_counts if name == "dice" else [10]:
            start = time.perf_counter()
            members = max(sizes) if name == "dice" else 1
            noise = torch.Generator().manual_seed(1)
            samples = model.sample(test[0], steps=steps, num_samples=members, generator=noise)
            cases = record.setdefault("dice_per_case", {}) if name == "dice" else None
            counts = sizes if name == "dice" else [1]
            record[name].update(ensemble_dice(samples, test[1], steps, counts, args.classes, per_case=cases))
            if name == "dice":
                key = ensemble_key(steps, members)
                record.setdefault("sample_seconds", {})[key] = round(time.perf_counter() - start, 2)
    for key, split, seed in (("val_dice", val, 2), ("fit_dice", fit, 3)):
        if split is None:
            continue
        record[key] = {}
        for steps in step_counts:
            noise = torch.Generator().manual_seed(seed)
            samples = ema.sample(split[0], steps=steps, num_samples=max(sizes), generator=noise)
            record[key].update(ensemble_dice(samples, split[1], steps, sizes, args.classes))
    record["parameters"] = sum(p.numel() for p in net.parameters())
    return record


def ensemble_sizes(text: str) -> list[int]:
    """``--samples``: ensemble sizes >= 1, e.g. "1,4"."""
    try:
        sizes = sorted({int(n) for n in text.split(",")})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise SystemExit(f"--samples must be ensemble sizes >= 1, comma-separated (e.g. 1,4), got {text!r}.")
    return sizes


def ensemble_key(steps: int, members: int) -> str:
    """A Dice record's key: the DDIM step count, and "xN" for an ensemble of N members."""
    return str(steps) if members == 1 else f"{steps}x{members}"


def ensemble_dice(
    samples: torch.Tensor, label: torch.Tensor, steps: int, sizes, num_classes: int, per_case: dict | None = None
) -> dict:
    """Dice per class of the mean probabilities of the first N members of ``samples`` (S, B, K, *S), per N;
    ``per_case``, when given, also receives each volume's Dice under the same keys."""
    probabilities = to_probabilities(samples, dim=2)
    dice = {}
    for n in sizes:
        pred, key = to_labels(probabilities[:n].mean(0)), ensemble_key(steps, n)
        if per_case is None:
            dice[key] = dice_per_class(pred, label, num_classes)
        else:
            dice[key], per_case[key] = per_case_dice(pred, label, num_classes)
    return dice


def select_on_validation(heads: dict) -> dict:
    """The head and DDIM step count with the best mean validation Dice, and their test Dice (read only afterwards);
    an exact tie goes to the cell listed first, the one with fewer network calls."""
    head, steps = max(
        ((h, s) for h, record in heads.items() for s in record["val_dice"]),
        key=lambda pair: np.nanmean(heads[pair[0]]["val_dice"][pair[1]]),
    )
    step_count, _, members = steps.partition("x")
    return {
        "head": head,
        "steps": int(step_count),
        "samples": int(members or 1),
        "val_dice": heads[head]["val_dice"][steps],
        "test_dice": heads[head]["dice"][steps],
    }


def run_unet(train, test, args, val=None, fit=None) -> dict:
    torch.manual_seed(args.seed)
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=args.classes, features=(16, 16, 32, 64, 128, 16))
    criterion = DiceCELoss(to_onehot_y=True, softmax=True)
    batch = unet_batch(args)
    ema = copy.deepcopy(net).requires_grad_(False)  # as the WiDiT's, updated inside the same budget
    record = train_for(
        net,
        lambda x, y: criterion(net(x), y),
        train,
        args.x0_seconds,
        argparse.Namespace(**{**vars(args), "batch": batch}),
        torch.Generator().manual_seed(args.seed),
        ema,
    )
    record["batch"], record["ema"] = batch, bool(args.unet_ema)
    # from a review: the WiDiT is scored on its EMA and BasicUNet was scored on its raw weights only; the other
    # weights' test Dice is recorded beside (dice_with_ema or dice_without_ema)
    scored, other = (ema, net) if args.unet_ema else (net, ema)
    with torch.no_grad():
        for key, split in (("dice", test), ("val_dice", val), ("fit_dice", fit)):
            if split is not None:
                pred = scored.eval()(split[0]).argmax(1, keepdim=True)
                if key == "dice":
                    record[key], record["dice_per_case"] = per_case_dice(pred, split[1], args.classes)
                else:
                    record[key] = dice_per_class(pred, split[1], args.classes)
        other_key = "dice_without_ema" if args.unet_ema else "dice_with_ema"
        record[other_key] = dice_per_class(other.eval()(test[0]).argmax(1, keepdim=True), test[1], args.classes)
    return record


def unet_batch(args) -> int:
    """BasicUNet's batch: ``--unet-batch``, else ``--batch``."""
    return args.batch if args.unet_batch is None else args.unet_batch


def threshold_oracle(test, args, candidates: int = 17) -> dict:
    """Intensity alone, tuned on the test set itself: classes ordered by their mean intensity, K - 1 thresholds
    chosen from quantiles of the image to maximise the mean Dice."""
    images, labels = test
    means = [float(images[labels == c].mean()) if (labels == c).any() else 0.0 for c in range(args.classes)]
    order = torch.tensor(np.argsort(means))
    grid = np.quantile(images.numpy(), np.linspace(0.02, 0.98, candidates))
    best = None
    for thresholds in itertools.combinations(grid, args.classes - 1):
        pred = order[torch.bucketize(images, torch.tensor(thresholds, dtype=images.dtype))]
        dice = dice_per_class(pred, labels, args.classes)
        if best is None or np.nanmean(dice) > np.nanmean(best[1]):
            best = ([round(float(t), 3) for t in thresholds], dice)
    return {"thresholds": best[0], "dice": best[1]}


def main() -> None:
    args = parse_args()
    ensemble_sizes(args.samples)  # a bad --samples or --heads entry fails now, not after a training budget
    if not 0 <= args.fit_phantoms <= args.train_pool:
        raise SystemExit(f"--fit-phantoms must be 0..--train-pool ({args.train_pool}), got {args.fit_phantoms}.")
    if args.test_start < 0:
        raise SystemExit(f"--test-start must be a seed >= 0, got {args.test_start}.")
    test_seeds = range(args.test_start, args.test_start + args.test)
    for name, split in (("training", range(args.train_pool)), ("validation", range(2 * 10**6, 2 * 10**6 + args.val))):
        if test_seeds.start < split.stop and split.start < test_seeds.stop:
            raise SystemExit(
                f"--test-start {args.test_start} with --test {args.test} takes seeds of the {name} phantoms "
                f"({split.start}..{split.stop - 1}): choose a start outside them."
            )
    for option, value in (("--batch", args.batch), ("--unet-batch", unet_batch(args))):
        if value < 1:
            raise SystemExit(f"{option} must be a batch size >= 1, got {value}.")
    check_heads(args)
    torch.set_num_threads(args.threads)  # a script may set threads; one thread keeps CPU time honest under load
    torch.manual_seed(args.seed)
    wall, cpu = time.perf_counter(), time.process_time()
    train = phantoms(range(args.train_pool), args)
    test = phantoms(test_seeds, args)
    val = phantoms(range(2 * 10**6, 2 * 10**6 + args.val), args)
    fit = (train[0][: args.fit_phantoms], train[1][: args.fit_phantoms]) if args.fit_phantoms > 0 else None
    fractions = torch.bincount(test[1].flatten(), minlength=args.classes).float() / test[1].numel()
    print(
        f"data: {args.train_pool} train / {args.test} test phantoms {args.size}^3, class fractions "
        f"{[round(float(f), 3) for f in fractions]}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    results = {"objectives": {}, "heads": {}} if args.add_to is None else earlier_results(args)
    for head in args.heads.split(","):  # the x0 model once per head, all for the same budget
        results["heads"][head] = run_objective("sample", train, test, args, head=head, val=val, fit=fit)
        print("x0", head, json.dumps(results["heads"][head]), flush=True)
    results["selected_on_validation"] = select_on_validation(results["heads"])
    for objective in [o for o in args.objectives.split(",") if o and o != "sample"]:
        results["objectives"][objective] = run_objective(objective, train, test, args)
        print(objective, json.dumps(results["objectives"][objective]), flush=True)
    if not args.no_unet:
        results["basic_unet_dice_ce"] = run_unet(train, test, args, val=val, fit=fit)
        print("BasicUNet", json.dumps(results["basic_unet_dice_ce"]), flush=True)
    results["intensity_threshold_oracle"] = threshold_oracle(test, args)
    run = {"heads": args.heads, "wall_clock_seconds": round(time.perf_counter() - wall, 1)}
    results.setdefault("runs", []).append({**run, "cpu_seconds": round(time.process_time() - cpu, 1)})
    results["wall_clock_seconds"] = sum(r["wall_clock_seconds"] for r in results["runs"])
    results["cpu_seconds"] = round(sum(r["cpu_seconds"] for r in results["runs"]), 1)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["settings"] = {**settings, "heads": ",".join(results["heads"]), "add_to": None}
    results["machine"] = {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "note": "shared machine: other engineers' jobs ran at the same time, so the wall clock is noisy",
    }
    print_table(results, args)
    written = write_json(results, args.out)
    print(f"wall clock {results['wall_clock_seconds']} s, CPU {results['cpu_seconds']} s -> {written}")


def earlier_results(args) -> dict:
    """The results file ``--add-to`` names, checked to hold the same data, budget and model settings."""
    results = json.loads(args.add_to.read_text())
    ignored = {"heads", "objectives", "no_unet", "out", "add_to", "fit_phantoms"}  # the last scores, trains nothing
    defaults = vars(parse_args([]))  # a setting added since that file was written had its default then
    then = {**defaults, **results["settings"]}
    then["unet_batch"] = unet_batch(argparse.Namespace(**then))  # unset and the batch's value are the same setting
    now = {**vars(args), "unet_batch": unet_batch(args)}
    different = {k: (v, then[k]) for k, v in now.items() if k not in ignored and then[k] != v}
    if different:
        raise ValueError(f"--add-to {args.add_to} was run with other settings (now, then): {different}.")
    first = {k: results[k] for k in ("wall_clock_seconds", "cpu_seconds")}
    results.setdefault("runs", [{"heads": results["settings"]["heads"], **first}])
    return results


def print_table(results: dict, args) -> None:
    classes = [f"class {c}" for c in range(1, args.classes)]
    print(f"\n| model | steps | {' | '.join(classes)} | mean | train steps |")
    print("|---|---|" + "---|" * (len(classes) + 2))
    rows = [(f"WiDiT x0, {head} head", r) for head, r in results["heads"].items()]
    rows += [(f"WiDiT {objective}, patch head", r) for objective, r in results["objectives"].items()]
    for name, record in rows:
        for steps, dice in record["dice"].items():
            print(
                f"| {name} | {steps} | {' | '.join(f'{d:.3f}' for d in dice)} | "
                f"{np.nanmean(dice):.3f} | {record['steps']} |"
            )
    if "basic_unet_dice_ce" in results:
        unet = results["basic_unet_dice_ce"]
        print(
            f"| BasicUNet DiceCE | - | {' | '.join(f'{d:.3f}' for d in unet['dice'])} | "
            f"{np.nanmean(unet['dice']):.3f} | {unet['steps']} |"
        )
    oracle = results["intensity_threshold_oracle"]["dice"]
    print(
        f"| intensity threshold (oracle) | - | {' | '.join(f'{d:.3f}' for d in oracle)} | "
        f"{np.nanmean(oracle):.3f} | - |"
    )


if __name__ == "__main__":
    main()
