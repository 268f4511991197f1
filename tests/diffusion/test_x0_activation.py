"""``DiffusionSegmenter(x0_activation="softmax")``: an x0 model's K outputs are class logits and its estimate is
``2 softmax - 1`` (CDCD's score interpolation). The estimate's probabilities are the softmax itself, the aux Dice + CE
reads the logits (a gradient where the clamped probabilities of a plain x0 model have none), sampling and
self-conditioning read the estimate, and the option is part of the config and of a checkpoint."""

import pytest
import torch
from diffusion_standins import TinyConvNet, random_labels
from monai.losses import DiceCELoss
from torch import nn

from medwidit.diffusion import DiffusionSegmenter, encode_labels, load_segmenter, save_segmenter, to_probabilities
from medwidit.diffusion.checkpoint import with_config_defaults
from medwidit.diffusion.objectives import activate_x0, aux_dice_ce
from medwidit.inference.sliding import SlidingWindowDenoiser
from medwidit.nets import WiDiT


class ConstantLogits(nn.Module):
    """Returns the same logits (K, *S) for every call, with a parameter so that a loss has something to train."""

    def __init__(self, logits: torch.Tensor, variance_channels: bool = False) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.variance_channels = variance_channels
        self.inputs = []

    def forward(self, x, t, conditioned=None):
        self.inputs.append(x.detach().clone())
        out = self.logits.expand(x.shape[0], *self.logits.shape)
        return torch.cat([out, torch.zeros_like(out)], dim=1) if self.variance_channels else out


def test_the_estimates_probabilities_are_the_softmax_and_variance_channels_pass():
    logits = 3 * torch.randn(2, 4, 5, 6, 3)
    estimate = activate_x0(logits, 4, "softmax")
    torch.testing.assert_close(to_probabilities(estimate), torch.softmax(logits, dim=1))
    assert float(estimate.min()) >= -1 and float(estimate.max()) <= 1
    torch.testing.assert_close(estimate.sum(1), torch.full((2, 5, 6, 3), 2.0 - 4))  # sum_K (2p - 1) = 2 - K
    frac = torch.randn(2, 4, 5, 6, 3)
    both = activate_x0(torch.cat([logits, frac], dim=1), 4, "softmax")
    torch.testing.assert_close(both[:, :4], estimate)
    assert torch.equal(both[:, 4:], frac)
    assert activate_x0(logits, 4, "none") is logits


def test_the_aux_loss_reads_the_logits_where_clamped_probabilities_have_no_gradient():
    """A voxel whose true class is estimated at or below -1 has probability 0 there after the clamp: a plain x0
    model's Dice + CE gives its estimate no gradient. Read from logits, the same loss moves it."""
    label = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    estimate = torch.full((1, 2, 2, 2, 2), 0.0)
    estimate[:, 0], estimate[:, 1] = -1.5, 1.0  # every voxel's true class (0) clamped to probability 0
    estimate.requires_grad_(True)
    aux_dice_ce(estimate, label).backward()
    assert float(estimate.grad[:, 0].abs().max()) == 0.0
    logits = torch.tensor([-3.0, 3.0]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 2, 2).clone().requires_grad_(True)
    loss = aux_dice_ce(activate_x0(logits, 2, "softmax"), label, logits)
    torch.testing.assert_close(loss, DiceCELoss(to_onehot_y=True, softmax=True)(logits, label))
    loss.backward()
    assert float(logits.grad[:, 0].max()) < 0  # pushes the true class's logit up


