"""The pixel head (PixelDiT's pixel pathway, seed 001): exact zero at init, locality, config round trip; the seed's
PixelMLP and FinalLayer; the default patch head unchanged for the shipped weights."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medwidit.nets import FinalLayer, Mlp, PixelHead, PixelMLP, WiDiT, load_widit, save_widit
from medwidit.nets.blocks import depthwise_same

SHAPES = {2: (8, 12), 3: (8, 4, 12)}
BUNDLE_WEIGHTS = Path(__file__).resolve().parents[2] / "bundles" / "brain_widit_segmentation" / "models" / "model.pt"


def _inputs(spatial_dim, channels=2, batch=2, seed=0):
    return torch.randn(batch, channels, *SHAPES[spatial_dim], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spatial_dim", [2, 3])
@pytest.mark.parametrize("timestep", [torch.tensor([0.0, 999.0]), None])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_pixel_head_outputs_exact_zero_at_init(tiny, spatial_dim, timestep, learn_sigma):
    model = tiny(spatial_dim, in_channels=2, head="pixel", pixel_dim=8, pixel_depth=2, learn_sigma=learn_sigma)
    out = model(_inputs(spatial_dim), timestep, conditioned=_inputs(spatial_dim, seed=1))
    assert out.shape == (2, 4 if learn_sigma else 2, *SHAPES[spatial_dim])
    assert torch.equal(out, torch.zeros_like(out))  # the seed's FinalLayer: zero Linear, exactly zero


def test_pixel_head_modulation_starts_at_zero(tiny, randomize):
    """PixelDiT's adaLN-Zero: every pixel block starts as a plain RMSNorm (shift 0, scale 0) whatever the tokens; the
    head's zero output hides a modulation left at PyTorch's random init, so it is checked on the weights themselves,
    fresh and after ``init_weights`` on drawn weights."""
    model = tiny(3, in_channels=2, head="pixel", pixel_dim=8, pixel_depth=2)
    modulation = model.pixel_head.modulation
    assert not modulation.weight.any() and not modulation.bias.any()
    randomize(model).init_weights()
    assert not modulation.weight.any() and not modulation.bias.any()


def test_pixel_head_reads_the_voxel_neighbourhood(tiny, randomize):
    """With nonzero weights a voxel's output depends on the input at that voxel and at each of its neighbours directly
    (the pixel pathway), not only through its patch's token."""
    model = randomize(tiny(2, in_channels=2, cond_channels=1, head="pixel", pixel_dim=8, pixel_depth=1))
    x, image, t = _inputs(2), _inputs(2, channels=1, seed=1), torch.tensor([3.0, 4.0])
    x.requires_grad_(True)
    model(x, t, conditioned=image)[0, :, 4, 5].sum().backward()
    assert float(x.grad[0, :, 4, 5].abs().sum()) > 0 and float(x.grad[0, :, 3:6, 4:7].abs().amin()) > 0


def test_without_conditioning_and_with_per_axis_patch(tiny):
    model = tiny(3, patch_size=(1, 2, 2), use_conditioning=False, head="pixel")
    assert model.pixel_head.stem_c is None and model.final_layer is None
    out = model(_inputs(3, channels=1), torch.tensor([1.0, 2.0]))
    assert out.shape == (2, 2, *SHAPES[3]) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("spatial_dim", [2, 3])
