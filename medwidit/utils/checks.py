"""Argument checks shared by every room: one message style, ``bool`` never taken for an int."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
from monai.utils import ensure_tuple_rep, look_up_option

__all__ = [
    "check_bool",
    "check_int",
    "check_keys",
    "check_interval",
    "check_options",
    "check_per_axis",
    "check_range",
    "choose",
    "is_finite_number",
    "is_integer",
]


def is_finite_number(value) -> bool:
    """A finite real number (numpy's too), never a bool: what a JSON config or a caller may give as a setting."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value) -> bool:
    """An integer (numpy's too), never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_keys(spec: Mapping, required: Sequence[str], optional: Sequence[str], source: str) -> None:
    """A ValueError naming ``source`` unless ``spec`` holds every key of ``required`` and no key outside ``required``
    and ``optional``: which are missing and which unknown."""
    keys, allowed = set(spec), {*required, *optional}
    if not set(required) <= keys <= allowed:
        missing, unknown = sorted(set(required) - keys), sorted(keys - allowed)
        raise ValueError(
            f"{source}: expected the keys {', '.join(required)}"
            + (f" (and optionally {', '.join(optional)})" if optional else "")
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
            + "."
        )


def check_options(
    fn: Callable,
    options,
    source: str,
    *,
    exclude: Sequence[str] = (),
    notes: Mapping[str, str] | None = None,
    name: str | None = None,
) -> dict:
    """``options`` as keyword arguments of ``fn`` (a function or a class; ``name`` in messages, default its own)
    less ``exclude`` (those its caller sets): not a mapping, or a key outside them, is a ValueError naming ``source``
    and the key, with ``notes[key]`` after it where given, and what ``fn`` takes (by keyword: not a positional-only
    parameter, nor ``*args``' name). A ``fn`` with ``**kwargs``, or whose signature cannot be read, takes any key but
    ``exclude``. One check for every dict of options a config hands to a constructor (a wrong key raised a TypeError
    naming neither the file nor the argument)."""
    name = name or getattr(fn, "__name__", repr(fn))
    if not isinstance(options, Mapping):
        raise ValueError(f"{source} must be a dict of the options of {name}, got {options!r}.")
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        parameters = None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)  # what a keyword can set
    anything = parameters is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    allowed = [] if parameters is None else [p.name for p in parameters if p.kind in named and p.name not in exclude]
    unknown = [key for key in options if key in exclude or not (anything or key in allowed)]
    if unknown:
        notes = notes or {}
        keys = ", ".join(f"{key!r}{notes.get(key, '')}" for key in unknown)
        raise ValueError(f"{source}: {keys} is not an option of {name}; it takes {', '.join(allowed)}.")
    return dict(options)


def check_bool(name: str, value) -> bool:
    """``value`` as a bool: True/False, or the strings "true"/"false" in any case (a command-line override such as
    ``--spacing_conditioning false`` arrives as the string, and ``bool("false")`` is True); else a ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def check_int(name: str, value, *, low: int = 1, high: int | None = None, hint: str = "") -> int:
    """``value`` (an integer, numpy's too, never a bool) as an int in ``low..high`` (``high`` None: unbounded), else a
    ValueError naming ``name``."""
    if not is_integer(value) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an int {bounds}{hint}, got {value!r}.")
    return int(value)  # numpy's integers too, as a plain int


SEED_HIGH = 2**64 - 1  # torch.Generator.manual_seed's largest; a larger seed failed every case, blaming the image


def check_seed(value, name: str = "seed") -> int:
    """``value`` as a seed for torch's and numpy's generators: an int in 0..2**64-1, else a ValueError naming it."""
    return check_int(name, value, low=0, high=SEED_HIGH, hint=" (2**64 - 1)")


def check_range(name: str, value, low: float, high: float, *, closed_high: bool = False) -> float:
    """``value`` as a float in ``[low, high)`` (``[low, high]`` with ``closed_high``), else a ValueError."""
    number = is_finite_number(value)
    ok = number and (low <= value <= high if closed_high else low <= value < high)
    if not ok:
        raise ValueError(f"{name} must be in [{low}, {high}{']' if closed_high else ')'}, got {value!r}.")
    return float(value)


def check_interval(name: str, value, *, low: float = 0.0, unit: str = "") -> tuple[float, float]:
    """``value`` as a pair of finite floats (a, b) with ``low`` <= a <= b (a range a transform draws from), else a
    ValueError naming ``name``; ``unit`` (e.g. " mm") follows "(low, high)" in the message."""
    pair = tuple(value) if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str) else ()
    if len(pair) != 2 or not all(is_finite_number(v) for v in pair) or not low <= pair[0] <= pair[1]:
        raise ValueError(f"{name} must be (low, high){unit} with {low:g} <= low <= high, finite, got {value!r}.")
    return float(pair[0]), float(pair[1])


def choose(argument: str, value: Any, choices: Collection) -> Any:
    """``monai.utils.look_up_option`` (the entry of ``value`` in ``choices``) whose error also names the argument;
    it never falls back on a name."""
    try:
        return look_up_option(value, choices)
    except ValueError as err:
        raise ValueError(f"{argument}: {str(err).strip()}") from None


def check_per_axis(name: str, value, spatial_dim: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``spatial_dim`` positive ints, or a ValueError naming ``name``."""
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1:  # a numpy array or tensor of sizes
        value = value.tolist()
    if not is_integer(value) and (
        isinstance(value, (str, bool)) or not isinstance(value, Sequence) or len(value) != spatial_dim
    ):
        raise ValueError(f"{name} must be an int or have {spatial_dim} entries (spatial_dim), got {value!r}.")
    if not all(is_integer(v) for v in ensure_tuple_rep(value, spatial_dim)):
        raise ValueError(f"{name} must hold ints, got {value!r}.")
    out = tuple(int(v) for v in ensure_tuple_rep(value, spatial_dim))
    if any(v < 1 for v in out):
        raise ValueError(f"{name} must be positive on every axis, got {value}.")
    return out
