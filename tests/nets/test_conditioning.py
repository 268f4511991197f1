"""WiDiT's conditioning options: the image embedded apart ("embed") or concatenated to the input ("concat"), and the
acquisition's spacing added to adaLN's input (``spacing_conditioning``)."""

import pytest
import torch

from medwidit.nets import WiDiTInputError, load_widit, save_widit

SHAPES = {2: (8, 12), 3: (4, 8, 8)}


def _pair(spatial_dim, batch=2, in_channels=3, cond_channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[spatial_dim]
    return torch.randn(batch, in_channels, *shape, generator=g), torch.randn(batch, cond_channels, *shape, generator=g)


def _spacing(spatial_dim, *rows):
    return torch.tensor([[1.0] * spatial_dim + list(row) for row in rows])


#################################################################################
#                       conditioning = "embed" | "concat"                       #
#################################################################################


@pytest.mark.parametrize("spatial_dim", [2, 3])
@pytest.mark.parametrize("embed", ["patch", "conv"])
def test_concat_is_the_image_as_extra_input_channels(tiny, randomize, spatial_dim, embed):
    """concat == an unconditioned WiDiT of in + cond input channels, same weights, fed torch.cat([x, image], dim=1)."""
    options = {"in_channels": 3, "out_channels": 3, "learn_sigma": False, "embed": embed}
    concat = randomize(tiny(spatial_dim, cond_channels=2, conditioning="concat", **options))
    assert concat.c_embedder is None and concat.config["conditioning"] == "concat"
    plain = tiny(spatial_dim, use_conditioning=False, **{**options, "in_channels": 5})
    plain.load_state_dict(concat.state_dict())  # same parameter names and shapes: one embedding of 5 channels
    x, image = _pair(spatial_dim)
    t = torch.tensor([3.0, 400.0])
    torch.testing.assert_close(concat(x, t, conditioned=image), plain(torch.cat([x, image], dim=1), t), rtol=0, atol=0)


@pytest.mark.parametrize("conditioning", ["embed", "concat"])
def test_both_start_at_exact_zero_and_depend_on_the_image(tiny, randomize, conditioning):
    model = tiny(3, in_channels=3, cond_channels=2, conditioning=conditioning)
    x, image = _pair(3)
    out = model(x, torch.tensor([1.0, 2.0]), conditioned=image)
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero head whatever the input path
    randomize(model)
    assert not torch.allclose(
        model(x, torch.tensor([1.0, 2.0]), conditioned=image), model(x, torch.tensor([1.0, 2.0]), conditioned=image + 1)
    )


def test_embed_is_the_default_and_splits_the_hidden_size(tiny):
    model = tiny(3, in_channels=3, cond_channels=2)
    assert model.config["conditioning"] == "embed"
    assert model.x_embedder.proj.in_channels == 3 and model.c_embedder.proj.in_channels == 2
    assert model.x_embedder.proj.out_channels == model.c_embedder.proj.out_channels == 16  # hidden 32 split in two
    concat = tiny(3, in_channels=3, cond_channels=2, conditioning="concat")
    assert concat.x_embedder.proj.in_channels == 5 and concat.x_embedder.proj.out_channels == 32


def test_checkpoint_without_the_new_keys_still_loads(tmp_path, tiny, randomize):
    """Checkpoints written before these options (no "conditioning"/"spacing_conditioning") rebuild the same model."""
    model = randomize(tiny(2, in_channels=3, cond_channels=2))
    old_config = {k: v for k, v in model.config.items() if k not in ("conditioning", "spacing_conditioning")}
    torch.save({"state_dict": model.state_dict(), "config": old_config}, tmp_path / "old.pt")
    loaded = load_widit(tmp_path / "old.pt")
    x, image = _pair(2)
    torch.testing.assert_close(
        loaded(x, torch.tensor([5.0, 6.0]), conditioned=image), model(x, torch.tensor([5.0, 6.0]), conditioned=image)
    )


def test_bad_conditioning_options_raise(tiny):
    with pytest.raises(ValueError, match=r"conditioning.*'concatenate'.*(embed|concat)"):
        tiny(2, conditioning="concatenate")
    with pytest.raises(ValueError, match="conditioning='concat' needs use_conditioning=True"):
        tiny(2, conditioning="concat", use_conditioning=False)


def test_options_round_trip_through_a_checkpoint(tmp_path, tiny, randomize):
    model = randomize(tiny(3, in_channels=3, cond_channels=2, conditioning="concat", spacing_conditioning=True))
    save_widit(model, tmp_path / "m.pt")
    loaded = load_widit(tmp_path / "m.pt")
    assert loaded.config == model.config and loaded.config["spacing_conditioning"] is True
    x, image = _pair(3)
    spacing = _spacing(3, (1.0, 1.0, 4.0), (2.0, 1.0, 1.0))
    torch.testing.assert_close(
        loaded(x, torch.tensor([7.0, 8.0]), conditioned=image, spacing=spacing),
        model(x, torch.tensor([7.0, 8.0]), conditioned=image, spacing=spacing),
    )


#################################################################################
#                             spacing conditioning                              #
#################################################################################


@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_spacing_starts_as_a_model_without_it(tiny, randomize, spatial_dim):
    """The spacing MLP's last layer starts at zero: with every other weight shared, outputs equal the plain model's."""
    with_spacing = randomize(tiny(spatial_dim, in_channels=3, cond_channels=2, spacing_conditioning=True))
    with_spacing.s_embedder.init_weights()
    plain = tiny(spatial_dim, in_channels=3, cond_channels=2)
    extra = plain.load_state_dict(with_spacing.state_dict(), strict=False).unexpected_keys
    assert extra and all(key.startswith("s_embedder.") for key in extra)
    x, image = _pair(spatial_dim)
    spacing = _spacing(spatial_dim, (3.0,) * spatial_dim, (0.5,) * spatial_dim)
    torch.testing.assert_close(
        with_spacing(x, torch.tensor([9.0, 90.0]), conditioned=image, spacing=spacing),
        plain(x, torch.tensor([9.0, 90.0]), conditioned=image),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("timestep", [torch.tensor([9.0, 90.0]), None])
def test_spacing_modulates_each_sample_by_its_own_spacing(tiny, randomize, timestep):
    """Changing sample 1's spacing changes sample 1 only; with timestep=None adaLN is driven by spacing alone."""
    model = randomize(tiny(3, in_channels=3, cond_channels=2, spacing_conditioning=True))
    x, image = _pair(3)
    base = model(x, timestep, conditioned=image, spacing=_spacing(3, (1, 1, 1), (1, 1, 1)))
    moved = model(x, timestep, conditioned=image, spacing=_spacing(3, (1, 1, 1), (1, 1, 4)))
    torch.testing.assert_close(moved[0], base[0], rtol=0, atol=0)
    assert not torch.allclose(moved[1], base[1])


def test_spacing_embedder_reads_log_millimetres(tiny, randomize):
    model = randomize(tiny(2, spacing_conditioning=True))
    spacing = torch.tensor([[1.0, 2.0, 1.0, 8.0]])
    torch.testing.assert_close(model.s_embedder(spacing), model.s_embedder.mlp(spacing.log()))


def test_missing_extra_and_malformed_spacing_raise(tiny):
    x, image = _pair(2)
    t = torch.tensor([1.0, 2.0])
    model = tiny(2, in_channels=3, cond_channels=2, spacing_conditioning=True)
    with pytest.raises(WiDiTInputError, match=r"spacing \(2, 4\) is required"):
        model(x, t, conditioned=image)
    with pytest.raises(WiDiTInputError, match=r"spacing must have shape \(2, 4\)"):
        model(x, t, conditioned=image, spacing=torch.ones(2, 2))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        spacing = torch.ones(2, 4)
        spacing[1, 3] = bad
        with pytest.raises(WiDiTInputError, match="positive finite"):
            model(x, t, conditioned=image, spacing=spacing)
    plain = tiny(2, in_channels=3, cond_channels=2)
    with pytest.raises(WiDiTInputError, match="spacing_conditioning=False"):
        plain(x, t, conditioned=image, spacing=torch.ones(2, 4))
