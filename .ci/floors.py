"""Print pyproject's run-time dependencies pinned at their floors (``name==floor``), one per line, for .ci/oldest;
torch stays at the build on this disk (MONAI 1.6's floor, torch 2.8, exists on PyPI only as a multi-GB CUDA build)."""

import re
from pathlib import Path

import tomllib

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"]:
    name = re.split(r"[<>=;\s]", requirement, maxsplit=1)[0]
    floor = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    if name == "torch":
        print("torch==2.13.0")
    elif floor:
        print(f"{name}=={floor[1]}")
    else:
        print(name)
