"""`gpu.*` settings of container jobs, applied on the host, where the privilege is.

A container worker cannot change its GPUs' power limit or clocks (that needs root or CAP_SYS_ADMIN on
the host). The launcher does it for each job before handing the job over, on the GPUs the job will use
inside its container, with the same holder and restore records as an in-process worker
(llem.measure.gpu_settings): settings are kept between jobs with equal values, a job that sets none
gets the originals back, and a worker's GPUs are restored when it stops and at the campaign's end. The
job is told what was applied and only reads the effective values back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from llem.launch.gpus import Gpu, node_gpus
from llem.launch.jobs import Job
from llem.measure.gpu_settings import GpuSettingsHolder, host_applied
from llem.measure.job_devices import job_gpu_devices


def job_experiment(job: Job, config: DictConfig) -> Any:
    """The job's validated settings: as planned from the config it runs with, else from its composed config,
    else as planned (None if none validates: the job then fails on its own, with its own message)."""
    if job.planned_experiment is not None:
        return job.planned_experiment
    from omegaconf import OmegaConf

    from llem.composed import validate_composed

    try:
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        return validate_composed(task).experiment
    except Exception:  # noqa: BLE001 - e.g. interpolations only the job resolves
        return job.experiment


class HostGpuSettings:
    """One launcher's `gpu.*` settings on the GPUs of its containers; one holder for the node's GPUs.

    `container_gpus` lists a container's GPUs in the order it numbers them (the host's NVML order, which
    the container's NVML keeps for the subset it is given): CUDA index i inside is the i-th of them.
    """

    def __init__(self, nvml: Any = None, holder: GpuSettingsHolder | None = None) -> None:
        self.nvml = nvml
        self.holder = holder if holder is not None else GpuSettingsHolder()
        self._node: list[Gpu] | None = None
        self._lock = threading.Lock()

    def container_gpus(self, selection: Any) -> list[Gpu]:
        """The host's GPUs a container is given (`ContainerSpec.gpus`: indices, "all"/"auto", or None)."""
        if selection is None or selection == [] or selection == "none":
            return []
        if isinstance(selection, str) and selection in ("all", "auto"):
            with self._lock:
                if self._node is None:
                    self._node = node_gpus("all", nvml=self.nvml)
                return list(self._node)
        return node_gpus(list(selection), nvml=self.nvml)

    def before_job(self, experiment: Any, gpus: Sequence[Gpu]) -> dict[str, Any] | None:
        """Put the job's settings in force on its GPUs among the container's `gpus`; what the job is told
        (None: it sets nothing). Raises GpuSettingsError, naming the key, when they cannot be applied."""
        if experiment is None:
            return None
        ordered = sorted(gpus)
        job_gpus = job_gpu_devices(experiment, len(ordered))
        uuids = {i: ordered[i].uuid for i in job_gpus if 0 <= i < len(ordered)}
        scope = {g.uuid for g in ordered}
        return host_applied(self.holder.apply(experiment, job_gpus, uuids, self.nvml, scope=scope))

    def restore(self, gpus: Sequence[Gpu] | None = None) -> list[str]:
        """Put back the originals of the GPUs this launcher changed (of `gpus` only, when given)."""
        return self.holder.restore_all(None if gpus is None else {g.uuid for g in gpus})
