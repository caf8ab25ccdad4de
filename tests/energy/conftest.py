"""Every test measures the scripted counters afresh: the update-period cache is per process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llem.energy.devices import forget_counter_update_periods


@pytest.fixture(autouse=True)
def _fresh_update_periods() -> Iterator[None]:
    forget_counter_update_periods()
    yield
    forget_counter_update_periods()
