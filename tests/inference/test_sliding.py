"""inference/sliding: per-step stitching is exact for analytic stand-ins, equal to the unwindowed sampler with one
window, seamless against a whole-volume run, and unlike independent per-window sampling (Diff-UNet)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medwidit.diffusion import DiffusionSegmenter, to_probabilities
from medwidit.inference.sliding import SlidingWindowDenoiser, gaussian_weight_map, sample_ensemble
from medwidit.inference.uncertainty import summarize_ensemble
from medwidit.nets import WiDiT

SHAPES = {2: (37, 29), 3: (19, 13, 11)}


def _bcast(t, x):
    return t.reshape(-1, *[1] * (x.ndim - 1))


def affine_net(x, t, conditioned=None):
    """Pointwise, so any window sees exactly what the whole volume sees: output = x * cond + t."""
    return x * conditioned + _bcast(t, x)


def _inputs(spatial_dims, batch=2, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[spatial_dims]
    x = torch.randn(batch, classes, *shape, generator=g)
    cond = torch.randn(batch, 1, *shape, generator=g)
    return x, torch.full((batch,), 7.0), cond


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_pointwise_network_is_stitched_exactly(spatial_dims, overlap, mode):
    x, t, cond = _inputs(spatial_dims)
    denoiser = SlidingWindowDenoiser(affine_net, 8, overlap=overlap, sw_batch_size=3, mode=mode, max_whole_voxels=0)
    out = denoiser(x, t, cond)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, x * cond + 7.0, atol=1e-5, rtol=1e-5)
    assert denoiser.num_windows > 2 * 2  # really windowed


def test_every_window_gets_its_batch_elements_step():
    x, _, cond = _inputs(3)
    seen = []

    def recording_net(x, t, conditioned=None):
        seen.append(t.clone())
        return affine_net(x, t, conditioned)

    denoiser = SlidingWindowDenoiser(recording_net, (8, 8, 8), sw_batch_size=4, max_whole_voxels=0)
    denoiser(x, torch.tensor([5.0, 5.0]), cond)
    assert torch.cat(seen).eq(5.0).all()
    seen.clear()
    steps = torch.tensor([3.0, 11.0])  # different steps per element: windows never mix them
    out = denoiser(x, steps, cond)
    torch.testing.assert_close(out, x * cond + _bcast(steps, x), atol=1e-5, rtol=1e-5)
    assert all(len(set(s.tolist())) == 1 for s in seen)


def test_window_count_and_calls_follow_overlap():
    x, t, cond = torch.randn(1, 3, 16, 16, 16), torch.full((1,), 7.0), torch.ones(1, 1, 16, 16, 16)
    for overlap, windows in ((0.5, 27), (0.0, 8)):  # 3 or 2 windows per axis
        denoiser = SlidingWindowDenoiser(affine_net, 8, overlap=overlap, sw_batch_size=4, max_whole_voxels=0)
        denoiser(x, t, cond)
        assert denoiser.num_windows == windows and denoiser.num_calls == math.ceil(windows / 4)
    denoiser.reset_counts()
    assert denoiser.num_windows == denoiser.num_calls == 0


def test_accumulates_in_float32_whatever_the_network_dtype():
    x, t, cond = _inputs(3)

    def bf16_net(x, t, conditioned=None):
        return affine_net(x, t, conditioned).bfloat16()

    out = SlidingWindowDenoiser(bf16_net, 8, overlap=0.5, max_whole_voxels=0)(x, t, cond)
    assert out.dtype == torch.float32
    # blending equal bf16 values in float32 returns them (bf16 accumulation would be off by ~1e-2)
    torch.testing.assert_close(out, bf16_net(x, t, cond).float(), atol=1e-5, rtol=1e-5)


def test_whole_volume_path_pads_to_the_patch_and_crops_back():
    shapes = []

    def patch2_net(x, t, conditioned=None):
        assert all(s % 2 == 0 for s in x.shape[2:]), x.shape
        shapes.append(tuple(x.shape[2:]))
        return affine_net(x, t, conditioned)

    x, t, cond = _inputs(3)  # (19, 13, 11): odd on every axis
    denoiser = SlidingWindowDenoiser(patch2_net, 8, patch_size=2, max_whole_voxels=2048)  # < 2 * 2717 voxels
    assert not denoiser.runs_whole(x.shape) and denoiser.runs_whole(x[:1, :, :10, :10, :10].shape)
    denoiser = SlidingWindowDenoiser(patch2_net, 8, patch_size=2, max_whole_voxels=10**6)
    out = denoiser(x, t, cond)
    assert shapes == [(20, 14, 12)] and denoiser.num_calls == 1
    assert torch.equal(out, x * cond + 7.0)


def test_whole_volume_padding_continues_the_image_instead_of_adding_a_grey_slab():
    """The far faces are padded with the image's edge voxels: with zeros (mid-grey in the normalised [-1, 1]) a
    dark background ended in a slab no training crop holds, and a synthetic-trained model segmented it as brain."""
    seen = []

    def spy(x, t, conditioned=None):
        seen.append(conditioned.clone())
        return x

    x = torch.zeros(1, 2, 9, 10, 11)
    cond = torch.full((1, 1, 9, 10, 11), -1.0)  # air everywhere
    cond[..., -1] = 0.5  # the last slice of the image differs: padding along that axis repeats it
    SlidingWindowDenoiser(spy, 8, patch_size=4, max_whole_voxels=10**6)(x, torch.zeros(1), cond)
    (padded,) = seen
    assert padded.shape[2:] == (12, 12, 12)
    assert torch.equal(padded[..., :9, :10, :11], cond)
    assert torch.equal(padded[..., 9:, :10, :11], cond[..., 8:9, :, :].expand(-1, -1, 3, -1, -1))  # edge repeated
    assert torch.equal(padded[..., :, :, 11], padded[..., :, :, 10])  # never 0
    assert set(padded.unique().tolist()) == {-1.0, 0.5}


def test_windows_at_the_far_faces_see_the_image_continued_by_its_edge_too():
    """A window is cropped to the volume rounded up to the patch, so up to patch - 1 padded voxels reach the network:
    they repeat the image's edge, as in the whole-volume run, never zeros; the noisy labels are padded with zeros."""
    seen = []

    def spy(x, t, conditioned=None):
        seen.append((x.clone(), conditioned.clone()))
        return x

    x = torch.ones(1, 2, 6, 10, 11)  # 6 voxels along the first axis: its windows evaluate 2 padded voxels
    cond = torch.full((1, 1, 6, 10, 11), -1.0)
    SlidingWindowDenoiser(spy, 8, patch_size=4, max_whole_voxels=0)(x, torch.zeros(1), cond)
    assert seen and all(xs.shape[2] == 8 for xs, _ in seen)
    assert all((xs[:, :, 6:] == 0).all() and (xs[:, :, :6] == 1).all() for xs, _ in seen)  # labels: zero-padded
    assert all(set(c.unique().tolist()) == {-1.0} for _, c in seen)  # image: no grey slab in any window


