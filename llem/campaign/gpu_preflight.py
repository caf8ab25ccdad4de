"""Preflight for `gpu.*` settings: which jobs may change GPU power limits and clocks here, checked before any runs.

A job that sets them is refused up front, with the fix, when it runs without a GPU, when a value lies
outside what the node's GPUs allow (their power limit range, their supported clocks), when this process
lacks the privilege, and under SLURM unless `hydra.launcher.allow_gpu_settings=true`. Container jobs are
checked like local ones: their launcher applies the settings from this host, so the privilege needed is
this process's. Jobs that set nothing are never affected, and nothing is opened when no job sets anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from llem.config import ExperimentConfig
from llem.energy.devices import DeviceUnavailable
from llem.energy.devices.gpu_control import GpuControl, GpuLimits
from llem.energy.devices.gpu_restore import restore_stale
from llem.launch.protocol import nvml_from_env
from llem.measure.gpu_settings import GpuSettingsError, no_gpu_problem, resolve
from llem.measure.job_devices import gpu_need

def restore_stale_gpus(say: Callable[[str], None], nvml: Any = None) -> None:
    """At campaign start: give GPUs a crashed run left changed their original settings back, and say so."""
    restored, failed = restore_stale(nvml if nvml is not None else nvml_from_env())
    for line in restored:
        say(f"llem: {line}")
    for line in failed:
        say(f"llem: warning: {line}")


class _Node:
    """This machine's GPUs as the jobs would see them: limits and whether settings can be changed (asked once)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self._probed = False
        self.limits: list[GpuLimits] = []
        self.problem: str | None = None

    def probe(self) -> None:
        if self._probed:
            return
        self._probed = True
        from llem.energy.devices.nvml import NvmlDevices

        try:
            devices = NvmlDevices.open(None, nvml=self.nvml)
        except DeviceUnavailable as error:
            self.problem = f"no NVIDIA GPU can be used here ({error.reason})"
            return
        try:
            uuids = [devices.uuid(i) for i in devices.indices]
        finally:
            devices.close()
        try:
            with GpuControl(self.nvml) as control:
                self.limits = [control.limits(u) for u in uuids]
                for uuid in uuids:
                    self.problem = self.problem or control.permission_problem(uuid)
        except DeviceUnavailable as error:
            self.problem = f"cannot reach the GPUs: {error.reason}"


def gpu_settings_problems(
    jobs: Iterable[tuple[int, dict[str, Any] | ExperimentConfig]], *, launcher: Any = None, workers: Any = None,
    nvml: Any = None,
) -> dict[int, str]:
    """The reason each job that sets `gpu.*` cannot do so where it will run, by job number."""
    from llem.launch.slurm.options import SlurmOptions, gpu_settings_refusal

    options = getattr(launcher, "options", None)
    slurm = options if isinstance(options, SlurmOptions) else None
    node = _Node(nvml if nvml is not None else nvml_from_env())
    problems: dict[int, str] = {}
    for job_num, data in jobs:
        try:  # the plan's validated settings are taken as they are
            experiment = data if isinstance(data, ExperimentConfig) else ExperimentConfig.model_validate(data)
        except ValidationError:
            continue  # invalid jobs are reported by the planner
        settings = experiment.gpu
        if not settings.is_set:
            continue
        keys = settings.set_keys()
        reason: str | None = None
        if slurm is not None:
            reason = gpu_settings_refusal(slurm, keys)
        if reason is None and experiment.energy.devices is None and gpu_need(experiment) == 0:
            reason = no_gpu_problem(experiment, [])
        if reason is None and slurm is None:  # the GPUs are this machine's (containers' too): check them now
            reason = _local_problem(experiment, node, keys)
        if reason is not None:
            problems[job_num] = reason
    return problems


def _local_problem(experiment: ExperimentConfig, node: _Node, keys: list[str]) -> str | None:
    node.probe()
    if not node.limits:
        return f"{', '.join(keys)} set, but {node.problem or 'no NVIDIA GPU is visible'}"
    if node.problem is not None:
        return f"{', '.join(keys)} set, but {node.problem}"
    for limits in node.limits:
        try:
            resolve(experiment.gpu, limits)
        except GpuSettingsError as error:
            return str(error)
    return None
