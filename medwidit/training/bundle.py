"""Glue that MONAI bundle configs reference: where the bundle lives, the network as MONAI's bundle tools see it.

``bundle_root``: MONAI's ``monai.bundle run`` reads the config files but passes nothing about their location into
the config (model-zoo bundles write ``"bundle_root": "."`` and must be run from inside the bundle folder). Here the
default is the bundle of the ``ConfigWorkflow`` parsing the config (``monai.bundle run``, ``run``/``load`` from
Python), else of the ``--config_file`` on the command line (``<bundle>/configs/<name>.json``), else the shipped
``bundles/<name>`` (of this checkout or the installed package, ``medwidit.utils.resources``); ``--bundle_root DIR``
overrides them.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import logging
import os
import pickle
import platform
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from monai.data import load_decathlon_datalist

from medwidit.data.transforms import batch_spacing, check_preprocessing
from medwidit.diffusion import DiffusionSegmenter, load_segmenter, to_probabilities
from medwidit.diffusion.checkpoint import WEIGHT_DEFINING, with_config_defaults
from medwidit.nets import NETWORKS
from medwidit.nets.widit import HEAD_MODULES, HEAD_OPTIONS
from medwidit.utils import check_bool, check_int, check_range, is_integer
from medwidit.utils.files import locked
from medwidit.utils.resources import shipped_path

__all__ = [
    "RENAMED_KEYS",
    "MissingDataError",
    "SegmentationNetwork",
    "bundle_datalist",
    "check_run_folder",
    "check_training_data",
    "find_bundle_root",
    "initial_weights",
    "one_line_errors",
    "refuse_renamed",
    "release_run_folder",
    "require_done",
    "run_training",
]

logger = logging.getLogger(__name__)

# train.json: old key -> new key (the old key stays, null, to catch overrides); model_path named the shipped
# models/model.pt, which training no longer writes: it exports into export_dir (the run folder)
# keys an override may use that this bundle names otherwise: "max_epochs" is Lightning's and MONAI's TrainProperties'
# name of "epochs" (an override of it was ignored without a word)
RENAMED_KEYS = {"steps": "val_steps", "model_path": "export_dir", "max_epochs": "epochs"}


def initial_weights(
    segmenter: DiffusionSegmenter, path: str | os.PathLike | None, new_head: bool = False
) -> DiffusionSegmenter:
    """``segmenter`` with its network's weights from ``path`` (train.json ``init_weights``: a medwidit checkpoint or a
    bundle's ``models/model.pt`` with its ``medwidit.json``), to fine-tune them; None leaves it as built. The file
    must describe the same network (the options of a head it does not use aside: a patch head's ``pixel_*``), and a
    segmenter whose outputs mean the same (``WEIGHT_DEFINING`` keys: the training-only ones, such as ``aux_weight`` or
    ``timestep_sampling``, may change): a difference is a ValueError naming the file and the keys.

    ``new_head`` (train.json ``init_new_head``): the network's output head differs from the file's (``HEAD_KEYS``,
    e.g. a patch head's checkpoint fine-tuned with ``head="pixel"``); everything but the file's head is loaded (the
    token path: embedders, blocks, timestep embedding) and the built network's head keeps its initialisation (the
    pixel head's zero FinalLayer: the model starts at output zero). A file whose head is the network's own is refused
    then (its trained head would be thrown away), and so is ``new_head`` without a file."""
    new_head = check_bool("init_new_head", new_head)
    if path is None:
        if new_head:
            raise ValueError("init_new_head true needs init_weights: the checkpoint whose token path to start from.")
        return segmenter
    try:
        loaded, _ = load_segmenter(path)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        raise ValueError(
            f"init_weights {path}: could not be read as a medwidit checkpoint or bundle weights ({e})."
        ) from e
    ours = {"net": segmenter.net.config, "segmenter": segmenter.config}
    theirs = {"net": loaded.net.config, "segmenter": loaded.config}
    different = model_differences(ours, theirs, HEAD_KEYS if new_head else ())
    if type(loaded.net) is not type(segmenter.net) or different:
        hint = "" if new_head else " (init_new_head true lets only the output head differ)"
        raise ValueError(
            f"init_weights {path}: its model differs from train.json's in {different or 'the network type'}; "
            f"set those overrides to the checkpoint's values{hint}."
        )
    if not new_head:
        segmenter.net.load_state_dict(loaded.net.state_dict())
        logger.info("Initial weights from %s.", path)
        return segmenter
    head = {k: v for k, v in _used_options(ours["net"]).items() if k in HEAD_KEYS}
    if head == {k: v for k, v in _used_options(loaded.net.config).items() if k in HEAD_KEYS}:
        raise ValueError(
            f"init_weights {path}: its output head is train.json's own ({head}); init_new_head true would throw its "
            "trained head away: set init_new_head false to load all of it."
        )
    heads = tuple(f"{name}." for name in HEAD_MODULES.values())
    body = {k: v for k, v in loaded.net.state_dict().items() if not k.startswith(heads)}
    own_head = {k: v for k, v in segmenter.net.state_dict().items() if k.startswith(heads)}
    segmenter.net.load_state_dict({**body, **own_head})  # strict: every other tensor must be there, same shape
    logger.info("Initial weights from %s except its output head (%d head tensors as built).", path, len(own_head))
    return segmenter


# every WiDiT option that belongs to an output head, "head" itself included
HEAD_KEYS = ("head", *itertools.chain.from_iterable(HEAD_OPTIONS.values()))


def _used_options(config: dict) -> dict:
    """A WiDiT config less the options of the heads it does not use (a patch head's ``pixel_*``, a pixel head's
    ``final``): they build nothing, and a bundle may set them for the other head."""
    head = config.get("head", "patch")
    unused = {k for name, keys in HEAD_OPTIONS.items() if name != head for k in keys}
    return {k: v for k, v in config.items() if k not in unused}


def _weight_defining(config: dict) -> dict:
    return {key: config.get(key) for key in WEIGHT_DEFINING}


RUNTIME_NET_OPTIONS = ("grad_checkpointing",)  # how a network computes, not what: free to change between runs


def _net_options(config: dict) -> dict:
    """A segmenter config's ``net`` part as JSON values, with an option the config predates at the registered
    network's default (a checkpoint from before ``pixel_kernel`` built the network its default builds; from a review,
    such a checkpoint was refused a resume), less the options its head does not use and the runtime ones."""
    network = NETWORKS.get(config.get("network"))
    signature = inspect.signature(network).parameters.items() if network is not None else ()
    defaults = {k: p.default for k, p in signature if p.default is not inspect.Parameter.empty}
    net = json.loads(json.dumps({**defaults, **config.get("net", {})}, default=str))  # (4, 4, 4) is [4, 4, 4]
    return {k: v for k, v in _used_options(net).items() if k not in RUNTIME_NET_OPTIONS}


def model_differences(ours: dict, theirs: dict, ignored: Sequence[str] = ()) -> list[str]:
    """``part.key`` for each setting in which two segmenter configs (``segmenter_config``'s) build networks whose
    weights mean different things: the options the network uses (``ignored`` and the runtime ones aside) and the
    ``WEIGHT_DEFINING`` segmenter keys, each part with the keys a config predates at their defaults."""
    ours, theirs = with_config_defaults(ours), with_config_defaults(theirs)
    parts = {
        "net": (_net_options(ours), _net_options(theirs)),
        "segmenter": (_weight_defining(ours.get("segmenter", {})), _weight_defining(theirs.get("segmenter", {}))),
    }
    return sorted(
        f"{part}.{key}"
        for part, (a, b) in parts.items()
        for key in set(a) | set(b)
        if a.get(key) != b.get(key) and not (part == "net" and key in ignored)
    )


def _option_values(argv: Sequence[str], option: str) -> list[str]:
    """The values given to ``--option`` in a command line, as ``--option value`` or ``--option=value``."""
    values = []
    for i, arg in enumerate(argv):
        if arg == f"--{option}" and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(f"--{option}="):
            values.append(arg.split("=", 1)[1])
    return values


def _config_paths(value) -> list[str]:
    """The config paths of one ``config_file`` value: one path, a list literal or a comma-separated list (a string),
    or a list of paths (an ``--args_file``'s)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [path for v in values for path in re.findall(r"[^\[\]'\",\s]+\.(?:json|yaml|yml)", str(v))]


def _config_files_in(argv: Sequence[str]) -> list[str]:
    """Paths given to ``--config_file`` in a command line (one path, a list literal or a comma-separated list)."""
    return [path for value in _option_values(argv, "config_file") for path in _config_paths(value)]


def _bundle_of(configs: Path) -> str | None:
    """The bundle folder whose ``configs/`` folder is ``configs`` (it holds a ``metadata.json``), else None."""
    configs = configs.resolve()
    return str(configs.parent) if configs.name == "configs" and (configs / "metadata.json").is_file() else None


def _running_workflow_configs() -> Path | None:
    """``config_root_path`` of the MONAI ``ConfigWorkflow`` whose config is being parsed, from the call stack: how
    ``monai.bundle.run``/``load`` called from Python, ``ConfigWorkflow`` and ``--args_file`` say which bundle they
    run (MONAI passes nothing into the config, and ``sys.argv`` names no config file then). A workflow's parser read
    outside the workflow's methods (``workflow.parser.get_parsed_content(...)`` after ``initialize()``) counts as
    that workflow's: it took the shipped bundle's weights and output folder for a copied bundle's, from a review."""
    from monai.bundle import ConfigParser, ConfigWorkflow

    frame, parser = sys._getframe(1), None
    while frame is not None:
        caller = frame.f_locals.get("self")
        if isinstance(caller, ConfigWorkflow) and getattr(caller, "config_root_path", None) is not None:
            return Path(caller.config_root_path)
        if parser is None and isinstance(caller, ConfigParser):
            parser = caller
        frame = frame.f_back
    workflow = None if parser is None else _workflow_of(parser)
    return None if workflow is None else Path(workflow.config_root_path)


def _workflow_of(parser):
    """The ``ConfigWorkflow`` whose ``parser`` this is, or None (a parser of the user's own)."""
    import gc

    from monai.bundle import ConfigWorkflow

    def owns(holder) -> bool:
        return isinstance(holder, ConfigWorkflow) and getattr(holder, "config_root_path", None) is not None

    for holder in gc.get_referrers(parser):
        if owns(holder) and getattr(holder, "parser", None) is parser:
            return holder
        if isinstance(holder, dict) and holder.get("parser") is parser:  # an instance's __dict__
            for owner in gc.get_referrers(holder):
                if owns(owner) and getattr(owner, "__dict__", None) is holder:
                    return owner
    return None


def find_bundle_root(name: str, argv: Sequence[str] | None = None) -> str:
    """Absolute folder of bundle ``name``: the bundle of the MONAI workflow parsing this config (call stack), else of
    the first ``--config_file`` in ``argv`` (default ``sys.argv``) with a ``metadata.json`` beside it, else the
    shipped bundle ``name``, with a warning saying why (a ``ConfigParser`` read by hand knows no file: a copied
    bundle's config read that way took the shipped bundle's weights and output folder without a word)."""
    configs = _running_workflow_configs()
    if configs is not None and (found := _bundle_of(configs)):
        return found
    for config_file in _config_files_in(sys.argv if argv is None else argv):
        if found := _bundle_of(Path(config_file).parent):
            return found
    try:
        candidate = shipped_path("bundles", name)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"cannot locate bundle {name!r}: give its config as --config_file <bundle>/configs/<file>.json or pass "
            f"--bundle_root <bundle folder> ({e})"
        ) from None
    if configs is not None:  # a workflow whose configs folder is not a bundle's (no metadata.json beside it)
        reason = f"{configs} is not a bundle's configs/ folder (no metadata.json)"
    else:
        reason = "no MONAI workflow runs this config and no --config_file names a bundle's configs/ file"
    logger.warning(
        "bundle_root: %s; using the shipped bundle %s (to choose another: --bundle_root DIR, or "
        "parser['bundle_root'] = DIR for a ConfigParser).",
        reason,
        candidate,
    )
    return str(candidate)


