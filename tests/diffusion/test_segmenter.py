"""DiffusionSegmenter: reproducible sampling, ensembles, guidance, the model_fn seam, options, checkpoints."""

import pytest
import torch
from diffusion_standins import TinyConvNet

from medwidit.diffusion import DiffusionSegmenter, load_segmenter, save_segmenter


def _segmenter(spatial_dim=2, objective="sample", num_classes=3, learn_sigma=False, **kwargs):
    torch.manual_seed(0)
    out = num_classes * (2 if learn_sigma else 1)
    net = TinyConvNet(spatial_dim, num_classes, out_channels=out)
    return DiffusionSegmenter(net, num_classes=num_classes, objective=objective, learn_sigma=learn_sigma, **kwargs)


def _image(spatial_dim, batch=2, size=8):
    return torch.randn((batch, 1) + (size,) * spatial_dim, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize(
    "objective, options", [("sample", {"eta": 0.0}), ("sample", {"eta": 1.0}), ("flow", {}), ("epsilon", {})]
)
def test_same_generator_same_samples_different_generator_different(spatial_dim, objective, options):
    segmenter, image = _segmenter(spatial_dim, objective), _image(spatial_dim)

    def draw(seed):
        return segmenter.sample(image, steps=3, num_samples=2, generator=torch.Generator().manual_seed(seed), **options)

    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape == (2, 2, 3) + (8,) * spatial_dim
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])  # ensemble members get different noise


@pytest.mark.parametrize("sampler, options", [("ddim", {"eta": 0.0}), ("ddim", {"eta": 0.7}), ("ddpm", {})])
def test_batched_ensemble_equals_sequential_sampling(sampler, options):
    segmenter, image = (
        _segmenter(learn_sigma=sampler == "ddpm", scheduler="ddpm" if sampler == "ddpm" else None),
        _image(2),
    )

    def draw(chunk_size):
        generator = torch.Generator().manual_seed(3)
        return segmenter.sample(image, steps=4, num_samples=5, generator=generator, chunk_size=chunk_size, **options)

    batched, sequential, mixed = draw(None), draw(1), draw(2)
    assert torch.allclose(batched, sequential, atol=1e-5)
    assert torch.allclose(batched, mixed, atol=1e-5)


class CountingModelFn:
    """A model_fn whose output is known: ``a`` where the condition is the image, ``b`` where it is zeros."""

    def __init__(self, num_classes, a=0.4, b=-0.2):
        self.num_classes, self.a, self.b, self.batches = num_classes, a, b, []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        unconditional = cond.flatten(1).abs().sum(1) == 0
        value = torch.where(unconditional, torch.tensor(self.b), torch.tensor(self.a))
        return value.reshape((-1,) + (1,) * (x.ndim - 1)).expand(-1, self.num_classes, *x.shape[2:]).clone()


def test_guidance_scale_one_is_unguided_and_skips_the_unconditional_pass():
    segmenter, image = _segmenter(cond_drop_prob=0.1), _image(2) + 3  # nonzero image
    plain_fn, guided_fn = CountingModelFn(3), CountingModelFn(3)
    plain = segmenter.sample(image, steps=3, generator=torch.Generator().manual_seed(0), model_fn=plain_fn)
    one = segmenter.sample(
        image, steps=3, generator=torch.Generator().manual_seed(0), guidance_scale=1.0, model_fn=guided_fn
    )
    assert torch.equal(plain, one)
    assert plain_fn.batches == guided_fn.batches == [2, 2, 2]  # no doubled batch
    real_plain = segmenter.sample(image, steps=3, generator=torch.Generator().manual_seed(0))
    real_one = segmenter.sample(image, steps=3, generator=torch.Generator().manual_seed(0), guidance_scale=1.0)
    assert torch.equal(real_plain, real_one)


@pytest.mark.parametrize("scale", [0.0, 1.5, 3.0])
def test_guidance_mixes_every_prediction_channel(scale):
    segmenter, image = _segmenter(cond_drop_prob=0.1, clip_sample=False), _image(2) + 3
    model_fn = CountingModelFn(3)
    # one DDIM step from t = 999 returns the x0 prediction itself: uncond + w (cond - uncond) on all K channels
    x0 = segmenter.sample(image, steps=1, guidance_scale=scale, model_fn=model_fn)
    expected = model_fn.b + scale * (model_fn.a - model_fn.b)
    assert torch.allclose(x0, torch.full_like(x0, expected), atol=1e-6)
    assert model_fn.batches == [4]  # conditional and unconditional in one doubled batch


