"""`python -m llem.doctor`: every readiness check, on this machine and against scripted devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llem import doctor
from tests.energy.fake_powercap import make_zone, server_tree
from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml


def _by_item(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.item: c for c in checks}


@pytest.mark.slow  # a real run in a fresh process: seconds, not a unit test
def test_this_machine_gets_a_report_with_fixes_and_exit_0() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llem.doctor", "--json", "--engine", "podman"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    checks = {c["item"]: c for c in json.loads(proc.stdout)}
    assert checks["NVML"]["status"] == "missing" and "NVIDIA driver" in checks["NVML"]["fix"]  # no GPU here
    assert checks["RAPL"]["status"] == "missing" and checks["RAPL"]["fix"]
    assert checks["pytorch"]["status"] == "ok" and checks["torch"]["detail"].endswith("(CPU only)")
    assert checks["tensorrt"]["status"] == "missing" and "llem[tensorrt]" in checks["tensorrt"]["fix"]
    for check in checks.values():
        assert check["status"] in ("ok", "warn", "missing")
        assert check["status"] == "ok" or check["fix"] or check["item"] == "NVML", check


@pytest.mark.slow  # a real run in a fresh process: seconds, not a unit test
def test_table_output_keeps_install_extras_readable() -> None:
    proc = subprocess.run([sys.executable, "-m", "llem.doctor", "--engine", "podman"], capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "COLUMNS": "250"})  # fmt: skip
    assert proc.returncode == 0 and "llem[tensorrt]" in proc.stdout  # not eaten as console markup


def test_gpus_with_their_gaps() -> None:
    nv = FakeNvml(
        [
            FakeGpu(name="H100", energy_mj=1000, instant_power_mw=350_000),
            FakeGpu(name="V100", energy_mj=1000, persistence=fk.NVML_FEATURE_DISABLED),
            FakeGpu(name="P100", errors={"nvmlDeviceGetTotalEnergyConsumption": fk.NVMLError_NotSupported}),
        ]
    )
    checks = _by_item(doctor.gpu_checks(nv))
    assert checks["NVML"].status == "ok" and "3 GPU(s)" in checks["NVML"].detail
    assert checks["gpu0 (H100) power reading"].status == "ok"
    assert checks["gpu1 (V100) power reading"].status == "warn"  # averaged reading only
    assert checks["gpu1 (V100) persistence mode"].status == "warn"
    assert checks["gpu1 (V100) persistence mode"].fix == "sudo nvidia-smi -pm 1"
    assert checks["gpu2 (P100) energy counter"].status == "warn" and "nvml_polling" in checks["gpu2 (P100) energy counter"].fix
    assert checks["gpu0 (H100) energy counter"].status == "ok" and nv.initialised == 0  # NVML released


def test_rapl_package_and_dram(tmp_path: Path) -> None:
    server_tree(tmp_path / "full")
    assert {c.item: c.status for c in doctor.rapl_checks(str(tmp_path / "full"))} == {
        "RAPL package": "ok", "RAPL DRAM": "ok",
    }  # fmt: skip
    make_zone(tmp_path / "desktop", "intel-rapl:0", "package-0", 1000)
    desktop = _by_item(doctor.rapl_checks(str(tmp_path / "desktop")))
    assert desktop["RAPL package"].status == "ok" and desktop["RAPL DRAM"].status == "warn"


def test_container_engines_and_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None if name == "docker" else f"/usr/bin/{name}")
    calls: list[list[str]] = []

    def run(cmd: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        present = cmd[1:3] == ["image", "exists"] and cmd[3] == "llem-vllm:latest"
        code = 0 if cmd[1] == "info" or present else 1
        return subprocess.CompletedProcess(cmd, code, "", "")

    checks = _by_item(doctor.container_checks(("docker", "podman"), run=run))
    assert checks["docker"].status == "missing" and checks["podman"].status == "ok"
    assert checks["podman image llem-vllm:latest"].status == "ok"
    missing = checks["podman image llem-pytorch:latest"]
    assert missing.status == "missing" and "docker/pytorch/Dockerfile" in missing.fix
    assert all(c[0] == "podman" for c in calls)  # an engine that is not installed is never called
