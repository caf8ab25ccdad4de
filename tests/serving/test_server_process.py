"""The server process on its own: readiness, the log on failure, and a stop that leaves nothing behind."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from llem.serving.server import ServerError, ServerProcess, free_port, vllm_server_argv

# A server that spawns a child (as an engine spawns workers) and answers /health after a delay.
SERVER = r"""
import http.server, subprocess, sys, time
port, delay = int(sys.argv[1]), float(sys.argv[2])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("starting", flush=True)
time.sleep(delay)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _group_alive(pid: int, settle_s: float = 5.0) -> list[psutil.Process]:
    """Live members of process group `pid`; a SIGKILL lands asynchronously, so read again for up to `settle_s`."""
    import os

    deadline = time.monotonic() + settle_s
    while True:
        alive = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == pid and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                continue
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def test_start_waits_for_health_and_stop_ends_the_whole_group(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess([sys.executable, "-c", SERVER, str(port), "0.5"], port=port, log_path=tmp_path / "s.log",
                           ready_timeout_s=30)
    with server:
        assert server.alive() and server.ready_s is not None and server.ready_s >= 0.5
        assert len(_group_alive(server.pid)) == 2  # the server and its child
        pid = server.pid
    assert not server.alive()
    deadline = time.monotonic() + 5
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_alive(pid) == []
    assert "starting" in (tmp_path / "s.log").read_text()


def test_a_server_that_never_becomes_ready_fails_with_its_log(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess([sys.executable, "-c", SERVER, str(port), "60"], port=port, log_path=tmp_path / "s.log",
                           ready_timeout_s=1.5, stop_timeout_s=5)
    with pytest.raises(ServerError) as info:
        server.start()
    assert "did not answer /health within 1.5 s" in str(info.value) and "starting" in str(info.value)
    assert not server.alive() and _group_alive(server.pid) == []


def test_a_server_that_exits_fails_with_its_code_and_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad model path', flush=True); sys.exit(3)"]
    server = ServerProcess(argv, port=free_port(), log_path=tmp_path / "s.log", ready_timeout_s=30)
    with pytest.raises(ServerError, match=r"exited with code 3(.|\n)*bad model path"):
        server.start()


def test_vllm_argv_is_a_list_of_arguments() -> None:
    argv = vllm_server_argv("/m", 8000, served_name="tiny", engine_args=["--max-num-seqs", 4], python="py")
    assert argv == ["py", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m", "--host", "127.0.0.1",
                    "--port", "8000", "--served-model-name", "tiny", "--max-num-seqs", "4"]


# A job that starts a server and then is killed outright (SIGKILL, the OOM killer) before it can stop it.
JOB = r"""
import sys, time
from llem.serving.server import ServerProcess, free_port
port = free_port()
server = ServerProcess([sys.executable, "-c", sys.argv[1], str(port), "0"], port=port, log_path=sys.argv[2],
                       ready_timeout_s=30).start()
print(server.pid, flush=True)
time.sleep(600)
"""


def test_a_server_ends_when_the_job_that_started_it_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess

    plain = SERVER.replace('subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])\n', "")
    job = subprocess.Popen([sys.executable, "-c", JOB, plain, str(tmp_path / "s.log")], stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
    try:
        server_pid = int(job.stdout.readline())  # type: ignore[union-attr]
        assert psutil.pid_exists(server_pid)
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        else:
            os.killpg(server_pid, signal.SIGKILL)
            pytest.fail("the server outlived the job that started it")
    finally:
        if job.poll() is None:
            job.kill()


def test_a_server_whose_port_another_server_holds_is_not_taken_for_ready(tmp_path: Path) -> None:
    """Two servers picked the same free port: the second must not measure the first one's answers."""
    port = free_port()
    with ServerProcess([sys.executable, "-c", SERVER, str(port), "0"], port=port, log_path=tmp_path / "a.log",
                       ready_timeout_s=30):
        # a second "server" that never binds (the port is taken) but lives long enough to be polled
        late = ServerProcess([sys.executable, "-c", "import time; time.sleep(30)"], port=port,
                             log_path=tmp_path / "b.log", ready_timeout_s=10)
        with pytest.raises(ServerError, match="not this server"):
            late.start()
        assert not late.alive()