class VarianceModelFn:
    """A learned-sigma model_fn: prediction channels ``a`` / ``b`` (image / zeros) plus ``slope`` x_t (so the noise
    drawn at each step reaches the result), variance channels ``v_cond`` where the condition is the image and
    ``v_uncond`` where it is zeros."""

    def __init__(self, num_classes, v_uncond, slope=0.1):
        self.num_classes, self.v_uncond, self.slope = num_classes, v_uncond, slope
        self.a, self.b, self.v_cond = 0.4, -0.2, 0.3

    def __call__(self, x, t, cond):
        k = self.num_classes
        unconditional = (cond.flatten(1).abs().sum(1) == 0).reshape((-1,) + (1,) * (x.ndim - 1))
        shape = (x.shape[0], k, *x.shape[2:])
        prediction = torch.where(unconditional, self.b, self.a).expand(shape) + self.slope * x[:, :k]
        variance = torch.where(unconditional, self.v_uncond, self.v_cond).expand(shape)
        return torch.cat([prediction, variance], 1).clone()


def test_guidance_keeps_the_conditional_variance_channels():
    """Guidance mixes the prediction, not a learned variance's interpolation coefficient v: at w = 3 a mix of v = 0.3
    and -1 would be 2.9, outside learned_range's [-1, 1], and DDPM would draw noise beyond beta. The conditional
    pass's variance is used (DiT, GLIDE), so what the unconditional pass says about it changes nothing."""
    segmenter = _segmenter(learn_sigma=True, scheduler="ddpm", cond_drop_prob=0.1, clip_sample=False)
    image = _image(2) + 3

    def draw(v_uncond):
        fn = VarianceModelFn(3, v_uncond)
        return segmenter.sample(
            image, steps=3, guidance_scale=3.0, model_fn=fn, generator=torch.Generator().manual_seed(0)
        )

    first = draw(-1.0)
    assert torch.equal(first, draw(0.3)) and torch.equal(first, draw(1.0))
    one_step = segmenter.sample(image, steps=1, guidance_scale=3.0, model_fn=VarianceModelFn(3, -1.0, slope=0.0))
    assert torch.allclose(one_step, torch.full_like(one_step, -0.2 + 3.0 * (0.4 + 0.2)), atol=1e-6)  # mixed


def test_model_fn_replaces_the_network():
    segmenter, image = _segmenter(), _image(2)
    direct = segmenter.sample(image, steps=3, generator=torch.Generator().manual_seed(0))
    calls = []

    def model_fn(x, t, cond):
        calls.append(t)
        return segmenter.net(x, t, conditioned=cond)

    seam = segmenter.sample(image, steps=3, generator=torch.Generator().manual_seed(0), model_fn=model_fn)
    assert torch.equal(direct, seam) and len(calls) == 3


