"""A tiny WiDiT learns 2D phantoms in a few dozen steps: the loss falls and every sampler of its objective draws
segmentations whose Dice beats chance widely."""

import functools

import pytest
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice

from medwidit.data.phantoms import make_phantom
from medwidit.diffusion import SAMPLERS, DiffusionSegmenter, to_labels, to_probabilities
from medwidit.nets import WiDiT

FITS = [(o, name) for name, spec in SAMPLERS.items() for o in ("sample", "flow") if o in spec.objectives]


def _phantoms(seeds):
    pairs = [make_phantom((24, 24), num_classes=2, seed=s, object_scale=1.5) for s in seeds]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


@functools.cache
def _trained(objective: str):
    """(segmenter trained on ``objective``, its losses) after 60 AdamW steps on 48 phantoms."""
    torch.manual_seed(0)
    images, labels = _phantoms(range(48))
    net = WiDiT(
        spatial_dim=2,
        patch_size=2,
        in_channels=2,
        cond_channels=1,
        hidden_size=32,
        depth=2,
        num_heads=2,
        window_size=4,
        learn_sigma=False,
    )
    segmenter = DiffusionSegmenter(net, num_classes=2, objective=objective, aux_weight=1.0)
    optimizer = torch.optim.AdamW(segmenter.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        index = torch.randint(0, len(images), (8,), generator=generator)
        loss = segmenter.loss(images[index], labels[index], generator=generator)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return segmenter.eval(), losses


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sample", "flow"])
def test_tiny_widit_learns_phantoms(objective):
    _, losses = _trained(objective)
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10]), losses


@pytest.mark.slow
@pytest.mark.parametrize("objective, sampler", FITS)
def test_every_sampler_segments_with_the_trained_model(objective, sampler):
    segmenter, _ = _trained(objective)
    test_images, test_labels = _phantoms(range(1000, 1008))
    generator = torch.Generator().manual_seed(1)
    samples = segmenter.sample(test_images, steps=5, generator=generator, sampler=sampler)[0]
    onehot = lambda x: F.one_hot(x[:, 0], 2).movedim(-1, 1)  # noqa: E731
    dice = compute_dice(onehot(to_labels(to_probabilities(samples))), onehot(test_labels), include_background=False)
    # chance: predicting foreground everywhere (or at random) scores about 2f / (1 + f) with f the foreground fraction
    fraction = test_labels.float().mean().item()
    chance = 2 * fraction / (1 + fraction)
    assert dice.nanmean().item() > max(0.6, chance + 0.3), (dice.flatten().tolist(), chance)
