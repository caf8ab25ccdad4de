"""Worker command lines and protocol pieces, without starting anything."""

from __future__ import annotations

import socket
import threading
import time
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

import pytest

from llem.launch import protocol
from llem.launch.container import ContainerSpec, ContainerWorker, gpu_args
from llem.launch.handle import WorkerDied, WorkerHandle
from llem.launch.worker import _safe_exception, handle


@pytest.mark.parametrize(
    ("engine", "gpus", "expected"),
    [
        ("docker", "all", ["--gpus", "all"]),
        ("docker", [0, 2], ["--gpus", "device=0,2"]),
        ("podman", "all", ["--device", "nvidia.com/gpu=all"]),
        ("podman", [1], ["--device", "nvidia.com/gpu=1"]),
        ("docker", None, []),
    ],
)
def test_gpu_options(engine: str, gpus: object, expected: list[str]) -> None:
    assert gpu_args(engine, gpus) == expected  # type: ignore[arg-type]


def test_auto_gpus_ask_for_none_on_a_machine_without_gpus() -> None:
    from llem.launch.container import resolve_gpus

    assert resolve_gpus("auto", 0) is None and gpu_args("podman", resolve_gpus("auto", 0)) == []
    assert resolve_gpus("auto", 8) == "all" and resolve_gpus([1, 2], 0) == [1, 2]


def test_container_command_is_an_argument_list_with_secrets_by_name(tmp_path: Path) -> None:
    spec = ContainerSpec(
        engine="podman", image="img:1", gpus="all", network="none",
        mounts=[("/sweep dir", "/sweep dir", "rw")], env={"HF_HOME": "/cache/hf"},
        env_passthrough=["HF_TOKEN"],
    )
    worker = ContainerWorker("vllm", tmp_path, {}, spec)
    cmd = worker.run_command()
    assert cmd[:3] == ["podman", "run", "--detach"]
    assert ["--volume", "/sweep dir:/sweep dir:rw"] == cmd[cmd.index("--volume"): cmd.index("--volume") + 2]
    envs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--env"]
    assert envs == ["HF_HOME=/cache/hf", "HF_TOKEN", protocol.AUTHKEY_ENV]  # secrets: names only
    assert cmd[-6:] == ["img:1", "python", "-m", "llem.launch.worker", "--socket", str(tmp_path / "vllm.sock")]
    assert ["--device", "nvidia.com/gpu=all"] == cmd[cmd.index("--device"): cmd.index("--device") + 2]


def _envs(cmd: list[str]) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "--env"]


def test_a_bridged_container_publishes_one_server_port_on_the_hosts_loopback(tmp_path: Path) -> None:
    """The serving server's port: picked free on the host, published on 127.0.0.1 only, same number inside."""
    worker = ContainerWorker("vllm", tmp_path, {}, ContainerSpec(engine="podman", image="img:1", network=None))
    cmd = worker.run_command()
    port = worker.server_port
    assert isinstance(port, int) and 0 < port < 65536
    publish = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--publish"]
    assert publish == [f"127.0.0.1:{port}:{port}"]
    assert _envs(cmd)[-3:] == [f"LLEM_SERVER_PORT={port}", "LLEM_SERVER_BIND=0.0.0.0", protocol.AUTHKEY_ENV]
    assert cmd.index("--publish") < cmd.index("img:1")  # an engine option, not the worker's
    with socket.socket() as s:  # the host port was free when picked
        s.bind(("127.0.0.1", port))
    assert worker.run_command() == cmd  # kept for the container's lifetime (a restart starts the same one)


@pytest.mark.parametrize("network", ["host", "none", "container:other", "ns:/run/netns/x"])
def test_no_port_is_published_where_the_network_cannot_publish(tmp_path: Path, network: str) -> None:
    worker = ContainerWorker("vllm", tmp_path, {}, ContainerSpec(engine="docker", image="img:1", network=network))
    cmd = worker.run_command()
    assert worker.server_port is None and "--publish" not in cmd
    assert not [e for e in _envs(cmd) if e.startswith(("LLEM_SERVER_PORT", "LLEM_SERVER_BIND"))]
    assert ["--network", network] == cmd[cmd.index("--network"): cmd.index("--network") + 2]


def test_a_named_network_publishes_too(tmp_path: Path) -> None:
    worker = ContainerWorker("vllm", tmp_path, {}, ContainerSpec(engine="docker", image="img:1", network="llemnet"))
    cmd = worker.run_command()
    assert cmd[cmd.index("--publish") + 1] == f"127.0.0.1:{worker.server_port}:{worker.server_port}"


