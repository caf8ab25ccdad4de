"""Worker command lines and protocol pieces, without starting anything."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from llem.launch import protocol
from llem.launch.container import ContainerSpec, ContainerWorker, gpu_args
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
