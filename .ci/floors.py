"""Print pyproject's run-time dependencies pinned at their floors (``name==floor``), one per line, for .ci/oldest
(torch's floor, 2.8, comes from PyPI as its CUDA build: about 3.5 GB, which runs on the CPU)."""

import re
from pathlib import Path

import tomllib

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"]:
    name = re.split(r"[<>=;\s]", requirement, maxsplit=1)[0]
    floor = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    print(f"{name}=={floor[1]}" if floor else name)
