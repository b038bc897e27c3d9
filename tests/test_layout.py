"""The package's imports flow one way: core <- pruning <- inference <- study <- report <- cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prunelab"

LAYERS = {
    "files": 0, "data": 0, "models": 0, "evaluate": 0, "train": 0,
    "pruning": 1,
    "inference": 2,
    "study": 3,
    "report": 4,
    "cli": 5, "__init__": 5, "__main__": 5,
}
"""Top-level part of ``prunelab`` -> its layer; a module may import its own layer or lower."""


def _part(module: str) -> str:
    """``prunelab.study.sweep`` -> ``study``."""
    return module.split(".")[1] if "." in module else "__init__"


def _imports(path: Path) -> set[str]:
    """Every ``prunelab.*`` module imported anywhere in ``path`` (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("prunelab"):
                found |= {node.module} if node.module != "prunelab" else {
                    f"prunelab.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("prunelab")}
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def test_every_part_has_a_layer() -> None:
    parts = {_part(m) for m in _modules()}
    assert parts <= set(LAYERS), f"modules outside the layer map: {parts - set(LAYERS)}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_never_go_up(module: str) -> None:
    layer = LAYERS[_part(module)]
    upward = sorted(i for i in _imports(_modules()[module]) if LAYERS[_part(i)] > layer)
    assert not upward, f"{module} (layer {layer}) imports {upward} from a higher layer"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from prunelab.report.writer import write_all\n")
    assert _imports(bad) == {"prunelab.report.writer"}
    assert LAYERS[_part("prunelab.report.writer")] > LAYERS[_part("prunelab.study.sweep")]
