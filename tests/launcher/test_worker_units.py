"""Worker command lines and protocol pieces, without starting anything."""

from __future__ import annotations

from pathlib import Path

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
