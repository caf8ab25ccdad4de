"""Imports point down the layers only: hydra_plugins → campaign → launch → plan → measure → backends, energy → config.

A lower layer reports upward through an interface it owns (e.g. llem.launch.reporting.JobReporter),
never by importing the layer above: read from the code's own import statements, lazy ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> packages it must never import
NEVER: dict[str, tuple[str, ...]] = {
    "llem/launch": ("llem.campaign", "hydra_plugins"),
    "llem/plan": ("llem.campaign", "llem.launch", "hydra_plugins"),
    "llem/measure": ("llem.campaign", "llem.launch", "llem.plan", "hydra_plugins"),
    "llem/backends": ("llem.measure", "llem.campaign", "llem.launch", "llem.plan", "hydra_plugins"),
    "llem/energy": ("llem.backends", "llem.measure", "llem.campaign", "llem.launch", "llem.plan", "hydra_plugins"),
    "llem/config": ("llem.energy", "llem.backends", "llem.measure", "llem.campaign", "llem.launch", "llem.plan",
                    "hydra_plugins"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement of the file names (at any depth, type-checking blocks included)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]  # `from pkg import module`
    return out


@pytest.mark.parametrize("package", sorted(NEVER))
def test_no_import_runs_back_up(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in _imports(path)
        if any(module == above or module.startswith(above + ".") for above in NEVER[package])
    ]
    assert wrong == []


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("places", [
    ("llem/launch", "llem/campaign", "llem/plan"),
    ("llem/report/stats.py", "llem/report/summary.py", "llem/report/columns.py"),
])
def test_no_two_modules_import_each_other(places: tuple[str, ...]) -> None:
    """No circle of imports among these modules (a package's __init__ only hands names on)."""
    files = [p for place in places for p in ([ROOT / place] if place.endswith(".py") else
                                             sorted((ROOT / place).rglob("*.py")))
             if p.name != "__init__.py" and p.exists()]
    names = {_module(p): p for p in files}
    edges = {
        name: {m for _, m in _imports(path) if m in names and m != name}
        for name, path in names.items()
    }
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(edges[name]):
            if state.get(other) == 1:
                circles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, [*path, other])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert circles == []
