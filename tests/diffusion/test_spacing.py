"""DiffusionSegmenter passes ``spacing`` to the net only when given, row for row with the image it belongs to."""

import pytest
import torch
import torch.nn as nn
from diffusion_standins import TinyConvNet, random_labels

from medwidit.diffusion import DiffusionSegmenter
from medwidit.nets import WiDiT, WiDiTInputError


class SpacingRecorder(nn.Module):
    """``net(x, t, conditioned=image, spacing=s)`` returning zeros; records every (conditioned, spacing) pair."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, conditioned=None, spacing=None):
        self.calls.append((conditioned.clone(), spacing.clone()))
        return x * self.weight


def _image_and_spacing(batch=2):
    image = torch.stack([torch.full((1, 4, 4, 4), float(i + 1)) for i in range(batch)])  # sample i is all i + 1
    spacing = torch.tensor([[1.0, 1, 1, 1, 1, 3.0 * (i + 1)] for i in range(batch)])
    return image, spacing


def _rows_match(calls, image, spacing) -> None:
    """Every row's spacing is its own image's: row j holds image j % B (or zeros, guidance's pass) and spacing j % B."""
    for cond, given in calls:
        assert given.shape == (cond.shape[0], spacing.shape[1])
        for j in range(cond.shape[0]):
            assert torch.equal(given[j], spacing[j % len(spacing)])
            assert torch.equal(cond[j], image[j % len(image)]) or not cond[j].any()


def test_loss_passes_spacing_to_the_net():
    net = SpacingRecorder(3)
    image, spacing = _image_and_spacing()
    DiffusionSegmenter(net, num_classes=3).loss(image, random_labels((2, 1, 4, 4, 4), 3), spacing=spacing)
    assert len(net.calls) == 1
    _rows_match(net.calls, image, spacing)


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_sample_tiles_spacing_as_it_tiles_the_image(guidance_scale):
    net = SpacingRecorder(3)
    image, spacing = _image_and_spacing()
    segmenter = DiffusionSegmenter(net, num_classes=3, cond_drop_prob=0.1)
    segmenter.sample(image, spacing=spacing, steps=2, num_samples=3, chunk_size=2, guidance_scale=guidance_scale)
    batches = [cond.shape[0] for cond, _ in net.calls]
    factor = 2 if guidance_scale != 1 else 1
    assert batches == [4 * factor, 4 * factor, 2 * factor, 2 * factor]  # chunks of 2 members x B = 2, 2 steps each
    _rows_match(net.calls, image, spacing)


def test_nets_without_spacing_are_called_as_before():
    """No spacing given: the net is called ``net(x, t, conditioned=image)`` (TinyConvNet takes no spacing)."""
    segmenter = DiffusionSegmenter(TinyConvNet(3, 3), num_classes=3)
    image = torch.randn(1, 1, 4, 4, 4)
    assert torch.isfinite(segmenter.loss(image, random_labels((1, 1, 4, 4, 4), 3))["loss"])
    assert segmenter.sample(image, steps=2).shape == (1, 1, 3, 4, 4, 4)


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_a_custom_model_fn_receives_spacing_tiled_as_the_image(guidance_scale):
    """``model_fn(x, t, cond, spacing=...)``: a sliding-window denoiser gets each row's spacing as the net would."""
    net = SpacingRecorder(3)
    image, spacing = _image_and_spacing()

    def model_fn(x, t, cond, *, spacing):
        return net(x, t, conditioned=cond, spacing=spacing)

    segmenter = DiffusionSegmenter(net, num_classes=3, cond_drop_prob=0.1)
    segmenter.sample(image, spacing=spacing, steps=2, num_samples=3, guidance_scale=guidance_scale, model_fn=model_fn)
    assert len(net.calls) == 2
    _rows_match(net.calls, image, spacing)


def test_widit_with_spacing_trains_and_samples_through_the_segmenter():
    net = WiDiT(
        spatial_dim=3,
        patch_size=2,
        in_channels=3,
        cond_channels=1,
        hidden_size=32,
        depth=2,
        num_heads=2,
        window_size=2,
        learn_sigma=False,
        spacing_conditioning=True,
    )
    segmenter = DiffusionSegmenter(net, num_classes=3)
    image, spacing = _image_and_spacing()
    label = random_labels((2, 1, 4, 4, 4), 3)
    with torch.no_grad():  # adaLN-Zero: open the gates so that spacing's gradient is not exactly zero
        for block in net.blocks:
            block.adaLN_modulation[-1].weight.normal_(std=0.02)
        net.final_layer.adaLN_modulation[-1].weight.normal_(std=0.02)
        net.final_layer.linear.weight.normal_(std=0.02)
    segmenter.loss(image, label, spacing=spacing)["loss"].backward()
    assert net.s_embedder.mlp[2].weight.grad.abs().sum() > 0
    assert segmenter.sample(image, spacing=spacing, steps=2, num_samples=2).shape == (2, 2, 3, 4, 4, 4)
    with pytest.raises(WiDiTInputError, match="spacing"):
        segmenter.loss(image, label)


class _SelfConditionedRecorder(SpacingRecorder):
    """Reads the noisy label and its estimate (2K channels), returns K."""

    def forward(self, x, t, conditioned=None, spacing=None):
        return super().forward(x, t, conditioned, spacing)[:, : self.num_classes]


def test_one_spacing_row_serves_the_whole_batch_also_with_self_conditioning():
    """One row for all cases is accepted; loss with self-conditioning indexed it per case (spacing[rows]): an
    IndexError. It is expanded to one row per case first."""
    torch.manual_seed(0)
    net = _SelfConditionedRecorder(3)
    image, spacing = _image_and_spacing(batch=4)
    segmenter = DiffusionSegmenter(net, num_classes=3, self_condition=True)
    for _ in range(4):  # half the rows, at random, read their own estimate: a second call with those rows
        segmenter.loss(image, random_labels((4, 1, 4, 4, 4), 3), spacing=spacing[:1])
    assert all(torch.equal(given, spacing[:1].expand(len(given), -1)) for _, given in net.calls)
    assert any(len(given) < 4 for _, given in net.calls)  # the rows' own call ran