@pytest.mark.parametrize("kernel", [3, 5])
def test_pixel_head_is_local(randomize, spatial_dim, kernel):
    """A voxel reads its (k - 1)-voxel neighbourhood (two depthwise k^N convolutions) and the tokens of the patches
    within k // 2 voxels of it (the last convolution's reach; with k = 3, one voxel from its patch's faces, its own
    patch's token only): what makes sliding windows stitch it as they stitch the token path."""
    patch, grid = (4,) * spatial_dim, (3,) * spatial_dim
    head = randomize(PixelHead(16, patch, 2, 1, 2, dim=4, depth=2, kernel=kernel))
    shape = tuple(g * p for g, p in zip(grid, patch, strict=True))
    x, image = torch.randn(1, 2, *shape, requires_grad=True), torch.randn(1, 1, *shape)
    tokens, c = torch.randn(1, 3**spatial_dim, 16, requires_grad=True), torch.randn(1, 16)
    voxel = (5,) * spatial_dim  # inside the middle patch, one voxel from its faces
    head(x, image, tokens, c, grid)[(0, slice(None), *voxel)].sum().backward()
    reach = x.grad.abs().sum(dim=(0, 1)) > 0  # (*S)
    near = torch.ones(shape, dtype=torch.bool)
    for axis, v in enumerate(voxel):
        index = torch.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(spatial_dim)])
        near = near & ((index - v).abs() <= kernel - 1)
    assert torch.equal(reach, near)
    token_reach = tokens.grad.abs().sum(dim=(0, 2)) > 0  # (T,)
    rows = range((5 - kernel // 2) // 4, (5 + kernel // 2) // 4 + 1)  # token rows within k // 2 of voxel 5, per axis
    expected = sorted(
        sum(r * 3**a for a, r in enumerate(reversed(cell))) for cell in itertools.product(rows, repeat=spatial_dim)
    )
    assert token_reach.nonzero().flatten().tolist() == expected  # k = 3: the middle token only


@pytest.mark.parametrize("image_depth", [1, 2])
def test_image_blocks_widen_what_a_voxel_reads_of_the_image_alone(randomize, image_depth):
    """Each image block adds one voxel of reach into the image (its depthwise 3^N convolution), none into the noisy
    input: the image part is encoded once per volume, the per-step part keeps its 2-voxel neighbourhood."""
    patch, grid = (4, 4, 4), (3, 3, 3)
    head = randomize(PixelHead(16, patch, 2, 1, 2, dim=4, depth=1, image_depth=image_depth))
    shape = tuple(g * p for g, p in zip(grid, patch, strict=True))
    x, image = torch.randn(1, 2, *shape, requires_grad=True), torch.randn(1, 1, *shape, requires_grad=True)
    tokens, c = torch.randn(1, 27, 16), torch.randn(1, 16)
    voxel = (5, 6, 5)
    head(x, image, tokens, c, grid)[(0, slice(None), *voxel)].sum().backward()
    index = [torch.arange(n).reshape([-1 if a == axis else 1 for a in range(3)]) for axis, n in enumerate(shape)]

    def within(radius):
        near = [(i - v).abs() <= radius for i, v in zip(index, voxel, strict=True)]
        return near[0] & near[1] & near[2]

    assert torch.equal(x.grad.abs().sum(dim=(0, 1)) > 0, within(2))
    assert torch.equal(image.grad.abs().sum(dim=(0, 1)) > 0, within(2 + image_depth))


def test_pixel_config_rebuilds_and_round_trips(tiny, randomize, tmp_path):
    model = randomize(
        tiny(
            3,
            in_channels=2,
            cond_channels=1,
            head="pixel",
            pixel_dim=4,
            pixel_depth=3,
            pixel_mlp_ratio=2,
            pixel_image_depth=2,
            pixel_kernel=5,
            position="rope",
        )
    )
    config = json.loads(json.dumps(model.config))
    assert (config["head"], config["pixel_dim"], config["pixel_depth"], config["pixel_mlp_ratio"]) == ("pixel", 4, 3, 2)
    assert config["pixel_image_depth"] == 2 and len(model.pixel_head.image_blocks) == 2
    assert config["pixel_kernel"] == 5 and model.pixel_head.mix.kernel_size == (5, 5, 5)
    assert len(model.pixel_head.blocks) == 3 and model.pixel_head.dim == 4
    assert model.pixel_head.blocks[0].mlp.fc1.out_features == 8  # pixel_mlp_ratio x pixel_dim
    save_widit(model, tmp_path / "pixel.pt")
    loaded = load_widit(tmp_path / "pixel.pt")
    x, image, t = _inputs(3), _inputs(3, channels=1, seed=1), torch.tensor([4.0, 900.0])
    assert torch.equal(loaded(x, t, conditioned=image), model(x, t, conditioned=image))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": "pixle"}, "head"),
        ({"head": "pixel", "pixel_dim": 0}, "pixel_dim must be an int >= 1, got 0"),
        ({"head": "pixel", "pixel_depth": 0}, "pixel_depth must be an int >= 1, got 0"),
        ({"pixel_dim": 2.5}, "pixel_dim must be an int"),
        ({"head": "pixel", "pixel_mlp_ratio": 0}, "pixel_mlp_ratio must be positive, got 0"),
        ({"head": "pixel", "pixel_mlp_ratio": float("nan")}, "pixel_mlp_ratio must be positive, got nan"),
        ({"head": "pixel", "pixel_mlp_ratio": True}, "pixel_mlp_ratio must be positive, got True"),
        ({"head": "pixel", "pixel_image_depth": -1}, "pixel_image_depth must be an int >= 0, got -1"),
        ({"head": "pixel", "pixel_kernel": 4}, "pixel_kernel must be an odd int >= 1, got 4"),
        ({"head": "pixel", "pixel_kernel": 0}, "pixel_kernel must be an odd int >= 1, got 0"),
        ({"head": "pixel", "pixel_kernel": 3.0}, "pixel_kernel must be an odd int >= 1, got 3.0"),
        ({"head": "pixel", "pixel_kernel": True}, "pixel_kernel must be an odd int >= 1, got True"),
        ({"pixel_kernel": 5}, r"pixel_kernel=5 needs head='pixel' \(got head='patch'\)"),
        ({"pixel_image_depth": 1}, r"pixel_image_depth=1 needs head='pixel' and use_conditioning=True \(got head="),
        (
            {"head": "pixel", "pixel_image_depth": 2, "use_conditioning": False},
            "pixel_image_depth=2 needs .* use_conditioning=False",
        ),
    ],
)
def test_pixel_options_are_checked(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(2, **kwargs)


def test_pixel_mlp_is_exact_gelu_with_biases(randomize):
    mlp = randomize(PixelMLP(6, mlp_ratio=2.0))
    assert mlp.fc1.out_features == 12 and mlp.fc1.bias is not None and mlp.fc2.bias is not None
    x = torch.randn(5, 6)
    expected = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    assert torch.equal(mlp(x), expected)
    tanh = F.linear(F.gelu(mlp.fc1(x), approximate="tanh"), mlp.fc2.weight, mlp.fc2.bias)
    assert not torch.equal(mlp(x), tanh)  # not DiT's approximation
    dit = Mlp(6, mlp_ratio=2.0)  # one implementation: PixelMLP is DiT's Mlp with the exact GELU
    dit.load_state_dict(mlp.state_dict())
    assert isinstance(mlp, Mlp) and dit.state_dict().keys() == mlp.state_dict().keys()
    assert torch.equal(dit(x), tanh)


def test_final_layer_is_zero_at_init_then_rmsnorm_linear(randomize):
    layer = FinalLayer(8, 3)
    x = torch.randn(4, 8) * 10
    assert torch.equal(layer(x), torch.zeros(4, 3))
    randomize(layer)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.norm.weight
    torch.testing.assert_close(layer(x), F.linear(normed, layer.linear.weight, layer.linear.bias))


def _plain_head(head, x, image, tokens, c, grid):
    """The pixel head written as the plain composition of its modules (the layers the seed describes), channels-last:
    the reference the head's slab-wise, fewer-pass forward must reproduce."""
    from medwidit.nets.blocks import patches_to_voxels

    def _depthwise(conv, h):  # PyTorch's own convolution and backward, channels-last voxels
        return conv(h.movedim(-1, 1)).movedim(1, -1)

    h = head.stem_x(x.movedim(1, -1))
    if head.stem_c is not None:
        features = F.linear(image.movedim(1, -1), head.stem_c.weight)
        for block in head.image_blocks:  # ConvNeXt's block, no norm: h + pointwise(GELU(depthwise(h)))
            features = features + block.pointwise(F.gelu(_depthwise(block.depthwise, features)))
        h = h + features
    h = h + _depthwise(head.stem_mix, h)
    s = head.norm_tokens(tokens) + c.unsqueeze(1)
    s = patches_to_voxels(head.modulation(s), grid, head.patch_size).movedim(1, -1)
    for block, pair in zip(head.blocks, s.chunk(len(head.blocks), dim=-1), strict=True):
        shift, scale = pair.chunk(2, dim=-1)
        h = h + block.mlp(block.norm(h) * (1 + scale) + shift)
    h = h + _depthwise(head.mix, h)
    return head.final(h).movedim(-1, 1)


def _head_case(spatial_dim, conditioned, patch, grid, batch=2, seed=0, image_depth=0, kernel=3):
    """A randomized head with its inputs on ``grid`` tokens of ``patch`` voxels (x and tokens require gradients)."""
    torch.manual_seed(seed)
    cond = 1 if conditioned else None
    head = PixelHead(16, patch, 2, cond, 3, dim=4, depth=2, image_depth=image_depth, kernel=kernel)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    shape = tuple(g * p for g, p in zip(grid, patch, strict=True))
    x, image = torch.randn(batch, 2, *shape, requires_grad=True), torch.randn(batch, 1, *shape)
    tokens, c = torch.randn(batch, math.prod(grid), 16, requires_grad=True), torch.randn(batch, 16)
    return head, x, image, tokens, c


@pytest.mark.parametrize(
    "patch",
    [(2, 2), (2, 1), (2, 2, 2), (2, 1, 2), (1, 2, 2)],  # p0 differs from the last axis' size, both ways
)
@pytest.mark.parametrize(
    ("conditioned", "image_depth", "kernel"), [(True, 0, 3), (False, 0, 3), (True, 2, 3), (True, 2, 5)]
)  # image blocks need an image
@pytest.mark.parametrize("rows", [1, 2, None])  # slabs of 1 and 2 token rows (the last one short), and one slab
def test_pixel_head_forward_equals_its_modules_composed(monkeypatch, patch, conditioned, image_depth, kernel, rows):
    """The head's forward (slabs of token rows, the stem's matmul, the channels-first final layer, the folded
    modulation, the image blocks inside the once-per-volume encoding) computes the plain composition of its modules:
    values and gradients."""
    import medwidit.nets.blocks as blocks

    grid = (3, 2, 4)[: len(patch)]
    head, x, image, tokens, c = _head_case(len(patch), conditioned, patch, grid, image_depth=image_depth, kernel=kernel)
    per_row = 2 * math.prod(x.shape[3:]) * patch[0]  # voxels of one token row, batch of 2
    width = head.blocks[0].mlp.fc1.out_features  # slabs of SLAB_SCALE / width^2 voxels
    monkeypatch.setattr(blocks, "SLAB_SCALE", per_row * rows * width * width if rows else 1 << 40)
    out, expected = head(x, image, tokens, c, grid), _plain_head(head, x, image, tokens, c, grid)
    assert out.shape == expected.shape == (2, 3, *x.shape[2:])
    torch.testing.assert_close(out, expected)
    cached = head(x, image, tokens, c, grid, cond_features=head.encode_condition(image) if conditioned else None)
    assert torch.equal(cached, out)
    with torch.no_grad():  # without gradients the slabs are written into the stem's voxel map
        torch.testing.assert_close(head(x, image, tokens, c, grid), expected)
        if conditioned:  # the caller's encoding, kept across denoising steps, is read and never written
            features = head.encode_condition(image)
            kept = features.clone()
            first, second = (head(x, image, tokens, c, grid, cond_features=features) for _ in range(2))
            assert torch.equal(features, kept) and torch.equal(first, second)
    grads = torch.autograd.grad(out.square().sum(), (x, tokens, *head.parameters()))
    plain = torch.autograd.grad(expected.square().sum(), (x, tokens, *head.parameters()))
    for got, want in zip(grads, plain, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("channels", [4, 8, 16])
@pytest.mark.parametrize("dim", [-1, -2])
def test_mean_square_over_channels_either_side(channels, dim):
    """The head's mean of squares over its channels, channels last (dim -1) or read channels first from
    channels-last memory (-2, the final layer's: a zero-padded product below 9 channels), equals RMSNorm's."""
    from medwidit.nets.blocks import _mean_square

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7, channels)
    if dim == -2:
        x = x.reshape(2, -1, channels).transpose(1, 2)  # (B, D, N) on channels-last memory
    got = _mean_square(x, dim)
    assert got.shape == tuple(1 if a == x.dim() + dim else n for a, n in enumerate(x.shape))
    torch.testing.assert_close(got, x.square().mean(dim, keepdim=True))


@pytest.mark.parametrize(
    ("shape", "channels", "transposed"),
    [
        ((2, 4, 8, 4), 4, False),
        ((2, 4, 8, 8), 8, False),
        ((3, 5, 3), 3, False),
        ((2, 3, 5), 5, False),
        ((4, 8, 16), 8, True),
        ((2, 4, 8, 4), 1, False),
    ],
)
def test_add_bias_in_rows_equals_a_broadcast_sum(shape, channels, transposed):
    """``_add_bias_`` adds a bias along the last axis in place, as ``x + bias`` does element for element: as rows of
    64 values on contiguous memory (bias repeated), as a broadcast otherwise (strided, a length that is no multiple,
    a bias that broadcasts from one value)."""
    from medwidit.nets.blocks import _add_bias_

    torch.manual_seed(0)
    x = torch.randn(*shape)
    x = x.transpose(-1, -2) if transposed else x
    bias = torch.randn(channels)
    expected = x + bias
    out = _add_bias_(x, bias)
    assert out is x and torch.equal(out, expected)


def test_slab_rows_shrink_with_the_mlp_width_and_keep_one_token_row():
    """CPU slabs of SLAB_SCALE / width^2 voxels in whole token rows: the bundle's head (MLP width 8, a 64^3 crop of
    16 token rows) in two slabs of 8 rows, the phantoms' (width 64, 32^3, 8 rows) row by row."""
    from medwidit.nets.blocks import SLAB_SCALE, _slab_rows

    assert SLAB_SCALE == 1 << 23
    assert _slab_rows(torch.empty(1, 64, 64, 64, 4), (16, 16, 16), 8) == 8
    assert _slab_rows(torch.empty(2, 64, 64, 64, 4), (16, 16, 16), 8) == 4  # the batch shares a slab's voxels
    assert _slab_rows(torch.empty(1, 32, 32, 32, 16), (8, 8, 8), 64) == 1


def test_pixel_head_in_half_precision_keeps_large_activations(monkeypatch):
    """Voxel features of a few hundred: squared in float16 they overflow, so the head's norms accumulate in float32
    as RMSNorm does (an overflowed mean of squares silently dropped the normalisation)."""
    import medwidit.nets.blocks as blocks

    monkeypatch.setattr(blocks, "SLAB_SCALE", 1)
    patch, grid = (2, 2, 2), (3, 2, 2)
    head, x, image, tokens, c = _head_case(3, True, patch, grid)
    with torch.no_grad():
        head.stem_x.weight.mul_(1000.0)  # features of about 300-1000 per channel
        expected = _plain_head(head, x, image, tokens, c, grid)
        half = head.half()(x.half(), image.half(), tokens.half(), c.half(), grid)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), expected, rtol=0.02, atol=0.02 * float(expected.abs().max()))


