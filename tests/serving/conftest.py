"""The fake server runs in a thread of the test process: switch threads often, so that neither the
server nor the client waits out Python's default 5 ms switch interval before its next timestamp."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _fast_thread_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(before)
