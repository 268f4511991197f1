"""Windows are correct at borders (DESIGN decision 2) and position is relative only (decision 3), proved by values."""

import itertools
import math

import pytest
import torch

from medwidit.nets import WindowAttention
from medwidit.nets import attention as attention_module
from medwidit.nets.attention import apply_rope, rope_angles
from medwidit.nets.window import relative_position_index, window_attention_mask, window_merge, window_partition

POSITIONS = ["relative", "rope"]
# (spatial shape in voxels, window in tokens) with patch 2: tiling grids and odd per-axis grids that need padding
LAYOUTS = {2: [((16, 16), 4), ((6, 14), (2, 4))], 3: [((16, 16, 16), 4), ((6, 10, 14), (2, 3, 4))]}


def _corner_gradient(model, shape, corner):
    """|d output[corner patch] / d input| (spatial), timestep given, so adaLN is active."""
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = model(x, torch.tensor([250.0]))
    patch = tuple(slice(0, 2) if c == 0 else slice(s - 2, s) for c, s in zip(corner, shape, strict=True))
    out[(0, slice(None), *patch)].sum().backward()
    return x.grad[0, 0].abs()


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("spatial_dim", [2, 3])
@pytest.mark.parametrize("layout", [0, 1])
def test_border_isolation_by_gradients(tiny, randomize, spatial_dim, layout, position):
    """With shifts on (block 2), the low-corner output sees exactly its first window and nothing across the wrap."""
    shape, window = LAYOUTS[spatial_dim][layout]
    model = randomize(tiny(spatial_dim, window_size=window, position=position, use_conditioning=False))
    window = model.config["window_size"]
    low = _corner_gradient(model, shape, (0,) * spatial_dim)
    first_window = tuple(slice(0, 2 * w) for w in window)  # in voxels: window tokens x patch 2
    inside = low[first_window].clone()
    low[first_window] = 0
    assert inside.sum() > 0 and torch.count_nonzero(low) == 0  # receptive field is exactly the first window
    high = _corner_gradient(model, shape, (1,) * spatial_dim)
    assert torch.count_nonzero(high[first_window]) == 0  # the opposite corner never reaches the low corner


def test_border_test_bites_without_swin_mask(tiny, randomize, monkeypatch):
    """Control: drop the shift mask and the same measurement sees the opposite corner (the roll's wrap-around)."""
    model = randomize(tiny(2, use_conditioning=False))
    monkeypatch.setattr(attention_module, "window_attention_mask", lambda *args: None)
    low = _corner_gradient(model, (16, 16), (0, 0))
    assert low[-2:, -2:].sum() > 0


