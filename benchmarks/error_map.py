"""Would a learned voxel error map find the wrong voxels better than any one map? A logistic model of per-voxel
features from what the predictor already gives, fitted and scored leave-one-case-out on the bundle's 17 validation
cases (never Colin27: trust.py's cases are the test), against the single maps of ``validation_maps.py``.

Features (``FEATURES``): the total entropy in bits (``e``, and its log), the localization pass's disagreement (``d``),
the entropy smoothed by a Gaussian of 1, 2 or 4 mm (``s1``, ``s2``, ``s4``, and the log of ``s2``), the disagreement
smoothed by 2 mm (``ds2``), and the distance to the predicted label map's boundary (``metrics.boundary_distance``) as
``log1p(mm)`` inside (``din``) and outside (``dout``) the predicted foreground, with the side (``inside``). Each case is
scored by a model fitted on the other 16 cases' head voxels (up to ``FIT_VOXELS`` drawn per case, each case weighing
alike: ``pooled``, or each case's wrong and right voxels weighing alike: ``balanced``). Scored: voxel AUROC for wrong
voxels (the written label map against the truth) inside the clean scan's head (``trust.head_mask``).

A rule written before the run (``RULE`` in the JSON) decided whether the map is written: a mean 0.02 above the best
single map and better than ``boundary_proximity`` on at least 12 of 17 cases.

    python benchmarks/error_map.py --base mni152_2mm VAL/mni152_2mm_image.nii.gz VAL/mni152_2mm_label.nii.gz \\
        --base painted_0 ... --base painted_1 ... --base robex ... --base s1 ... --base mrhead ...   # ~6 min of CPU

(the bases and the 17 case names of the bundle docs' validation runs: ``validation_cases.py``'s folder, the brain
cache's ROBEX, S1's and MRHead's deepbet masks). Writes ``benchmarks/results/error_map.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _report import ROOT, environment, fmt, publish  # benchmarks/ is on sys.path when a script runs
from generalisation import build_cases
from nibabel.processing import resample_from_to
from scipy import ndimage
from trust import head_mask

from medwidit.inference import Predictor
from medwidit.inference.metrics import auroc, boundary_distance

CASES = ("mni152_2mm", "mni152_2mm_thick_z", "mni152_2mm_contrast", "mni152_2mm_noise", "mni152_2mm_bias",
         "mni152_2mm_fov", "painted_0", "painted_1", "painted_0_thick_x", "robex", "robex_thick_z", "robex_contrast",
         "robex_noise", "robex_bias", "robex_fov", "s1", "mrhead")  # fmt: skip
FEATURES = {
    "e + d": ("e", "d"),
    "e + d + s2": ("e", "d", "s2"),
    "geometry": ("din", "dout", "inside"),
    "s2 + geometry": ("s2", "din", "dout", "inside"),
    "e + d + geometry": ("e", "d", "din", "dout", "inside"),
    "e + d + s1 + geometry": ("e", "d", "s1", "din", "dout", "inside"),
    "e + d + s2 + geometry": ("e", "d", "s2", "din", "dout", "inside"),
    "e + d + s4 + geometry": ("e", "d", "s4", "din", "dout", "inside"),
    "e + d + s2 + ds2 + geometry": ("e", "d", "s2", "ds2", "din", "dout", "inside"),
    "log e + d + log s2 + geometry": ("loge", "d", "logs2", "din", "dout", "inside"),
    "all": ("e", "loge", "d", "s2", "logs2", "ds2", "din", "dout", "inside"),
}
SINGLE = ("total", "total_and_disagreement", "total_smoothed", "boundary_proximity")
FIT_VOXELS = 60000  # head voxels drawn per training case
FAR_MM = 100.0  # the distance where the label map has no boundary
RULE = (
    "Written before the run: the learned map is written by the CLI only if its leave-one-case-out mean AUROC over the "
    "17 cases exceeds the best single map (total, total_and_disagreement, total_smoothed, boundary_proximity) by "
    ">= 0.02 and it beats boundary_proximity on >= 12 of 17; feature sets compared by that mean, ties (0.002) to the "
    "smaller set. 'pooled' was the rule's fit; 'balanced' a second try written after 'pooled' failed, the last one."
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", nargs=3, action="append", required=True, metavar=("NAME", "IMAGE", "LABEL"),
                        help="a validation scan and its brain mask; repeatable")  # fmt: skip
    parser.add_argument("--cases", nargs="+", default=list(CASES), help="case names (base or base_variant)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "error_map.json")
    return parser.parse_args(argv)


def features(result, image: nib.Nifti1Image, clean: nib.Nifti1Image, label: nib.Nifti1Image) -> tuple[dict, dict]:
    """(every feature, every single map) over the head's voxels, and the wrong-voxel target as ``"wrong"``."""
    grid = (image.shape[:3], image.affine)  # a thick-slice case's grid: truth and head resampled onto it
    truth = np.asarray(resample_from_to(label, grid, order=0).dataobj) > 0
    clean_head = nib.Nifti1Image(head_mask(np.asarray(clean.dataobj, np.float32)).astype(np.uint8), clean.affine)
    head = np.asarray(resample_from_to(clean_head, grid, order=0).dataobj) > 0
    spacing = [float(z) for z in image.header.get_zooms()[:3]]
    sigma = lambda mm: [mm / z for z in spacing]  # noqa: E731
    e = result.entropy / np.log(2.0)  # bits (two classes: 0..1)
    d = result.disagreement
    inside = (result.label_map > 0).astype(np.float32)
    distance = boundary_distance([result.label_map], spacing=spacing).numpy()
    distance = np.where(np.isfinite(distance), distance, FAR_MM)
    f = {"e": e, "loge": np.log(e + 1e-3), "d": d, "ds2": ndimage.gaussian_filter(d, sigma(2.0)), "inside": inside,
         "din": np.log1p(distance) * inside, "dout": np.log1p(distance) * (1 - inside)}  # fmt: skip
    for mm in (1, 2, 4):
        f[f"s{mm}"] = ndimage.gaussian_filter(e, sigma(mm))
    f["logs2"] = np.log(f["s2"] + 1e-3)
    single = {"total": e, "total_and_disagreement": e + d, "total_smoothed": f["s2"], "boundary_proximity": -distance}
    f = {k: v[head].astype(np.float32) for k, v in f.items()}
    f["wrong"] = ((result.label_map > 0) != truth)[head]
    return f, {k: v[head] for k, v in single.items()}


