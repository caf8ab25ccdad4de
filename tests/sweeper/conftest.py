"""A Hydra config loader over llem's conf/ for planning tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra


@pytest.fixture
def loader() -> Iterator[Any]:
    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()