def test_an_ensemble_over_the_budget_runs_whole_volumes_in_chunks_not_windows():
    """4 samples x 2717 voxels exceed a 6000-voxel budget, one sample does not: whole calls of 2 samples each."""
    x, t, cond = _inputs(3)  # (19, 13, 11)
    x, cond = x.repeat(2, 1, 1, 1, 1)[:4], cond.repeat(2, 1, 1, 1, 1)[:4]
    t = torch.tensor([1.0, 2.0, 3.0, 4.0])
    denoiser = SlidingWindowDenoiser(affine_net, 8, patch_size=1, max_whole_voxels=6000)
    assert denoiser.whole_chunk(x.shape) == 2 and denoiser.runs_whole(x.shape)
    out = denoiser(x, t, cond)
    assert denoiser.num_calls == 2 and denoiser.num_windows == 4
    torch.testing.assert_close(out, affine_net(x, t, cond))


class PatchMeanNet(nn.Module):
    """Phase-sensitive analytic stand-in: every 2^d patch of x * cond + t gets its mean, as a patch embedding would.
    Windows that start off the patch grid would average other patches than the whole volume does."""

    size_multiple = alignment = (2, 2, 2)  # the network contract: patch 2, no attention window

    def forward(self, x, t, conditioned=None):
        y = x * conditioned + _bcast(t, x)
        pool = F.avg_pool3d if x.ndim == 5 else F.avg_pool2d
        out = pool(y, 2)
        for axis in range(2, x.ndim):
            out = out.repeat_interleave(2, dim=axis)
        return out


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_windows_start_on_the_patch_grid(spatial_dims):
    x, t, cond = _inputs(spatial_dims)  # odd sizes: the far faces need padding to keep the last window aligned
    net = PatchMeanNet()
    net.size_multiple = net.alignment = (2,) * spatial_dims
    whole = SlidingWindowDenoiser(net, 8, max_whole_voxels=10**9)(x, t, cond)
    for overlap in (0.25, 0.5, 0.75):
        stitched = SlidingWindowDenoiser(net, 8, overlap=overlap, max_whole_voxels=0)(x, t, cond)
        torch.testing.assert_close(stitched, whole, atol=1e-5, rtol=1e-5)
    unaligned = SlidingWindowDenoiser(net, 8, overlap=0.25, max_whole_voxels=0, align=1)(x, t, cond)
    assert float((unaligned - whole).abs().max()) > 0.1  # what alignment prevents