@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_partition_merge_round_trip_and_order(spatial_dim):
    grid, window = (4, 6, 8)[-spatial_dim:], (2, 3, 4)[-spatial_dim:]
    x = torch.arange(2 * math.prod(grid) * 3, dtype=torch.float32).reshape(2, *grid, 3)
    windows = window_partition(x, window)
    assert windows.shape == (2 * math.prod(g // w for g, w in zip(grid, window, strict=True)), math.prod(window), 3)
    assert torch.equal(windows[0].reshape(*window, 3), x[(0, *(slice(0, w) for w in window))])  # first window
    assert torch.equal(window_merge(windows, window, grid), x)


def test_mask_separates_wrapped_tokens_and_padding():
    """1D-like check on a (1, 6) grid, window (1, 4), shift (0, 2): padded to 8, rolled by -2."""
    mask = window_attention_mask((1, 6), (1, 4), (0, 2), torch.device("cpu"))  # (nW=2, 4, 4)
    # window 1 holds rolled positions 4..7 = originals 6, 7 (padding) and 0, 1 (wrapped around)
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[1], expected)  # padded keys 6, 7 masked; 0, 1 never see the far end
    assert mask[0].all()  # originals 2..5: one region, all real
    assert window_attention_mask((4, 8), (4, 4), (0, 0), torch.device("cpu")) is None  # tiles, no shift: no mask


def test_relative_index_inside_window_and_clipped_for_global():
    index = relative_position_index((2, 3), (2, 3))  # table 3 x 5
    assert index[0, 0] == (0 + 1) * 5 + (0 + 2) and index[5, 0] == (1 + 1) * 5 + (2 + 2)  # offsets (0,0), (1,2)
    clipped = relative_position_index((6,), (2,))  # global attention over 6 tokens with a window-2 table
    assert clipped[5, 0] == 2 and clipped[0, 5] == 0 and clipped[3, 3] == 1  # +-5 clipped to +-1


def _reference_full_attention(layer, x, grid):
    """Plain softmax attention over all tokens, the relative bias looked up by explicit per-pair offsets."""
    b, t, c = x.shape
    h, d = layer.num_heads, layer.head_dim
    q, k, v = layer.qkv(x).reshape(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
    coords = list(itertools.product(*(range(g) for g in grid)))
    if layer.position == "rope":
        angles = rope_angles(tuple(grid), layer.window_size, d)
        q, k = apply_rope(q, angles.cos(), angles.sin()), apply_rope(k, angles.cos(), angles.sin())
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, T, T)
    if layer.position == "relative":
        bias = torch.empty(h, t, t)
        for i, ci in enumerate(coords):
            for j, cj in enumerate(coords):
                flat = 0
                for a, w in enumerate(layer.window_size):
                    flat = flat * (2 * w - 1) + (ci[a] - cj[a] + w - 1)
                bias[:, i, j] = layer.relative_bias[flat]
        scores = scores + bias
    out = scores.softmax(-1) @ v  # (B, h, T, d)
    return layer.proj(out.transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("grid", [(5, 7), (3, 4, 5)])
def test_window_covering_grid_equals_full_attention(randomize, grid, position):
    window = (8,) * len(grid)
    layer = randomize(WindowAttention(16, 2, window, shifted=True, position=position))  # shift must switch off
    x = torch.randn(2, math.prod(grid), 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, grid), _reference_full_attention(layer, x, grid))


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("grid", [(6, 6), (3, 5, 7)])
def test_padded_keys_are_masked(randomize, grid, position):
    """Every (possibly partial) window equals attention run on that window's tokens alone: padding is invisible."""
    window = (4, 4) if len(grid) == 2 else (2, 3, 4)
    layer = randomize(WindowAttention(16, 2, window, position=position))
    x = torch.randn(1, *grid, 16, generator=torch.Generator().manual_seed(4))
    out = layer(x.reshape(1, -1, 16), grid).reshape(1, *grid, 16)
    for start in itertools.product(*(range(0, g, w) for g, w in zip(grid, window, strict=True))):
        box = (slice(None), *(slice(s, s + w) for s, w in zip(start, window, strict=True)))
        part = x[box]
        alone = layer(part.reshape(1, -1, 16), tuple(part.shape[1:-1])).reshape(part.shape)
        torch.testing.assert_close(out[box], alone)


def test_rope_scores_depend_only_on_offsets():
    angles = rope_angles((4, 4, 4), (4, 4, 4), 12)  # (64, 6)
    q, k = torch.randn(12), torch.randn(12)
    rq, rk = (
        apply_rope(q.expand(64, 12), angles.cos(), angles.sin()),
        apply_rope(k.expand(64, 12), angles.cos(), angles.sin()),
    )
    scores = (rq @ rk.T).reshape(4, 4, 4, 4, 4, 4)
    torch.testing.assert_close(scores[0, 0, 0, 1, 2, 3], scores[2, 1, 0, 3, 3, 3])  # same offset (1, 2, 3)
    assert not torch.isclose(scores[0, 0, 0, 1, 2, 3], scores[0, 0, 0, 3, 2, 1])


def test_rope_gives_sdpa_an_additive_mask_on_the_cpu_and_a_boolean_one_elsewhere(tiny, monkeypatch):
    """CPU: 0 / -inf in the query's dtype, built once per layout and call (SDPA's CPU kernel would convert a boolean
    mask with two ``where`` in every layer); elsewhere the boolean mask that CUDA's fused kernels take as it is."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy)
    tiny(3, position="rope", window_size=(2, 3, 4), depth=4)(
        torch.randn(1, 1, 6, 10, 14), torch.tensor([1.0]), conditioned=torch.randn(1, 1, 6, 10, 14)
    )
    masks = [m for m in seen if m is not None]
    assert len(masks) == 4 and all(m.dtype == torch.float32 for m in masks)  # the grid needs padding: every layer
    assert all(bool(((m == 0) | (m == float("-inf"))).all()) for m in masks)
    assert masks[0] is masks[2] and masks[1] is masks[3] and masks[0] is not masks[1]  # shared per layout
    allowed = window_attention_mask((3, 5, 7), (2, 3, 4), (1, 1, 2), torch.device("cpu"))
    additive = attention_module.sdpa_mask(allowed, torch.float32)
    assert torch.equal(additive[:, 0] == 0, allowed)
    assert attention_module.sdpa_mask(allowed.to("meta"), torch.bfloat16).dtype == torch.bool  # off the CPU


@pytest.mark.parametrize("position", POSITIONS)
def test_one_mask_table_per_call_changes_no_value(randomize, position):
    """Layers sharing a call's mask table give exactly what each layer building its own masks gives."""
    layer = randomize(WindowAttention(16, 2, (2, 3, 4), shifted=True, position=position))
    x, grid = torch.randn(2, 3 * 5 * 7, 16), (3, 5, 7)
    table = {}
    assert torch.equal(layer(x, grid, table), layer(x, grid)) and table  # the table was used
    assert torch.equal(layer(x, grid, table), layer(x, grid))  # and reused
    with pytest.raises(ValueError, match=r"a mask table serves one network call's token grid \(3, 5, 7\), not"):
        layer(torch.randn(2, 3 * 5 * 8, 16), (3, 5, 8), table)  # same window count, other layout: refused


@pytest.mark.parametrize("position", POSITIONS)
def test_under_autocast_windows_move_tokens_in_its_dtype_with_the_same_values_and_gradients(
    randomize, monkeypatch, position
):
    """The window shuffles (pad, roll, partition) get the tokens already in autocast's dtype, half the bytes of
    float32 (on an H200 the float32 rolls were 3.5% of a WiDiT-B/4 step); outputs and gradients are those of casting
    at the qkv projection, bit for bit."""
    layer = randomize(WindowAttention(16, 2, (2, 3, 4), shifted=True, position=position))
    grid = (3, 5, 7)  # shifted and padded
    x = torch.randn(2, math.prod(grid), 16, generator=torch.Generator().manual_seed(5))

    def run():
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(inputs, grid)
        out.float().square().sum().backward()
        grads = [inputs.grad] + [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad(set_to_none=True)
        return out, grads

    rolled = []
    roll = attention_module.roll_tokens
    monkeypatch.setattr(attention_module, "roll_tokens", lambda t, *a: rolled.append(t.dtype) or roll(t, *a))
    out, grads = run()
    assert rolled and set(rolled) == {torch.bfloat16}
    monkeypatch.setattr(attention_module, "_autocast_input", lambda t: t)  # cast where qkv casts: float32 rolls
    rolled.clear()
    reference, reference_grads = run()
    assert torch.float32 in rolled
    assert out.dtype == reference.dtype and torch.equal(out, reference)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads, strict=True))
    with torch.no_grad():  # without autocast nothing changes: float32 throughout
        assert layer(x, grid).dtype == torch.float32


