"""diffusion/checkpoint: the bundle layout (bare state dict + medwidit.json) beside medwidit's single file; both
rebuild the same segmenter, and files that are neither get errors saying what they are and what to do."""

import errno
import json
import logging
import threading
from pathlib import Path

import pytest
import torch
from diffusion_standins import TinyConvNet

from medwidit.diffusion import (
    SIDECAR,
    DiffusionSegmenter,
    load_segmenter,
    read_model_config,
    save_bundle_weights,
    save_segmenter,
)
from medwidit.diffusion.checkpoint import EXPORT_LOCK
from medwidit.utils import sha256_file

EXTRA = {"preprocessing": {"spacing": None}, "roi_size": [8, 8]}


def _segmenter():
    torch.manual_seed(0)
    return DiffusionSegmenter(TinyConvNet(2, 3, out_channels=3), num_classes=3, objective="v_prediction")


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bundle_weights_are_a_bare_state_dict_and_load_like_the_single_file(tmp_path):
    segmenter = _segmenter()
    weights = save_bundle_weights(segmenter, tmp_path / "models", EXTRA)
    listed = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert listed == [EXPORT_LOCK, SIDECAR, "model.pt"]  # no temporaries; the exports' empty hidden lock file
    state = torch.load(weights, weights_only=True)
    assert _same_weights(state, segmenter.net.state_dict())  # what monai.bundle.load / MONAI Label copy
    loaded, config = load_segmenter(weights)
    single, single_config = load_segmenter(save_segmenter(segmenter, tmp_path / "single.pt", EXTRA))
    assert config == single_config and config["roi_size"] == [8, 8] and config["network"] == "test_tiny_conv"
    assert read_model_config(weights) == config == read_model_config(tmp_path / "single.pt")
    assert _same_weights(loaded.state_dict(), single.state_dict())
    assert loaded.config == segmenter.config


def test_bundle_weights_never_overwrite_unless_asked(tmp_path):
    save_bundle_weights(_segmenter(), tmp_path, EXTRA)
    with pytest.raises(FileExistsError, match="model.pt already exists.*overwrite"):
        save_bundle_weights(_segmenter(), tmp_path, EXTRA)
    save_bundle_weights(_segmenter(), tmp_path, {**EXTRA, "roi_size": [4, 4]}, overwrite=True)
    assert read_model_config(tmp_path / "model.pt")["roi_size"] == [4, 4]


