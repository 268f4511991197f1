"""The benchmarks' view of a bundle's training recipe: its data module and data list for a task, the held-out test
split (checked against training and validation), and the baselines' training budget."""

from __future__ import annotations

import json
from pathlib import Path

from monai.bundle import ConfigParser

from medwidit.data.transforms import check_preprocessing
from medwidit.datasets.brain import sources
from medwidit.inference import Predictor
from medwidit.inference.options import bundle_options

TASKS = {"brain_extraction": "brain_extraction.json", "tissue_classes": "tissue_classes.json"}


def load_recipe(args) -> dict:
    """The bundle's training recipe, with the data list of ``args.task`` and the cache folder ``args.cache``."""
    bundle = args.bundle.resolve()
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(bundle)
    cache = sources.default_cache_dir(args.cache)
    parser["dataset_dir"] = str(cache)
    bundle_list = Path(parser.get_parsed_content("data_list"))
    task = args.task
    if task == "auto":
        by_file = {file: name for name, file in TASKS.items()}
        if bundle_list.name not in by_file:
            raise SystemExit(f"--task auto: the bundle's data list {bundle_list} is none of {sorted(TASKS.values())}.")
        task = by_file[bundle_list.name]
    data_list = sources.REPO_DATA_LISTS / TASKS[task]
    parser["data_list"] = str(data_list)
    if args.num_workers is not None:  # loading only: the crops and augmentation stay the bundle's
        parser["num_workers"] = args.num_workers
    listing = json.loads(data_list.read_text())
    datamodule = parser.get_parsed_content("datamodule")
    return {
        "bundle": bundle,
        "task": task,
        "bundle_data_list": str(bundle_list),
        "data_list": data_list,
        "listing": listing,
        "cache": cache,
        "datamodule": datamodule,
        "seed": int(parser.get_parsed_content("seed")) if args.seed is None else args.seed,
        "class_names": [listing["labels"][str(k)] for k in range(len(listing["labels"]))],
        "inference": bundle_options(bundle),
        "metadata": json.loads((bundle / "configs" / "metadata.json").read_text()),
    }


def held_out_cases(recipe: dict) -> list[dict]:
    """The test split as absolute paths, after checking that no test anatomy or file is in training or validation."""
    listing, dm, base = recipe["listing"], recipe["datamodule"], recipe["cache"]
    sources.check_split(listing)  # anatomies
    seen = {
        str((base / item[key]).resolve())
        for split in (dm.train_key, dm.val_key)
        for item in listing[split]
        for key in ("image", "label")
    }
    cases = []
    for item in listing["test"]:
        case = {key: str((base / item[key]).resolve()) for key in ("image", "label")}
        if {case["image"], case["label"]} & seen:
            raise SystemExit(f"held-out file {case} is also in the {dm.train_key!r} or {dm.val_key!r} split.")
        cases.append({**case, "template": item.get("template", Path(case["image"]).name)})
    return cases


def training_budget(args, recipe: dict) -> tuple[float, str, float | None]:
    """(seconds per baseline, where the number came from, medwidit's recorded training seconds or None)."""
    record = recipe["metadata"].get("training", {}).get("wall_clock_seconds")
    recorded = float(record) if record is not None else None
    if args.budget_seconds is not None:
        return float(args.budget_seconds), "--quick" if args.quick else "--budget-seconds", recorded
    if recorded is None:
        raise SystemExit(
            f"no --budget-seconds and no recorded training time in {recipe['bundle']}/configs/metadata.json "
            '("training": {"wall_clock_seconds": ...}); pass --budget-seconds.'
        )
    return recorded, "bundle metadata training.wall_clock_seconds", recorded


def load_predictor(args, recipe: dict, device) -> tuple[Predictor, Path]:
    checkpoint = args.checkpoint or recipe["bundle"] / "models" / "model.pt"
    options = {"device": device, "max_whole_voxels": args.max_whole_voxels}
    if args.checkpoint is None:
        predictor = Predictor.from_bundle(recipe["bundle"], **options)
    else:
        predictor = Predictor.from_checkpoint(checkpoint, **options)
    if predictor.preprocessing != check_preprocessing(recipe["datamodule"].preprocessing):
        raise SystemExit(
            f"{checkpoint} was trained with preprocessing {predictor.preprocessing}, the bundle's recipe "
            f"has {recipe['datamodule'].preprocessing}: the baselines would not see what it saw."
        )
    if predictor.num_classes != len(recipe["class_names"]):
        raise SystemExit(
            f"{checkpoint} has {predictor.num_classes} classes; task {recipe['task']} has "
            f"{len(recipe['class_names'])} ({recipe['data_list']})."
        )
    return predictor, checkpoint
