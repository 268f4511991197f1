"""Building blocks by value: Unpatchify (seed 004), SwiGLU and RMSNorm (seed 001), embedders, initialisation."""

import math

import pytest
import torch

from medwidit.nets import PatchEmbed, SwiGLU, TimestepEmbedder, Unpatchify, WiDiTFinalLayer, WiDiTInputError
from medwidit.nets.layers import make_norm


@pytest.mark.parametrize("data_dim", [1, 2, 3])
def test_unpatchify_inverts_patches_channels_last(data_dim):
    """With stride = patch each output voxel comes from exactly one token: a one-hot kernel is an exact unpatchify."""
    patch, grid = 2, (3, 4, 5)[:data_dim]
    layer = Unpatchify(2**data_dim, 1, data_dim, patch, bias=False, weight_init="zeros")
    with torch.no_grad():  # token channel i -> voxel i of the patch (row-major)
        layer.deconv.weight.view(2**data_dim, -1).copy_(torch.eye(2**data_dim))
    tokens = torch.randn(2, *grid, 2**data_dim)  # (B, *grid, C)
    out = layer(tokens)  # (B, *S, 1)
    assert out.shape == (2, *(g * patch for g in grid), 1)
    first = out[(slice(None), *(slice(0, patch) for _ in grid), 0)].reshape(2, -1)
    torch.testing.assert_close(first, tokens[(slice(None), *(0 for _ in grid))])


def test_unpatchify_stride_and_output_spatial_shape():
    layer = Unpatchify(8, 3, 3, patch_size=4, stride=2)
    x = torch.randn(1, 3, 4, 5, 8)
    assert layer(x).shape == (1, 8, 10, 12, 3)  # (s - 1) * stride + patch
    assert layer(x, output_spatial_shape=(9, 11, 13)).shape == (1, 9, 11, 13, 3)
    with pytest.raises(WiDiTInputError, match=r"rank 5 \[B, \*grid, C\], got shape \(3, 4, 5, 8\)"):
        layer(x[0])
    with pytest.raises(ValueError, match="data_dim must be 1, 2 or 3, got 4"):
        Unpatchify(8, 3, 4, 2)
    with pytest.raises(ValueError, match="weight_init: By 'fanin', did you mean 'fan_in'"):
        Unpatchify(8, 3, 3, 2, weight_init="fanin")
    with pytest.raises(ValueError, match="stride must be in"):
        Unpatchify(8, 3, 3, 2, stride=3)


def test_unpatchify_weight_inits():
    zeros = Unpatchify(64, 2, 3, 2, weight_init="zeros")
    assert not zeros.deconv.weight.any() and not zeros.deconv.bias.any()
    fan_in = Unpatchify(64, 2, 3, 2, weight_init="fan_in")
    bound = 1 / math.sqrt(64 * 8)
    assert fan_in.deconv.weight.abs().max() <= bound and fan_in.deconv.weight.abs().max() > 0.9 * bound
    default = Unpatchify(64, 2, 3, 2)  # PyTorch's: fan from out_features * prod(patch), much wider here
    assert default.deconv.weight.abs().max() > 2 * bound
    wide = Unpatchify(1024, 2, 3, 2, weight_init="fan_in")  # output scale must not grow with in_features
    ratio = wide(torch.randn(2, 4, 4, 4, 1024)).std() / fan_in(torch.randn(2, 4, 4, 4, 64)).std()
    assert 0.8 < ratio < 1.25


def test_swiglu_shape_and_hidden_width():
    layer = SwiGLU(48, mlp_ratio=4.0)
    assert layer.w1.out_features == int(2 * 48 * 4 / 3) and layer.w1.bias is None
    x = torch.randn(2, 5, 48)
    expected = layer.w2(torch.nn.functional.silu(layer.w1(x)) * layer.w3(x))
    torch.testing.assert_close(layer(x), expected)