@pytest.mark.parametrize(
    ("pixel_dim", "traced_size", "size", "traced_without_grad"),
    [(4, (16, 16), (32, 16), False), (5, (24, 16), (16, 16), True)],
)
def test_pixel_head_traced_at_one_size_runs_at_another(
    tiny, randomize, monkeypatch, pixel_dim, traced_size, size, traced_without_grad
):
    """torch.jit.trace records one slab (a loop over slabs would fix the traced size's slab count and offsets), the
    biases' plain broadcast (rows of 60 values fit 24 x 16 voxels of 5 channels, not 16 x 16) and, traced without
    gradients, no in-place writes (a call with gradients failed on them)."""
    import medwidit.nets.blocks as blocks

    monkeypatch.setattr(blocks, "SLAB_SCALE", 1)
    model = randomize(tiny(2, in_channels=2, cond_channels=1, head="pixel", pixel_dim=pixel_dim, pixel_depth=1))
    model = model.eval()
    t = torch.tensor([5.0])

    class Denoise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x, image):
            return self.model(x, t, conditioned=image)

    # both sizes past the window on each axis (2 x 4 tokens), so the traced shifted windows hold at either
    example = (torch.randn(1, 2, *traced_size), torch.randn(1, 1, *traced_size))
    with torch.set_grad_enabled(not traced_without_grad):
        traced = torch.jit.trace(Denoise(), example, check_trace=False)
    x, image = torch.randn(1, 2, *size), torch.randn(1, 1, *size)
    with torch.no_grad():
        expected = model(x, t, conditioned=image)
        torch.testing.assert_close(traced(x, image), expected)
    leaf = x.clone().requires_grad_()
    out = traced(leaf, image)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