def test_loss_parts_and_backward(spatial_dim):
    segmenter = _segmenter(spatial_dim, learn_sigma=True, scheduler="ddpm")
    image, label = _image(spatial_dim), torch.randint(0, 3, (2, 1) + (8,) * spatial_dim)
    parts = segmenter.loss(image, label)
    assert set(parts) == {"loss", "diffusion", "aux", "vlb"} and all(v.ndim == 0 for v in parts.values())
    parts["loss"].backward()
    assert all(p.grad is not None for p in segmenter.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"objective": "epsilonn"}, "epsilon"),
        ({"objective": "flow", "scheduler": "ddim"}, "rflow"),
        ({"objective": "sample", "scheduler": "rflow"}, "ddim"),
        ({"objective": "flow", "learn_sigma": True}, "learn_sigma"),
        ({"objective": "flow", "schedule_args": {"beta_end": 0.01}}, "schedule_args"),
        # a scheduler option here overrode objective / clip_sample for sampling only (garbage samples, a config
        # that did not say so); any key but the schedule's own is refused, naming it
        ({"schedule_args": {"prediction_type": "epsilon"}}, r"'prediction_type' \(set by objective\) is not an option"),
        ({"schedule_args": {"clip_sample": False}}, r"'clip_sample' \(set by clip_sample\)"),
        (
            {"schedule": "cosine", "schedule_args": {"beta_end": 0.02}},
            r"'beta_end' is not an option of schedule 'cosine'; it takes s\.",
        ),
        ({"schedule_args": {"beta_end": float("nan")}}, r"schedule_args\['beta_end'\] must be a finite number"),
        ({"schedule_args": [("beta_end", 0.02)]}, "schedule_args must be a dict of the options of schedule"),
        ({"schedule": "cosinus"}, "cosine"),
        ({"variance_type": "learned_range"}, "learn_sigma"),
        ({"cond_drop_prob": 1.0}, "cond_drop_prob"),
        ({"num_classes": 1}, "num_classes"),
        # each option is named in the error (MONAI's lookup named only the bad value; a string weight was a TypeError)
        ({"objective": "x0"}, "^objective: Unsupported option 'x0'"),
        ({"schedule": "foo"}, "^schedule: Unsupported option 'foo'"),
        ({"scheduler": "ddim2"}, "^scheduler: "),
        ({"objective": "sample", "variance_type": "fixed"}, "^variance_type: "),
        ({"aux_weight": "0.5"}, r"^aux_weight must be in \[0.0, inf\), got '0.5'"),
        ({"vlb_weight": float("nan")}, "^vlb_weight must be in"),
        ({"cond_drop_prob": "0.1"}, r"^cond_drop_prob must be in \[0.0, 1.0\), got '0.1'"),
        # betas outside (0, 1) trained, then sampling failed in a ZeroDivisionError or a math domain error (or, with
        # ddpm, gave NaN samples that read as a confident background)
        ({"schedule": "linear_beta", "schedule_args": {"beta_start": 0.0}}, r"betas from 0 to .*must be in \(0, 1\)"),
        ({"schedule": "linear_beta", "schedule_args": {"beta_start": -0.01}}, r"schedule_args .*betas from -0\.01"),
        ({"schedule": "linear_beta", "schedule_args": {"beta_end": 1.5}, "scheduler": "ddpm"}, r"to 1\.5; every beta"),
        ({"schedule_args": {"beta_end": 1.0}}, r"schedule 'scaled_linear_beta' .* to 1; every beta must be in"),
    ],
)
def test_bad_options_raise(kwargs, match):
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        DiffusionSegmenter(TinyConvNet(2, 3), **kwargs)


def test_bad_sampling_arguments_raise():
    segmenter, image = _segmenter(), _image(2)
    for kwargs, match in [
        ({"sampler": "flow_euler"}, "does not fit"),
        ({"sampler": "ddpm", "eta": 0.5}, "eta"),
        ({"num_samples": 0}, "num_samples"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"sampler": "dddim"}, "ddim"),
        ({"eta": 1.5}, r"^eta must be in \[0.0, 1.0\], got 1.5"),  # sigma^2 > 1 - abar_s: over-noised, silently
    ]:
        with pytest.raises(ValueError, match=match):
            segmenter.sample(image, **kwargs)


def test_an_image_of_the_wrong_rank_or_channels_is_named_before_the_network_runs():
    """A WiDiT's sampling names the image's shape (an image without its batch axis failed in zip() inside the patch
    embedding, one with two channels in a torch convolution: ``encode_condition`` checked nothing)."""
    from medwidit.nets import WiDiT, WiDiTInputError

    net = WiDiT(spatial_dim=3, patch_size=2, in_channels=2, hidden_size=32, depth=1, num_heads=2, window_size=4,
                learn_sigma=False, cond_channels=1)  # fmt: skip
    segmenter = DiffusionSegmenter(net, num_classes=2)
    with pytest.raises(ValueError, match=r"image must have shape \(B, C_img, \*spatial\) with the network's 3 spatial"):
        segmenter.sample(torch.randn(1, 8, 8, 8), steps=1)
    with pytest.raises(
        WiDiTInputError, match=r"conditioned must be \(B, 1, \*spatial\) with 3 spatial axes, got \(1, 2,"
    ):
        segmenter.sample(torch.randn(1, 2, 8, 8, 8), steps=1)
    with pytest.raises(WiDiTInputError, match=r"conditioned must be .* got \(1, 2, 8, 8, 8\)"):
        net.encode_condition(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="conditioned has spatial size 7 on axis 2, which is not divisible"):
        net.encode_condition(torch.randn(1, 1, 8, 8, 7))


def test_channel_mismatch_names_learn_sigma():
    net = TinyConvNet(2, 3, out_channels=6)  # a learn_sigma net
    segmenter = DiffusionSegmenter(net, num_classes=3)
    with pytest.raises(ValueError, match="learn_sigma=False"):
        segmenter.sample(_image(2), steps=1)
    with pytest.raises(ValueError, match="learn_sigma=False"):
        segmenter.loss(_image(2), torch.zeros(2, 1, 8, 8, dtype=torch.long))


