"""``medwidit demo``: the shipped pretrained bundle segments the shipped example scan, exactly as ``medwidit segment``.

The example is Colin27's whole-head T1 at 2 mm (``medwidit.data.example.example_case``), a brain the bundle never saw
in training or model selection. The demo writes the label map, the uncertainty map and a PNG figure, then reports the
brain volume and the Dice against the example's reference brain mask.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from medwidit.data.example import example_case
from medwidit.utils import check_bool

from .cases import find_cases
from .io import InputError, OutputError
from .metrics import evaluate_files
from .options import resolve_bundle
from .outputs import ENTROPY_PARTS, output_path
from .predictor import Predictor

__all__ = ["SHIPPED_BUNDLE", "run_demo"]

SHIPPED_BUNDLE = resolve_bundle()  # the default bundle: the checkout's, else the installed package's


def run_demo(
    output_dir: str | os.PathLike,
    *,
    bundle: str | os.PathLike | None = None,
    device: str = "auto",
    steps: int | None = None,
    num_samples: int | None = None,
    **options,
) -> str:
    """Segment the shipped example into ``output_dir`` as ``medwidit segment`` does (uncertainty map and figure
    included) and return a short report; ``options`` are :meth:`Predictor.predict_from_files`'s (``overwrite``,
    ``progress``, ``sampler``, ...), and the Dice is :func:`~medwidit.inference.metrics.evaluate_files`'. ``bundle``:
    a folder or a shipped bundle's name (default: the shipped one); ``steps`` and ``num_samples``: the bundle's."""
    bundle = resolve_bundle(bundle)
    if not (bundle / "models" / "model.pt").is_file():
        raise InputError(
            f"{bundle}: no pretrained bundle here (models/model.pt); the demo runs from a medwidit checkout, "
            "where bundles/brain_widit_segmentation ships one."
        )
    case = example_case()
    options["overwrite"] = check_bool("overwrite", options.get("overwrite", False))
    if not options["overwrite"] and not check_bool("resume", options.get("resume", False)):
        # before the model loads, and named once (the case's own error names medwidit segment's --continue, which
        # the demo does not have): the files the demo writes, not others beside them
        (example,) = find_cases([case["image"]])
        kinds = ("labels", "uncertainty", *ENTROPY_PARTS, "figure")
        existing = [path for path in (output_path(example, output_dir, kind) for kind in kinds) if path.exists()]
        if existing:
            raise OutputError(
                f"{existing[0]}: already exists; pass overwrite to replace the demo's outputs (medwidit demo: "
                "--overwrite; Python: overwrite=True), or give another output folder."
            )
    predictor = Predictor.from_bundle(bundle, device=device)
    (result,) = predictor.predict_from_files(
        case["image"],
        output_dir,
        save_uncertainty=True,
        save_figure=True,
        steps=steps,
        num_samples=num_samples,
        **options,
    )
    steps, num_samples, _ = predictor.resolve_sampling(steps, num_samples, None)
    weight_sets = len(predictor.select_weights(options.get("weight_sets")))
    sets = f" x {weight_sets} sets of weights" if weight_sets > 1 else ""
    if result.status != "done":
        raise InputError(f"the demo case failed: {result.message}")
    dice = evaluate_files(result.outputs[:1], [case["label"]], num_classes=predictor.num_classes)["mean"]["class_1"]
    labels_image = nib.load(result.outputs[0])
    voxel_ml = float(np.prod(labels_image.header.get_zooms()[:3])) / 1000.0
    brain = int((np.asanyarray(labels_image.dataobj) == 1).sum())
    truth = int((np.asanyarray(nib.load(case["label"]).dataobj) == 1).sum())
    lines = [f"input      {case['image']} (from the {case['template']} template, held out from training)"]
    lines += [f"wrote      {path}" for path in result.outputs]
    lines += [
        f"brain      {brain * voxel_ml:.0f} mL (reference mask {truth * voxel_ml:.0f} mL)",
        f"Dice       {dice:.3f} against the example's reference brain mask "
        f"({steps} steps x {num_samples} samples{sets}, {result.seconds:.0f} s)",
    ]
    return "\n".join(lines)