class MissingDataError(ValueError):
    """A bundle's data list names files that are not there. An ordinary exception (it was a SystemExit, which a
    caller's ``except Exception`` let through to end the process); ``monai.bundle run`` prints it as one line
    (:func:`one_line_errors`)."""


def one_line_errors() -> None:
    """Make this process print an uncaught error that one of medwidit's checks raised (one of
    ``ONE_LINE_ERRORS`` of a ``raise`` statement in medwidit's code, wherever in the chain of causes MONAI's config
    parsing wrapped it: :func:`_medwidit_check`) as its one line, ``medwidit: error: ...``, exit status 1. A bad
    option or a folder in use was the middle of an 80- to 190-line traceback ending in MONAI's "Failed to
    instantiate component". Any other error keeps its traceback, and so does every error with
    ``MEDWIDIT_TRACEBACK=1``. Installed on import under ``python -m monai.bundle`` (a command line of its own),
    never in a notebook or a user's script."""
    if getattr(sys.excepthook, "medwidit", False):
        return
    previous = sys.excepthook

    def hook(kind, error, traceback) -> None:
        check = None if os.environ.get("MEDWIDIT_TRACEBACK") else _medwidit_check(error)
        if check is None:
            previous(kind, error, traceback)
            return
        message = " ".join(str(check).split())
        print(message if message.startswith("medwidit: error:") else f"medwidit: error: {message}", file=sys.stderr)

    hook.medwidit = True
    sys.excepthook = hook