#################################################################################
#                    The default head is the seed's, unchanged                   #
#################################################################################


def test_default_head_is_the_patch_head(tiny):
    model = tiny(3)
    assert model.config["head"] == "patch" and model.pixel_head is None
    assert not any("pixel" in key for key in model.state_dict())


def test_shipped_weights_load_strictly_and_give_the_same_outputs():
    """The shipped bundle's weights load with strict key matching (the position tables are non-persistent buffers)
    and reproduce recorded outputs. Bundle 0.4.x's weights were recorded with the code before the tables became
    buffers (lru_cache tables, hand-written sinusoid) and matched it; since 0.5.0's weights, the values below are
    theirs, recorded with the current code (since 0.9.0: the pixel head's weights)."""
    state = torch.load(BUNDLE_WEIGHTS, weights_only=True)  # the bundle's bare state dict; its config beside it
    net = WiDiT(**json.loads(BUNDLE_WEIGHTS.with_name("medwidit.json").read_text())["config"]["net"])
    net.load_state_dict(state, strict=True)
    assert set(net.state_dict()) == set(state)  # the tables are non-persistent buffers
    assert any(name.endswith("rope_cos") for name, _ in net.named_buffers())
    g = torch.Generator().manual_seed(0)
    x, image = torch.randn(1, 2, 32, 32, 48, generator=g), torch.randn(1, 1, 32, 32, 48, generator=g)
    with torch.no_grad():
        out = net.eval()(x, torch.tensor([500.0]), conditioned=image).double()
    assert abs(float(out.sum()) - -6756.936107697838) < 1e-6 * 71988
    assert abs(float(out.abs().sum()) - 71987.88211333039) < 1e-6 * 71988
    torch.testing.assert_close(out[0, :, 3, 17, 40].float(), torch.tensor([-0.8117995858192444, 0.6759336590766907]))
    torch.testing.assert_close(out[0, :, 30, 5, 9].float(), torch.tensor([-0.44296613335609436, 0.30422186851501465]))


