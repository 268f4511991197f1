"""DiffuserWiDiT: WiDiT behind diffusers' model conventions (seed 002's ``DiffuserSTDiT``), so that the backbone drops
into diffusers schedulers and pipelines: ``model(sample, timestep, encoder_hidden_states=image).sample``.

With diffusers installed (optional: the ``test`` extra) the wrapper is a ``ModelMixin``/``ConfigMixin`` (``config``,
``from_config``, ``save_pretrained``/``from_pretrained``) and its output a ``BaseOutput``; without it, a plain
``nn.Module`` with the same signature, ``config`` and ``from_config``, and a dataclass output with ``to_tuple()``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from .layers import WiDiTInputError
from .widit import WiDiT

try:
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.utils import BaseOutput

    HAS_DIFFUSERS = True
except ImportError:  # optional dependency: the same call signature and output without diffusers' mixins
    HAS_DIFFUSERS = False

    class BaseOutput:
        """Stands in for diffusers.utils.BaseOutput: fields, ``output[0]`` and ``to_tuple()``."""

        def __getitem__(self, index: int) -> Any:
            return self.to_tuple()[index]

        def to_tuple(self) -> tuple:
            return tuple(getattr(self, field.name) for field in fields(self))  # no deep copy, unlike astuple

    class ConfigMixin:
        """The part of diffusers' ConfigMixin this wrapper uses: ``register_to_config``, ``config``, ``from_config``."""

        def register_to_config(self, **config: Any) -> None:
            self._internal_dict = dict(config)

        @property
        def config(self) -> dict[str, Any]:
            return dict(self._internal_dict)

        @classmethod
        def from_config(cls, config: dict[str, Any]):
            """Rebuild from ``config``, leaving out private ``_``-keys (a diffusers config.json), as diffusers does."""
            return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    ModelMixin = nn.Module

__all__ = ["HAS_DIFFUSERS", "DiffuserWiDiT", "DiffuserWiDiTOutput"]


@dataclass
class DiffuserWiDiTOutput(BaseOutput):
    """``sample`` (B, out_channels, *S): the network's prediction (x0, epsilon, v or flow velocity, as trained)."""

    sample: torch.Tensor


class DiffuserWiDiT(ModelMixin, ConfigMixin):
    """WiDiT (``self.model``) with diffusers' forward: ``(sample, timestep, encoder_hidden_states, cond_image, spacing,
    return_dict)``; the constructor takes WiDiT's keyword arguments and ``config`` holds WiDiT's own config."""

    config_name = "config.json"

    def __init__(self, **widit_kwargs: Any) -> None:
        super().__init__()
        self.model = WiDiT(**widit_kwargs)
        self.register_to_config(**self.model.config)  # WiDiT's normalised arguments: one source for both

    # ConfigMixin reads the constructor's parameters from its signature: WiDiT's, not ``**widit_kwargs``
    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [p for name, p in inspect.signature(WiDiT.__init__).parameters.items() if name != "self"]
    )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cond_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        spacing: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DiffuserWiDiTOutput | tuple[torch.Tensor]:
        """(B, in_channels, *S) noisy sample, timestep (scalar or (B,)), the image (B, cond_channels, *S) as
        ``encoder_hidden_states`` (the slot diffusers pipelines fill) or ``cond_image`` (seed 002's name) ->
        ``DiffuserWiDiTOutput(sample=(B, out_channels, *S))``, or ``(sample,)`` with ``return_dict=False``."""
        if encoder_hidden_states is not None and cond_image is not None:
            raise WiDiTInputError("give the conditioning image once: encoder_hidden_states or cond_image, not both.")
        if mask is not None:
            raise WiDiTInputError("mask masks text tokens (seed 002's STDiT); WiDiT has no tokens to mask: pass None.")
        image = cond_image if encoder_hidden_states is None else encoder_hidden_states
        out = self.model(sample, timestep, conditioned=image, spacing=spacing)  # (B, out_channels, *S)
        return DiffuserWiDiTOutput(sample=out) if return_dict else (out,)