def test_window_step_is_rounded_to_the_alignment():
    x, t, cond = torch.randn(1, 3, 40, 16, 16), torch.full((1,), 7.0), torch.ones(1, 1, 40, 16, 16)
    counts = {}
    for align in (1, 8, 16):
        denoiser = SlidingWindowDenoiser(affine_net, 16, overlap=0.25, align=align, max_whole_voxels=0)
        torch.testing.assert_close(denoiser(x, t, cond), x + 7.0, atol=1e-5, rtol=1e-5)
        counts[align] = denoiser.num_windows
    # step 12: starts 0, 12, 24; step rounded down to 8: 0, 8, 16, 24; an alignment of 16 leaves no room for the
    # overlap, so the patch (1 here) is used instead: as align=1
    assert counts == {1: 3, 8: 4, 16: 3}


@pytest.mark.parametrize(("roi", "overlap"), [(48, 0.6), (80, 0.75), (96, 0.6)])  # steps of 16, 16 and 32
def test_a_step_of_whole_alignments_reaches_monai_unchanged(roi, overlap):
    """The window step (a multiple of the alignment, 16 here) goes to MONAI as an overlap, which it turns back into
    int(roi * (1 - overlap)), rounding down: 1 - step / roi came back a voxel short (15 for 16), off the patch grid."""
    x = torch.randn(2, 3, 131, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 1, 131, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 7.0)
    net = PatchMeanNet()
    net.size_multiple, net.alignment = (2, 2), (16, 16)
    whole = SlidingWindowDenoiser(net, (roi, 8), max_whole_voxels=10**9)(x, t, cond)
    windowed = SlidingWindowDenoiser(net, (roi, 8), overlap=overlap, max_whole_voxels=0)
    torch.testing.assert_close(windowed(x, t, cond), whole, atol=1e-5, rtol=1e-5)
    assert windowed.num_windows >= 2 * 3  # really windowed: three windows or more per row


def test_arguments_are_checked_with_clear_messages():
    with pytest.raises(ValueError, match="divisible by the network's patch_size"):
        SlidingWindowDenoiser(affine_net, (8, 9, 8), patch_size=2)
    with pytest.raises(ValueError, match="overlap must be >= 0 and < 1, got 1.0"):
        SlidingWindowDenoiser(affine_net, 8, overlap=1.0)
    with pytest.raises(ValueError, match="gaussian"):  # look_up_option lists the valid names
        SlidingWindowDenoiser(affine_net, 8, mode="gausian")
    with pytest.raises(ValueError, match="sw_batch_size"):
        SlidingWindowDenoiser(affine_net, 8, sw_batch_size=0)
    for bad in (-1, "x", 2.5):  # "x" and 2.5 passed and failed later, on the volume, with a TypeError or not at all
        with pytest.raises(ValueError, match=rf"max_whole_voxels must be an int >= 0 or None, got {bad!r}"):
            SlidingWindowDenoiser(affine_net, 8, max_whole_voxels=bad)
    with pytest.raises(ValueError, match=r"overlap must be >= 0 and < 1, got '0.5'"):
        SlidingWindowDenoiser(affine_net, 8, overlap="0.5")
    x, t, cond = _inputs(3)
    with pytest.raises(ValueError, match="roi_size \\(8, 8\\) has 2 axes but the volume has 3"):
        SlidingWindowDenoiser(affine_net, (8, 8), max_whole_voxels=0)(x, t, cond)
    with pytest.raises(ValueError, match="t must have shape \\(2,\\)"):
        SlidingWindowDenoiser(affine_net, 8)(x, t[:1], cond)


