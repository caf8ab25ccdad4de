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

    A handler Python did not install (getsignal() is None) is left alone: it could not be restored. Off the
    main thread (a campaign run from a service's worker thread) nothing is installed: only the main thread may
    set handlers, and signals reach only it, so the caller's own handling stands.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
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
    main thread receives signals, so elsewhere the block runs as is. A held interrupt is raised even when the block
    ends with an exception: the user's stop wins.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watched = {signal.SIGINT, signal.SIGTERM}
    previous = {s: signal.getsignal(s) for s in watched}
    if any(h is None for h in previous.values()):  # a handler Python did not install could not be restored
        yield
        return
    held: list[int] = []
    for s in watched:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        # restore both handlers with the signals blocked, so none lands between the two and finds a mix
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        try:
            for s, h in previous.items():
                signal.signal(s, h)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)  # one that came meanwhile reaches its own handler
        if held:
            handler = previous[held[0]]
            if callable(handler):
                handler(held[0], None)  # Python's SIGINT handler or sigterm_as_interrupt's: raises KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                signal.raise_signal(held[0])