PACKAGE = Path(__file__).resolve().parents[1]  # medwidit/: where its own checks are raised


class CasesFailedError(RuntimeError):
    """Cases of a bundle's inference failed; each had its own error line (:func:`require_done`)."""


# a refused option or file; FileExistsError: a report or output that may not be replaced (from a review: a second
# evaluation into one dice.json was a 53-line traceback); CasesFailedError: cases that each said why
ONE_LINE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, CasesFailedError)


def _medwidit_check(error: BaseException | None) -> BaseException | None:
    """The outermost error in ``error``'s chain of causes (``raise ... from``, as MONAI's config parsing wraps) that a
    ``raise`` statement of medwidit's own code raised as one of ``ONE_LINE_ERRORS``, or None. Not one raised
    by C code under a medwidit line (numpy's broadcasting, ``int()``: a bug, whose traceback counts), nor one that
    was being handled when another error came (``__context__``: the other error is the news)."""
    import linecache

    package, seen = PACKAGE, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (check := _worker_check(error)) is not None:
            return check
        if isinstance(error, ONE_LINE_ERRORS) and error.__traceback__ is not None:
            last = error.__traceback__
            while last.tb_next is not None:
                last = last.tb_next
            filename = last.tb_frame.f_code.co_filename
            own = Path(filename).resolve().is_relative_to(package)
            if own and linecache.getline(filename, last.tb_lineno).lstrip().startswith("raise"):
                return error
        error = error.__cause__
    return None


# torch's DataLoader re-raises a worker's error in the main process as a new exception whose message is the worker's
# traceback as text (the exception object itself does not cross the process boundary)
WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal (Traceback .*)", re.DOTALL)
CAUSE = "\n\nThe above exception was the direct cause of the following exception:\n\n"
CONTEXT = "\n\nDuring handling of the above exception, another exception occurred:\n\n"
FRAME = re.compile(r'  File "(.+)", line \d+, in ')
RAISED = re.compile(r"([\w.]+): (.*)", re.DOTALL)  # the exception's line: its (qualified) class name and message


def _worker_check(error: BaseException) -> BaseException | None:
    """:func:`_medwidit_check` for an error raised in a DataLoader worker (a generator's check of a label map during
    training), read from the traceback text torch's re-raised error carries: the outermost exception of the worker's
    chain of direct causes whose last frame is a ``raise`` line of medwidit's code and whose class is one of
    ``ONE_LINE_ERRORS`` -> that class with its message, or None."""
    found = WORKER_ERROR.match(str(error))
    if found is None:
        return None
    parts = re.split(f"({re.escape(CAUSE)}|{re.escape(CONTEXT)})", found.group(1))
    blocks, links = parts[0::2], parts[1::2]  # innermost first; links[i] joins blocks[i] and blocks[i + 1]
    for i in range(len(blocks) - 1, -1, -1):
        if (check := _raised_check(blocks[i])) is not None:
            return check
        if i == 0 or links[i - 1] != CAUSE:  # a context, not a cause: the later error is the news
            return None
    return None


def _raised_check(block: str) -> BaseException | None:
    """One exception of a traceback's text -> the check it reports (:func:`_worker_check`), or None."""
    lines = block.rstrip("\n").split("\n")
    frames = [i for i, line in enumerate(lines) if FRAME.match(line)]
    if not frames or frames[-1] + 1 >= len(lines):
        return None
    last = frames[-1]
    filename, code = FRAME.match(lines[last]).group(1), lines[last + 1].strip()
    # the exception's line is the first one after the frame that is not indented: the frame's code may follow on
    # several lines (Python 3.13 prints a statement whole, "...<2 lines>..." in its middle) and carets under it
    starts = [i for i in range(last + 2, len(lines)) if not lines[i].startswith(" ")]
    raised = RAISED.fullmatch("\n".join(lines[starts[0] :])) if starts else None
    if raised is None or not code.startswith("raise") or not Path(filename).resolve().is_relative_to(PACKAGE):
        return None
    module, _, name = raised.group(1).rpartition(".")
    kind = {kind.__name__: kind for kind in ONE_LINE_ERRORS}.get(name) if not module else None
    if module.startswith("medwidit."):  # one of medwidit's own classes (MissingDataError), where it is a check's
        kind = getattr(sys.modules.get(module), name, None)
    if not (isinstance(kind, type) and issubclass(kind, ONE_LINE_ERRORS)):
        return None
    return kind(raised.group(2))