def test_config_rebuilds_and_checkpoint_round_trips(tmp_path):
    segmenter = _segmenter(objective="v_prediction", cond_drop_prob=0.2, schedule="cosine")
    assert DiffusionSegmenter(segmenter.net, **segmenter.config).config == segmenter.config
    path = save_segmenter(segmenter, tmp_path / "model.pt", extra_config={"preprocessing": {"spacing": None}})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others like any file (mkstemp's are private)
    loaded, config = load_segmenter(path)  # the registry rebuilds TinyConvNet from the name the checkpoint holds
    assert config["network"] == "test_tiny_conv" and type(loaded.net) is TinyConvNet
    assert config["segmenter"] == segmenter.config and config["preprocessing"] == {"spacing": None}
    image = _image(2)
    expected = segmenter.sample(image, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.sample(image, steps=2, generator=torch.Generator().manual_seed(0)), expected)
    with pytest.raises(ValueError, match="must not override"):
        save_segmenter(segmenter, tmp_path / "x.pt", extra_config={"net": {}})


def test_checkpoint_with_widit_loads_without_a_builder(tmp_path):
    from medwidit.nets import WiDiT

    net = WiDiT(
        spatial_dim=2,
        in_channels=2,
        cond_channels=1,
        hidden_size=32,
        depth=1,
        num_heads=2,
        window_size=4,
        learn_sigma=False,
    )
    segmenter = DiffusionSegmenter(net, num_classes=2)
    torch.save({"not": "a checkpoint"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_segmenter(tmp_path / "bad.pt")
    loaded, _ = load_segmenter(save_segmenter(segmenter, tmp_path / "widit.pt"))
    assert type(loaded.net) is WiDiT and loaded.net.config == net.config
    for a, b in zip(loaded.state_dict().values(), segmenter.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_shipped_checkpoint_names_its_scheduler_and_loads_the_object_as_noise_scheduler():
    from pathlib import Path

    from monai.networks.schedulers import Scheduler

    path = Path(__file__).resolve().parents[2] / "bundles" / "brain_widit_segmentation" / "models" / "model.pt"
    loaded, config = load_segmenter(path)
    assert isinstance(config["segmenter"]["scheduler"], str)  # the name, as every checkpoint stores it
    assert loaded.config["scheduler"] == config["segmenter"]["scheduler"]
    assert isinstance(loaded.noise_scheduler, Scheduler)  # the object is no longer also called `scheduler`
    assert not hasattr(loaded, "scheduler")


def _tiny_widit_segmenter(**kwargs):
    from medwidit.nets import WiDiT

    torch.manual_seed(0)
    net = WiDiT(spatial_dim=2, patch_size=2, hidden_size=32, depth=1, num_heads=2, window_size=4, in_channels=3,
                cond_channels=1, learn_sigma=False, **kwargs)  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():  # away from the zero init, so that the image matters
            p.add_(torch.randn(p.shape) * 0.2)
    return DiffusionSegmenter(net, num_classes=3).eval()


def test_an_image_of_any_real_dtype_samples_and_trains_as_float32():
    """float64 (nibabel's get_fdata) and integer images reached WiDiT's float32 convolutions as they were: a
    RuntimeError about bias types that named neither the image nor the dtype."""
    segmenter, image = _tiny_widit_segmenter(), _image(2, batch=1)

    def draw(img):
        return segmenter.sample(img, steps=2, num_samples=2, generator=torch.Generator().manual_seed(0))

    reference = draw(image)
    assert torch.equal(draw(image.double()), reference)
    assert torch.equal(draw((image * 100).round().short()), draw((image * 100).round()))
    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    assert torch.isfinite(segmenter.loss(image.double(), label)["loss"])
    with pytest.raises(ValueError, match="image must be real-valued, got dtype torch.complex64"):
        segmenter.sample(image.to(torch.complex64), steps=2)


@pytest.mark.parametrize(
    "objective, sampler, options",
    [("sample", "ddim", {"eta": 0.7}), ("sample", "ddpm", {}), ("flow", "euler_maruyama", {}),
     ("sample", "ddim", {"shared_steps": 1})],
)  # fmt: skip
def test_a_case_gets_the_same_samples_whatever_else_is_in_its_batch(objective, sampler, options):
    """One generator per member drew one block for the whole batch: a case's noise depended on its place and on the
    batch size (up to 4.4 apart with the same seed). Now each (member, case) draws from the member's seed."""
    learn_sigma = sampler == "ddpm"
    segmenter = _segmenter(objective=objective, learn_sigma=learn_sigma, scheduler="ddpm" if learn_sigma else None)
    images = _image(2, batch=3)

    def draw(batch):
        generator = torch.Generator().manual_seed(7)
        return segmenter.sample(batch, steps=3, num_samples=2, sampler=sampler, generator=generator, **options)

    together = draw(images)
    for case in range(3):
        alone = draw(images[case : case + 1])
        torch.testing.assert_close(together[:, case : case + 1], alone, atol=1e-5, rtol=0)


def test_spacing_needs_one_row_per_case_or_one_for_all():
    """Rows were tiled as the batch is, so 2 rows for 4 images gave case 2 case 0's spacing, silently."""
    segmenter, images = _segmenter(), _image(2, batch=4)
    for call in (
        lambda s: segmenter.sample(images, steps=2, spacing=s),
        lambda s: segmenter.loss(images, torch.zeros(4, 1, 8, 8, dtype=torch.long), spacing=s),
    ):
        with pytest.raises(ValueError, match=r"spacing must have shape \(B, 2N\): one row per image .*\(2, 4\)"):
            call(torch.ones(2, 4))


def test_generator_that_is_not_a_generator_is_named():
    segmenter, image = _segmenter(), _image(2)
    for bad in (0, [torch.Generator()]):
        with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got"):
            segmenter.sample(image, steps=2, generator=bad)


def test_nan_samples_are_an_error_not_a_confident_background():
    """A network that overflows (float16) gives NaN: as probabilities every class clamped to 0 reads as the uniform
    branch, so the labels were background with members in perfect agreement; sampling now says what happened."""
    segmenter, image = _segmenter(), _image(2)

    def overflowing(x, t, conditioned=None):
        return torch.full_like(x, float("nan"))

    with pytest.raises(
        RuntimeError, match=r"NaN or infinite values: .*diverged .*float16: use precision 'bfloat16' or 'float32'"
    ):
        segmenter.sample(image, steps=2, num_samples=2, model_fn=overflowing)
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        segmenter.sample(image, steps=2, model_fn=lambda x, t, conditioned=None: torch.full_like(x, float("inf")))


def test_a_non_finite_image_is_named_before_sampling():
    """From a review: one NaN voxel in the image ran the whole sampling and then blamed the network's weights."""
    segmenter, image = _segmenter(), _image(2)
    image[0, 0, 3, 4] = float("nan")
    image[1, 0, 0, 0] = float("inf")
    calls = []

    def network(x, t, conditioned=None):
        calls.append(t)
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match=r"image holds 2 NaN or infinite values"):
        segmenter.sample(image, steps=2, model_fn=network)
    assert calls == []


@pytest.mark.parametrize(
    ("objective", "options"),
    [("sample", {}), ("epsilon", {"sampler": "ddpm", "scheduler": "ddpm"}), ("v_prediction", {"sampler": "dpmpp_2m"})],
)
def test_the_schedule_in_float32_where_the_device_has_no_float64(monkeypatch, objective, options):
    """MPS has no float64 (a float64 tensor there is a TypeError, at the first sampling step): the schedule's
    arithmetic runs in float32 on it. Here on the CPU, forced to float32: sampling and the losses run and stay
    within float32 rounding of the float64 schedule's."""
    import medwidit.diffusion.objectives as objectives
    import medwidit.diffusion.samplers as samplers

    sampler = {"sampler": options["sampler"]} if "sampler" in options else {}
    build = {k: v for k, v in options.items() if k != "sampler"}
    learn_sigma = build.get("scheduler") == "ddpm"
    segmenter, image = _segmenter(objective=objective, learn_sigma=learn_sigma, **build), _image(2)
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1))

    def run():
        drawn = segmenter.sample(image, steps=3, generator=torch.Generator().manual_seed(0), **sampler)
        loss = segmenter.loss(image, label, generator=torch.Generator().manual_seed(0))["loss"]
        return drawn, loss

    exact = run()
    for module in (objectives, samplers):
        monkeypatch.setattr(module, "wide_float", lambda device: torch.float32)
    single = run()
    for got, want in zip(single, exact, strict=True):
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_guidance_on_a_model_without_an_unconditional_branch_is_warned_once(caplog):
    """From an audit: the warning was printed at every check, six times for one case of the shipped bundle (two
    sets, the localization pass and the full one)."""
    segmenter, image = _segmenter(), _image(2)
    for _ in range(3):
        segmenter.check_sampling(image, steps=2, num_samples=1, sampler=None, eta=0.0, guidance_scale=2.75)
    lines = [r for r in caplog.records if "guidance_scale=2.75" in r.getMessage()]
    assert len(lines) == 1 and "cond_drop_prob=0" in lines[0].getMessage()
