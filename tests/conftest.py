"""Shared fixtures: a cache dir per test session so built-in models are built once, offline; and a
collection rule that leaves alone the modules a marker selection excludes whole."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("LLEM_CACHE_DIR", str(tmp_path_factory.mktemp("llem-cache")))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture
def fresh_hydra_version_base() -> None:
    """Hydra keeps the first `version_base` it sees for the whole process; conformance suites
    expect a process where none was set yet, as when they run on their own."""
    from hydra.core.singleton import Singleton
    from hydra.version import VersionBase

    Singleton._instances.pop(VersionBase, None)


_ONLY_NEGATIONS = re.compile(r"^\s*not\s+\w+(\s+and\s+not\s+\w+)*\s*$")


def _module_marks(path: Path) -> set[str]:
    """The markers a test module puts on all its tests (`pytestmark = [pytest.mark.x, ...]`)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()
    marks: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            for sub in ast.walk(node.value):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute) and sub.value.attr == "mark":
                    marks.add(sub.attr)
    return marks


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Do not even import a module whose every test a `-m "not x and not y"` selection leaves out: importing
    some (the container conformance suites) prepares what their tests need, such as a container image."""
    expression = config.option.markexpr
    if not expression or not _ONLY_NEGATIONS.match(expression) or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    excluded = set(re.findall(r"not\s+(\w+)", expression))
    return True if _module_marks(collection_path) & excluded else None
