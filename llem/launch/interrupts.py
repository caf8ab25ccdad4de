"""SIGTERM handled like Ctrl-C, so a campaign stopped by a scheduler or `kill` cleans up the same way."""

from __future__ import annotations

import signal
import threading
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


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM within the block is held until its end, then raised as KeyboardInterrupt.

    For steps that must not be cut in half, such as recording a finished job and queueing its notification: an
    interrupt between the two would leave a job recorded as completed whose notification never went out. Only the
    main thread receives signals, so elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in watched}
    if any(h is None for h in previous.values()):  # a handler Python did not install could not be restored
        yield
        return
    for s in watched:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if held:
        handler = previous[held[0]]
        if callable(handler):
            handler(held[0], None)  # Python's SIGINT handler or sigterm_as_interrupt's: raises KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            signal.raise_signal(held[0])
