"""A worker that is a local Python process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from llem.launch import protocol
from llem.launch.handle import WorkerHandle

LOG_TAIL_LINES = 30


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _installed_path(path: str) -> bool:
    """Whether `path` belongs to this interpreter's installation (stdlib, site-packages) rather than a project."""
    resolved = os.path.realpath(path)
    if any(part in ("site-packages", "dist-packages") for part in Path(resolved).parts):
        return True
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return any(resolved == root or resolved.startswith(root + os.sep) for root in roots)


def worker_pythonpath(python: str) -> list[str]:
    """What the worker may import beyond its own installation: the launcher's task modules and apps.

    A worker on the launcher's interpreter gets the launcher's whole `sys.path`. A worker on another
    interpreter (`hydra.launcher.python`, e.g. a venv with another vLLM) keeps its own packages: it gets
    only the project paths, never this interpreter's stdlib or site-packages.
    """
    paths = [p for p in sys.path if p]
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # venvs share the base binary: no realpath
        return paths
    return [p for p in paths if not _installed_path(p)]


def _descendants(pid: int) -> list[Any]:
    """The live processes below `pid` (empty when it has ended and its children were re-parented)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


class LocalWorker(WorkerHandle):
    """`python -m llem.launch.worker` in its own session, so Ctrl-C reaches only the launcher."""

    def __init__(
        self,
        key: str,
        socket_dir: Path,
        log_dir: Path,
        singleton_state: Any,
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(key, socket_dir, singleton_state)
        self.python = python
        self.log_path = Path(log_dir) / f"worker-{key}.log"
        self.extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    def _launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(worker_pythonpath(self.python))
        env[protocol.AUTHKEY_ENV] = self.authkey.hex()
        env[protocol.PARENT_ENV] = str(os.getpid())
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.python, "-m", "llem.launch.worker", "--socket", str(self.socket_path)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=os.getcwd(),
            )

    _relaunch = _launch

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _terminate(self) -> None:
        """Kill the worker and everything it started (engine cores, workers holding GPU memory).

        The worker leads its own process group, so the group outlives it while any engine process is
        left; descendants that moved to a group of their own are found through the process tree first.
        """
        if self._proc is None:
            return
        strays = _descendants(self._proc.pid)
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for child in strays:
            try:
                child.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._proc.wait(timeout=30)
        if strays:
            import psutil

            psutil.wait_procs(strays, timeout=10)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def exit_report(self) -> str:
        code = None if self._proc is None else self._proc.poll()
        status = "still running" if code is None else f"exit code {code}"
        if code is not None and code < 0:
            status = f"killed by signal {-code}"
        return f"{status}; last lines of {self.log_path}:\n{tail(self.log_path)}"
