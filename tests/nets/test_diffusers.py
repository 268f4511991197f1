"""DiffuserWiDiT: seed 002's DiffuserSTDiT call pattern, diffusers' output and config conventions, a diffusers scheduler
loop, and the same wrapper without diffusers installed."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import medwidit.nets.diffusers as wrapper_module
from medwidit.nets import DiffuserWiDiT, WiDiTInputError

OPTIONS = {"spatial_dim": 3, "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2, "window_size": 4}


def _model(randomize, module=wrapper_module, **overrides):
    model = module.DiffuserWiDiT(**{**OPTIONS, "in_channels": 3, "cond_channels": 1, "learn_sigma": False, **overrides})
    return randomize(model)


def _inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 4, 8, 8, generator=g), torch.randn(batch, 1, 4, 8, 8, generator=g)


def _check_call_pattern(module, randomize) -> None:
    """Seed 002: ``forward(x, timestep, encoder_hidden_states=None, cond_image=None, mask=None, return_dict=True)``
    -> output with ``.sample`` (B, out_channels, *S); ``return_dict=False`` -> ``(sample,)``; WiDiT's numbers."""
    model = _model(randomize, module)
    x, image = _inputs()
    t = torch.tensor([10, 500])
    expected = model.model(x, t, conditioned=image)
    out = model(x, t, encoder_hidden_states=None, cond_image=image, mask=None, return_dict=True)
    assert isinstance(out, module.DiffuserWiDiTOutput) and out.sample.shape == (2, 3, 4, 8, 8)
    torch.testing.assert_close(out.sample, expected, rtol=0, atol=0)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(out.to_tuple()[0], expected, rtol=0, atol=0)
    plain = model(x, t, encoder_hidden_states=image, return_dict=False)  # the slot diffusers pipelines fill
    assert type(plain) is tuple and len(plain) == 1
    torch.testing.assert_close(plain[0], expected, rtol=0, atol=0)
    rebuilt = module.DiffuserWiDiT.from_config({**model.config, "_class_name": "DiffuserWiDiT"})  # as config.json has
    assert {k: v for k, v in rebuilt.config.items() if k[0] != "_"} == dict(model.config) == model.model.config
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x, t, cond_image=image).sample, expected, rtol=0, atol=0)


def test_seed_002_call_pattern_output_and_config(randomize):
    _check_call_pattern(wrapper_module, randomize)


def test_same_signature_without_diffusers(monkeypatch, randomize):
    """With diffusers unimportable the module falls back to nn.Module and a dataclass output, same behaviour."""
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    name = "medwidit.nets._diffusers_without_diffusers"
    spec = importlib.util.spec_from_file_location(name, Path(wrapper_module.__file__))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    assert module.HAS_DIFFUSERS is False and type(module.DiffuserWiDiT).__mro__[0] is type
    assert module.DiffuserWiDiT.__mro__[1] is torch.nn.Module
    _check_call_pattern(module, randomize)


def test_spacing_and_timestep_reach_widit(randomize):
    model = _model(randomize, spacing_conditioning=True)
    x, image = _inputs()
    spacing = torch.tensor([[1.0, 1, 1, 1, 1, 4], [1.0, 1, 1, 2, 1, 1]])
    torch.testing.assert_close(
        model(x, 7, encoder_hidden_states=image, spacing=spacing).sample,
        model.model(x, torch.tensor([7, 7]), conditioned=image, spacing=spacing),
        rtol=0,
        atol=0,
    )
    with pytest.raises(WiDiTInputError, match="spacing"):
        model(x, 7, encoder_hidden_states=image)


def test_misuse_raises(randomize):
    model = _model(randomize)
    x, image = _inputs()
    with pytest.raises(WiDiTInputError, match="encoder_hidden_states or cond_image, not both"):
        model(x, 1, encoder_hidden_states=image, cond_image=image)
    with pytest.raises(WiDiTInputError, match="no tokens to mask"):
        model(x, 1, cond_image=image, mask=torch.ones(2, 4))
    with pytest.raises(WiDiTInputError, match="conditioned is required"):
        model(x, 1)
    with pytest.raises(TypeError, match="bogus"):
        DiffuserWiDiT(**OPTIONS, bogus=1)
    with pytest.raises(ValueError, match="conditioning"):
        DiffuserWiDiT(**OPTIONS, conditioning="sideways")


#################################################################################
#                         with diffusers installed                             #
#################################################################################


def test_is_a_diffusers_model_and_saves_pretrained(tmp_path, randomize):
    diffusers = pytest.importorskip("diffusers")
    model = _model(randomize, conditioning="concat")
    assert isinstance(model, diffusers.ModelMixin) and isinstance(model, diffusers.ConfigMixin)
    assert isinstance(model(*_inputs()[:1], 3, cond_image=_inputs()[1]), diffusers.utils.BaseOutput)
    model.save_pretrained(tmp_path)
    loaded = DiffuserWiDiT.from_pretrained(tmp_path, low_cpu_mem_usage=False)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731 (_name_or_path)
    assert public(loaded.config) == public(model.config) == model.model.config
    assert loaded.config["conditioning"] == "concat"
    x, image = _inputs()
    torch.testing.assert_close(loaded(x, 3, cond_image=image).sample, model(x, 3, cond_image=image).sample)


def test_diffusers_ddim_scheduler_loop(randomize):
    """DDIM (eta 0, x0 prediction, final alpha 1) returns the last x0 prediction exactly; every step consumes the
    wrapper's ``.sample`` as it would the bare WiDiT's output."""
    diffusers = pytest.importorskip("diffusers")
    model = _model(randomize)
    x_T, image = _inputs(seed=3)
    results = []
    for call in (
        lambda x, t: model(x, t, encoder_hidden_states=image).sample,
        lambda x, t: model.model(x, t, conditioned=image),
    ):
        scheduler = diffusers.DDIMScheduler(prediction_type="sample", clip_sample=False, set_alpha_to_one=True)
        scheduler.set_timesteps(4)
        x, predictions = x_T.clone(), []
        with torch.no_grad():
            for t in scheduler.timesteps:
                predictions.append(call(x, t))
                x = scheduler.step(predictions[-1], t, x).prev_sample
        assert len(predictions) == 4 and int(scheduler.timesteps[-1]) == 0
        torch.testing.assert_close(x, predictions[-1], rtol=0, atol=1e-6)
        results.append(x)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    assert not torch.allclose(results[0], x_T)
