"""scripts/gpu_check.py: its exit codes, on this machine and against a fake GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.fakes.fake_pynvml import FakeGpu, FakeNvml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FAST = ["--idle", "--windows", "0.05,0.1", "--baseline-s", "0.05", "--interval-ms", "10"]


def test_agreeing_fake_gpu_passes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    nv = FakeNvml([FakeGpu(energy_mj=lambda t: 300_000 * t, power_mw=300_000)], clock=time.monotonic)
    out = tmp_path / "r.json"
    assert _load().main([*FAST, "--json", str(out)], nvml_module=nv) == 0
    text = capsys.readouterr().out
    assert "counter J" in text and "OK:" in text and "idle baseline" in text
    assert out.exists()
    assert nv.initialised == 0


def test_disagreeing_fake_gpu_fails(capsys: pytest.CaptureFixture[str]) -> None:
    nv = FakeNvml([FakeGpu(energy_mj=lambda t: 300_000 * t, power_mw=200_000)], clock=time.monotonic)
    assert _load().main(FAST, nvml_module=nv) == 1
    assert "FAIL" in capsys.readouterr().err


def test_this_machine_without_gpu_exits_2() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - GPU machines only
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--windows", "0.1"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "NVML unavailable" in proc.stderr
