"""Errors a backend raises when the machine where the job runs cannot run it."""

from __future__ import annotations


class HardwareUnsupported(RuntimeError):
    """This job's settings need hardware or a package this machine lacks; the message says which."""