######################################################################################################################
# sampling: the sliding denoiser plugged into DiffusionSegmenter.sample
######################################################################################################################


class LocalNet(nn.Module):
    """Translation-equivariant stand-in: two 3^d convolutions (receptive field radius 2) and a step bias."""

    def __init__(self, spatial_dims, classes=2, seed=0):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        torch.manual_seed(seed)
        self.a, self.b = conv(classes + 1, 8, 3, padding=1), conv(8, classes, 3, padding=1)

    def forward(self, x, t, conditioned=None):
        h = torch.tanh(self.a(torch.cat([x, conditioned], 1)) + _bcast(t, x) / 1000)
        return torch.tanh(self.b(h))


def _segmenter_and_image(spatial_dims, shape, seed=0):
    segmenter = DiffusionSegmenter(LocalNet(spatial_dims, seed=seed), num_classes=2).eval()
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(seed))
    return segmenter, image


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_one_window_covering_the_volume_equals_the_unwindowed_sampler(spatial_dims):
    shape = (24, 16, 16)[:spatial_dims] if spatial_dims == 3 else (24, 16)
    segmenter, image = _segmenter_and_image(spatial_dims, shape)
    plain = segmenter.sample(image, steps=4, num_samples=2, generator=torch.Generator().manual_seed(1))
    denoiser = SlidingWindowDenoiser(segmenter.net, shape, overlap=0.5, max_whole_voxels=0)
    windowed = segmenter.sample(
        image, steps=4, num_samples=2, generator=torch.Generator().manual_seed(1), model_fn=denoiser
    )
    assert denoiser.num_windows == 4 * 2  # one window per step and sample
    torch.testing.assert_close(windowed, plain, atol=1e-5, rtol=0)


def test_sample_ensemble_is_the_stitched_sampler_summarised():
    """The one path Predictor.segment and the bundle's validation share: windows, ensemble, summary."""
    segmenter, image = _segmenter_and_image(2, (24, 16))
    denoiser = SlidingWindowDenoiser(segmenter.net, (8, 8), overlap=0.25, max_whole_voxels=0)
    samples = segmenter.sample(
        image, steps=3, num_samples=2, generator=torch.Generator().manual_seed(4), model_fn=denoiser
    )
    expected = summarize_ensemble(to_probabilities(samples, dim=2))
    wrapped = []
    out = sample_ensemble(
        segmenter,
        image,
        steps=3,
        num_samples=2,
        roi_size=(8, 8),
        overlap=0.25,
        max_whole_voxels=0,
        generator=torch.Generator().manual_seed(4),
        wrap_model_fn=lambda fn: wrapped.append(fn) or fn,
    )
    assert set(out) == set(expected) | {"aleatoric", "epistemic", "estimated_dice"}
    assert isinstance(wrapped[0], SlidingWindowDenoiser)
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value, msg=key)
    with pytest.raises(ValueError, match="overlap"):
        sample_ensemble(segmenter, image, steps=1, num_samples=1, roi_size=(8, 8), overlap=1.0)


def _window_faces_mask(shape, roi, margin=2):
    """Voxels within ``margin`` of a face between windows (overlap 0.5), the volume's own faces excluded."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for axis, size in enumerate(shape):
        starts = [*range(0, size - roi + 1, roi // 2), max(size - roi, 0)]
        faces = {f for start in starts for f in (start, start + roi)} - {0, size} - set(range(size + 1, size + roi))
        idx = torch.arange(size)
        near = torch.stack([(idx >= f - margin) & (idx < f + margin) for f in faces]).any(0)
        mask |= near.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return mask


def _independent_windows(segmenter, image, roi, steps):
    """Diff-UNet's scheme, for contrast: every window sampled to the end with its own noise, then blended."""
    from monai.inferers import SlidingWindowInferer

    seeds = iter(range(100, 10_000))

    def sample_window(window):
        generator = torch.Generator().manual_seed(next(seeds))
        return to_probabilities(segmenter.sample(window, steps=steps, generator=generator), dim=2)[0]

    return SlidingWindowInferer(roi, 1, 0.5, mode="gaussian")(image, sample_window)