def test_training_regresses_the_estimate_and_scores_the_logits():
    """loss = MSE(2 softmax - 1, x0) + aux_weight * DiceCE(logits): the same numbers as written out by hand."""
    logits = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    segmenter = DiffusionSegmenter(ConstantLogits(logits), num_classes=3, aux_weight=0.7, x0_activation="softmax")
    image, label = torch.randn(2, 1, 4, 4, 4), random_labels((2, 1, 4, 4, 4), 3)
    parts = segmenter.loss(image, label, generator=torch.Generator().manual_seed(1))
    batch = logits.expand(2, *logits.shape)
    mse = torch.nn.functional.mse_loss(2 * torch.softmax(batch, dim=1) - 1, encode_labels(label, 3))
    aux = DiceCELoss(to_onehot_y=True, softmax=True)(batch, label)
    torch.testing.assert_close(parts["diffusion"], mse)
    torch.testing.assert_close(parts["aux"], aux)
    torch.testing.assert_close(parts["loss"], mse + 0.7 * aux)
    parts["loss"].backward()
    assert segmenter.net.logits.grad.abs().sum() > 0


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_sampling_gives_the_softmax_of_the_logits(learn_sigma):
    """An x0 model that always returns the same logits: every DDIM step's estimate is 2 softmax - 1, and the last
    step returns it, so the sample's probabilities are the softmax (with learned variance channels too)."""
    logits = 2 * torch.randn(3, 4, 5, 4)
    net = ConstantLogits(logits, variance_channels=learn_sigma)
    segmenter = DiffusionSegmenter(net, num_classes=3, learn_sigma=learn_sigma, x0_activation="softmax")
    samples = segmenter.sample(torch.randn(2, 1, 4, 5, 4), steps=3, num_samples=2)
    expected = torch.softmax(logits, dim=0).expand(2, 2, *logits.shape)
    torch.testing.assert_close(to_probabilities(samples, dim=2), expected, atol=1e-5, rtol=0)


def test_self_conditioning_reads_the_estimate_not_the_logits():
    logits = 4 * torch.randn(2, 4, 4, 4)
    net = ConstantLogits(logits)
    net.in_channels = 4  # the noisy label and its previous estimate
    segmenter = DiffusionSegmenter(net, num_classes=2, self_condition=True, x0_activation="softmax")
    segmenter.sample(torch.randn(1, 1, 4, 4, 4), steps=3)
    estimate = 2 * torch.softmax(logits, dim=0) - 1
    assert torch.equal(net.inputs[0][:, 2:], torch.zeros(1, 2, 4, 4, 4))
    for later in net.inputs[1:]:
        torch.testing.assert_close(later[0, 2:], estimate)
    net.inputs.clear()
    image, label = torch.randn(8, 1, 4, 4, 4), random_labels((8, 1, 4, 4, 4), 2)
    segmenter.train().loss(image, label, generator=torch.Generator().manual_seed(0))
    first, second = net.inputs  # the estimate pass on the drawn rows, then the trained pass
    read = [row for row in second[:, 2:] if row.abs().max() > 0]
    assert len(read) == first.shape[0] > 0
    for row in read:
        torch.testing.assert_close(row, estimate)


def test_the_option_is_checked_and_kept_in_a_checkpoint(tmp_path):
    net = TinyConvNet(3, 3)
    with pytest.raises(ValueError, match="x0_activation: .*'sigmoid'.*Available options"):
        DiffusionSegmenter(net, num_classes=3, x0_activation="sigmoid")
    with pytest.raises(ValueError, match="x0_activation='softmax'.*needs objective 'sample'.*'epsilon'"):
        DiffusionSegmenter(net, num_classes=3, objective="epsilon", x0_activation="softmax")
    segmenter = DiffusionSegmenter(net, num_classes=3, x0_activation="softmax")
    assert DiffusionSegmenter(net, num_classes=3).config["x0_activation"] == "none"
    loaded, _ = load_segmenter(save_segmenter(segmenter, tmp_path / "model.pt"))
    assert loaded.x0_activation == "softmax" and loaded.config == segmenter.config
    image = torch.randn(1, 1, 6, 6, 6)
    assert torch.equal(
        loaded.sample(image, steps=2, generator=torch.Generator().manual_seed(3)),
        segmenter.sample(image, steps=2, generator=torch.Generator().manual_seed(3)),
    )


