"""The seed's API contract: shapes, channels, conditioning, timestep=None, init-zero output, config, errors."""

import json

import pytest
import torch

from medwidit.nets import PRESETS, WiDiT, WiDiTBlock, WiDiTInputError, load_widit, save_widit, widit_preset

SHAPES = {2: (12, 20), 3: (6, 10, 14)}
WINDOWS = {2: (3, 4), 3: (2, 3, 4)}


def _inputs(spatial_dim, channels=1, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *SHAPES[spatial_dim], generator=g)


@pytest.mark.parametrize("spatial_dim", [2, 3])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shape_and_exact_zero_at_init(tiny, spatial_dim, learn_sigma):
    model = tiny(spatial_dim, in_channels=2, learn_sigma=learn_sigma, window_size=WINDOWS[spatial_dim])
    out = model(_inputs(spatial_dim, 2), torch.tensor([0.0, 999.0]), conditioned=_inputs(spatial_dim, 2, seed=1))
    assert out.shape == (2, 4 if learn_sigma else 2, *SHAPES[spatial_dim])
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero head: exactly zero, not merely small


@pytest.mark.parametrize(
    "options",
    [
        {"final": "conv"},
        {"mlp": "swiglu", "norm": "rmsnorm"},
        {"position": "rope"},
        {"attention": "factorized"},
        {"embed": "conv"},
    ],
)
def test_options_also_start_at_exact_zero(tiny, options):
    out = tiny(3, window_size=WINDOWS[3], **options)(_inputs(3), torch.tensor([5.0, 6.0]), conditioned=_inputs(3))
    assert torch.equal(out, torch.zeros_like(out))


def test_cond_channels_out_channels_and_per_axis_patch(tiny):
    model = tiny(3, patch_size=(1, 2, 2), in_channels=3, cond_channels=4, out_channels=3)
    out = model(torch.randn(1, 3, 5, 8, 12), torch.tensor([1.0]), conditioned=torch.randn(1, 4, 5, 8, 12))
    assert out.shape == (1, 3, 5, 8, 12)
    assert model.x_embedder.proj.out_channels == model.c_embedder.proj.out_channels == 16  # hidden split in two


@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_adaln_zero_block_is_identity_at_init(spatial_dim):
    block = WiDiTBlock(32, 2, (4,) * spatial_dim, shifted=True)
    x, c = torch.randn(2, 64 if spatial_dim == 3 else 48, 32), torch.randn(2, 32)
    grid = (4, 4, 4) if spatial_dim == 3 else (6, 8)
    assert torch.equal(block(x, c, grid), x)


def test_timestep_none_is_plain_layernorm_residual(tiny, randomize):
    """No timestep: no modulation anywhere (adaLN weights are irrelevant) and the head reads hidden, not 2x."""
    model = randomize(tiny(2, window_size=WINDOWS[2]))
    x, image = _inputs(2), _inputs(2, seed=1)
    before = model(x, None, conditioned=image)
    with torch.no_grad():
        for module in [*model.blocks, model.final_layer]:
            module.adaLN_modulation[-1].weight.mul_(-7.0).add_(1.0)
    torch.testing.assert_close(model(x, None, conditioned=image), before, rtol=0, atol=0)
    assert model.final_layer.linear.in_features == 32
    assert not torch.allclose(model(x, torch.tensor([3.0, 3.0]), conditioned=image), before)
    block = model.blocks[0]  # and a block without timestep is x + attn(norm x), then + mlp(norm x)
    tokens = torch.randn(2, 60, 32)
    h = tokens + block.attn(block.norm1(tokens), (6, 10))
    torch.testing.assert_close(block(tokens, None, (6, 10)), h + block.mlp(block.norm2(h)))


def test_scalar_and_integer_timesteps(tiny, randomize):
    model = randomize(tiny(2, use_conditioning=False))
    x = torch.randn(2, 1, 8, 8)
    ref = model(x, torch.tensor([7.0, 7.0]))
    torch.testing.assert_close(model(x, torch.tensor(7)), ref)
    torch.testing.assert_close(model(x, torch.tensor([7, 7])), ref)