def _stitched_vs_whole(segmenter, image, roi, steps=5):
    generator = torch.Generator().manual_seed(1)
    whole = to_probabilities(segmenter.sample(image, steps=steps, generator=generator), dim=2)[0, 0]  # (K, *S)
    denoiser = SlidingWindowDenoiser(segmenter.net, roi, overlap=0.5, max_whole_voxels=0)
    generator = torch.Generator().manual_seed(1)
    stitched = segmenter.sample(image, steps=steps, generator=generator, model_fn=denoiser)
    stitched = to_probabilities(stitched, dim=2)[0, 0]
    return whole, stitched, (stitched - whole).abs().amax(dim=0)  # (*S)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_stitched_sampling_has_no_seam(spatial_dims):
    """One noise draw, windows blended every step: the probability map matches a whole-volume run everywhere (about
    4e-4 in 2D and 1e-3 in 3D at most, on and off window faces), while independent windows (Diff-UNet) miss by ~0.05
    and their mean error is over 100 times ours."""
    shape, roi = ((64, 64), 16) if spatial_dims == 2 else ((32, 32, 32), 16)
    segmenter, image = _segmenter_and_image(spatial_dims, shape)
    whole, _, error = _stitched_vs_whole(segmenter, image, roi)
    faces = _window_faces_mask(shape, roi)
    border, interior = float(error[faces].max()), float(error[~faces].max())
    assert max(border, interior) < 5e-3, f"window faces {border:.2e}, elsewhere {interior:.2e}"
    independent = (_independent_windows(segmenter, image, roi, steps=5)[0] - whole).abs().amax(dim=0)  # (*S)
    assert float(independent.mean()) > 20 * float(error.mean()), (float(independent.mean()), float(error.mean()))


PIXEL = {"head": "pixel", "pixel_dim": 4, "pixel_depth": 1}  # PixelDiT's pixel pathway as the head (issue 11)
PIXEL_IMAGE = {**PIXEL, "pixel_image_depth": 2}  # with two image blocks: a 4-voxel reach into the image
PIXEL_K5 = {**PIXEL, "pixel_kernel": 5}  # depthwise 5^N convolutions: a 4-voxel reach into both inputs


def _random_widit(spatial_dims, scale=0.2, **options):
    """A tiny WiDiT with random weights everywhere, so that its output is not the adaLN-Zero constant."""
    net = WiDiT(
        spatial_dim=spatial_dims,
        in_channels=2,
        cond_channels=1,
        hidden_size=32,
        depth=2,
        num_heads=2,
        window_size=4,
        learn_sigma=False,
        **options,
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))
        if net.pixel_head is not None:  # a unit norm and no bias, or the random bias alone decides every voxel
            net.pixel_head.final.norm.weight.fill_(1.0)
            net.pixel_head.final.linear.bias.zero_()
    return DiffusionSegmenter(net, num_classes=2).eval()