def test_a_confidently_wrong_voxel_trains_through_the_segmenters_loss():
    """Logits 60 apart for the wrong class: the estimate's softmax rounds the true class to 0, so the clamped
    probabilities' Dice + CE would give nothing. The segmenter's loss reads the logits: the true class is pushed up
    by about the CE's full gradient (-1 per voxel over the voxels, whatever the softmax rounds to)."""
    logits = torch.zeros(2, 2, 2, 2)
    logits[0], logits[1] = -30.0, 30.0  # class 1 everywhere, the label says 0
    net = ConstantLogits(logits)
    segmenter = DiffusionSegmenter(net, num_classes=2, aux_weight=1.0, x0_activation="softmax")
    label = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    segmenter.loss(torch.randn(1, 1, 2, 2, 2), label, generator=torch.Generator().manual_seed(0))["loss"].backward()
    assert float(net.logits.grad[0].max()) < -0.1  # CE alone gives -1/8 per voxel; MSE's share is ~0 at saturation


def test_guidance_mixes_the_logits_before_the_softmax():
    """A net whose logits differ with and without the image: at scale w the estimate is 2 softmax(u + w (c - u)) - 1."""
    conditional, unconditional = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.5, 0.5, -1.0])

    class TwoLogits(nn.Module):
        def forward(self, x, t, conditioned=None):
            blank = conditioned.flatten(1).abs().amax(1) == 0  # the unconditional pass reads zeros
            rows = torch.where(blank[:, None], unconditional, conditional)  # (B, K)
            return rows[:, :, None, None, None].expand(x.shape).clone()

    segmenter = DiffusionSegmenter(TwoLogits(), num_classes=3, x0_activation="softmax", cond_drop_prob=0.1)
    image = torch.rand(1, 1, 2, 3, 2) + 1
    samples = segmenter.sample(image, steps=2, guidance_scale=2.5)
    expected = torch.softmax(unconditional + 2.5 * (conditional - unconditional), dim=0)
    torch.testing.assert_close(to_probabilities(samples, dim=2)[0, 0, :, 0, 0, 0], expected, atol=1e-5, rtol=0)


def test_windows_stitch_the_logits_and_the_softmax_reads_the_whole_volume():
    """Through SlidingWindowDenoiser with windows smaller than the volume, each step's estimate is 2 softmax - 1 of
    the stitched logits: the same as the softmax of the windowed raw network's output, called on the same x_t."""
    net = WiDiT(spatial_dim=3, in_channels=2, out_channels=2, cond_channels=1, hidden_size=32, depth=1, num_heads=2,
                window_size=2, patch_size=2, learn_sigma=False)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    segmenter = DiffusionSegmenter(net, num_classes=2, x0_activation="softmax").eval()
    image = torch.randn(1, 1, 16, 8, 12, generator=generator)
    denoiser = SlidingWindowDenoiser(net, (8, 8, 8), overlap=0.5, max_whole_voxels=0)
    seen = []
    segmenter.sample(
        image, steps=2, model_fn=denoiser, generator=torch.Generator().manual_seed(1), progress=seen.append
    )
    assert denoiser.num_windows > 2
    x_first = torch.randn(1, 2, 16, 8, 12, generator=torch.Generator().manual_seed(1))  # not the member's noise
    with torch.no_grad():
        stitched = denoiser(x_first, torch.tensor([999.0]), image)
    estimate = segmenter._denoiser(denoiser, image, 1.0)(x_first, 999)
    torch.testing.assert_close(estimate, 2 * torch.softmax(stitched, dim=1) - 1)
    assert float(seen[0]["denoised"].min()) >= -1 and float(seen[0]["denoised"].max()) <= 1


def test_a_checkpoint_config_without_the_key_reads_as_none():
    """Checkpoints written before the option: their segmenter config has no x0_activation, and it means "none"."""
    config = DiffusionSegmenter(TinyConvNet(3, 3), num_classes=3).config
    older = {k: v for k, v in config.items() if k != "x0_activation"}
    assert with_config_defaults({"net": {}, "segmenter": older})["segmenter"]["x0_activation"] == "none"
