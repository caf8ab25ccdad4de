"""Preflight: every problem found before the first job, against scripted workers and a real second interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from llem.campaign.preflight import Workers, preflight, report


def _job(name: str, **extra: Any) -> dict[str, Any]:
    return {"model": {"name": "builtin:tiny"}, **extra, "backend": {"name": name, **extra.get("backend", {})}}


def test_local_workers_on_this_interpreter() -> None:
    jobs = [
        (0, _job("pytorch")),
        (1, _job("tensorrt")),
        (2, _job("pytorch", backend={"device": "cuda"})),
        (3, _job("pytorch", energy={"source": "nvml"})),
        (4, _job("pytorch", model={"name": "/no/such/model"})),
        (5, _job("tensorrt")),
    ]
    problems = preflight(jobs, Workers("local", gpu_count=0))
    assert set(problems) == {1, 2, 3, 4, 5}  # job 0 can run here
    assert "tensorrt_llm is not installed" in problems[1] and "needs an NVIDIA GPU" in problems[1]
    assert problems[2] == "backend.device=cuda but no NVIDIA GPU is visible"
    assert "energy.source=nvml measures GPUs" in problems[3]
    assert problems[4] == "model.name /no/such/model does not exist"
    text = report(problems)
    assert text.startswith("llem: preflight: 5 job(s) cannot run") and "job(s) 1, 5" in text  # one line per problem
    assert preflight([(2, _job("pytorch", backend={"device": "cuda"}))], Workers("local", gpu_count=8)) == {}


def test_local_workers_on_another_interpreter(tmp_path: Path) -> None:
    """`hydra.launcher.python`: the engine must import in that interpreter, not in this one."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    problems = preflight([(0, _job("pytorch"))], Workers("local", python=str(bare / "bin" / "python")))
    assert problems == {0: f"transformers is not installed for {bare / 'bin' / 'python'}: pip install 'llem[pytorch]'"}
    assert preflight([(0, _job("pytorch"))], Workers("local", python=sys.executable)) == {}


def test_container_workers_need_their_image(tmp_path: Path, monkeypatch: Any) -> None:
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    asked: list[list[str]] = []

    def run(cmd: Any) -> subprocess.CompletedProcess[str]:
        asked.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0 if cmd[-1] == "llem-pytorch:1" else 1, "", "")

    workers = Workers("container", engine="podman", images={"pytorch": "llem-pytorch:1", "vllm": "llem-vllm:1"},
                      gpu_count=1, run=run)  # fmt: skip
    jobs = [(0, _job("pytorch")), (1, _job("vllm")), (2, _job("vllm")), (3, _job("tensorrt"))]
    problems = preflight(jobs, workers)
    assert set(problems) == {1, 2, 3}
    assert "image llem-vllm:1 is not available to podman" in problems[1]
    assert problems[3] == "hydra.launcher.images has no image for backend 'tensorrt'"
    assert asked == [["podman", "image", "exists", "llem-pytorch:1"], ["podman", "image", "exists", "llem-vllm:1"]]