@pytest.mark.parametrize(
    ("shape", "roi", "margin", "tolerance", "min_std", "head"),
    [  # min_std: about half the measured spread of the whole-volume map (0.23, 0.39, 0.056, 0.11, 0.049, 0.027, 0.14,
        # 0.11)
        ((60, 52), 32, 8, 0.02, 0.1, {}),
        ((26, 22, 18), 16, 2, 0.1, 0.2, {}),
        ((60, 52), 32, 8, 0.02, 0.03, PIXEL),
        ((26, 22, 18), 16, 2, 0.25, 0.05, PIXEL),
        ((60, 52), 32, 8, 0.02, 0.025, PIXEL_IMAGE),
        ((26, 22, 18), 16, 2, 0.01, 0.015, PIXEL_IMAGE),
        ((60, 52), 32, 8, 0.02, 0.07, PIXEL_K5),
        ((26, 22, 18), 16, 2, 0.25, 0.05, PIXEL_K5),
    ],
    ids=[
        "patch-2d",
        "patch-3d",
        "pixel-2d",
        "pixel-3d",
        "pixel-image-2d",
        "pixel-image-3d",
        "pixel-k5-2d",
        "pixel-k5-3d",
    ],
)
def test_stitched_sampling_with_a_tiny_widit_has_no_seam(shape, roi, margin, tolerance, min_std, head):
    """A tiny random WiDiT attends across its attention windows, up to a whole roi in 3D here. Sizes off the
    network's grid exercise the aligned, cropped far-face windows. Measured: 2D max 4e-3 (mean 1e-4), 3D max 3e-2
    (mean 1e-3), on and off window faces alike; independent windows miss by up to 1 (mean 0.07 in 2D). The pixel
    head adds a 2-voxel neighbourhood (zero-padded at a window's faces, where the Gaussian weight is small):
    measured 2D max 4e-4 (mean 2e-5), 3D max 0.18 at one voxel (mean 7e-4, below the patch head's). Two image
    blocks widen the image's reach to 4 voxels: measured 2D max 4e-4, 3D max 1e-3. Depthwise 5^N convolutions widen
    both inputs' reach to 4 voxels: measured 2D max 5e-3 (mean 1e-4), 3D max 0.09 (mean 2.5e-3)."""
    segmenter = _random_widit(len(shape), **head)
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(2))
    whole, _, error = _stitched_vs_whole(segmenter, image, roi, steps=4 if len(shape) == 2 else 3)
    assert float(whole[1].std()) > min_std  # the maps are not trivially constant
    faces = _window_faces_mask(shape, roi, margin=margin)  # 2D: attention reaches a window (8 voxels) past a face
    border, interior = float(error[faces].max()), float(error[~faces].max())
    assert max(border, interior) < tolerance, f"window faces {border:.2e}, elsewhere {interior:.2e}"
    assert float(error.mean()) < tolerance / 10
    if len(shape) == 2:
        independent = (_independent_windows(segmenter, image, roi, steps=4)[0] - whole).abs().amax(dim=0)
        assert float(independent.mean()) > 20 * float(error.mean()), (float(independent.mean()), float(error.mean()))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("head", [PIXEL, PIXEL_IMAGE, PIXEL_K5], ids=["pixel", "pixel-image", "pixel-k5"])
def test_one_window_covering_the_volume_equals_the_whole_pixel_widit(spatial_dims, head):
    """The pixel head's convolutions see the same zero padding at the volume's faces in a covering window as in the
    whole-volume call: one window per step reproduces the unwindowed sampler."""
    shape = (16, 24) if spatial_dims == 2 else (8, 16, 8)
    segmenter = _random_widit(spatial_dims, **head)
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(3))
    plain = segmenter.sample(image, steps=3, num_samples=2, generator=torch.Generator().manual_seed(1))
    denoiser = SlidingWindowDenoiser(segmenter.net, shape, overlap=0.5, max_whole_voxels=0)
    windowed = segmenter.sample(
        image, steps=3, num_samples=2, generator=torch.Generator().manual_seed(1), model_fn=denoiser
    )
    assert denoiser.num_windows == 3 * 2 and float(plain.std()) > 0.1
    torch.testing.assert_close(windowed, plain, atol=1e-5, rtol=0)


def test_volume_faces_blend_without_monai_clamp():
    """MONAI's Gaussian map is clamped at 1e-3, which turns the blend along the volume's faces into a plain average
    with the windows' edges; our unclamped map keeps those faces seamless."""
    from monai.data.utils import compute_importance_map

    segmenter, image = _segmenter_and_image(2, (64, 64))
    x, t = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(3)), torch.full((1,), 500.0)
    with torch.no_grad():
        reference = segmenter.net(x, t, conditioned=image)
    ours = SlidingWindowDenoiser(segmenter.net, 16, overlap=0.5, max_whole_voxels=0)
    clamped = SlidingWindowDenoiser(segmenter.net, 16, overlap=0.5, max_whole_voxels=0)
    clamped._inferer(2)[0].roi_weight_map = compute_importance_map((16, 16), mode="gaussian", sigma_scale=0.125)
    with torch.no_grad():
        error_ours = float((ours(x, t, image) - reference).abs().max())
        error_clamped = float((clamped(x, t, image) - reference).abs().max())
    assert error_ours < 0.01 < 0.05 < error_clamped, (error_ours, error_clamped)
    weights = gaussian_weight_map((16, 16))
    monai = compute_importance_map((16, 16), mode="gaussian", sigma_scale=0.125)
    above = monai > 1e-3
    torch.testing.assert_close(weights[above], monai[above], atol=1e-6, rtol=1e-5)
    assert float(weights.min()) > 0