def test_unknown_keyword_is_type_error():
    with pytest.raises(TypeError, match="windowsize"):
        WiDiT(spatial_dim=2, windowsize=4)
    with pytest.raises(TypeError):
        WiDiT(2)  # keyword-only


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dim": 4}, "spatial_dim must be 2 or 3, got 4"),
        ({"spatial_dim": 3, "hidden_size": 33, "num_heads": 3}, "hidden_size must be positive and even, got 33"),
        ({"spatial_dim": 3, "hidden_size": 32, "num_heads": 3}, "divisible by num_heads, got 32 and 3"),
        ({"spatial_dim": 3, "patch_size": (2, 2)}, r"patch_size must be an int or have 3 entries"),
        ({"spatial_dim": 2, "window_size": (4, 0)}, r"window_size must be positive on every axis, got \(4, 0\)"),
        ({"spatial_dim": 2, "depth": 0}, "depth must be positive, got 0"),
        ({"spatial_dim": 2, "mlp": "swigl"}, "mlp: By 'swigl', did you mean 'swiglu'"),
        ({"spatial_dim": 2, "norm": "batchnorm"}, "norm: Unsupported option 'batchnorm'"),
        ({"spatial_dim": 2, "position": "absolute"}, "position: Unsupported option 'absolute'"),
        ({"spatial_dim": 2, "attention": "windows"}, "did you mean 'window'"),
        ({"spatial_dim": 2, "final": "deconv"}, "final: By 'deconv', did you mean 'conv'"),
        ({"spatial_dim": 2, "embed": "convs"}, "embed: By 'convs', did you mean 'conv'"),
        ({"spatial_dim": 3, "embed": "conv", "patch_size": (2, 3, 2)}, r"power-of-two patch sizes, got .*\(2, 3, 2\)"),
        ({"spatial_dim": 2, "use_conditioning": False, "cond_channels": 2}, "cond_channels=2 needs use_conditioning"),
        ({"spatial_dim": 2, "out_channels": 0}, "out_channels must be positive, got 0"),
        ({"spatial_dim": 2, "cond_channels": 0}, "cond_channels must be positive, got 0"),
        ({"spatial_dim": 2, "num_heads": 0}, "num_heads must be positive, got 0"),
        ({"spatial_dim": 2, "depth": 2.0}, "depth must be an int, got 2.0"),  # was a TypeError from range()
        ({"spatial_dim": 2, "num_heads": 2.0}, "num_heads must be an int, got 2.0"),
        ({"spatial_dim": 2, "in_channels": 2.5}, "in_channels must be an int, got 2.5"),  # named groups
        ({"spatial_dim": 2, "hidden_size": "32"}, "hidden_size must be an int, got '32'"),
        ({"spatial_dim": 2, "patch_size": 2.5}, "patch_size must be an int or have 2 entries"),
        ({"spatial_dim": 2, "patch_size": True}, "patch_size must be an int or have 2 entries"),  # was patch 1
        ({"spatial_dim": 2, "window_size": (4, 4.0)}, r"window_size must hold ints, got \(4, 4.0\)"),
        (
            {"spatial_dim": 3, "hidden_size": 30, "num_heads": 2, "position": "rope"},
            "even head dimension of at least 6",
        ),
    ],
)
def test_constructor_errors_name_argument_and_value(kwargs, match):
    options = {"hidden_size": 32, "depth": 1, "num_heads": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        WiDiT(**options)


@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_forward_errors(tiny, spatial_dim):
    model = tiny(spatial_dim, window_size=WINDOWS[spatial_dim])
    x, t = _inputs(spatial_dim), torch.tensor([1.0, 2.0])
    with pytest.raises(WiDiTInputError, match="conditioned is required") as info:
        model(x, t)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AssertionError)
    with pytest.raises(WiDiTInputError, match=r"conditioned must have shape \(2, 1,"):
        model(x, t, conditioned=x[:1])
    odd = torch.randn(2, 1, *SHAPES[spatial_dim][:-1], 7)
    with pytest.raises(ValueError, match=f"spatial size 7 on axis {spatial_dim - 1}, which is not divisible by patch"):
        model(odd, t, conditioned=odd)
    with pytest.raises(ValueError, match="input_tensor must be"):
        model(torch.randn(2, 3, *SHAPES[spatial_dim]), t, conditioned=x)
    with pytest.raises(ValueError, match=r"timestep must be a scalar or have shape \(2,\)"):
        model(x, torch.ones(3), conditioned=x)
    plain = tiny(spatial_dim, use_conditioning=False)
    with pytest.raises(AssertionError, match="use_conditioning=False"):  # the seed's promise, kept
        plain(x, t, conditioned=x)


