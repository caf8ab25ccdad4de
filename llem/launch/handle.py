"""The host's side of one warm worker: start it, talk to it, notice when it dies, restart it.

Subclasses say how the worker process is started (a local process or a container);
the conversation — connect, init, run, health, unload, shutdown — is shared.
"""

from __future__ import annotations

import abc
import socket
import subprocess
import threading
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any, Callable

from llem.launch import protocol

CONNECT_TIMEOUT_S = 120.0


class WorkerDied(RuntimeError):
    """The worker's process or container ended; the message holds its exit status and log tail."""


class WorkerTimeout(RuntimeError):
    """The worker did not answer in time."""


class WorkerUnkillable(RuntimeError):
    """A kill did not end the worker in time: it may still hold its GPUs, so it must not be restarted."""


class WorkerHandle(abc.ABC):
    """One long-lived worker for one routing key (e.g. one backend)."""

    def __init__(self, key: str, socket_dir: Path, singleton_state: Any) -> None:
        self.key = key
        self.socket_path = Path(socket_dir) / f"{key}.sock"
        self.authkey = protocol.new_authkey()
        self.singleton_state = singleton_state
        self._conn: Connection | None = None
        self.starts = 0
        self.jobs_run = 0
        self.context_sent = False
        # One conversation at a time. `stop` from another thread (a Ctrl-C while job threads wait on their workers)
        # finds it taken, and a request cut short by an exception leaves a reply owed: both kill rather than ask.
        self._talking = threading.RLock()
        self._reply_owed = False

    # -- lifecycle implemented by subclasses
    @abc.abstractmethod
    def _launch(self) -> None:
        """Start the worker process (it listens on `socket_path`)."""

    @abc.abstractmethod
    def _alive(self) -> bool:
        """Whether the worker process is still running."""

    @abc.abstractmethod
    def _terminate(self) -> None:
        """Kill the worker process now (it may be stuck in a job)."""

    @abc.abstractmethod
    def exit_report(self) -> str:
        """Exit status and the tail of the worker's log, for a failed job's error."""

    @abc.abstractmethod
    def _relaunch(self) -> None:
        """Start the worker again after it ended or was killed."""

    # -- shared conversation
    @property
    def running(self) -> bool:
        return self._conn is not None and self._alive()

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        if self.starts == 0:
            self._launch()
        else:
            self._relaunch()
        self.starts += 1
        self.jobs_run = 0
        self.context_sent = False
        self._reply_owed = False
        self._connect()
        self.request(
            {"op": protocol.OP_INIT, "singleton_state": protocol.pack_singleton_state(self.singleton_state)}, timeout=60
        )

    def _connect(self) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self._alive():
                raise WorkerDied(f"worker '{self.key}' exited while starting: {self.exit_report()}")
            if self.socket_path.exists():
                try:
                    self._conn = Client(str(self.socket_path), family="AF_UNIX", authkey=self.authkey)
                    return
                except (OSError, EOFError) as error:
                    last_error = error
            time.sleep(0.02)
        self._terminate()
        raise WorkerTimeout(f"worker '{self.key}' did not accept a connection in {CONNECT_TIMEOUT_S:.0f} s ({last_error})")

    def request(
        self, message: dict[str, Any], timeout: float | None, while_waiting: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its reply; raise WorkerDied / WorkerTimeout.

        `while_waiting` runs after the request is sent (e.g. composing the next job), and its
        time counts towards `timeout`.
        """
        with self._talking:
            return self._request(message, timeout, while_waiting)

    def _request(
        self, message: dict[str, Any], timeout: float | None, while_waiting: Callable[[], None] | None
    ) -> dict[str, Any]:
        conn = self._conn  # kept: `kill` from another thread clears the attribute while this waits
        if conn is None:
            raise WorkerDied(f"worker '{self.key}' is not running")
        if self._reply_owed:
            raise WorkerDied(f"worker '{self.key}' still owes the reply to a request that was given up")
        self._reply_owed = True
        try:
            conn.send(message)
        except (OSError, BrokenPipeError):
            self._lost(conn)
            raise WorkerDied(f"worker '{self.key}' died: {self.exit_report()}") from None
        if while_waiting is not None:
            started = time.monotonic()
            while_waiting()  # must not raise: its errors are the caller's to keep
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - started))
        try:
            if not conn.poll(timeout):
                raise WorkerTimeout(f"worker '{self.key}' gave no answer within {timeout:.0f} s")
            reply = conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._lost(conn)
            raise WorkerDied(f"worker '{self.key}' died: {self.exit_report()}") from None
        self._reply_owed = False
        if not reply.get("ok", False):
            raise RuntimeError(f"worker '{self.key}': {reply.get('error')}")
        return reply

    def _lost(self, conn: Connection) -> None:
        """The connection a request used broke: close it (this thread owns it) and forget it if still current."""
        conn.close()
        if self._conn is conn:
            self._conn = None
        self._wait_for_exit()

    def _wait_for_exit(self, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        """Stop a stuck or unhealthy worker at once; raise WorkerUnkillable if it outlives the kill."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._talking.acquire(blocking=False):
                try:
                    _hang_up(conn, close=True)
                finally:
                    self._talking.release()
            else:  # another thread waits on it: wake it, and let it close the descriptor it is using
                _hang_up(conn, close=False)
        self._reply_owed = False
        try:
            self._terminate()
        except subprocess.TimeoutExpired as error:
            raise WorkerUnkillable(
                f"worker '{self.key}' did not end within {error.timeout:g} s of being killed"
            ) from None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """Ask an idle worker to exit, and kill it if it does not; kill a busy one (its job is being stopped)."""
        if self._talking.acquire(blocking=False):
            try:
                if self._conn is not None and not self._reply_owed:
                    self.request({"op": protocol.OP_SHUTDOWN}, timeout=10)
                    self._wait_for_exit(10.0)  # let it release engines and flush files
            except (WorkerDied, WorkerTimeout, RuntimeError):
                pass
            finally:
                self._talking.release()
        self.kill()
        self.socket_path.unlink(missing_ok=True)


def _hang_up(conn: Connection, *, close: bool) -> None:
    """Shut a worker connection down so that a thread waiting on it wakes at once (closing the descriptor alone
    would leave that thread waiting until the worker's end is noticed, or its timeout); close it if asked."""
    try:
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # a duplicate descriptor
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
    if close:
        conn.close()
