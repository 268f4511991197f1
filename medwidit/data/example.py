"""The shipped example: Colin27's whole-head T1 at 2 mm with its brain mask, installed with the package (no download).

``medwidit.datasets.brain`` re-derives these files from its built cache (``python -m medwidit.datasets.brain
examples``); LICENSES.md beside them names their sources.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLES", "EXAMPLES_DIR", "example_case"]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

EXAMPLES: dict[str, dict] = {
    "colin27_head_2mm": {
        "task": "brain",
        "template": "colin27_1mm",
        "image": "colin27_head_2mm_image.nii.gz",
        "label": "colin27_head_2mm_label.nii.gz",
        "description": "Colin27 whole-head T1 and brain mask, 2x2x2 block-averaged from 1 mm to 2 mm; the brain "
        "task's held-out test template",
    },
}


def example_case(name: str = "colin27_head_2mm") -> dict[str, str]:
    """Paths of a shipped example: {"image", "label", "task", "template"}; no download needed."""
    if name not in EXAMPLES:
        raise ValueError(f"example name must be one of {sorted(EXAMPLES)}, got {name!r}.")
    spec = EXAMPLES[name]
    out = {"image": str(EXAMPLES_DIR / spec["image"]), "label": str(EXAMPLES_DIR / spec["label"]),
           "task": spec["task"], "template": spec["template"]}  # fmt: skip
    for key in ("image", "label"):
        if not Path(out[key]).is_file():
            raise FileNotFoundError(f"example {name!r}: {out[key]} is missing from the installed package.")
    return out
