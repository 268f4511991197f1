"""ConvPatchEmbed (WiDiT(embed="conv")): PatchEmbed's token grid from a local, translation-equivariant stem."""

import pytest
import torch

from medwidit.nets import ConvPatchEmbed, PatchEmbed


@pytest.mark.parametrize(("spatial_dim", "patch"), [(2, (4, 4)), (3, (4, 4, 4)), (3, (1, 2, 4))])
def test_same_token_grid_as_patch_embed(spatial_dim, patch):
    shape = (8, 16, 24)[:spatial_dim] if spatial_dim == 3 else (8, 12)
    x = torch.randn(2, 3, *shape)
    conv, linear = ConvPatchEmbed(3, 32, patch, spatial_dim), PatchEmbed(3, 32, patch, spatial_dim)
    assert conv(x).shape == linear(x).shape
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        conv(torch.randn(1, 3, *(s + 1 for s in shape)))


def test_crop_computes_the_whole_volumes_tokens_away_from_its_border():
    """No batch or instance statistics: a sliding window's interior tokens are the whole volume's, exactly."""
    torch.manual_seed(0)
    embed = ConvPatchEmbed(1, 32, 4, 3).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    whole = embed(x).transpose(1, 2).reshape(1, 32, 8, 8, 8)
    crop = embed(x[:, :, 8:24, 4:28, 8:32]).transpose(1, 2).reshape(1, 32, 4, 6, 6)
    # the stem reads 3 voxels left of a patch and none right: drop the crop's first token on each axis
    torch.testing.assert_close(crop[:, :, 1:, 1:, 1:], whole[:, :, 3:6, 2:7, 3:8], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(crop[:, :, 0], whole[:, :, 2, 1:7, 2:8], atol=1e-3)  # the border token does differ


def test_each_token_reads_only_its_patch_neighbourhood():
    embed = ConvPatchEmbed(1, 16, 4, 2)
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    embed(x).reshape(1, 8, 8, 16)[0, 3, 5].sum().backward()  # the token over rows 12..15, columns 20..23
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert rows.min() >= 12 - 3 and rows.max() <= 15 and cols.min() >= 20 - 3 and cols.max() <= 23
    assert rows.min() < 12 and cols.min() < 20  # and it does look beyond its own patch