def _under_monai_bundle_cli() -> bool:
    return Path(sys.argv[0] if sys.argv else "").parts[-3:] == ("monai", "bundle", "__main__.py")


# monai.bundle run's own arguments (monai.bundle.scripts.run, and the ConfigWorkflow / create_workflow keywords it
# passes on: from a review, --workflow_type train was refused), not overrides of a config's keys
RUN_ARGUMENTS = {
    *("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"),
    *("workflow_type", "workflow_name", "properties_path"),
}


def exit_on_unknown_overrides(argv: Sequence[str]) -> None:
    """:func:`refuse_unknown_overrides` as ``python -m monai.bundle run`` imports medwidit's training glue: its one
    line, then exit status 1. On import, since no config key is read in every run (``--output_dir`` alone leaves
    ``bundle_root`` unread), and as an exit, since MONAI imports a config's modules through ``optional_import``,
    which turns an import's error into a missing module."""
    try:
        refuse_unknown_overrides(argv)
    except ValueError as e:
        print(f"medwidit: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def refuse_unknown_overrides(argv: Sequence[str]) -> None:
    """``python -m monai.bundle run ... --key value``: a ValueError naming each override whose key (its first part
    before ``#``) no config file of the run has. MONAI adds such a key and nothing reads it, so a misspelt override
    (``--learning_rate 1e-5`` for ``--lr``) trained with the default without a word (from a review). Nothing is
    checked where the configs cannot be read here (MONAI says why). An ``--args_file``'s keys are overrides too
    (MONAI reads its ``config_file`` and override pairs under the command line's), checked the same way."""
    import difflib

    if len(argv) < 2 or argv[1] != "run":
        return
    argv = argv[: argv.index("--")] if "--" in argv else argv  # Fire's separator: then Fire's own flags
    names = [token[2:].partition("=")[0].replace("-", "_") for token in argv[2:] if token.startswith("--")]
    names = [(name, f"--{name}", "--") for name in names]  # (the key, how the message names it, a key's prefix)
    files = _config_files_in(argv)  # as find_bundle_root reads them
    from monai.bundle import ConfigParser

    for args_file in _option_values(argv, "args_file")[-1:]:
        try:
            defaults = ConfigParser.load_config_file(args_file)
        except Exception:  # unreadable or missing: MONAI's own run says why
            return
        if not isinstance(defaults, dict):
            return  # MONAI's own run says why
        # from a review: a misspelt key in an args file was trained past without a word, as on the command line
        names += [(str(key), f"--args_file {args_file}: key {str(key)!r}", "") for key in defaults]
        files = files or _config_paths(defaults.get("config_file", ""))
    if not files:
        return
    try:
        keys = set(ConfigParser.load_config_files(files))
    except Exception:  # unreadable or missing: MONAI's own run says why
        return
    for name, shown, prefix in names:
        first = name.split("#")[0]
        if name in RUN_ARGUMENTS or first in keys or first == "_meta_":  # _meta_: the metadata file's keys
            continue
        close = difflib.get_close_matches(first, sorted(keys), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ValueError(
            f"{shown}: the run's configs ({', '.join(files)}) have no key {first!r}, so nothing would read it{hint}."
        )


def bundle_datalist(
    data_list: str | os.PathLike,
    key: str,
    base_dir: str | os.PathLike,
    *,
    labels: bool = False,
    num_classes: int | None = None,
) -> list[dict]:
    """``monai.data.load_decathlon_datalist`` of split ``key``, or MissingDataError (one line: how to build the data
    or how to segment other files) when the list, its split or any of its images is missing; with ``labels``
    (evaluate.json) every case's label too, checked before any case is segmented (it failed after all of them)."""
    if not Path(data_list).is_file():
        raise MissingDataError(f"medwidit: error: data list {data_list} not found; pass --data_list FILE.")
    try:
        split = json.loads(Path(data_list).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        split = None  # load_decathlon_datalist says what is wrong with the file
    if split == []:  # MONAI failed with an IndexError
        raise MissingDataError(f"medwidit: error: split {key!r} of data list {data_list} is empty.")
    items = load_decathlon_datalist(str(data_list), is_segmentation=True, data_list_key=key, base_dir=str(base_dir))
    if labels:
        unlabelled = [item["image"] for item in items if not item.get("label")]
        if unlabelled:
            raise MissingDataError(
                f'medwidit: error: {len(unlabelled)} case(s) of {Path(data_list).name} [{key}] have no "label" to '
                f"evaluate against (first: {unlabelled[0]})."
            )
        absent = [str(item["label"]) for item in items if not Path(item["label"]).exists()]
        if absent:
            raise MissingDataError(
                f"medwidit: error: {len(absent)} label file(s) of {Path(data_list).name} [{key}] are not in "
                f"{base_dir} (first: {absent[0]})."
            )
    missing = [item["image"] for item in items if not Path(item["image"]).exists()]
    if missing:
        raise MissingDataError(
            f"medwidit: error: {len(missing)} of {len(items)} image(s) of {Path(data_list).name} [{key}] are not in "
            f"{base_dir} (first: {missing[0]}); build them with `python -m medwidit.datasets.brain build`, or "
            "segment your own files with --images \"['scan.nii.gz']\" (or medwidit segment)."
        )
    if labels:  # before any case is sampled: a label off its image's grid or of other values failed after all of them
        from .data import check_label_file  # the training data's checks (data.py builds on MONAI's transforms)

        for index, item in enumerate(items):
            check_label_file(("data_list", data_list, f"{key}[{index}]"), item["image"], item["label"], num_classes)
    return items


def check_training_data(datamodule) -> None:
    """:func:`run_training`'s first step: ``datamodule.check_files()``, a problem as one line (MissingDataError).
    Raised inside ``trainer.fit`` the same error was the middle of an 88-line traceback out of MONAI's config
    expression. A missing file of a shipped data list gets the build command; one of the user's own list, where its
    paths resolve (the build command sent a user whose list's paths were relative to the default ``dataset_dir``,
    the shipped data's cache, to build brain data, and so did a wrong label of their own beside the shipped list of
    generation label maps)."""
    try:
        datamodule.check_files()
    except (FileNotFoundError, ValueError) as e:
        owner, hint = getattr(e, "data_list", None), ""
        if owner is not None and _is_shipped_list(Path(owner)):
            hint = "; build the shipped data with `python -m medwidit.datasets.brain build`"
        elif _under(getattr(e, "missing", None), datamodule.dataset_dir) and "--dataset_dir" not in str(e):
            hint = f"; a data list's relative paths resolve against --dataset_dir, here {datamodule.dataset_dir}"
        raise MissingDataError(f"medwidit: error: {' '.join(str(e).split()).rstrip('.')}{hint}.") from e


def _under(path, folder) -> bool:
    return path is not None and folder is not None and Path(path).resolve().is_relative_to(Path(folder).resolve())


def _is_shipped_list(path: Path) -> bool:
    try:
        return shipped_path("data_lists", path.name).resolve() == path.resolve()
    except FileNotFoundError:
        return False


def check_run_folder(ckpt_dir: str | os.PathLike, resume, overwrite_run=False) -> Path | str | None:
    """A training run owns its checkpoint folder. Its first rank takes the folder's lock (``.<name>.lock`` beside
    it) for the run, so a second run into it while this one trains is refused, naming the process: two runs started
    together both passed the check below (the first checkpoint comes after an epoch) and then wrote each other's
    ``last.ckpt`` / ``best.ckpt`` and exported model. :func:`release_run_folder` lets go (:func:`run_training`
    after ``fit``, however it ends); a process that ends lets go too.

    A run that does not resume starts in a folder of its own: a new run in an earlier run's folder replaced its
    ``last.ckpt`` after one epoch while its ``best.ckpt`` lived until the new run's first validation, so
    ``medwidit export .../best.ckpt`` in between exported the old weights. Such a folder is refused, naming the
    three ways on; ``overwrite_run`` removes the earlier ``*.ckpt`` first. ``resume`` "last" needs a ``last*.ckpt``
    in the folder (Lightning trained from scratch, with a warning only); a checkpoint file must exist, and one from
    another folder may not continue into a folder holding other checkpoints unless ``overwrite_run``. Returns the
    checkpoint a resumed run continues from (a Path, a remote URL, or None for Lightning's own keys and new runs)."""
    folder = Path(ckpt_dir)
    overwrite = check_bool("overwrite_run", overwrite_run)
    if "://" in str(ckpt_dir):  # a remote folder (fsspec): no lock file there, and no local listing
        logger.warning("%s: a remote checkpoint folder; training runs into it take no lock.", ckpt_dir)
        return
    first = _first_rank()
    if first:
        _lock_run_folder(folder)
    try:
        earlier = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
        if resume is not None:
            source = _resume_source(folder, resume, earlier)  # a Path, a remote URL (str) or None (Lightning's key)
            if isinstance(source, Path):
                _warn_skewed_loop_state(source)
            if source is None or not earlier:
                return source
            if isinstance(source, Path) and source.resolve().parent == folder.resolve():
                return source
            if not overwrite:
                raise ValueError(
                    f"--resume {resume} continues another folder's checkpoint into {folder}, which holds other "
                    f"checkpoints ({', '.join(p.name for p in earlier)}): give another --output_dir DIR, or replace "
                    "them with --overwrite_run true."
                )
        elif not earlier:
            return None
        elif not overwrite:
            raise ValueError(
                f"{folder} holds an earlier run's checkpoints ({', '.join(p.name for p in earlier)}): continue that "
                "run with --resume last, train into another folder with --output_dir DIR, or replace them with "
                "--overwrite_run true."
            )
    except BaseException:
        release_run_folder(folder)  # a refused run holds nothing
        raise
    if first:  # the folder's lock is the first rank's: the other ranks leave its files alone
        for path in earlier:
            path.unlink(missing_ok=True)
        logger.warning("overwrite_run: removed the earlier run's checkpoints in %s.", folder)
    return source if resume is not None else None


def run_training(trainer, module, datamodule, *, ckpt_dir, resume=None, overwrite_run=False):
    """train.json's ``training``: the data's check (:func:`check_training_data`), the checkpoint folder's check and
    lock (:func:`check_run_folder`), then ``trainer.fit``; the lock is let go however that ends (a fit that raised in
    a notebook kept it, and every other process was refused the folder until the kernel ended)."""
    check_training_data(datamodule)  # first: a run refused for its data keeps the folder's checkpoints
    exports = _export_folders(trainer)
    for models_dir in exports:  # a bundle's models/ is refused before overwrite_run removes anything
        _refuse_bundle_models(Path(models_dir))
    source = check_run_folder(ckpt_dir, resume, overwrite_run)  # (overwrite_run removed them, then the data failed)
    try:
        for models_dir in exports:  # under the run folder's lock
            check_export_folder(models_dir, resume, overwrite_run)
        start = _check_resumed_network(module, source, getattr(trainer, "max_steps", -1)) if source else None
        result = trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        if start is not None and getattr(trainer, "global_step", start + 1) <= start:
            logger.warning(  # from a review: a resume whose epoch limit was already reached trained nothing, exit 0
                "--resume: the run trained no step: %s, at step %d, had already reached one of this run's limits, "
                "epochs (%s) or max_time (%s); raise it.",
                source,
                start,
                getattr(trainer, "max_epochs", "?"),
                _trainer_max_time(trainer),
            )
        return result
    except SIGTERMException as e:  # a SystemExit without a code: a scheduler's time limit ended the run with status 0
        logger.error(
            "medwidit: error: training stopped by SIGTERM at step %s, before its end: nothing was exported; continue "
            "it with --resume last (its last.ckpt is from the end of the last whole epoch).",
            getattr(trainer, "global_step", "?"),
        )
        raise SystemExit(128 + signal.SIGTERM) from e
    finally:
        release_run_folder(ckpt_dir)


def _check_resumed_network(module, checkpoint, max_steps=-1) -> int | None:
    """A ValueError naming the checkpoint and the first differing weights where its network is not this run's (an
    override such as ``--hidden_size 32`` beside ``--resume last``): Lightning's load printed 157 lines of
    ``Error(s) in loading state_dict`` after the whole setup (from a review). Then the same for the settings that give
    the weights their meaning (:func:`model_differences`, as ``init_weights`` refuses them): a later review resumed
    an x0 run with ``--objective epsilon`` and it trained on, exit 0, and exported weights labelled epsilon. Then
    one where ``max_steps`` leaves the resumed run nothing to train. -> the checkpoint's step, None where it is not a
    local file or unreadable (Lightning's load says why)."""
    if not isinstance(checkpoint, Path):  # a remote URL or Lightning's own key: Lightning reads it
        return None
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        step = int(state.get("global_step", 0))
    except Exception:
        return None
    _check_same_network(module, checkpoint, state)
    if is_integer(max_steps) and max_steps != -1 and step >= max_steps:
        raise ValueError(
            f"--resume: {checkpoint} is at step {step} and max_steps is {max_steps}: nothing to train; give a "
            "larger --max_steps."
        )
    return step


def _check_same_network(module, checkpoint: Path, state: dict) -> None:
    """:func:`_check_resumed_network`'s comparison of the weights (``state``'s) and then the settings."""
    ours, theirs = getattr(module, "state_dict", dict)(), state.get("state_dict", {})
    if not ours or not isinstance(theirs, dict):
        return
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [
        f"{k} {tuple(theirs[k].shape)} (this run: {tuple(v.shape)})"
        for k, v in ours.items()
        if k in theirs and hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    parts = [f"shapes {', '.join(shapes[:3])}{' ...' if len(shapes) > 3 else ''}"] if shapes else []
    for what, keys in (("weights this run lacks", unexpected), ("weights the checkpoint lacks", missing)):
        parts += [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"] if keys else []
    if parts:
        raise ValueError(
            f"--resume: {checkpoint} holds another network than this run builds ({'; '.join(parts)}): resume with the "
            "run's own settings (its hparams.yaml), or start a new run, from these weights with --init_weights."
        )
    config = (state.get("hyper_parameters") or {}).get("model_config")
    own = (getattr(module, "hparams", None) or {}).get("model_config")
    different = model_differences(own, config) if isinstance(config, dict) and isinstance(own, dict) else []
    # the preprocessing too: the export writes this run's beside the checkpoint's weights (from a review: a resume
    # with --preprocessing#spacing [1,1,1] exported 2 mm weights described as 1 mm ones, exit 0)
    saved = (state.get("hyper_parameters") or {}).get("preprocessing")
    ours = (getattr(module, "hparams", None) or {}).get("preprocessing")
    if isinstance(saved, dict) and isinstance(ours, dict):
        saved, ours = check_preprocessing(saved), check_preprocessing(ours)
        different += [f"preprocessing.{k}" for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)]
    if different:
        raise ValueError(
            f"--resume: {checkpoint} was trained with other settings in {different}, which give its weights their "
            "meaning: resume with the run's own settings (its hparams.yaml; set those overrides to the checkpoint's "
            "values), or train a new run with them from scratch."
        )


def _trainer_max_time(trainer) -> str:
    """The duration of the trainer's Lightning ``Timer`` callback (``max_time``), as text ("none" without one)."""
    seconds = [c._duration for c in getattr(trainer, "callbacks", ()) if isinstance(c, Timer) and c._duration]
    return f"{seconds[0]:.0f} s" if seconds else "none"


def _export_folders(trainer) -> list[Path]:
    """The folders the trainer's :class:`~medwidit.training.ExportSegmenter` callbacks write at the end of fit."""
    from medwidit.training.module import ExportSegmenter  # Lightning's side, imported where a run starts

    return [c.models_dir for c in getattr(trainer, "callbacks", ()) if isinstance(c, ExportSegmenter)]


EXPORTED_FILES = ("model.pt", "medwidit.json")  # what ExportSegmenter writes (save_bundle_weights)


def check_export_folder(models_dir: str | os.PathLike, resume, overwrite_run=False) -> None:
    """The folder a run exports its weights into at the end (``ExportSegmenter``, train.json's ``export_dir``) is the
    run's own. A bundle's ``models/`` (a folder beside ``configs/``, e.g. ``--output_dir`` pointed at a bundle) is
    refused whatever the options: only ``medwidit export`` changes it, and a run there had replaced the bundle's
    ``model.pt`` (the default model of ``medwidit segment`` for the shipped one) without a word. An earlier run's
    export in the folder is refused unless the run resumes (the run's own) or ``overwrite_run`` (then removed now: a
    run that fails before its export must not leave the earlier run's weights beside its own checkpoints)."""
    folder = Path(models_dir)
    if "://" in str(models_dir) or not folder.is_dir():
        return
    _refuse_bundle_models(folder)
    earlier = [folder / name for name in EXPORTED_FILES if (folder / name).exists()]
    if not earlier or resume is not None:
        return
    if not check_bool("overwrite_run", overwrite_run):
        raise ValueError(
            f"{folder} holds an earlier run's exported weights ({', '.join(p.name for p in earlier)}): train into "
            "another folder with --output_dir DIR, or replace them with --overwrite_run true."
        )
    if _first_rank():
        for path in earlier:
            path.unlink(missing_ok=True)
        logger.warning("overwrite_run: removed the earlier run's exported weights in %s.", folder)


def _refuse_bundle_models(folder: Path) -> None:
    """A ValueError where ``folder`` is a bundle's models folder (beside a ``configs/`` with train.json or
    inference.json) holding weights: see :func:`check_export_folder`."""
    if "://" in str(folder) or not folder.is_dir():
        return
    held = [name for name in EXPORTED_FILES if (folder / name).exists()]
    if held and any((folder.parent / "configs" / name).is_file() for name in ("train.json", "inference.json")):
        raise ValueError(
            f"{folder} is a bundle's models folder (it holds {', '.join(held)}; configs/ is beside it): a training "
            "run exports into a folder of its own, so give --output_dir another folder (e.g. the bundle's runs/), "
            "then make its weights the bundle's with `medwidit export RUN/checkpoints/best.ckpt BUNDLE --overwrite`."
        )


def release_run_folder(ckpt_dir: str | os.PathLike) -> None:
    """Let go of the lock that :func:`check_run_folder` took on ``ckpt_dir`` in this process (nothing if none)."""
    stack = _RUN_LOCKS.pop(_run_lock_path(Path(ckpt_dir)), None)
    if stack is not None:
        stack.close()


# lock file -> the ExitStack holding it: a run's lock lives from its check to release_run_folder (or the process's
# end); a second check in the same process (a notebook training again) keeps the one it holds
_RUN_LOCKS: dict[str, contextlib.ExitStack] = {}


def _run_lock_path(folder: Path) -> str:
    folder = folder.resolve()  # one folder, one lock, through any link or ".."
    return str(folder.parent / f".{folder.name}.lock")  # beside it: Lightning warns of files inside


def _lock_run_folder(folder: Path) -> None:
    path = _run_lock_path(folder)
    if path in _RUN_LOCKS:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    if not stack.enter_context(locked(path, blocking=False, required=False)):
        stack.close()
        holder = Path(path).read_text().strip() if Path(path).is_file() else ""
        raise ValueError(
            f"{folder} is in use by another training run{f' ({holder})' if holder else ''}: wait for it to end, "
            "or train into another folder with --output_dir DIR."
        )
    try:  # who holds it, for the refusal's line; a folder where no lock file can be written ran without a lock
        Path(path).write_text(
            f"process {os.getpid()} on {platform.node()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
    except OSError:
        pass
    _RUN_LOCKS[path] = stack


# Lightning's order (lightning_fabric's _get_rank): SLURM_PROCID may be set where SLURM does not manage the processes
# (an interactive srun), where Lightning's launcher gives each child its LOCAL_RANK; then MPI's and LSF's
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def _first_rank() -> bool:
    """Whether this process is a distributed run's first rank (or no distributed run's), from the environment the
    launchers set before any process group exists: the first rank variable set, and no node but the first
    (Lightning's launcher on node 1 sets only NODE_RANK in its main process; SLURM says SLURM_NODEID)."""
    for name in ("NODE_RANK", "GROUP_RANK", "SLURM_NODEID"):  # SLURM_NODEID: an sbatch exporting LOCAL_RANK only
        if os.environ.get(name, "").strip() not in ("", "0"):
            return False
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip() == "0"
    return True


def _warn_skewed_loop_state(checkpoint: Path) -> None:
    """A warning where ``checkpoint``'s epoch counters are Lightning's skewed ones (more epochs processed than
    started), which a run resumed from a stop at ``max_steps`` on an epoch's last batch saves (Lightning issue
    19617): resumed again, it stopped early or trained nothing, silently (seen on Lightning 2.6: a third run to
    20 steps from a second one that had stopped at 12 trained no step)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        total = state["loops"]["fit_loop"]["epoch_progress"]["total"]
        skewed = int(total["processed"]) > int(total["started"])
    except Exception:  # not Lightning's layout, or unreadable: Lightning's own load says what is wrong
        return
    if skewed:
        logger.warning(
            "%s: its epoch counters are Lightning's skewed ones after a stop at max_steps on an epoch's last batch "
            "(Lightning issue 19617); resumed, the run may stop early or train nothing. To train on from its weights, "
            "export them into a copy of the bundle's folder (medwidit export %s BUNDLE_COPY; from a review: another "
            "folder is refused as not a bundle) and start a new run with --init_weights BUNDLE_COPY/models/model.pt "
            "and another --output_dir (a fresh optimizer and schedule).",
            checkpoint,
            checkpoint,
        )


def _resume_source(folder: Path, resume, earlier: list[Path]) -> Path | str | None:
    """The checkpoint file ``resume`` names, a remote URL as given, or None for Lightning's "best", "hpc" and
    "registry"; else ValueError."""
    if resume == "last":
        last = [p for p in earlier if p.name.startswith("last")]
        if not last:
            raise ValueError(
                f"--resume last: {folder} holds no last.ckpt to continue (is --output_dir the earlier run's?); start "
                "a new run without --resume, or name a checkpoint file: --resume PATH.ckpt."
            )
        return max(last, key=lambda p: p.stat().st_mtime)
    if resume in ("best", "hpc", "registry") or (isinstance(resume, str) and resume.startswith("registry:")):
        return None
    if isinstance(resume, str) and resume.startswith("file://"):
        resume = resume[len("file://") :]
    elif isinstance(resume, str) and "://" in resume:  # s3://, gs://: Lightning reads them through fsspec
        return resume
    if not isinstance(resume, (str, os.PathLike)) or not Path(resume).is_file():
        raise ValueError(f"--resume {resume}: no such checkpoint file; give a .ckpt path or last.")
    return Path(resume)


def check_run_options(
    *,
    seed,
    epochs,
    max_steps,
    val_interval,
    device,
    num_classes=None,
    val_samples=None,
    overlap=None,
    sw_batch_size=None,
    max_time=None,
) -> None:
    """train.json's options that Lightning and torch read before any medwidit code, each checked by name (from a
    review, each was a traceback: ``--seed abc`` in ``seed_everything``, ``--epochs abc`` a TypeError, ``--val_interval
    0`` a ZeroDivisionError in Lightning's loop, ``--device gpu`` torch's RuntimeError listing its device types;
    ``--num_classes 3.5`` named the network's in_channels, which it sets). The validation sampler's ``val_samples``,
    ``overlap`` and ``sw_batch_size`` (a later review: each failed only at the first validation, after the training
    before it, naming the sampler's argument; ``val_steps``, bounded by the segmenter's timesteps, is the training
    module's check) and Lightning's ``max_time`` (its error was buried in an 89-line traceback) are checked too, where
    given."""
    for name, value in (("val_samples", val_samples), ("sw_batch_size", sw_batch_size)):
        if value is not None:
            check_int(name, value)
    if overlap is not None:
        check_range("overlap", overlap, 0.0, 1.0)
    if max_time is not None:
        try:
            Timer(duration=max_time)  # Lightning's own reading of a duration
        except (MisconfigurationException, ValueError, TypeError, AttributeError):  # 5: an AttributeError
            raise ValueError(
                f"max_time must be a duration 'DD:HH:MM:SS' (e.g. '00:12:00:00') or a dict such as {{'hours': 12}}, "
                f"got {max_time!r}."
            ) from None
    if num_classes is not None and not (is_integer(num_classes) and num_classes >= 2):
        raise ValueError(f"num_classes must be an int >= 2 (background and at least one class), got {num_classes!r}.")
    if not (is_integer(seed) and 0 <= seed <= 2**32 - 1):
        raise ValueError(f"seed must be an int in 0..2**32-1 (Lightning's seed_everything), got {seed!r}.")
    for name, value in (("epochs", epochs), ("max_steps", max_steps)):
        if value is not None and not (is_integer(value) and (value >= 1 or value == -1)):
            raise ValueError(f"{name} must be an int >= 1, or -1 for no limit, got {value!r}.")
    if val_interval is not None and not (is_integer(val_interval) and val_interval >= 1):
        raise ValueError(f"val_interval must be an int >= 1 (validate every that many epochs), got {val_interval!r}.")
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}.") from None


def refuse_renamed(**values) -> None:
    """Raise ValueError naming the new key for every renamed ``train.json`` key (``RENAMED_KEYS``) that an override
    set: an override of a key that nothing reads would otherwise be ignored without a word."""
    given = {old: value for old, value in values.items() if value is not None}
    unknown = sorted(set(values) - set(RENAMED_KEYS))
    if unknown:
        raise ValueError(f"refuse_renamed knows {sorted(RENAMED_KEYS)}, got {unknown}.")
    if given:
        hints = ", ".join(f"{k!r} is now {RENAMED_KEYS[k]!r} (--{RENAMED_KEYS[k]} {v})" for k, v in given.items())
        raise ValueError(f"renamed bundle key(s): {hints}.")


def require_done(results: Sequence) -> list:
    """Raise CasesFailedError naming every failed case of ``Predictor.predict_from_files``'s results (objects with
    ``name``, ``status`` and ``message``), so that a bundle run with a failed case does not end as a success; under
    ``monai.bundle run`` it prints as one line, after each case's own (it was a 58-line traceback)."""
    results = list(results)
    failed = [r for r in results if getattr(r, "status", None) == "failed"]
    if failed:
        lines = "\n".join(f"  {r.name}: {r.message}" for r in failed)
        raise CasesFailedError(f"{len(failed)} of {len(results)} case(s) failed:\n{lines}")
    if not results:
        raise CasesFailedError("no case was segmented: the data list split is empty.")
    return results


class SegmentationNetwork(nn.Module):
    """The bundle's network as MONAI's tools see it: image (B, C_img, *S) -> class probabilities (B, K, *S).

    ``forward`` draws ``num_samples`` DDIM samples of ``steps`` steps (the first ``shared_steps`` run once for all of
    them, as ``DiffusionSegmenter.sample``) from a generator seeded with ``seed`` and returns their mean probability,
    so that one call is one deterministic segmentation (``verify_net_in_out``, ``ckpt_export``). It holds one set of
    weights: inference.json's ``network_def`` samples ``num_samples x weight_sets`` members of model.pt, so a shared
    trunk there serves all of them, where the CLI shares one trunk per set. The network's
    parameters are registered under the network's own names, so a medwidit checkpoint's ``state_dict`` (the net's
    weights, see ``save_segmenter``) loads into it unchanged (``ckpt_export --key_in_ckpt state_dict``).
    """

    def __init__(
        self,
        segmenter: DiffusionSegmenter,
        *,
        steps: int = 10,
        num_samples: int = 1,
        shared_steps: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(segmenter, DiffusionSegmenter):
            raise TypeError(f"segmenter must be a DiffusionSegmenter, got {type(segmenter).__name__}.")
        if int(steps) < 1 or int(num_samples) < 1:
            raise ValueError(f"steps and num_samples must be >= 1, got {steps} and {num_samples}.")
        if not 0 <= int(shared_steps) < int(steps):
            raise ValueError(f"shared_steps must be in 0..{int(steps) - 1} (fewer than steps), got {shared_steps}.")
        object.__setattr__(self, "segmenter", segmenter)  # not a child: its net's tensors are ours, by their names
        for child_name, child in segmenter.net.named_children():
            self.add_module(child_name, child)
        for param_name, param in segmenter.net.named_parameters(recurse=False):
            self.register_parameter(param_name, param)
        transient = segmenter.net._non_persistent_buffers_set
        for buffer_name, buffer in segmenter.net.named_buffers(recurse=False):
            self.register_buffer(buffer_name, buffer, persistent=buffer_name not in transient)
        self.steps, self.num_samples, self.shared_steps = int(steps), int(num_samples), int(shared_steps)
        self.seed = int(seed)

    @property
    def num_classes(self) -> int:
        return self.segmenter.num_classes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=image.device).manual_seed(self.seed)
        spacing = batch_spacing(image).to(image.device) if self.segmenter.spacing_conditioning else None
        samples = self.segmenter.sample(  # (S, B, K, *S)
            image.float(),
            steps=self.steps,
            num_samples=self.num_samples,
            shared_steps=self.shared_steps,
            generator=generator,
            spacing=spacing,
        )
        return to_probabilities(samples, dim=2).mean(dim=0)  # (B, K, *S)
