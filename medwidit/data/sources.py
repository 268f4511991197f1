"""Moved: the brain data builder is ``medwidit.datasets.brain`` (``python -m medwidit.datasets.brain build``) and the
shipped example ``medwidit.data.example``. This module keeps ``example_case`` importable under its old name until
its last importers (``medwidit.inference.demo``) move; run as a script it names the new command.
"""

from __future__ import annotations

import sys

from .example import example_case

__all__ = ["example_case"]

if __name__ == "__main__":
    raise SystemExit(
        "python -m medwidit.data.sources moved: run python -m medwidit.datasets.brain " + " ".join(sys.argv[1:])
    )
