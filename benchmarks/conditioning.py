"""How WiDiT should see the image and the acquisition: embed vs concat conditioning, and spacing conditioning on
thick slices, each pair trained at equal CPU budget on the seeded phantoms of ``learn_phantoms.py``.

Part ``conditioning``: ``WiDiT(conditioning="embed")`` (image and noisy labels embedded separately, concatenated along
the hidden dimension) vs ``"concat"`` (``torch.cat([x, image], dim=1)`` before one embedding, STDiT/SegDiT), trained
and tested on the phantoms as ``learn_phantoms.py`` makes them (x0 objective, EMA weights, DDIM).

Part ``spacing``: the images are re-acquired with thick slices (the random-resolution augmentation of
``medwidit.data.synth``: Gaussian slice profile with the thickness as FWHM, sampled every ``f`` voxels, linear
interpolation back to the grid): with probability ``--thick-prob`` a training image gets ``f ~ U(1, --max-factor)``
along a random axis. One model gets ``spacing`` (grid 1 mm per axis, then the acquisition's, ``f`` on the thick axis)
through ``WiDiT(spacing_conditioning=True)``, the other sees the same images without it. Both are tested on the
held-out phantoms isotropic and with ``--test-factor``-thick slices along each axis.

Each pair shares its seeds (initial weights, batches, degradations) and trains one after the other (so that both meet
about the same load on a shared machine) for ``--seconds`` of process CPU time on one thread, for every ``--seeds``;
the summary gives each option's mean Dice over seeds, the paired differences and the seed-to-seed spread. Writes
benchmarks/results/conditioning.json and prints a table.

    python benchmarks/conditioning.py        # 12 models x 45 CPU s + evaluation: about 10 CPU minutes on one thread
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):  # the package from a checkout; learn_phantoms and _report
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import learn_phantoms as lp  # noqa: E402
from _report import environment, write_json  # noqa: E402

from medwidit.data.synth import thick_slices as acquire_thick  # noqa: E402 (the synthesis pipeline's thick-slice acquisition)
from medwidit.diffusion import DiffusionSegmenter, to_labels, to_probabilities  # noqa: E402
from medwidit.nets import WiDiT  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "conditioning.json"
VARIANTS = {
    "conditioning": {"embed": {"conditioning": "embed"}, "concat": {"conditioning": "concat"}},
    "spacing": {"without_spacing": {}, "with_spacing": {"spacing_conditioning": True}},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="conditioning,spacing")
    parser.add_argument("--seeds", default="0,1,2", help="one model per option and seed")
    parser.add_argument("--seconds", type=float, default=45.0, help="CPU-second training budget of every model")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps at test (1-2 are best for x0 on phantoms)")
    parser.add_argument("--thick-prob", type=float, default=0.75, help="share of thick-slice training images")
    parser.add_argument("--max-factor", type=float, default=4.0, help="thickest training slab (voxels)")
    parser.add_argument("--test-factor", type=float, default=4.0, help="slab thickness of the thick test cases")
    parser.add_argument("--size", type=int, default=32, help="phantom side (voxels)")
    parser.add_argument("--classes", type=int, default=3, help="K, background included")
    parser.add_argument("--object-scale", type=float, default=2.0)
    parser.add_argument("--class-contrast", type=float, default=0.8)
    parser.add_argument("--train-pool", type=int, default=192, help="training phantoms (seeds 0..n-1)")
    parser.add_argument("--test", type=int, default=8, help="held-out phantoms (seeds 10^6 + i)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--aux-weight", type=float, default=1.0)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--schedule", default="linear_beta")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = work, no spin-waits)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


#######################################################################################################################
# thick slices: the random-resolution augmentation
#######################################################################################################################


def thick_slices(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """(C, *S) -> (C, *S) re-acquired with slices ``factor`` voxels thick along ``axis`` (``factor`` 1: unchanged)."""
    return image if factor == 1 else torch.as_tensor(acquire_thick(image, axis, factor))


def spacing_of(axis: int, factor: float, spatial_dim: int = 3) -> list[float]:
    """[grid spacing per axis (1 mm), acquisition spacing per axis] as ``WiDiT(spacing_conditioning=True)`` takes it."""
    acquired = [1.0] * spatial_dim
    acquired[axis] = float(factor)
    return [1.0] * spatial_dim + acquired


def random_acquisition(images: torch.Tensor, args, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, *S) -> (thick-slice copies (B, C, *S), spacing (B, 6)): each image thick along a random axis with
    probability ``thick_prob``, slab ``U(1, max_factor)``."""
    out, spacing = [], []
    for image in images:
        u = torch.rand(3, generator=generator).tolist()
        axis = min(int(u[1] * 3), 2)
        factor = 1.0 + (args.max_factor - 1.0) * u[2] if u[0] < args.thick_prob else 1.0
        out.append(thick_slices(image, axis, factor))
        spacing.append(spacing_of(axis, factor))
    return torch.stack(out), torch.tensor(spacing)