def test_a_port_taken_before_the_engine_binds_it_is_picked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The engine refuses a port something else took meanwhile: the start is retried on a new one, and the
    published address is logged."""
    import subprocess

    calls: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if len(calls) == 1:
            return subprocess.CompletedProcess(cmd, 126, "", "rootlessport listen tcp 127.0.0.1:1: bind: "
                                                              "address already in use")
        return subprocess.CompletedProcess(cmd, 0, "abc123\n", "")

    worker = ContainerWorker("vllm", tmp_path, {}, ContainerSpec(engine="podman", image="img:1"))
    monkeypatch.setattr("llem.launch.container.subprocess.run", run)
    monkeypatch.setattr(worker, "_remove_by_name", lambda: None)
    with caplog.at_level("INFO", logger="llem.launch.container"):
        worker._launch()
    assert len(calls) == 2 and worker.container_id == "abc123"
    assert calls[1][calls[1].index("--publish") + 1] == f"127.0.0.1:{worker.server_port}:{worker.server_port}"
    assert f"server port published on 127.0.0.1:{worker.server_port}" in caplog.text


def test_a_start_that_fails_for_another_reason_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    calls: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 125, "", "no such image")

    worker = ContainerWorker("vllm", tmp_path, {}, ContainerSpec(engine="podman", image="img:1"))
    monkeypatch.setattr("llem.launch.container.subprocess.run", run)
    monkeypatch.setattr(worker, "_remove_by_name", lambda: None)
    with pytest.raises(RuntimeError, match="no such image"):
        worker._launch()
    assert len(calls) == 1


def test_worker_answers_ping_and_unknown_ops() -> None:
    assert handle({"op": protocol.OP_PING})["ok"]
    reply = handle({"op": "bogus"})
    assert not reply["ok"] and "unknown op" in reply["error"]


def test_health_on_a_machine_without_gpus() -> None:
    reply = handle({"op": protocol.OP_HEALTH})
    assert reply["ok"] and reply["devices"] == {} and "NVML" in reply["unavailable_reason"]


def test_health_reads_memory_through_the_device_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(protocol.NVML_FACTORY_ENV, "tests.launcher.fake_nvml_env:nvml")
    monkeypatch.setenv("LLEM_FAKE_GPU_MEM_PCT", "93")
    reply = handle({"op": protocol.OP_HEALTH})
    assert reply["devices"]["gpu0"]["used_pct"] == pytest.approx(93, abs=0.01)


def test_unpicklable_exceptions_are_carried_as_text() -> None:
    class Local(Exception):
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise TypeError("no")

    safe = _safe_exception(Local("boom"))
    assert isinstance(safe, RuntimeError) and "Local: boom" in str(safe)
    ok = ValueError("fine")
    assert _safe_exception(ok) is ok


def _wait_for(predicate: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("worker_exits_first", [False, True])
def test_killing_a_local_worker_ends_the_engine_processes_it_started(tmp_path: Path, worker_exits_first: bool) -> None:
    """Engines (vLLM, TensorRT-LLM) run children that hold GPU memory; a killed worker must not leave them behind."""
    import psutil

    from llem.launch.local import LocalWorker

    pid_file = tmp_path / "engine.pid"
    # stands in for `python -m llem.launch.worker`: starts an "engine" child, then waits (or dies at once)
    fake_python = tmp_path / "python"
    body = 'sleep 300 &\necho $! > "$PID_FILE"\n' + ("exit 3\n" if worker_exits_first else "exec sleep 300\n")
    fake_python.write_text("#!/bin/sh\n" + body)
    fake_python.chmod(0o755)
    worker = LocalWorker("pytorch", tmp_path, tmp_path, {}, python=str(fake_python), env={"PID_FILE": str(pid_file)})
    worker._launch()
    assert _wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip())
    engine = psutil.Process(int(pid_file.read_text()))
    if worker_exits_first:
        assert _wait_for(lambda: not worker._alive())  # the worker is gone, its engine child is not
        assert engine.is_running() and engine.status() != psutil.STATUS_ZOMBIE
    worker._terminate()
    assert _wait_for(lambda: not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE)


def test_a_worker_on_another_interpreter_keeps_its_own_packages(tmp_path: Path) -> None:
    import sys
    import sysconfig

    from llem.launch.local import worker_pythonpath

    own = worker_pythonpath(sys.executable)
    assert sysconfig.get_paths()["purelib"] in own  # same interpreter: everything the launcher imports
    other = worker_pythonpath(str(tmp_path / "other-venv" / "bin" / "python"))
    site = sysconfig.get_paths()["purelib"]
    assert site not in other and sysconfig.get_paths()["stdlib"] not in other
    assert all("site-packages" not in p for p in other)
    assert set(other) <= set(own)  # only the project paths (checkout, apps) travel
    assert str(Path(__file__).resolve().parents[2]) in other  # the checkout the tests run from


class _Answering(WorkerHandle):
    """A worker handle whose 'process' is a thread behind a real socket: it answers every op but `hold`, and
    records what it received (to tell a graceful shutdown from a kill)."""

    def __init__(self, socket_dir: Path) -> None:
        super().__init__("scripted", socket_dir, {"instances": {}, "omegaconf_resolvers": {}})
        self.received: list[str] = []
        self._listener: Listener | None = None
        self._served: Connection | None = None
        self._thread: threading.Thread | None = None

    def _launch(self) -> None:
        self._listener = Listener(str(self.socket_path), family="AF_UNIX", authkey=self.authkey)
        self._thread = threading.Thread(target=self._serve, args=(self._listener,), daemon=True)
        self._thread.start()

    _relaunch = _launch

    def _serve(self, listener: Listener) -> None:
        try:
            with listener.accept() as conn:
                self._served = conn
                while True:
                    op = conn.recv()["op"]
                    self.received.append(op)
                    if op != "hold":
                        conn.send({"ok": True})
                    if op == protocol.OP_SHUTDOWN:
                        return
        except (EOFError, OSError):
            return  # killed

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _terminate(self) -> None:  # as a process's death: both ends of its socket close
        if self._listener is not None:
            self._listener.close()
        try:
            if self._served is not None:
                with socket.fromfd(self._served.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # its end already closed: the host hung up
        if self._thread is not None:
            self._thread.join(5)
            assert not self._thread.is_alive()

    def exit_report(self) -> str:
        return "scripted"


def test_stopping_an_idle_worker_asks_it_to_exit(tmp_path: Path) -> None:
    worker = _Answering(tmp_path)
    worker.start()
    worker.stop()
    assert worker.received == [protocol.OP_INIT, protocol.OP_SHUTDOWN]


def test_stopping_a_worker_busy_in_another_thread_kills_it_at_once(tmp_path: Path) -> None:
    """Ctrl-C with jobs running side by side: their threads wait on their workers while the main thread stops
    them. Asking a busy worker to exit would wait for its job (or take the job's reply for its own)."""
    worker = _Answering(tmp_path)
    worker.start()
    outcome: list[BaseException] = []

    def job() -> None:
        try:
            worker.request({"op": "hold"}, timeout=60)
        except BaseException as error:  # noqa: BLE001 - what the job thread saw
            outcome.append(error)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 30
    while "hold" not in worker.received and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(10)
    assert worker.received == [protocol.OP_INIT, "hold"]  # no shutdown request behind the job
    assert len(outcome) == 1 and isinstance(outcome[0], WorkerDied)


def test_a_request_cut_short_leaves_the_worker_to_be_killed(tmp_path: Path) -> None:
    worker = _Answering(tmp_path)
    worker.start()

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        worker.request({"op": "hold"}, timeout=60, while_waiting=interrupted)
    with pytest.raises(WorkerDied, match="still owes the reply"):
        worker.request({"op": protocol.OP_PING}, timeout=5)  # its reply could be the held job's
    worker.stop()
    assert worker.received == [protocol.OP_INIT, "hold"]


def test_a_worker_whose_launcher_died_while_it_started_exits(tmp_path: Path) -> None:
    """If the launcher is killed before the worker asks to die with it, the worker must not wait for a connection
    that never comes: it checks that the launcher that started it is still its parent."""
    import os
    import subprocess
    import sys

    gone = subprocess.Popen(["true"])
    gone.wait()  # ended and reaped: its PID names no process, as a launcher killed while the worker started
    env = {**os.environ, protocol.AUTHKEY_ENV: protocol.new_authkey().hex(), protocol.PARENT_ENV: str(gone.pid)}
    proc = subprocess.run([sys.executable, "-m", "llem.launch.worker", "--socket", str(tmp_path / "w.sock")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and f"the launcher (PID {gone.pid}) is gone" in proc.stderr
    assert not (tmp_path / "w.sock").exists()
