"""The package keeps DESIGN's rooms: imports point down, never up or sideways."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medwidit"

# room -> the medwidit rooms it may import
ALLOWED = {
    "utils": set(),
    "data": {"utils"},
    "datasets": {"data", "utils"},
    "nets": {"utils"},
    "diffusion": {"nets", "data", "utils"},
    "inference": {"nets", "diffusion", "data", "utils"},
    "training": {"nets", "diffusion", "data", "utils"},
    "cli_parser": set(),  # imports nothing of medwidit's: `medwidit --help` answers at once
    "cli": {"cli_parser", "nets", "diffusion", "inference", "training", "data", "datasets", "utils"},
}


def _imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # relative import: resolve against the file's own package
            parts = path.relative_to(PACKAGE).parts[:-1]
            base = list(parts[: len(parts) - (node.level - 1)])
            names = [".".join(["medwidit", *base, *([node.module] if node.module else [])])]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "medwidit" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    room = _room(path)
    if room not in ALLOWED:
        return  # top-level helpers (medwidit/__init__.py, __main__.py) may import anything
    forbidden = _imported_rooms(path) - ALLOWED[room] - {room}
    assert not forbidden, f"{path.relative_to(PACKAGE)} (room {room!r}) imports {sorted(forbidden)}"
