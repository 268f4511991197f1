"""Checkpoints of a :class:`DiffusionSegmenter`, in two layouts that both rebuild the model from files alone.

- medwidit's single file (``save_segmenter``): ``{"state_dict": net weights, "config": {...}, "version"}``.
- a MONAI bundle's ``models/`` folder (``save_bundle_weights``): ``model.pt`` is the net's bare state dict, as the
  model zoo, ``monai.bundle.load``, ``ckpt_export`` and MONAI Label expect, and ``medwidit.json`` beside it holds the
  same ``config`` and ``version`` (plus the weights' SHA-256, so that a torn pair is noticed).

``load_segmenter`` reads either; checkpoints written before bundles used the second layout keep loading.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from medwidit.nets import build_network, network_name
from medwidit.utils import atomic_write, check_options, sha256_file
from medwidit.utils.files import link_or_copy, locked, temporary_path

from .segmenter import DiffusionSegmenter

__all__ = [
    "SIDECAR",
    "build_segmenter",
    "load_segmenter",
    "read_model_config",
    "save_bundle_weights",
    "save_segmenter",
    "segmenter_config",
    "WEIGHT_DEFINING",
    "with_config_defaults",
]

logger = logging.getLogger(__name__)

SIDECAR = "medwidit.json"  # beside a bare state dict: the config that rebuilds its network and segmenter
RESERVED = {"network", "net", "segmenter"}
# the segmenter settings that give a network's output its meaning; the others only shape training
WEIGHT_DEFINING = (
    "num_classes",
    "objective",
    "scheduler",
    "num_train_timesteps",
    "schedule",
    "schedule_args",
    "learn_sigma",
    "self_condition",
    "x0_activation",
)


def segmenter_config(segmenter: DiffusionSegmenter, extra_config: Mapping | None = None) -> dict:
    """``{"network": registered name, "net": net.config, "segmenter": segmenter.config, **extra_config}``."""
    net_config = getattr(segmenter.net, "config", None)
    if not isinstance(net_config, dict):
        raise ValueError(f"segmenter.net ({type(segmenter.net).__name__}) must expose a dict .config to be saved.")
    extra = dict(extra_config or {})
    clash = RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra_config must not override {sorted(clash)}.")
    return {"network": network_name(segmenter.net), "net": net_config, "segmenter": segmenter.config, **extra}


def with_config_defaults(config: Mapping) -> dict:
    """A checkpoint config whose ``segmenter`` part is what the segmenter's constructor makes of it (a key the config
    predates at its default, arguments normalised), so that it compares equal to :func:`segmenter_config` of what it
    built; a part the constructor refuses is left as it is (the comparison then fails)."""
    config = dict(config)
    try:
        config["segmenter"] = DiffusionSegmenter(torch.nn.Identity(), **config["segmenter"]).config
    except (KeyError, TypeError, ValueError):
        pass
    return config


def build_segmenter(config: Mapping, source: str | os.PathLike = "config") -> DiffusionSegmenter:
    """An untrained segmenter from a checkpoint config (``"widit"`` where a config predates network names)."""
    if not isinstance(config, Mapping) or not {"net", "segmenter"} <= set(config):
        found = sorted(config) if isinstance(config, Mapping) else type(config).__name__
        raise ValueError(f"{source}: checkpoint config must hold 'net' and 'segmenter', got {found}.")
    try:
        net = build_network(config.get("network", "widit"), config["net"])
        options = check_options(DiffusionSegmenter, config["segmenter"], "segmenter config", exclude=("net",))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    return DiffusionSegmenter(net, **options)


def save_segmenter(segmenter: DiffusionSegmenter, path, extra_config: dict | None = None) -> Path:
    """Write ``{"state_dict": net weights, "config": {"network", "net", "segmenter", **extra_config}, "version"}``
    atomically; ``network`` is the net's registered name (``medwidit.nets.register_network``)."""
    from medwidit import __version__

    checkpoint = {
        "state_dict": segmenter.net.state_dict(),
        "config": segmenter_config(segmenter, extra_config),
        "version": __version__,
    }
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


