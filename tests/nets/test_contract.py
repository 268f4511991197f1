"""The network contract and the registry: every backbone rebuilds from a checkpoint by its name, and the diffusion
and inference rooms see it only through DenoisingNetwork."""

import pytest
import torch
from torch import nn

from medwidit.diffusion import DiffusionSegmenter, load_segmenter, save_segmenter
from medwidit.nets import NETWORKS, DenoisingNetwork, DiffusionUNet, WiDiT, build_network, register_network

BACKBONES = {
    "widit": {
        "spatial_dim": 3,
        "in_channels": 2,
        "cond_channels": 1,
        "hidden_size": 32,
        "depth": 1,
        "num_heads": 2,
        "window_size": 4,
        "learn_sigma": False,
    },
    "diffusion_unet": {"spatial_dim": 3, "in_channels": 2, "channels": [8, 16], "norm_num_groups": 4},
}


def randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """``net`` with every weight drawn at random: both backbones output exactly zero at initialisation (zero output
    layers), where any twin equals any other and a comparison proves nothing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return net


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbones_satisfy_the_contract_and_rebuild_from_their_config(name):
    net = randomized(build_network(name, BACKBONES[name]))
    assert isinstance(net, DenoisingNetwork) and type(net) is NETWORKS[name]
    twin = build_network(name, net.config)
    assert twin.config == net.config
    x, image = torch.randn(1, 2, 16, 16, 16), torch.randn(1, 1, 16, 16, 16)
    t = torch.tensor([500.0])
    assert not torch.equal(net(x, t, conditioned=image), twin(x, t, conditioned=image))  # not loaded yet
    twin.load_state_dict(net.state_dict())
    assert torch.equal(net(x, t, conditioned=image), twin(x, t, conditioned=image))
    assert all(s % m == 0 for s, m in zip((16, 16, 16), net.size_multiple, strict=True))
    assert all(a % m == 0 for a, m in zip(net.alignment, net.size_multiple, strict=True))


def test_widit_alignment_is_patch_times_window():
    net = WiDiT(
        spatial_dim=3,
        in_channels=2,
        hidden_size=32,
        depth=1,
        num_heads=2,
        window_size=(4, 2, 4),
        patch_size=(2, 4, 1),
        learn_sigma=False,
    )
    assert net.size_multiple == (2, 4, 1) and net.alignment == (8, 8, 4)


def test_unet_checkpoint_rebuilds_by_name_and_samples_identically(tmp_path):
    segmenter = DiffusionSegmenter(randomized(DiffusionUNet(**BACKBONES["diffusion_unet"])), num_classes=2)
    path = save_segmenter(segmenter, tmp_path / "unet.pt")
    loaded, config = load_segmenter(path)
    assert config["network"] == "diffusion_unet" and type(loaded.net) is DiffusionUNet
    image = torch.randn(1, 1, 8, 8, 8)
    first = segmenter.sample(image, steps=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.sample(image, steps=2, generator=torch.Generator().manual_seed(3)), first)
    fresh = DiffusionSegmenter(DiffusionUNet(**BACKBONES["diffusion_unet"]), num_classes=2)  # its weights unread
    assert not torch.equal(fresh.sample(image, steps=2, generator=torch.Generator().manual_seed(3)), first)


def test_a_config_key_the_network_does_not_take_names_the_file_and_the_key(tmp_path):
    """A checkpoint or medwidit.json written by a newer version (or edited) raised a TypeError naming neither."""
    from medwidit.nets.widit import load_widit, save_widit

    with pytest.raises(ValueError, match=r"net config: 'new_option' is not an option of WiDiT; it takes spatial_dim"):
        build_network("widit", {**BACKBONES["widit"], "new_option": 1})
    segmenter = DiffusionSegmenter(WiDiT(**BACKBONES["widit"]), num_classes=2)
    path = save_segmenter(segmenter, tmp_path / "m.pt")
    checkpoint = torch.load(path, weights_only=True)
    for part, key in (("net", "new_option"), ("segmenter", "new_loss")):
        edited = {**checkpoint, "config": {**checkpoint["config"], part: {**checkpoint["config"][part], key: 1}}}
        torch.save(edited, tmp_path / "edited.pt")
        with pytest.raises(ValueError, match=rf"edited.pt: {part} config: '{key}' is not an option of \w+"):
            load_segmenter(tmp_path / "edited.pt")
    save_widit(WiDiT(**BACKBONES["widit"]), tmp_path / "w.pt")
    bare = torch.load(tmp_path / "w.pt", weights_only=True)
    torch.save({**bare, "config": {**bare["config"], "new_option": 1}}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w.pt: config: 'new_option' is not an option of WiDiT"):
        load_widit(tmp_path / "w.pt")


def test_checkpoint_without_a_network_name_is_a_widit(tmp_path):
    """Checkpoints written before names were stored (the 0.2.0 bundle's) still load."""
    segmenter = DiffusionSegmenter(WiDiT(**BACKBONES["widit"]), num_classes=2)
    path = save_segmenter(segmenter, tmp_path / "m.pt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["config"]["network"]
    torch.save(checkpoint, path)
    loaded, _ = load_segmenter(path)
    assert type(loaded.net) is WiDiT and loaded.net.config == segmenter.net.config


def test_unknown_names_and_unregistered_nets_fail_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="widit"):
        build_network("wdit", BACKBONES["widit"])  # the message suggests the nearest registered name
    segmenter = DiffusionSegmenter(WiDiT(**BACKBONES["widit"]), num_classes=2)
    path = save_segmenter(segmenter, tmp_path / "m.pt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["network"] = "no_such_net"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="m.pt.*no_such_net"):
        load_segmenter(path)

    class Plain(nn.Module):
        config = {}

        def forward(self, x, t, conditioned=None):
            return x

    with pytest.raises(ValueError, match="register_network"):
        save_segmenter(DiffusionSegmenter(Plain(), num_classes=2), tmp_path / "p.pt")
    with pytest.raises(TypeError, match="size_multiple"):
        register_network("plain")(Plain)
    with pytest.raises(ValueError, match="already registered"):
        register_network("widit")(DiffusionUNet)


def test_diffusion_unet_names_a_bad_argument_or_input():
    """From a review: out_channels 0 was accepted, spatial_dim 2.0 failed in size_multiple, and a wrong input rank,
    input channel count or timestep length failed deep in MONAI or torch (zip() argument 2 is shorter...)."""
    options = dict(spatial_dim=2, in_channels=2, channels=(8, 8), norm_num_groups=4)
    for bad, message in (
        ({"out_channels": 0}, "out_channels must be an int >= 1"),
        ({"spatial_dim": 2.0}, "spatial_dim must be an int in 2..3"),
    ):
        with pytest.raises(ValueError, match=message):
            DiffusionUNet(**{**options, **bad})
    net, t = DiffusionUNet(**options), torch.tensor([1.0, 2.0])
    image = torch.randn(2, 1, 8, 8)
    with pytest.raises(
        ValueError, match=r"input_tensor must be \(B, 2, \*spatial\) with 2 spatial axes, got \(2, 2, 8, 8, 8\)"
    ):
        net(torch.randn(2, 2, 8, 8, 8), t, conditioned=torch.randn(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"input_tensor must be \(B, 2, \*spatial\).*got \(2, 3, 8, 8\)"):
        net(torch.randn(2, 3, 8, 8), t, conditioned=image)
    with pytest.raises(ValueError, match=r"timestep must be a scalar or have shape \(2,\), got \(3,\)"):
        net(torch.randn(2, 2, 8, 8), torch.tensor([1.0, 2.0, 3.0]), conditioned=image)
    assert net(torch.randn(2, 2, 8, 8), torch.tensor(5.0), conditioned=image).shape == (2, 2, 8, 8)