def fit(cases: list[dict], names: tuple[str, ...], balanced: bool, rng: np.random.Generator) -> np.ndarray:
    """Logistic regression (L-BFGS, a small ridge) of ``wrong`` on ``names`` -> [intercept, *weights] on the raw
    features (no kept library of this project fits one: scikit-learn is not a dependency)."""
    xs, ys, ws = [], [], []
    for case in cases:
        pick = rng.choice(case["wrong"].size, min(case["wrong"].size, FIT_VOXELS), replace=False)
        y = case["wrong"][pick]
        if balanced:
            w = np.where(y, 0.5 / max(int(y.sum()), 1), 0.5 / max(int((~y).sum()), 1))
        else:
            w = np.full(y.size, 1.0 / y.size)
        xs.append(np.stack([case[n][pick] for n in names], 1))
        ys.append(y)
        ws.append(w)
    x, y, w = (np.concatenate(a) for a in (xs, ys, ws))
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float64)
    yt, wt = torch.tensor(y, dtype=torch.float64), torch.tensor(w / w.sum(), dtype=torch.float64)
    coef = torch.zeros(len(names) + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([coef], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = xt @ coef[1:] + coef[0]
        loss = (wt * torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")).sum()
        loss = loss + 1e-4 * coef[1:].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    c = coef.detach().numpy()
    return np.concatenate([[c[0] - (c[1:] * mean / std).sum()], c[1:] / std])


def main(argv=None) -> dict:
    args = parse_args(argv)
    predictor = Predictor.from_bundle(device="cpu")
    bases = {name: (Path(image), Path(label)) for name, image, label in args.base}
    start, cases, single = time.process_time(), [], []
    with tempfile.TemporaryDirectory() as folder:
        for case in build_cases(Path(folder), bases, args.cases):
            base = next(b for b in sorted(bases, key=len, reverse=True) if case["name"].startswith(b))
            image = nib.load(case["image"])
            result = predictor.segment(np.asarray(image.dataobj, np.float32), affine=image.affine)
            f, maps = features(result, image, nib.load(bases[base][0]), nib.load(bases[base][1]))
            cases.append({"name": case["name"], **f})
            single.append({k: auroc(torch.from_numpy(m), torch.from_numpy(f["wrong"])) for k, m in maps.items()})
            print(case["name"], {k: round(v, 3) for k, v in single[-1].items()}, flush=True)
    rows = [{"case": c["name"], **s} for c, s in zip(cases, single, strict=True)]
    learned = {}
    for fitting in ("pooled", "balanced"):
        for label, names in FEATURES.items():
            key = f"{fitting}: {label}"
            scores = []
            for i, case in enumerate(cases):  # leave one case out
                coef = fit(cases[:i] + cases[i + 1 :], names, fitting == "balanced", np.random.default_rng(0))
                score = coef[0] + sum(w * case[n] for w, n in zip(coef[1:], names, strict=True))
                scores.append(auroc(torch.from_numpy(score), torch.from_numpy(case["wrong"])))
            beats = int(sum(s > r["boundary_proximity"] for s, r in zip(scores, rows, strict=True)))
            learned[key] = {"features": list(names), "auroc": scores, "mean": float(np.mean(scores)),
                            "beats_proximity": beats}  # fmt: skip
            print(key, fmt(learned[key]["mean"], 4), "beats proximity on", learned[key]["beats_proximity"], flush=True)
    best_single = max(SINGLE, key=lambda k: np.mean([r[k] for r in rows]))
    best_learned = max(learned, key=lambda k: learned[k]["mean"])
    margin = learned[best_learned]["mean"] - float(np.mean([r[best_single] for r in rows]))
    adopted = margin >= 0.02 and learned[best_learned]["beats_proximity"] >= 12
    lines = ["| map | mean AUROC (17 cases) | better than boundary_proximity |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(np.mean([r[k] for r in rows]))} | |" for k in SINGLE]
    lines += [f"| learned, {k} | {fmt(v['mean'])} | {v['beats_proximity']} of {len(rows)} |"
              for k, v in learned.items()]  # fmt: skip
    result = {"environment": environment(torch.device("cpu"), __file__), "rule": RULE, "cases": rows,
              "learned": learned, "best_single": best_single, "best_learned": best_learned, "margin": margin,
              "adopted": adopted, "cpu_seconds": time.process_time() - start}  # fmt: skip
    return publish(result, "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
