"""Where a launcher's jobs run, as the campaign's preflight needs to know it before anything launches."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str] | None"]


def run_probe(cmd: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    """Run a short check command (an argument list, never a shell string); None when it cannot run."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


@dataclass
class Workers:
    """Where the jobs will run: `local` processes (on `python`), `container`s (`engine` + `images`)."""

    kind: str
    python: str | None = None
    engine: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    gpu_count: int = 0
    run: Runner = run_probe