def test_bundle_weights_are_one_pair_when_the_sidecar_fails(tmp_path, monkeypatch):
    """model.pt, then medwidit.json: a sidecar that cannot be written once left the new weights beside the old
    config. Now model.pt goes back to the earlier export's (or is removed where there was none)."""
    from medwidit.diffusion import checkpoint

    real = checkpoint.atomic_write

    def failing_sidecar(path, write, **kwargs):
        if Path(path).name == SIDECAR:
            raise OSError(28, "No space left on device")
        return real(path, write, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_write", failing_sidecar)
    with pytest.raises(OSError, match="No space"):
        save_bundle_weights(_segmenter(), tmp_path / "new", EXTRA)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [EXPORT_LOCK]
    monkeypatch.setattr(checkpoint, "atomic_write", real)
    weights = save_bundle_weights(_segmenter(), tmp_path, EXTRA)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    monkeypatch.setattr(checkpoint, "atomic_write", failing_sidecar)
    other = _segmenter()
    for p in other.net.parameters():
        p.data.add_(1)
    with pytest.raises(OSError, match="No space"):
        save_bundle_weights(other, tmp_path, {**EXTRA, "roi_size": [4, 4]}, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing else left
    load_segmenter(weights)


@pytest.mark.parametrize("after", ["weights", "sidecar"])
def test_bundle_weights_interrupted_between_the_commits_stay_one_pair(tmp_path, monkeypatch, after):
    """An interrupt right after model.pt is committed (before the code knew it) left the new weights beside the old
    sidecar and the old weights deleted; right after the sidecar, the new pair must stay. Judged by the files."""
    from medwidit.diffusion import checkpoint

    weights = save_bundle_weights(_segmenter(), tmp_path, EXTRA)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    real = checkpoint.atomic_write

    def interrupted(path, write, **kwargs):
        result = real(path, write, **kwargs)
        if Path(path).name == ("model.pt" if after == "weights" else SIDECAR):
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(checkpoint, "atomic_write", interrupted)
    other = _segmenter()
    for p in other.net.parameters():
        p.data.add_(1)
    with pytest.raises(KeyboardInterrupt):
        save_bundle_weights(other, tmp_path, {**EXTRA, "roi_size": [4, 4]}, overwrite=True)
    now = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert set(now) == set(first)  # no hidden copy of the earlier weights left
    if after == "weights":
        assert now == first  # the earlier pair, as it was
    else:
        assert now["model.pt"] != first["model.pt"] and read_model_config(weights)["roi_size"] == [4, 4]
    loaded, _ = load_segmenter(weights)  # a pair either way: its SHA agrees
    assert json.loads((tmp_path / SIDECAR).read_text())["weights_sha256"] == sha256_file(weights)


def test_bundle_weights_exports_into_one_folder_take_turns(tmp_path, monkeypatch):
    """An export waits while another holds the folder's lock, so two exports' files never mix; where the file system
    has no flock (some NFS and FUSE mounts) it goes on without one instead of failing at the end of training."""
    import fcntl

    from medwidit.utils.files import locked

    done = threading.Event()
    thread = threading.Thread(target=lambda: (save_bundle_weights(_segmenter(), tmp_path, EXTRA), done.set()))
    with locked(tmp_path / EXPORT_LOCK):
        thread.start()
        assert not done.wait(0.5) and not (tmp_path / "model.pt").exists()
    thread.join(60)
    assert done.is_set() and read_model_config(tmp_path / "model.pt")["roi_size"] == EXTRA["roi_size"]

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    save_bundle_weights(_segmenter(), tmp_path / "nfs", EXTRA)
    assert read_model_config(tmp_path / "nfs" / "model.pt")["roi_size"] == EXTRA["roi_size"]
    with pytest.raises(OSError, match="No locks"), locked(tmp_path / "required.lock"):  # the outputs' lock is required
        pass
    assert sorted(p.name for p in (tmp_path / "nfs").iterdir()) == [EXPORT_LOCK, SIDECAR, "model.pt"]


def test_bare_state_dict_without_its_sidecar_says_what_is_missing(tmp_path):
    torch.save(_segmenter().net.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=f"bare state dict.*{SIDECAR} is missing.*medwidit export"):
        load_segmenter(tmp_path / "model.pt")


def test_weights_changed_behind_the_sidecar_warn(tmp_path, caplog):
    weights = save_bundle_weights(_segmenter(), tmp_path, EXTRA)
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, weights)  # e.g. fine-tuned by MONAI tools
    with caplog.at_level(logging.WARNING, logger="medwidit.diffusion.checkpoint"):
        loaded, _ = load_segmenter(weights)
    assert "differ from those" in caplog.text
    assert torch.equal(next(iter(loaded.net.state_dict().values())), next(iter(state.values())) + 1)


def test_lightning_checkpoint_points_to_medwidit_export(tmp_path):
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.6", "hyper_parameters": {}}, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match=r"Lightning training checkpoint.*medwidit export .*b.ckpt BUNDLE_DIR"):
        load_segmenter(tmp_path / "b.ckpt")


def test_broken_sidecar_is_named(tmp_path):
    weights = save_bundle_weights(_segmenter(), tmp_path, EXTRA)
    (tmp_path / SIDECAR).write_text(json.dumps({"version": "0.1.0"}))
    with pytest.raises(ValueError, match=f"{SIDECAR}: must be a JSON object with a 'config'"):
        load_segmenter(weights)


def test_read_model_config_of_a_self_contained_file_beside_a_sidecar_is_its_own(tmp_path):
    """A bundle's models/ holds model.pt + medwidit.json and may hold model_b.pt, a single-file checkpoint of another
    model: read_model_config returned the sidecar's config for it, where load_segmenter rebuilds its own."""
    save_bundle_weights(_segmenter(), tmp_path, EXTRA)
    torch.manual_seed(1)
    other = DiffusionSegmenter(TinyConvNet(2, 2, out_channels=2), num_classes=2, objective="flow")
    save_segmenter(other, tmp_path / "model_b.pt", EXTRA)
    config = read_model_config(tmp_path / "model_b.pt")
    assert config == load_segmenter(tmp_path / "model_b.pt")[1]
    assert config["segmenter"]["num_classes"] == 2 and config["segmenter"]["objective"] == "flow"
    assert read_model_config(tmp_path / "model.pt")["segmenter"]["objective"] == "v_prediction"  # the sidecar's


def test_bundle_weights_with_a_config_json_cannot_hold_write_nothing(tmp_path):
    """model.pt was written before the config failed to serialise: an orphan that the next try refused to replace."""
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_bundle_weights(_segmenter(), tmp_path / "models", {**EXTRA, "note": object()})
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    save_bundle_weights(_segmenter(), tmp_path / "models", EXTRA)  # and a corrected call needs no overwrite


def test_numpy_schedule_args_save_as_plain_floats_and_load(tmp_path):
    import numpy as np

    torch.manual_seed(0)
    schedule_args = {"beta_start": np.float32(1e-4), "beta_end": np.float64(0.035)}
    segmenter = DiffusionSegmenter(TinyConvNet(2, 3, out_channels=3), num_classes=3, schedule_args=schedule_args)
    assert all(type(v) is float for v in segmenter.schedule_args.values())
    save_segmenter(segmenter, tmp_path / "s.pt")  # weights_only loading refused numpy scalars
    assert load_segmenter(tmp_path / "s.pt")[1]["segmenter"]["schedule_args"] == segmenter.schedule_args
    save_bundle_weights(segmenter, tmp_path / "models", EXTRA)  # json refused them, after writing model.pt