@pytest.mark.parametrize("position", POSITIONS)
def test_sdpa_masks_have_the_layout_cuda_fused_kernels_take(tiny, monkeypatch, position):
    """Regression (first GPU run): the relative bias reached SDPA as a permuted 3-D (heads, N, N) tensor, which CUDA's
    flash/efficient/cudnn kernels refuse, so WiDiT-B/4 ran on the math kernel. Every mask must be 4-D with a unit last
    stride, its batch dimension 1 (broadcast) or one per (sample, window)."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append((q.shape[0], attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy)
    x = torch.randn(2, 1, 8, 12, 16)  # windows tile the token grid: the unshifted blocks need no padding mask
    tiny(3, position=position, window_size=(2, 3, 4))(x, torch.tensor([1.0, 2.0]), conditioned=x)
    masks = [(batch, mask) for batch, mask in seen if mask is not None]
    assert masks, "the shifted blocks must hand SDPA a mask"
    for batch, mask in masks:
        assert mask.dim() == 4 and mask.stride(-1) == 1 and mask.shape[0] in (1, batch), (mask.shape, mask.stride())


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_equivariant_to_rolls_by_whole_windows(tiny, randomize, spatial_dim, position):
    """One unshifted block on a grid the windows tile: rolling by a window commutes with the network, exactly.

    An absolute position embedding would break this; so would rolling by less than a window (checked).
    """
    model = randomize(tiny(spatial_dim, depth=1, position=position, use_conditioning=False))
    x = torch.randn(1, 1, *(16,) * spatial_dim, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([10.0])
    dims = tuple(range(2, 2 + spatial_dim))
    for voxels, equal in ((8, True), (2, False)):  # 8 voxels = one window of 4 patches of 2
        rolled = model(torch.roll(x, (voxels,) * spatial_dim, dims), t)
        expected = torch.roll(model(x, t), (voxels,) * spatial_dim, dims)
        assert torch.allclose(rolled, expected, atol=1e-5) is equal


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_translation_by_whole_windows_with_shifted_blocks(tiny, randomize, spatial_dim, position):
    """Crop a big input one window in: away from the crop's border the shifted network gives the same values.

    Tokens [2, 6) of the crop see the same windows in both runs (same content, same relative offsets); tokens
    [0, 2) lose context the big input had, so they differ, which shows the comparison is not vacuous.
    """
    model = randomize(tiny(spatial_dim, position=position, use_conditioning=False))
    big = torch.randn(1, 1, *(24,) * spatial_dim, generator=torch.Generator().manual_seed(6))
    crop = big[(0, slice(None), *(slice(8, 24),) * spatial_dim)][None]  # one window (4 tokens = 8 voxels) in
    t = torch.tensor([10.0])
    out_big, out_crop = model(big, t), model(crop, t)
    interior = (slice(None), slice(None), *(slice(4, 12),) * spatial_dim)
    torch.testing.assert_close(out_crop[interior], out_big[(slice(None), slice(None), *(slice(12, 20),) * spatial_dim)])
    border = (slice(None), slice(None), *(slice(0, 4),) * spatial_dim)
    assert not torch.allclose(out_crop[border], out_big[(slice(None), slice(None), *(slice(8, 12),) * spatial_dim)])


@pytest.mark.parametrize("position", POSITIONS)
def test_window_model_covering_grid_equals_global_model(tiny, randomize, position):
    window = randomize(tiny(3, window_size=8, position=position))
    full = tiny(3, window_size=8, position=position, attention="global")
    full.load_state_dict(window.state_dict())
    x, image = torch.randn(2, 1, 6, 10, 14), torch.randn(2, 1, 6, 10, 14)
    t = torch.tensor([3.0, 700.0])
    torch.testing.assert_close(window(x, t, conditioned=image), full(x, t, conditioned=image))


@pytest.mark.parametrize("position", POSITIONS)
def test_factorized_attention_isolates_borders_and_starts_in_plane(tiny, randomize, position):
    model = tiny(3, attention="factorized", window_size=(2, 3, 4), position=position, use_conditioning=False)
    layer = model.blocks[0].attn
    x = torch.randn(1, 3 * 5 * 7, 32)
    torch.testing.assert_close(layer(x, (3, 5, 7)), layer.in_plane(x, (3, 5, 7)))  # through-plane starts at zero
    randomize(model)
    low = _corner_gradient(model, (6, 10, 14), (0, 0, 0))
    assert low[:4, :6, :8].sum() > 0 and low[4:, 6:, 8:].sum() == 0
    assert low[2:4, :2, :2].sum() > 0  # the through-plane branch now reaches the next slices


@pytest.mark.parametrize("position", POSITIONS)
def test_factorized_attention_reaches_other_rows_of_other_planes(position):
    """The through-plane branch reads the in-plane result, so a token hears a token in another plane and another row
    (two hops); a branch reading the raw input would reach only the tokens straight above and below it."""
    layer = attention_module.make_attention("factorized", 16, 2, (2, 2, 2), False, position)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the through-plane output projection starts at zero: draw every weight
        for p in layer.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    x = torch.randn(1, 8, 16, generator=generator, requires_grad=True)  # grid (2, 2, 2): token (d, h, w) = 4d + 2h + w
    layer(x, (2, 2, 2))[0, 6].sum().backward()  # output token (1, 1, 0)
    assert float(x.grad[0, 0].abs().sum()) > 1e-4  # input token (0, 0, 0): another plane and another row


@pytest.mark.parametrize("position", POSITIONS)
def test_batch_samples_stay_separate_with_masks(tiny, randomize, position):
    """Shifted, padded windows on a batch of 3 give each sample what it gets alone (mask broadcast per window)."""
    model = randomize(tiny(3, window_size=(2, 3, 4), position=position))
    x, image = torch.randn(3, 1, 6, 10, 14), torch.randn(3, 1, 6, 10, 14)
    t = torch.tensor([1.0, 400.0, 900.0])
    batched = model(x, t, conditioned=image)
    for i in range(3):
        alone = model(x[i : i + 1], t[i : i + 1], conditioned=image[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-4)  # outputs are O(10) here


def test_window_attention_names_a_bad_head_count_or_window():
    """From a review: dim 10 over 3 heads failed in a reshape at the first call, an int window with 'not iterable'."""
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        WindowAttention(10, 3, (2, 2))
    with pytest.raises(ValueError, match="window_size must be a tuple with one size per spatial axis, got 4"):
        WindowAttention(16, 2, 4)