def test_pixel_head_reads_the_noisy_input_alone_with_concat_conditioning(tiny, randomize):
    """With conditioning="concat" the token path embeds [x, image]; the pixel head still gets x and the image apart."""
    model = randomize(tiny(2, in_channels=2, cond_channels=1, conditioning="concat", head="pixel", pixel_dim=4))
    x, image = _inputs(2), _inputs(2, channels=1, seed=1)
    out = model(x, torch.tensor([3.0, 4.0]), conditioned=image)
    assert out.shape == (2, 4, *SHAPES[2]) and model.pixel_head.stem_x.in_features == 2
    assert float(out.abs().mean()) > 0


@pytest.mark.parametrize(
    ("spatial_dim", "kernel", "bias", "channels_last"),
    [(3, 3, True, True), (3, 3, True, False), (3, 5, False, True), (2, 3, True, True), (2, 5, True, False)],
)
def test_depthwise_backward_equals_pytorchs(spatial_dim, kernel, bias, channels_last):
    """The pixel head's depthwise convolution with its written-out backward: PyTorch's forward bit for bit, and the
    gradients of input, kernel and bias equal to PyTorch's backward, 2-D and 3-D, odd kernels, with and without a
    bias, on channels-last voxels (as the head calls it) and on a channels-first copy."""
    from medwidit.nets.blocks import _depthwise, _DepthwiseSame

    torch.manual_seed(0)
    conv_type = (torch.nn.Conv2d, torch.nn.Conv3d)[spatial_dim - 2]
    conv = conv_type(6, 6, kernel, padding=kernel // 2, groups=6, bias=bias)
    shape = (2, *(9, 7, 8)[:spatial_dim], 6)
    h = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    out = _depthwise(conv, h)
    assert type(out.grad_fn.next_functions[0][0]).__name__ == f"{_DepthwiseSame.__name__}Backward"
    params = (h, conv.weight) + ((conv.bias,) if bias else ())
    got = torch.autograd.grad(out, params, g)
    x = h.movedim(-1, 1) if channels_last else h.movedim(-1, 1).contiguous()
    if not channels_last:  # the function on a channels-first input, against PyTorch on the same
        out = _DepthwiseSame.apply(x, conv.weight, conv.bias).movedim(1, -1)
        got = torch.autograd.grad(out, params, g)
    want_out = conv(x).movedim(1, -1)
    assert torch.equal(out, want_out)
    for a, b in zip(got, torch.autograd.grad(want_out, params, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_depthwise_takes_pytorchs_own_path_where_its_backward_is_not_needed_or_not_written():
    """No gradient, float64, CPU autocast, a stride, an unpadded or non-depthwise convolution: PyTorch's convolution
    as it is (the written backward serves float32 CPU training only), with the same values."""
    from medwidit.nets.blocks import _depthwise

    depthwise = torch.nn.Conv3d(4, 4, 3, padding=1, groups=4)
    h = torch.randn(1, 6, 6, 6, 4, requires_grad=True)

    def takes_plain(conv, x):
        out = _depthwise(conv, x)
        names = [] if out.grad_fn is None else [type(f).__name__ for f, _ in out.grad_fn.next_functions if f]
        return "_DepthwiseSameBackward" not in names

    with torch.no_grad():
        assert takes_plain(depthwise, h)
    assert takes_plain(depthwise.double(), h.double())
    depthwise.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert takes_plain(depthwise, h)
    assert takes_plain(torch.nn.Conv3d(4, 4, 3, stride=2, padding=1, groups=4), h)
    assert takes_plain(torch.nn.Conv3d(4, 4, 3, padding=0, groups=4), h)
    assert takes_plain(torch.nn.Conv3d(4, 4, 3, padding=1, groups=2), h)
    assert not takes_plain(depthwise, h)


def test_a_segmenter_training_step_through_the_written_backward_equals_pytorchs(tiny, randomize, monkeypatch):
    """The diffusion loss of a pixel-head WiDiT (image blocks too), differentiated with the depthwise convolutions'
    written backward and with PyTorch's own: the same gradient for every parameter, so training is unchanged."""
    import medwidit.nets.blocks as blocks
    from medwidit.diffusion import DiffusionSegmenter

    net = tiny(3, in_channels=2, out_channels=2, cond_channels=1, head="pixel", pixel_dim=4, pixel_image_depth=1)
    randomize(net)
    segmenter = DiffusionSegmenter(net, num_classes=2)
    image, label = torch.randn(2, 1, 8, 8, 8), (torch.rand(2, 1, 8, 8, 8) > 0.5).long()

    def gradients():
        loss = segmenter.loss(image, label, generator=torch.Generator().manual_seed(0))["loss"]
        return torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)

    calls = []
    apply = blocks._DepthwiseSame.apply
    monkeypatch.setattr(blocks._DepthwiseSame, "apply", lambda *args: calls.append(1) or apply(*args))
    written = gradients()
    assert len(calls) == 3  # the stem's mixing, the image block's and the last mixing
    monkeypatch.setattr(blocks, "_fast_backward", lambda conv, x: False)
    plain = gradients()
    assert any(g is not None and g.abs().sum() > 0 for g in written)
    for got, want in zip(written, plain, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("spatial_dim", "grad", "written"), [(3, True, True), (3, True, False), (3, False, False), (2, True, True)]
)
@pytest.mark.parametrize("kernel", [3, 5])
def test_depthwise_residual_folds_the_identity_into_the_kernel(monkeypatch, spatial_dim, grad, written, kernel):
    """``_depthwise(conv, h, residual=True)`` is ``h + conv(h)``: on the CPU in float32 one convolution whose kernel is
    conv's plus one at the centre tap (values and gradients up to rounding, through the written backward and through
    PyTorch's own); in bfloat16 the sum itself, bit for bit (a centre tap plus one would lose the tap's low bits)."""
    import medwidit.nets.blocks as blocks

    torch.manual_seed(0)
    conv = depthwise_same(spatial_dim, 4, kernel)
    h = torch.randn(2, *(6, 5, 7)[:spatial_dim], 4, requires_grad=grad)
    if not written:
        monkeypatch.setattr(blocks, "_fast_backward", lambda conv, x: False)
    kernels, conv_nd = [], blocks._conv_nd  # the kernel each convolution ran with (the written backward's forward too)
    monkeypatch.setattr(blocks, "_conv_nd", lambda x, w, b: kernels.append(w.detach()) or conv_nd(x, w, b))

    def plain(conv, h):
        return h + conv(h.movedim(-1, 1)).movedim(1, -1)

    with torch.set_grad_enabled(grad):
        out, want = blocks._depthwise(conv, h, residual=True), plain(conv, h)
    centre = (slice(None), 0, *(kernel // 2,) * spatial_dim)
    assert len(kernels) == 1 and torch.equal(kernels[0][centre], conv.weight.detach()[centre] + 1)  # one, folded
    torch.testing.assert_close(out, want)
    if grad:
        g = torch.randn_like(want)
        params = (h, conv.weight, conv.bias)
        got, expected = torch.autograd.grad(out, params, g), torch.autograd.grad(want, params, g)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)
    half, h16 = conv.bfloat16(), h.detach().bfloat16()
    assert torch.equal(blocks._depthwise(half, h16, residual=True), plain(half, h16))
    assert len(kernels) == 1 + (grad and written)  # + the written backward's; bf16 took PyTorch's own conv
    for wrong in (torch.nn.Conv3d(4, 4, 3, padding=1, groups=2), torch.nn.Conv3d(4, 4, 3, padding=0, groups=4)):
        with pytest.raises(ValueError, match="residual=True needs a depthwise"):  # whatever the dtype
            blocks._depthwise(wrong.bfloat16(), torch.randn(1, 4, 4, 4, 4).bfloat16(), residual=True)


def test_pixel_head_runs_in_float32_under_a_cpu_autocast(monkeypatch):
    """Under CPU bf16 autocast the head's voxel work (and its image encoding) computes in float32, its output too;
    only the modulation's token-level product runs in bf16, as autocast would run it: the float32 head on the same
    inputs (bf16 tokens, as the token path gives them) up to that product's rounding."""
    import medwidit.nets.blocks as blocks

    monkeypatch.setattr(blocks, "SLAB_SCALE", 1)
    patch, grid = (2, 2, 2), (3, 2, 2)
    head, x, image, tokens, c = _head_case(3, True, patch, grid)
    tokens16, c16 = tokens.detach().bfloat16(), c.bfloat16()
    products = []  # (output width, dtype) of every linear the head runs
    linear = F.linear
    monkeypatch.setattr(
        torch.nn.functional, "linear", lambda a, w, *r: products.append((w.shape[0], a.dtype)) or linear(a, w, *r)
    )
    with torch.no_grad():
        expected = head(x, image, tokens16.float(), c16.float(), grid)
        features = head.encode_condition(image)
        products.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoded = head.encode_condition(image)
            got = head(x, image, tokens16, c16, grid)
            cached = head(x, image, tokens16, c16, grid, cond_features=encoded)
    assert encoded.dtype == got.dtype == torch.float32
    assert torch.equal(encoded, features) and torch.equal(cached, got)
    width = head.modulation.out_features
    assert {dtype for out, dtype in products if out == width} == {torch.bfloat16}
    assert {dtype for out, dtype in products if out != width} == {torch.float32}  # the pixel MLP's, per voxel
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02 * scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training under autocast (backward outside, as PyTorch asks)
        loss = head(x, image, tokens16, c16, grid).square().sum()
    grads = torch.autograd.grad(loss, (x, *head.parameters()))
    want = torch.autograd.grad(
        head(x, image, tokens16.float(), c16.float(), grid).square().sum(), (x, *head.parameters())
    )
    for a, b in zip(grads, want, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * float(b.abs().max()))


@pytest.mark.parametrize("channels", [4, 16])
def test_pixel_block_in_place_without_gradients_gives_the_same_values(channels):
    """``modulated(..., inplace=True)`` without gradients writes the block's result into x (the head's own voxel map),
    bit for bit the out-of-place values; with gradients it leaves its inputs alone and gives the same gradients."""
    from medwidit.nets import PixelBlock

    torch.manual_seed(0)
    block = PixelBlock(channels, mlp_ratio=2.0)
    x, shift, scale = (torch.randn(2, 3, 4, 5, channels) for _ in range(3))
    with torch.no_grad():
        expected = block.modulated(x, shift, scale + 1)
        x2, shift2, scale2 = x.clone(), shift.clone(), scale + 1
        got = block.modulated(x2, shift2, scale2, inplace=True)
    assert got.data_ptr() == x2.data_ptr() and torch.equal(got, expected)
    leaf = x.clone().requires_grad_()
    inputs = (leaf, shift.clone(), scale + 1)
    out = block.modulated(*inputs, inplace=True)
    assert torch.equal(inputs[0], x) and torch.equal(inputs[1], shift) and torch.equal(inputs[2], scale + 1)
    assert torch.equal(out, expected)
    grads = torch.autograd.grad(out.square().sum(), (leaf, *block.parameters()))
    leaf2 = x.clone().requires_grad_()
    want = torch.autograd.grad(block.modulated(leaf2, shift, scale + 1).square().sum(), (leaf2, *block.parameters()))
    for a, b in zip(grads, want, strict=True):
        assert torch.equal(a, b)


def test_pixel_block_in_place_under_cpu_autocast_writes_its_bf16_output_into_the_float32_stream():
    """Alone under CPU autocast (its MLP's output in bf16), ``modulated(..., inplace=True)`` without gradients still
    writes its result into x, as the head's slabs rely on: the out-of-place values (it returned a fresh sum)."""
    from medwidit.nets import PixelBlock

    torch.manual_seed(0)
    block = PixelBlock(8, mlp_ratio=2.0)
    x, shift, scale = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = block.modulated(x, shift, scale + 1)
        stream = x.clone()
        got = block.modulated(stream, shift.clone(), scale + 1, inplace=True)
    assert got is stream and got.dtype == torch.float32 and torch.equal(got, expected)


def test_pixel_block_alone_under_cpu_autocast_keeps_a_float32_residual():
    """Called on its own under CPU autocast, a PixelBlock adds its bf16 MLP output to the float32 stream and returns
    float32, as ``x + mlp(...)`` does (the head's faster in-place sum would have cast the stream to bf16)."""
    from medwidit.nets import PixelBlock

    torch.manual_seed(0)
    block = PixelBlock(8, mlp_ratio=2.0)
    x, shift, scale = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x, shift, scale)
    assert out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, block(x, shift, scale), rtol=0.05, atol=0.05)
