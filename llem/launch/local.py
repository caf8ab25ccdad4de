"""A worker that is a local Python process."""

from __future__ import annotations

import os
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
        # the worker imports what the launcher could import (task modules, test apps)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env[protocol.AUTHKEY_ENV] = self.authkey.hex()
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
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def exit_report(self) -> str:
        code = None if self._proc is None else self._proc.poll()
        status = "still running" if code is None else f"exit code {code}"
        if code is not None and code < 0:
            status = f"killed by signal {-code}"
        return f"{status}; last lines of {self.log_path}:\n{tail(self.log_path)}"
