"""A one-node SLURM cluster for the `slurm`-marked tests: started once per session, stopped by PID.

Needs root and SLURM installed (scripts/deps/slurm.sh); the tests are skipped otherwise. A cluster
that already answers (`sinfo` shows an idle node) is used as it is and left running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_cluster.py"


def _node_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0 and any(s.rstrip("*") in ("idle", "mix") for s in proc.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if _node_ready():
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root")
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("SLURM is not installed (as root: scripts/deps/slurm.sh)")
    state = tmp_path_factory.mktemp("slurm-state")
    proc = subprocess.run([sys.executable, str(SCRIPT), "start", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        subprocess.run([sys.executable, str(SCRIPT), "stop", "--state-dir", str(state)], check=False)
        pytest.fail(f"the SLURM cluster did not start:\n{proc.stderr[-3000:]}")
    try:
        yield
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "stop", "--state-dir", str(state)], check=False, timeout=120)


class _SweepComposer:
    """Composes every job through the config loader's `load_sweep_config`, Hydra's own path."""

    def __init__(self, config_loader: object, master_config: object) -> None:
        self.loader, self.master = config_loader, master_config

    def compose(self, overrides: list[str]) -> object:
        return self.loader.load_sweep_config(self.master, list(overrides))  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def sweep_composer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tests' stand-in config loaders answer `load_sweep_config` only, so the launcher composes
    through it (the real-cluster tests run llem in subprocesses, which this does not touch)."""
    import llem.launch.slurm.launcher as launcher_module

    monkeypatch.setattr(launcher_module, "JobComposer", _SweepComposer, raising=False)