def test_cases(test, args) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Isotropic, and ``test_factor``-thick slices along each axis -> {name: (images, spacing)}."""
    images = test[0]
    cases = {"isotropic": (images, torch.tensor([spacing_of(0, 1.0)] * len(images)))}
    for axis in range(3):
        thick = torch.stack([thick_slices(image, axis, args.test_factor) for image in images])
        cases[f"thick{args.test_factor:g}_axis{axis}"] = (
            thick,
            torch.tensor([spacing_of(axis, args.test_factor)] * len(images)),
        )
    return cases


#######################################################################################################################
# one model
#######################################################################################################################


def build_net(options: dict, seed: int, args) -> WiDiT:
    """learn_phantoms' architecture with ``options`` on top. Every weight whose shape the option leaves alone is the
    seed's draw of the plain net, so a pair starts alike but for its option (the spacing MLP starts at zero output)."""
    torch.manual_seed(seed)
    # learn_phantoms' defaults for the options this script does not take (mlp_ratio, embed, position): widit read
    # them from this script's arguments and failed with an AttributeError (from a review)
    plain = lp.widit(argparse.Namespace(**{**vars(lp.parse_args([])), **vars(args)}))
    net = WiDiT(**{**plain.config, **options})
    own = net.state_dict()
    net.load_state_dict(
        {k: v for k, v in plain.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False
    )
    return net


def run(part: str, options: dict, seed: int, train, cases, labels, args) -> dict:
    """Train one segmenter for the budget (same seed -> same initial draws, batches and degradations), test its EMA."""
    net = build_net(options, seed, args)
    segmenter = DiffusionSegmenter(
        net, num_classes=args.classes, objective="sample", aux_weight=args.aux_weight, schedule=args.schedule
    )
    ema = copy.deepcopy(segmenter).requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    acquisition = torch.Generator().manual_seed(seed + 1000)
    use_spacing = bool(options.get("spacing_conditioning"))

    def loss(images, labels_):
        if part == "spacing":
            images, spacing = random_acquisition(images, args, acquisition)
            return segmenter.loss(images, labels_, spacing=spacing if use_spacing else None, generator=generator)[
                "loss"
            ]
        return segmenter.loss(images, labels_, generator=generator)["loss"]

    record = lp.train_for(segmenter, loss, train, args.seconds, args, generator, ema)
    record["dice"] = {}
    ema.eval()
    for name, (images, spacing) in cases.items():
        samples = ema.sample(
            images,
            spacing=spacing if use_spacing else None,
            steps=args.steps,
            generator=torch.Generator().manual_seed(1),
        )[0]
        record["dice"][name] = lp.dice_per_class(to_labels(to_probabilities(samples)), labels, args.classes)
    record["parameters"] = sum(p.numel() for p in net.parameters())
    return record


#######################################################################################################################
# summary and table
#######################################################################################################################


def summarise(runs: dict, seeds: list[int]) -> dict:
    """Per option and test case: mean Dice over classes per seed, its mean and spread over seeds; per part, the paired
    difference (second option - first) per seed, its mean and spread."""
    summary = {}
    for part, options in runs.items():
        names = list(options)
        cases = list(options[names[0]][str(seeds[0])]["dice"])
        per = {
            name: {case: [float(np.nanmean(options[name][str(s)]["dice"][case])) for s in seeds] for case in cases}
            for name in names
        }
        part_summary = {"mean_dice": {}, "difference": {}}
        for name in names:
            part_summary["mean_dice"][name] = {
                case: {
                    "per_seed": [round(v, 4) for v in vals],
                    "mean": round(float(np.mean(vals)), 4),
                    "std_over_seeds": round(float(np.std(vals, ddof=1)), 4) if len(vals) > 1 else None,
                }
                for case, vals in per[name].items()
            }
        for case in cases:
            diff = [b - a for a, b in zip(per[names[0]][case], per[names[1]][case], strict=True)]
            part_summary["difference"][case] = {
                "of": f"{names[1]} - {names[0]}",
                "per_seed": [round(v, 4) for v in diff],
                "mean": round(float(np.mean(diff)), 4),
                "std_over_seeds": round(float(np.std(diff, ddof=1)), 4) if len(diff) > 1 else None,
            }
        summary[part] = part_summary
    return summary


def print_table(summary: dict, seeds: list[int]) -> None:
    for part, part_summary in summary.items():
        names = list(part_summary["mean_dice"])
        print(f"\n{part}: mean foreground Dice, seeds {seeds}")
        print(f"| test case | {' | '.join(names)} | {names[1]} - {names[0]} (per seed) |")
        print("|---|" + "---|" * (len(names) + 1))
        for case, diff in part_summary["difference"].items():
            stats = [part_summary["mean_dice"][n][case] for n in names]
            spread = lambda m: "" if m["std_over_seeds"] is None else f" ± {m['std_over_seeds']:.3f}"  # noqa: E731
            cells = [f"{m['mean']:.3f}{spread(m)}" for m in stats]
            per_seed = ", ".join(f"{d:+.3f}" for d in diff["per_seed"])
            print(f"| {case} | {' | '.join(cells)} | {diff['mean']:+.3f} ({per_seed}) |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}, choose from {sorted(VARIANTS)}.")
    wall, cpu = time.perf_counter(), time.process_time()
    result = {"environment": environment(torch.device("cpu"), __file__)}
    train = lp.phantoms(range(args.train_pool), args)
    test = lp.phantoms(range(10**6, 10**6 + args.test), args)
    all_cases = test_cases(test, args)
    runs: dict = {}
    for part in parts:
        cases = all_cases if part == "spacing" else {"isotropic": all_cases["isotropic"]}
        for seed in seeds:  # a pair one after the other: both meet about the same load
            for name, options in VARIANTS[part].items():
                record = run(part, options, seed, train, cases, test[1], args)
                runs.setdefault(part, {}).setdefault(name, {})[str(seed)] = record
                print(part, name, seed, json.dumps(record), flush=True)
    result["runs"] = runs
    result["summary"] = summarise(runs, seeds)
    result["wall_clock_seconds"] = round(time.perf_counter() - wall, 1)
    result["cpu_seconds"] = round(time.process_time() - cpu, 1)
    result["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print_table(result["summary"], seeds)
    written = write_json(result, args.out)
    print(f"wall clock {result['wall_clock_seconds']} s, CPU {result['cpu_seconds']} s -> {written}")


if __name__ == "__main__":
    main()
