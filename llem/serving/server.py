"""An engine's OpenAI-compatible server as a child process: free loopback port, readiness, log, stop.

The process gets its own session (process group), so stopping it stops every worker the
engine spawned, and nothing is left holding the GPU for the next job. The command is an
argv list; nothing goes through a shell. Readiness is the server answering `/health`
(or `/v1/models`) with 200 within the timeout; a server that exits or never answers fails
with the last lines of its log.

A server outlives the job that started it when the next job reuses it, so its output goes
through a pipe that a thread copies into the log of whichever job is running (`log_to`):
each job's log holds what the server printed while that job ran.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


LOOPBACK = "127.0.0.1"
# Set by a container launcher that published one port of the container on the host's loopback: the server
# listens on that port, on every interface of the container (a published port does not reach its loopback).
PORT_ENV = "LLEM_SERVER_PORT"
BIND_ENV = "LLEM_SERVER_BIND"
READY_PATHS = ("/health", "/v1/models")
LOG_TAIL_LINES = 30


class ServerError(RuntimeError):
    """The server could not be started or stopped; the message carries the end of its log."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_port() -> int:
    """The port the next server listens on: the one published for it ($LLEM_SERVER_PORT), else a free one."""
    fixed = os.environ.get(PORT_ENV)
    return int(fixed) if fixed else free_port()


def bind_host() -> str:
    """The address the server listens on: loopback, unless a container launcher published its port."""
    return os.environ.get(BIND_ENV) or LOOPBACK


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def vllm_server_argv(model: str, port: int, *, host: str = LOOPBACK, served_name: str | None = None,
                     engine_args: Sequence[str] = (), python: str = sys.executable) -> list[str]:
    """vLLM's OpenAI API server as a module (the `vllm` console script does not run under the CPU wheel)."""
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
            "--port", str(port)]
    if served_name:
        argv += ["--served-model-name", served_name]
    return argv + [str(a) for a in engine_args]


class ServerProcess:
    """One server: `start()` launches it and waits for readiness, `stop()` ends its whole process group."""

    def __init__(self, argv: Sequence[str], *, port: int, log_path: str | Path, host: str = LOOPBACK,
                 env: Mapping[str, str] | None = None, ready_timeout_s: float = 600.0,
                 stop_timeout_s: float = 30.0) -> None:
        if not argv:
            raise ValueError("empty server command")
        self.argv = [str(a) for a in argv]
        self.host = host
        self.port = port
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None  # seconds from launch to ready
        self.server_id: str | None = None  # set by whoever starts it, to name this start in results
        self.started_at: str | None = None
        self.served_model: str | None = None  # the model name requests must send, where it is not model.name
        self._log_lock = threading.Lock()
        self._log_file: Any = None
        self._pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ServerProcess:
        """Launch and wait until ready; on failure the process group is stopped and ServerError raised."""
        if self.process is not None:
            raise RuntimeError("server already started")
        self.log_to(self.log_path)
        # tethered: the server ends with this process even if it is killed before it can call stop()
        tethered = [sys.executable, "-m", "llem.serving.tethered", str(os.getpid()), *self.argv]
        self.process = subprocess.Popen(  # noqa: S603 - an argv list, never a shell string
            tethered, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self._pump = threading.Thread(target=self._copy_log, args=(self.process.stdout,), daemon=True,
                                      name=f"server-log-{self.port}")
        self._pump.start()
        t0 = time.monotonic()
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - t0
        return self

    def log_to(self, path: str | Path) -> None:
        """From now on, the server's output goes to `path` (appended): the log of the job now using it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = open(path, "ab")  # noqa: SIM115 - closed when replaced or when the server's output ends
        with self._log_lock:
            old, self._log_file, self.log_path = self._log_file, new, path
        if old is not None:
            old.close()

    def _copy_log(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            with self._log_lock:
                if self._log_file is not None:
                    self._log_file.write(line)
                    self._log_file.flush()
        stream.close()
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.ready_timeout_s
        while True:
            code = self.process.poll() if self.process is not None else None
            if code is not None:
                raise ServerError(f"the server exited with code {code} before it was ready; the end of its "
                                  f"log ({self.log_path}):\n{log_tail(self.log_path)}")
            for path in READY_PATHS:
                status = _status(self.url + path)
                if status == 200:
                    foreign = _foreign_listener(self.port, self.process.pid if self.process is not None else -1)
                    if foreign is not None:  # another server took the port first (free_port() is a guess)
                        raise ServerError(f"port {self.port} answers, but from process {foreign}, not this server "
                                          f"(another server took the port first); see {self.log_path}")
                    return
                if status is None:
                    break  # not listening yet
            if time.monotonic() >= deadline:
                raise ServerError(f"the server did not answer {READY_PATHS[0]} within {self.ready_timeout_s:g}"
                                  f" s; the end of its log ({self.log_path}):\n{log_tail(self.log_path)}")
            time.sleep(0.5)

    def stop(self) -> int | None:
        """SIGTERM to the whole group, SIGKILL after `stop_timeout_s`; the exit code (None if never started)."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self.stop_timeout_s)
        _signal_group(proc.pid, signal.SIGKILL)  # workers the engine left behind in its group
        if self._pump is not None:
            self._pump.join(timeout=5)  # the last lines reach the log before anyone reads it
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _status(url: str, timeout_s: float = 5.0) -> int | None:
    """HTTP status of GET `url`; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - a loopback http URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def _foreign_listener(port: int, root_pid: int) -> int | None:
    """The pid of a process outside the server's own process tree listening on `port`, if one can be seen."""
    import psutil

    try:
        listeners = [c for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid is not None]
        if not listeners:
            return None
        root = psutil.Process(root_pid)
        ours = {root_pid, *(p.pid for p in root.children(recursive=True))}
    except (psutil.Error, OSError):
        return None  # not allowed to see it: nothing to say
    return next((c.pid for c in listeners if c.pid not in ours), None)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
