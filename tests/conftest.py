"""Shared fixtures: a cache dir per test session so built-in models are built once, offline."""

from __future__ import annotations

import os
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
