"""Preflight: before any job launches, check what each job needs on the machine that will run it.

A campaign should not discover on job 40 that the vLLM image was never built. Every problem is
found at once, before the first job: the engine is importable where the workers run (this
interpreter, `hydra.launcher.python`, or the container image exists), a GPU is visible for a job
that cannot run without one, and a local model path exists. The jobs a problem affects are failed
up front with the reason (not retried: nothing changes by running them again); the rest run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llem.backends.registry import ENGINE_PACKAGES
from llem.launch.images import image_check_command
from llem.launch.workers import Workers

__all__ = ["Workers", "preflight", "report"]


def _engine_problem(backend: str, workers: Workers, cache: dict[str, str | None]) -> str | None:
    """Why `backend` cannot start where the workers run (None when it can); asked once per backend."""
    if backend in cache:
        return cache[backend]
    package = ENGINE_PACKAGES.get(backend)
    module, install = (package.module, package.install) if package else (backend, "")
    problem: str | None = None
    if workers.kind == "container":
        image = workers.images.get(backend) or workers.images.get("default")
        engine = workers.engine or "docker"
        if image is None:
            problem = f"hydra.launcher.images has no image for backend '{backend}'"
        elif shutil.which(engine) is None:
            problem = f"the container engine '{engine}' is not installed"
        else:
            found = workers.run(image_check_command(engine, image))
            if found is None or found.returncode != 0:
                problem = f"image {image} is not available to {engine} (build it: see docs/containers.md)"
    else:
        python = workers.python or sys.executable
        if os.path.abspath(python) == os.path.abspath(sys.executable):  # a venv's python is a symlink: no realpath
            missing = importlib.util.find_spec(module) is None
        else:
            probe = workers.run([python, "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"])
            missing = probe is None or probe.returncode != 0
        if missing:
            problem = f"{module} is not installed for {python}: {install}"
    cache[backend] = problem
    return problem


def _gpu_problem(experiment: dict[str, Any], gpu_count: int) -> str | None:
    """A job that cannot run, or cannot be measured as configured, without a GPU."""
    if gpu_count > 0:
        return None
    backend = experiment.get("backend", {})
    if backend.get("name") == "tensorrt":
        return "TensorRT-LLM needs an NVIDIA GPU and none is visible"
    if backend.get("name") == "pytorch" and backend.get("device") == "cuda":
        return "backend.device=cuda but no NVIDIA GPU is visible"
    source = experiment.get("energy", {}).get("source")
    if source in ("nvml", "nvml_polling"):
        return f"energy.source={source} measures GPUs but no NVIDIA GPU is visible"
    return None


def _model_problem(experiment: dict[str, Any]) -> str | None:
    """A model named by a local path that does not exist (Hub ids are left to the engine)."""
    name = str(experiment.get("model", {}).get("name", ""))
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        return f"model.name {name} does not exist"
    return None


def preflight(jobs: Iterable[tuple[int, dict[str, Any]]], workers: Workers) -> dict[int, str]:
    """The problem of each job that cannot run here, by job number (every problem found at once)."""
    cache: dict[str, str | None] = {}
    problems: dict[int, str] = {}
    for job_num, experiment in jobs:
        backend = str(experiment.get("backend", {}).get("name", "pytorch"))
        reasons = [
            r for r in (
                _engine_problem(backend, workers, cache), _gpu_problem(experiment, workers.gpu_count),
                _model_problem(experiment),
            ) if r
        ]  # fmt: skip
        if reasons:
            problems[job_num] = "; ".join(reasons)
    return problems


def report(problems: dict[int, str]) -> str:
    """One line per distinct problem with the jobs it affects."""
    by_reason: dict[str, list[int]] = {}
    for job_num, reason in sorted(problems.items()):
        by_reason.setdefault(reason, []).append(job_num)
    lines = [f"llem: preflight: {len(problems)} job(s) cannot run on this machine and are not launched:"]
    for reason, nums in by_reason.items():
        shown = ", ".join(str(n) for n in nums[:20]) + (f" (+{len(nums) - 20} more)" if len(nums) > 20 else "")
        lines.append(f"  {reason} — job(s) {shown}")
    return "\n".join(lines)