def spacing_net(x, t, conditioned=None, spacing=None):
    """Pointwise with a per-row spacing term: output = x * cond + t + sum(spacing) (issue 17's conditioning)."""
    return affine_net(x, t, conditioned) + _bcast(spacing.sum(dim=1), x)


@pytest.mark.parametrize("whole", [True, False])
@pytest.mark.parametrize("steps", [(7.0, 7.0), (3.0, 11.0)])
def test_every_window_gets_its_rows_spacing(whole, steps):
    """Whole-volume chunks and windows (one pass, or one per row when steps differ) carry each row's spacing."""
    x, _, cond = _inputs(3)
    spacing = torch.tensor([[2.0, 2, 2, 2, 2, 6], [1.0, 1, 1, 1, 5, 1]])
    t = torch.tensor(steps)
    denoiser = SlidingWindowDenoiser(spacing_net, 8, sw_batch_size=3, max_whole_voxels=None if whole else 0)
    out = denoiser(x, t, cond, spacing=spacing)
    torch.testing.assert_close(out, x * cond + _bcast(t + spacing.sum(dim=1), x), atol=1e-5, rtol=1e-5)
    assert denoiser.runs_whole(x.shape) is whole


def test_windowed_spacing_widit_equals_its_whole_volume_run():
    """A WiDiT with spacing conditioning through sample_ensemble: one covering window = the whole-volume call, and
    the spacing changes the samples (it reaches the network)."""
    segmenter = _random_widit(3, spacing_conditioning=True)
    shape = (8, 16, 8)
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(3))
    spacing = torch.tensor([[2.0, 2.0, 2.0, 2.0, 2.0, 6.0]])

    def run(max_whole_voxels, spacing):
        return sample_ensemble(
            segmenter,
            image,
            steps=3,
            num_samples=2,
            roi_size=shape,
            max_whole_voxels=max_whole_voxels,
            generator=torch.Generator().manual_seed(1),
            spacing=spacing,
        )["mean_probability"]

    windowed = run(0, spacing)
    torch.testing.assert_close(windowed, run(None, spacing), atol=1e-5, rtol=0)
    assert float((run(None, torch.tensor([[2.0] * 6])) - windowed).abs().max()) > 1e-3


def test_spacing_of_the_wrong_shape_is_refused():
    x, t, cond = _inputs(3)
    denoiser = SlidingWindowDenoiser(spacing_net, 8)
    with pytest.raises(ValueError, match=r"spacing must be \(B, 2 \* spatial dims\) = \(2, 6\) mm.*got \(2, 3\)"):
        denoiser(x, t, cond, spacing=torch.ones(2, 3))


def test_a_one_entry_window_is_that_size_on_every_axis_windowed_too():
    """From a review: roi_size [16] (one size for every axis, as the predictor and the patch check read it) passed
    every check and failed on the windowed path ("roi_size (16,) has 1 axes but the volume has 3"), so a bundle's
    inference.json [64] failed on the first volume over the whole-volume budget; the MONAI inferer too."""
    from medwidit.inference import DiffusionSamplingInferer

    segmenter, image = _segmenter_and_image(3, (24, 16, 16))
    runs = {}
    for roi in (8, [8], (8, 8, 8)):
        summary = sample_ensemble(
            segmenter, image, steps=2, num_samples=1, roi_size=roi, max_whole_voxels=0,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        runs[str(roi)] = summary["mean_probability"]
        inferer = DiffusionSamplingInferer(roi, steps=2, num_samples=1, max_whole_voxels=0, precision="float32")
        runs[f"inferer {roi}"] = inferer(image, segmenter)
    for key, value in runs.items():
        torch.testing.assert_close(value, runs["8" if "inferer" not in key else "inferer 8"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="precision"):  # at construction, not at the first batch
        DiffusionSamplingInferer(8, precision="bf16")