def test_config_is_json_and_rebuilds(tiny):
    model = tiny(
        3, patch_size=(1, 2, 2), window_size=(2, 3, 4), mlp="swiglu", position="rope", final="conv", embed="conv"
    )
    config = json.loads(json.dumps(model.config))
    assert config["patch_size"] == [1, 2, 2] and config["out_channels"] == 2 and config["cond_channels"] == 1
    assert config["embed"] == "conv"
    rebuilt = WiDiT(**config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config


def test_save_load_round_trip(tiny, randomize, tmp_path):
    model = randomize(tiny(3, window_size=WINDOWS[3], norm="rmsnorm"))
    path = tmp_path / "widit.pt"
    save_widit(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["widit.pt"]  # atomic: no temporary left behind
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others like any file (mkstemp's are private)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "config", "version"} and raw["config"] == model.config
    loaded = load_widit(path)
    x, image, t = _inputs(3), _inputs(3, seed=1), torch.tensor([4.0, 900.0])
    assert torch.equal(loaded(x, t, conditioned=image), model(x, t, conditioned=image))
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a WiDiT checkpoint"):
        load_widit(tmp_path / "other.pt")


def test_presets_follow_sit_table():
    assert len(PRESETS) == 12
    assert PRESETS["WiDiT-S/2"] == {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 2}
    assert PRESETS["WiDiT-XL/8"] == {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 8}
    model = widit_preset("WiDiT-S/4", spatial_dim=3, depth=1, window_size=2)
    assert model.config["hidden_size"] == 384 and model.config["patch_size"] == [4, 4, 4] and len(model.blocks) == 1
    with pytest.raises(ValueError, match="(?s)name: .*'WiDiT-s/2' is not a valid value"):
        widit_preset("WiDiT-s/2", spatial_dim=3)


def test_gradient_checkpointing_gives_identical_outputs_and_grads(tiny, randomize):
    plain = randomize(tiny(3, window_size=WINDOWS[3]))
    ckpt = tiny(3, window_size=WINDOWS[3], grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, image, t = _inputs(3), _inputs(3, seed=1), torch.tensor([4.0, 900.0])
    outs = []
    for model in (plain, ckpt):
        out = model(x, t, conditioned=image)
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("position", ["relative", "rope"])
def test_bf16_autocast_runs_and_stays_close(tiny, randomize, position):
    model = randomize(tiny(3, window_size=WINDOWS[3], position=position), std=0.05)
    x, image, t = _inputs(3), _inputs(3, seed=1), torch.tensor([4.0, 900.0])
    reference = model(x, t, conditioned=image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, conditioned=image)
        out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16 and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.parametrize(("head", "position"), [("patch", "relative"), ("pixel", "rope")])
def test_a_model_cast_to_bf16_takes_a_timestep_and_a_spacing(tiny, randomize, head, position):
    """model.to(torch.bfloat16) (diffusers' torch_dtype too): the float32 sinusoid and log-spacing met bf16 weights
    ("mat1 and mat2 must have the same dtype"); they are cast to the weights' dtype, near the float32 model's output."""
    model = tiny(3, window_size=WINDOWS[3], head=head, position=position, spacing_conditioning=True)
    model = randomize(model, std=0.05)
    x, image, t, spacing = _inputs(3), _inputs(3, seed=1), torch.tensor([4.0, 900.0]), torch.ones(2, 6)
    reference = model(x, t, conditioned=image, spacing=spacing)
    model = model.to(torch.bfloat16)
    out = model(x.bfloat16(), t, conditioned=image.bfloat16(), spacing=spacing)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_timestep_sinusoid_is_float32_under_autocast(tiny):
    embedder = tiny(2).t_embedder
    t = torch.tensor([999.0, 998.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        freq = embedder.timestep_embedding(t, 256)
    assert freq.dtype == torch.float32
    assert not torch.equal(freq[0], freq[1])  # adjacent steps stay distinct (bf16 would round 999 and 998 apart badly)


def test_numpy_integers_become_plain_ints_so_the_config_saves_and_loads(tmp_path):
    """Sizes read from numpy (np.int64) were stored as they came: save_widit wrote them, and load_widit's
    weights_only torch.load refused the file (UnpicklingError)."""
    import numpy as np

    model = WiDiT(spatial_dim=np.int64(2), patch_size=np.array([2, 2]), hidden_size=np.int64(32), depth=np.int64(1),
                  num_heads=np.int64(2), window_size=[np.int64(4), np.int64(4)], in_channels=np.int64(2))  # fmt: skip
    sizes = ("spatial_dim", "hidden_size", "depth", "num_heads", "in_channels", "out_channels")
    assert all(type(model.config[k]) is int for k in sizes), model.config
    assert all(type(v) is int for v in model.config["patch_size"] + model.config["window_size"])
    json.dumps(model.config)
    save_widit(model, tmp_path / "w.pt")
    assert load_widit(tmp_path / "w.pt").config == model.config


def test_load_widit_on_a_segmenter_checkpoint_says_which_loader(tmp_path):
    from medwidit.diffusion import DiffusionSegmenter, save_segmenter

    net = WiDiT(spatial_dim=2, patch_size=2, hidden_size=32, depth=1, num_heads=2, window_size=4, in_channels=2,
                cond_channels=1, learn_sigma=False)  # fmt: skip
    save_segmenter(DiffusionSegmenter(net, num_classes=2), tmp_path / "seg.pt")
    with pytest.raises(ValueError, match="segmenter's checkpoint, not a bare WiDiT's: load it with .*load_segmenter"):
        load_widit(tmp_path / "seg.pt")  # was: TypeError unexpected keyword argument 'network'


@pytest.mark.parametrize("position", ["relative", "rope"])
def test_position_tables_are_rebuilt_when_the_model_moves(position):
    """From a review: the tables are unsaved buffers, so load_state_dict never restores them. Built on the meta device
    and moved with to_empty (accelerate's empty init), a relative index held garbage (IndexError) and rope tables
    NaN; a round trip through bf16 left the rope tables rounded (outputs off by 5e-4)."""
    options = dict(spatial_dim=2, in_channels=1, hidden_size=16, depth=2, num_heads=2, window_size=4)
    torch.manual_seed(0)
    reference = WiDiT(**options, position=position)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([3.0])
    expected = reference(x, t, conditioned=x)
    with torch.device("meta"):
        empty = WiDiT(**options, position=position)
    empty = empty.to_empty(device="cpu")
    empty.load_state_dict(reference.state_dict(), strict=True)
    assert torch.equal(empty(x, t, conditioned=x), expected)
    trip = WiDiT(**options, position=position)
    trip.to(torch.bfloat16).float().load_state_dict(reference.state_dict())
    assert torch.equal(trip(x, t, conditioned=x), expected)


def test_load_widit_puts_the_model_where_map_location_says(tmp_path):
    """From a review: the model was built on the CPU and load_state_dict copied the weights into it, so a model
    loaded with map_location='cuda' stayed on the CPU ('meta' stands in for another device here)."""
    model = WiDiT(spatial_dim=2, hidden_size=16, depth=1, num_heads=2, window_size=4)
    save_widit(model, tmp_path / "w.pt")
    loaded = load_widit(tmp_path / "w.pt", map_location="meta")  # was: 'Cannot copy out of meta tensor'
    assert {p.device.type for p in loaded.parameters()} == {"meta"}
    loaded = load_widit(tmp_path / "w.pt", map_location=torch.device("cpu"))
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_an_input_of_another_dtype_than_the_weights_is_named():
    """From a review: a float64 image (nibabel's get_fdata) failed inside the first convolution, naming neither
    argument; under autocast the inputs stay free."""
    model = WiDiT(spatial_dim=2, hidden_size=16, depth=1, num_heads=2, window_size=4)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([3.0])
    with pytest.raises(
        WiDiTInputError, match=r"conditioned is torch.float64 but the network's weights are torch.float32"
    ):
        model(x, t, conditioned=x.double())
    with pytest.raises(WiDiTInputError, match=r"input_tensor is torch.int64 but"):
        model(x.long(), t, conditioned=x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.bfloat16(), t, conditioned=x).shape == (1, 2, 8, 8)


def test_numpy_scalars_are_accepted_as_sizes_and_ratios():
    """From a review: np.float32(4.0) as mlp_ratio was 'must be positive, got 4.0', and numpy ints as a roi or
    patch size 'must be positive integers'."""
    import numpy as np

    from medwidit.nets.contract import check_roi_multiple_of_patch

    model = WiDiT(spatial_dim=2, hidden_size=16, depth=1, num_heads=2, window_size=4, mlp_ratio=np.float32(4.0))
    assert model.blocks[0].mlp.fc1.out_features == 64
    check_roi_multiple_of_patch(np.array([64, 64, 32]), (2, 2, 2))
    check_roi_multiple_of_patch((64, 64, 32), np.int64(2))
    with pytest.raises(ValueError, match="divisible by the network's patch_size"):
        check_roi_multiple_of_patch(np.array([64, 63, 32]), (2, 2, 2))


def test_a_model_made_under_inference_mode_still_moves_outside_it():
    """From a review of the rebuilt tables: written in place, a buffer made under torch.inference_mode refused the
    write outside it, so .to() or .float() of such a model failed."""
    for position in ("relative", "rope"):
        with torch.inference_mode():
            model = WiDiT(spatial_dim=2, hidden_size=16, depth=1, num_heads=2, window_size=4, position=position)
        model.to("cpu").float()
        x = torch.randn(1, 1, 8, 8)
        with torch.inference_mode():
            assert model(x, torch.tensor([3.0]), conditioned=x).shape == (1, 2, 8, 8)
