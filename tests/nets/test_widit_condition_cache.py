"""Encode once (DESIGN decision 11): WiDiT's ``encode_condition`` + ``forward(..., condition_cache=)`` give exactly the
output computed without it, for every conditioning and head; ``ConditionCache`` encodes once per image and key."""

import pytest
import torch

from medwidit.nets import WiDiT, WiDiTInputError
from medwidit.nets.contract import ConditionCache

SHAPES = {2: (8, 12), 3: (8, 4, 12)}


def _inputs(spatial_dim, channels=2, batch=2, seed=0):
    return torch.randn(batch, channels, *SHAPES[spatial_dim], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spatial_dim", [2, 3])
@pytest.mark.parametrize("head", ["patch", "pixel", "pixel+image"])  # +image: image blocks in the pixel stem
@pytest.mark.parametrize("conditioning", ["embed", "concat"])
@pytest.mark.parametrize("embed", ["patch", "conv"])
def test_cached_forward_is_exactly_the_plain_forward(tiny, randomize, spatial_dim, head, conditioning, embed):
    head, _, image_blocks = head.partition("+")
    options = {"pixel_image_depth": 2} if image_blocks else {}
    model = randomize(
        tiny(spatial_dim, in_channels=2, cond_channels=1, head=head, conditioning=conditioning, embed=embed, **options)
    )
    x, image, t = _inputs(spatial_dim), _inputs(spatial_dim, channels=1, seed=1), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        cache = model.encode_condition(image)
        expected = {"tokens"} if conditioning == "embed" else set()
        assert set(cache) == expected | ({"pixel"} if head == "pixel" else set())
        assert torch.equal(model(x, t, conditioned=image, condition_cache=cache), model(x, t, conditioned=image))


def test_the_cache_is_what_the_forward_reads(tiny, randomize):
    """The forward uses the cached features, not the image, for what the cache holds: a changed cache changes it."""
    model = randomize(tiny(2, in_channels=2, cond_channels=1, head="pixel"))
    x, image, t = _inputs(2), _inputs(2, channels=1, seed=1), torch.tensor([3.0, 4.0])
    with torch.no_grad():
        cache = model.encode_condition(image)
        plain = model(x, t, conditioned=image, condition_cache=cache)
        for key in cache:
            other = {**cache, key: cache[key] + 1}
            assert not torch.equal(model(x, t, conditioned=image, condition_cache=other), plain), key


def test_cache_misuse_is_a_clear_error(tiny):
    model = tiny(2, in_channels=2, cond_channels=1)
    x, image = _inputs(2), _inputs(2, channels=1, seed=1)
    cache = model.encode_condition(image)
    with pytest.raises(WiDiTInputError, match="condition_cache must be encode_condition"):
        model(x, None, conditioned=image, condition_cache={"tokens": cache["tokens"][:1]})
    with pytest.raises(WiDiTInputError, match="condition_cache must be encode_condition"):
        model(x, None, conditioned=image, condition_cache={})
    with pytest.raises(WiDiTInputError, match="conditioned is required"):
        model(x, None, condition_cache=cache)
    with pytest.raises(WiDiTInputError, match="use_conditioning=True"):
        tiny(2, in_channels=2, use_conditioning=False).encode_condition(image)


class _Counting(torch.nn.Module):
    """A WiDiT that counts its encodes."""

    def __init__(self, net: WiDiT) -> None:
        super().__init__()
        self.net, self.encodes = net, 0

    def encode_condition(self, image):
        self.encodes += 1
        return self.net.encode_condition(image)

    def forward(self, x, t, *, conditioned=None, condition_cache=None):
        return self.net(x, t, conditioned=conditioned, condition_cache=condition_cache)


def test_condition_cache_encodes_once_per_image_and_key(tiny, randomize):
    net = _Counting(randomize(tiny(2, in_channels=2, cond_channels=1)))
    cache = ConditionCache(net)
    image = _inputs(2, channels=1, batch=1, seed=1)
    cond = torch.cat([image, image, image + 1])  # rows 0 and 1 hold the same image
    x, t = _inputs(2, batch=3), torch.full((3,), 5.0)
    with torch.no_grad():
        assert cache.bind(cond) == (0, 0, 2)
        outputs = [cache.call("all", x, t, cond) for _ in range(3)]
        assert net.encodes == 1 and all(torch.equal(o, net(x, t, conditioned=cond)) for o in outputs)
        assert cache.bind(cond) == (0, 0, 2) and "all" in cache.entries  # same tensor: the cache is kept
        cond.add_(0)  # modified in place: its version counter moves, the cache starts again
        cache.bind(cond)
        assert not cache.entries
        cache.call("all", x, t, cond)
        assert net.encodes == 2
        cache.bind(cond.clone())  # another tensor, even an equal one, starts again
        assert not cache.entries


def test_condition_cache_memory_budget_and_plain_callables(tiny):
    net = _Counting(tiny(2, in_channels=2, cond_channels=1))
    x, t, cond = _inputs(2), torch.full((2,), 5.0), _inputs(2, channels=1, seed=1)
    cache = ConditionCache(net, max_bytes=0)  # nothing fits: every call encodes, results unchanged
    cache.bind(cond)
    with torch.no_grad():
        assert torch.equal(cache.call("k", x, t, cond), cache.call("k", x, t, cond))
    assert net.encodes == 2 and not cache.entries
    plain = ConditionCache(lambda x, t, conditioned=None: x * conditioned)  # no encode_condition: called as it is
    assert not plain.enabled and torch.equal(plain.call("k", x, t, cond), x * cond)
    with pytest.raises(ValueError, match="max_bytes"):
        ConditionCache(net, max_bytes=-1)


def _count_mask_builds(monkeypatch) -> list:
    """Patch window attention's mask builder to record each build."""
    from medwidit.nets import attention

    builds, build = [], attention.window_attention_mask

    def counting(*args, **kwargs):
        builds.append(args[:3])
        return build(*args, **kwargs)

    monkeypatch.setattr(attention, "window_attention_mask", counting)
    return builds


@pytest.mark.parametrize("position", ["relative", "rope"])
def test_kept_attention_masks_change_no_value_and_are_built_once(tiny, randomize, monkeypatch, position):
    """A table kept across calls (every denoising step) gives exactly the per-call masks' output and builds each
    window layout's mask once: (6, 10, 14) at patch 2 needs padding, so both layouts of 4 blocks are masked."""
    builds = _count_mask_builds(monkeypatch)
    model = randomize(tiny(3, cond_channels=1, position=position, window_size=(2, 3, 4), depth=4))
    x, image = torch.randn(2, 1, 6, 10, 14), torch.randn(2, 1, 6, 10, 14)
    table = {}
    with torch.no_grad():
        plain = [model(x, torch.tensor([t, t]), conditioned=image) for t in (900.0, 500.0, 100.0)]
        assert len(builds) == 3 * 2  # without a table: each of the 2 layouts in every call
        builds.clear()
        kept = [model(x, torch.tensor([t, t]), conditioned=image, attention_masks=table) for t in (900.0, 500.0, 100.0)]
    assert len(builds) == 2 and all(torch.equal(a, b) for a, b in zip(plain, kept, strict=True))
    with pytest.raises(WiDiTInputError, match="attention_masks holds the masks of batch size 2, not 1"):
        model(x[:1], torch.tensor([1.0]), conditioned=image[:1], attention_masks=table)
    with pytest.raises(ValueError, match="a mask table serves one network call's token grid"):
        model(
            torch.randn(2, 1, 6, 10, 16),
            torch.tensor([1.0, 1.0]),
            conditioned=torch.randn(2, 1, 6, 10, 16),
            attention_masks=table,
        )


def test_a_trace_never_keeps_masks_in_a_table(tiny, randomize):
    """Regression guard for issue 11's defect: masks made while tracing are fake or traced tensors and must not
    reach a table that outlives the trace."""
    model = randomize(tiny(2, cond_channels=1))
    x, image, t = _inputs(2, channels=1), _inputs(2, channels=1, seed=1), torch.tensor([3.0, 4.0])
    table = {}

    class KeepsTable(torch.nn.Module):  # a caller holding its table across calls, as ConditionCache does
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x, t, image):
            return self.model(x, t, conditioned=image, attention_masks=table)

    torch.export.export(KeepsTable(), (x, t, image))
    torch.jit.trace(KeepsTable(), (x, t, image), check_trace=False)
    assert table == {}
    eager = model(x, t, conditioned=image, attention_masks=table)
    assert table and torch.equal(eager, model(x, t, conditioned=image))


def test_condition_cache_keeps_one_mask_table_per_input_shape(tiny, randomize, monkeypatch):
    """Every call of one shape reuses the first call's masks; a new image starts again; nets whose forward takes no
    attention_masks are called without it."""
    builds = _count_mask_builds(monkeypatch)
    net = randomize(tiny(2, in_channels=2, cond_channels=1, window_size=(2, 4)))
    cache = ConditionCache(net)
    x, t, cond = _inputs(2), torch.full((2,), 5.0), _inputs(2, channels=1, seed=1)
    with torch.no_grad():
        cache.bind(cond)
        outputs = [cache.call("all", x, t, cond) for _ in range(3)]
        first = len(builds)
        assert first == 2 and all(torch.equal(o, net(x, t, conditioned=cond)) for o in outputs)
        assert list(cache.mask_tables) == [tuple(x.shape)]
        cache.call("crop", x[..., :4], t, cond[..., :4])  # another shape: its own table
        assert len(cache.mask_tables) == 2
        cache.bind(cond.clone())
        assert not cache.mask_tables
    assert not ConditionCache(_Counting(net)).keeps_masks  # its forward takes no attention_masks
