"""Encode once, sampled end to end: ``DiffusionSegmenter.sample`` and the stitched ``SlidingWindowDenoiser`` give
identical samples (``torch.equal``) with and without the image cache, on the whole-volume and the windowed paths, for
the patch and the pixel heads, and encode the image once per image and window, not once per step or member."""

import math

import pytest
import torch
from torch import nn

from medwidit.diffusion import DiffusionSegmenter
from medwidit.inference.sliding import SlidingWindowDenoiser
from medwidit.nets import WiDiT

SHAPE = (16, 8, 24)


class _Plain(nn.Module):
    """The same network without ``encode_condition``: every call embeds the image again (the reference)."""

    def __init__(self, net: WiDiT) -> None:
        super().__init__()
        self.net = net
        self.size_multiple, self.alignment = net.size_multiple, net.alignment

    def forward(self, x, t, *, conditioned=None):
        return self.net(x, t, conditioned=conditioned)


def _segmenter(head: str, seed: int = 0) -> DiffusionSegmenter:
    net = WiDiT(
        spatial_dim=3, in_channels=2, cond_channels=1, hidden_size=32, depth=2, num_heads=2, window_size=2,
        patch_size=2, learn_sigma=False, embed="conv", head=head, pixel_dim=4, pixel_depth=1,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return DiffusionSegmenter(net, num_classes=2, cond_drop_prob=0.1)


def _image(batch=1):
    return torch.randn(batch, 1, *SHAPE, generator=torch.Generator().manual_seed(3))


def _sample(segmenter, net, image, *, windows: bool, **options):
    denoiser = SlidingWindowDenoiser(
        net, (8, 8, 8), overlap=0.5, sw_batch_size=3, max_whole_voxels=0 if windows else None
    )
    generator = torch.Generator().manual_seed(7)
    out = segmenter.sample(image, steps=3, num_samples=3, generator=generator, model_fn=denoiser, **options)
    return out, denoiser


@pytest.mark.parametrize("head", ["patch", "pixel"])
@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_stitched_samples_are_identical_with_and_without_the_cache(head, windows, guidance_scale):
    segmenter, image = _segmenter(head), _image()
    options = {"windows": windows, "guidance_scale": guidance_scale}
    cached, denoiser = _sample(segmenter, segmenter.net, image, **options)
    plain, reference = _sample(segmenter, _Plain(segmenter.net), image, **options)
    assert torch.equal(cached, plain)
    assert denoiser.condition_cache.enabled and not reference.condition_cache.enabled
    assert denoiser.num_calls == reference.num_calls  # the same network calls, only the image's encoding is kept
    encodes = denoiser.condition_cache.num_encoded
    assert 0 < encodes <= reference.num_calls // 3  # at most one step's worth: steps 2 and 3 reuse step 1's


def test_whole_volume_members_share_one_encoding():
    """Three members of one image, one member per call (the budget fits one volume): the image is encoded once."""
    segmenter, image = _segmenter("patch"), _image()
    denoiser = SlidingWindowDenoiser(segmenter.net, (8, 8, 8), max_whole_voxels=16 * 8 * 24)
    segmenter.sample(image, steps=3, num_samples=3, generator=torch.Generator().manual_seed(7), model_fn=denoiser)
    assert denoiser.num_calls == 9 and denoiser.condition_cache.num_encoded == 1


@pytest.mark.parametrize("head", ["patch", "pixel"])
def test_direct_sampling_is_identical_with_and_without_the_cache(head):
    """``sample`` without a model_fn (the net on the whole batch), two images, members in chunks of two and one."""
    segmenter, image = _segmenter(head), _image(batch=2)
    plain = DiffusionSegmenter(_Plain(segmenter.net), **segmenter.config)
    options = {"steps": 3, "num_samples": 3, "chunk_size": 2}
    cached = segmenter.sample(image, generator=torch.Generator().manual_seed(7), **options)
    assert torch.equal(cached, plain.sample(image, generator=torch.Generator().manual_seed(7), **options))


def test_a_new_image_is_encoded_again():
    """The cache follows the image: sampling another image with the same denoiser gives that image's samples."""
    segmenter = _segmenter("patch")
    denoiser = SlidingWindowDenoiser(segmenter.net, (8, 8, 8), max_whole_voxels=0)
    first, second = _image(), _image() + 1
    segmenter.sample(first, steps=2, generator=torch.Generator().manual_seed(7), model_fn=denoiser)
    again = segmenter.sample(second, steps=2, generator=torch.Generator().manual_seed(7), model_fn=denoiser)
    fresh = SlidingWindowDenoiser(segmenter.net, (8, 8, 8), max_whole_voxels=0)
    assert torch.equal(
        again, segmenter.sample(second, steps=2, generator=torch.Generator().manual_seed(7), model_fn=fresh)
    )


def test_sampling_under_inference_mode_equals_no_grad():
    """Lightning's ``validate`` makes its batches under ``torch.inference_mode``: their tensors have no version
    counter, which the cache read ("Inference tensors do not track version counter")."""
    segmenter = _segmenter("patch")
    with torch.no_grad():
        reference = segmenter.sample(_image(), steps=2, num_samples=2, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        image = _image()
        denoiser = SlidingWindowDenoiser(segmenter.net, (8, 8, 8), max_whole_voxels=0)
        got = segmenter.sample(image, steps=2, num_samples=2, generator=torch.Generator().manual_seed(7))
        windowed = segmenter.sample(image, steps=2, num_samples=2, generator=torch.Generator().manual_seed(7),
                                    model_fn=denoiser)  # fmt: skip
    with torch.no_grad():
        fresh = SlidingWindowDenoiser(segmenter.net, (8, 8, 8), max_whole_voxels=0)
        stitched = segmenter.sample(_image(), steps=2, num_samples=2, generator=torch.Generator().manual_seed(7),
                                    model_fn=fresh)  # fmt: skip
    assert torch.equal(got, reference) and torch.equal(windowed, stitched)
    assert denoiser.condition_cache.num_encoded == fresh.condition_cache.num_encoded > 0


def test_whole_volume_chunks_of_different_images_each_use_their_own_encoding():
    """Three images x two members in whole-volume chunks of two: a chunk keyed by the first chunk's image classes
    would reuse the encoding of other images (chunk 2 holds images 3 and 1, chunk 1 images 1 and 2)."""
    net = _segmenter("patch").net
    image = torch.randn(3, 1, *SHAPE, generator=torch.Generator().manual_seed(5)).repeat(2, 1, 1, 1, 1)  # (6, ...)
    x = torch.randn(6, 2, *SHAPE, generator=torch.Generator().manual_seed(6))
    t = torch.full((6,), 400.0)
    budget = 2 * math.prod(SHAPE)  # two volumes per call: chunks (0, 1), (2, 0), (1, 2) by image class
    cached = SlidingWindowDenoiser(net, (8, 8, 8), max_whole_voxels=budget)
    plain = SlidingWindowDenoiser(_Plain(net), (8, 8, 8), max_whole_voxels=budget)
    with torch.no_grad():
        out, reference = cached(x, t, image), plain(x, t, image)
    assert torch.equal(out, reference)
    assert cached.num_calls == 3 and cached.condition_cache.num_encoded == 3  # one encoding per chunk