def test_rmsnorm_and_layernorm_are_parameter_free():
    x = torch.randn(3, 7, 16) * 4 + 2
    rms = make_norm("rmsnorm", 16)(x)
    torch.testing.assert_close(rms, x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    ln = make_norm("layernorm", 16)
    assert list(ln.parameters()) == [] and list(make_norm("rmsnorm", 16).parameters()) == []


def test_patch_embed_init_and_tokens():
    embed = PatchEmbed(2, 32, (1, 2, 2), spatial_dim=3)
    tokens = embed(torch.randn(2, 2, 3, 4, 6))
    assert tokens.shape == (2, 3 * 2 * 3, 32) and not embed.proj.bias.any()
    fan_in, fan_out = 2 * 4, 32
    assert embed.proj.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))  # Xavier over the flattened patch
    with pytest.raises(ValueError, match="input has spatial size 5 on axis 2"):
        embed(torch.randn(1, 2, 3, 4, 5))


def test_timestep_embedder_init_and_float32():
    embedder = TimestepEmbedder(32)
    assert abs(embedder.mlp[0].weight.std().item() - 0.02) < 0.004 and not embedder.mlp[0].bias.any()
    freq = embedder.timestep_embedding(torch.tensor([0.0, 500.0]), 256)
    assert freq.dtype == torch.float32 and torch.equal(freq[0, :128], torch.ones(128))  # cos(0) = 1
    assert embedder(torch.tensor([1.0, 2.0])).shape == (2, 32)


def _dit_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The hand-written DiT embedding medwidit used before MONAI's (kept here as the reference)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


@pytest.mark.parametrize("dim", [256, 64, 7])
@pytest.mark.parametrize("t", [torch.tensor([0.0, 1.0, 499.5, 999.0]), torch.tensor([3, 250]), torch.tensor([0.25])])
def test_timestep_sinusoid_is_monais_and_identical_to_the_hand_written_one(dim, t):
    """MONAI's get_timestep_embedding replaces the hand-written one bit for bit (issue 16), in float32 (DESIGN 7)."""
    from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

    ours = TimestepEmbedder.timestep_embedding(t, dim)
    assert ours.dtype == torch.float32 and ours.shape == (t.shape[0], dim)
    assert torch.equal(ours, _dit_sinusoid(t, dim))
    assert torch.equal(ours, get_timestep_embedding(t.float(), dim))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(TimestepEmbedder.timestep_embedding(t, dim), ours)  # autocast does not reach it


def test_final_layer_modulation_is_shift_then_scale():
    """The final adaLN chunks are (shift, scale), as in DiT: swapped, a trained model's weights would scale by their
    shift. A zero weight and a drawn bias make the modulation a constant shift and scale, whatever c is."""
    layer = WiDiTFinalLayer(8, (2, 2), 1)
    generator = torch.Generator().manual_seed(0)
    shift, scale = torch.randn(8, generator=generator), torch.randn(8, generator=generator)
    with torch.no_grad():
        layer.adaLN_modulation[-1].bias.copy_(torch.cat([shift, scale]))
        layer.linear.weight.copy_(torch.randn(4, 8, generator=generator))
    x, c = torch.randn(2, 6, 8, generator=generator), torch.randn(2, 8, generator=generator)
    tokens = layer.linear(layer.norm_final(x) * (1 + scale) + shift)  # (B, T, prod(p)), grid (2, 3)
    expected = tokens.reshape(2, 2, 3, 2, 2).permute(0, 1, 3, 2, 4).reshape(2, 1, 4, 6)  # (B, 1, g0 p0, g1 p1)
    torch.testing.assert_close(layer(x, c, (2, 3)), expected)


@pytest.mark.parametrize("final", ["linear", "conv"])
def test_final_layer_linear_and_conv_agree_on_layout(final):
    """Same token values land on the same voxels with either head (a head made to copy channel 0 of each token)."""
    layer = WiDiTFinalLayer(8, (2, 2), 1, final=final)
    with torch.no_grad():
        if final == "linear":  # output voxel j of the patch <- hidden channel j
            layer.linear.weight.copy_(torch.eye(4, 8))
        else:
            layer.unpatchify.deconv.weight.view(8, -1).copy_(torch.eye(8, 4))
    x = torch.randn(1, 6, 8)
    out = layer(x, None, (2, 3))  # (1, 1, 4, 6)
    normed = layer.norm_final(x).reshape(2, 3, 8)
    assert out.shape == (1, 1, 4, 6)
    torch.testing.assert_close(out[0, 0, 2:4, 4:6].reshape(-1), normed[1, 2, :4])
