"""SIGTERM handled like Ctrl-C, so a campaign stopped by a scheduler or `kill` cleans up the same way."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt; the previous handler comes back afterwards.

    A handler Python did not install (getsignal() is None) is left alone: it could not be restored.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