EXPORT_LOCK = ".medwidit-export.lock"  # beside model.pt (NFS locks a file opened read-write, not a folder)


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device, inode), None if there is none: a commit replaces it by another."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def save_bundle_weights(
    segmenter: DiffusionSegmenter, models_dir, extra_config: dict | None = None, *, overwrite: bool = False
) -> Path:
    """Write ``models_dir/model.pt`` (the net's bare state dict) and ``models_dir/medwidit.json`` (config, version,
    weights' SHA-256) as one pair: each atomically, exports into one folder taking turns (on ``EXPORT_LOCK``, a hidden
    file beside them), and if the sidecar is not written (an error, an interrupt) model.pt goes back to what it was
    (removed if new). Without ``overwrite`` an existing file is a FileExistsError naming it."""
    from medwidit import __version__

    models_dir = Path(models_dir)
    weights, sidecar = models_dir / "model.pt", models_dir / SIDECAR
    config = segmenter_config(segmenter, extra_config)
    json.dumps(config)  # a config JSON cannot hold fails here, before model.pt is written without its sidecar
    state = {k: v.detach().cpu().contiguous() for k, v in segmenter.net.state_dict().items()}
    models_dir.mkdir(parents=True, exist_ok=True)
    # exports into one folder take turns: a concurrent export's sidecar never lands beside this one's weights
    with locked(models_dir / EXPORT_LOCK, required=False):
        existing = [str(p) for p in (weights, sidecar) if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} already exists; pass overwrite (--overwrite) to replace it.")
        before = _identity(weights), _identity(sidecar)
        previous, keep_previous = temporary_path(weights, "previous."), False
        try:
            if before[0] is not None:  # the weights before this export, to restore if the sidecar is not written
                link_or_copy(weights, previous)  # a second name: no space needed on a full disk
            atomic_write(weights, lambda tmp: torch.save(state, tmp), overwrite=overwrite)
            record = {"config": config, "version": __version__, "weights_sha256": sha256_file(weights)}
            text = json.dumps(record, indent=2) + "\n"
            atomic_write(sidecar, lambda tmp: Path(tmp).write_text(text), overwrite=overwrite)
        except BaseException:
            # by the files, not by how far the code got (an interrupt may fall between a commit and the next line):
            # new weights beside the old sidecar go back; a new pair, or nothing new, stays as it is
            if _identity(weights) != before[0] and _identity(sidecar) == before[1]:
                keep_previous = True  # until the weights are back: kept if restoring them fails
                if before[0] is None:
                    weights.unlink(missing_ok=True)
                else:
                    os.replace(previous, weights)
                keep_previous = False
            raise
        finally:
            if not keep_previous:
                previous.unlink(missing_ok=True)
    return weights


def read_model_config(path) -> dict:
    """The config of a checkpoint file: the file's own, else (a bare state dict) the sidecar's beside it, as
    :func:`load_segmenter` reads them (a self-contained file beside a sidecar, as a bundle's ``model_b.pt``, is its
    own model)."""
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "config" in checkpoint:
        return checkpoint["config"]
    sidecar = path.parent / SIDECAR
    if not sidecar.is_file():
        raise ValueError(f"{path}: no 'config' in the file and no {SIDECAR} beside it.")
    return _read_sidecar(sidecar)["config"]


def load_segmenter(path, map_location="cpu") -> tuple[DiffusionSegmenter, dict]:
    """Rebuild a segmenter -> (segmenter, config) from a medwidit checkpoint file, or from a bundle's bare state dict
    and the ``medwidit.json`` beside it (:func:`save_bundle_weights`)."""
    path = Path(path)
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(checkpoint, dict) and "pytorch-lightning_version" in checkpoint:
        raise ValueError(
            f"{path} is a Lightning training checkpoint, not a model: export it first with `medwidit export {path} "
            "BUNDLE_DIR` (writes BUNDLE_DIR/models/model.pt and medwidit.json), then use --bundle BUNDLE_DIR."
        )
    if isinstance(checkpoint, dict) and {"state_dict", "config"} <= set(checkpoint):
        config, state = checkpoint["config"], checkpoint["state_dict"]
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        sidecar = path.parent / SIDECAR
        if not sidecar.is_file():
            raise ValueError(
                f"{path} is a bare state dict (MONAI bundle weights) but {sidecar} is missing: it holds the config "
                "that rebuilds the network (write both with `medwidit export`)."
            )
        record = _read_sidecar(sidecar)
        if record.get("weights_sha256") not in (None, sha256_file(path)):
            logger.warning("%s: the weights differ from those %s was written with.", path, sidecar)
        config, state = record["config"], checkpoint
    else:
        raise ValueError(
            f"{path} is not a medwidit segmenter checkpoint (needs 'state_dict' and 'config', or a bare state dict "
            f"with {SIDECAR} beside it)."
        )
    segmenter = build_segmenter(config, path)
    segmenter.net.load_state_dict(state)
    if isinstance(map_location, (str, torch.device)):
        segmenter = segmenter.to(map_location)
    return segmenter, config


def _read_sidecar(sidecar: Path) -> dict:
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{sidecar}: not readable JSON ({e}).") from e
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{sidecar}: must be a JSON object with a 'config' object.")
    return record
