"""Where the shipped bundles and data lists are: the checkout's top-level ``bundles/`` and ``data_lists/`` (where
``monai.bundle run`` and the README point), or, in an installed wheel, ``medwidit/bundles`` and
``medwidit/data_lists`` (pyproject.toml maps the folders into the package)."""

from __future__ import annotations

from pathlib import Path

from .checks import choose

__all__ = ["SHIPPED_KINDS", "shipped_path"]

SHIPPED_KINDS = ("bundles", "data_lists")
PACKAGE = Path(__file__).resolve().parents[1]  # .../medwidit


def shipped_path(kind: str, name: str) -> Path:
    """``<checkout>/<kind>/<name>`` if it exists, else ``medwidit/<kind>/<name>`` of the installed package; a
    FileNotFoundError naming both places otherwise."""
    kind = choose("kind", kind, SHIPPED_KINDS)
    places = [PACKAGE.parent / kind / name, PACKAGE / kind / name]
    for place in places:
        if place.exists():
            return place
    raise FileNotFoundError(f"shipped {kind[:-1].replace('_', ' ')} {name!r} not found in {places[0]} or {places[1]}.")
