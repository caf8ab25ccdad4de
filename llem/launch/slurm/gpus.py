"""The GPUs SLURM gave a job, by UUID: what a container on the node may see, and nothing else.

A container engine given `nvidia.com/gpu=all` sees every GPU of the node, and SLURM's
CUDA_VISIBLE_DEVICES holds indices relative to what SLURM left visible, not to the container: the job
could run on, and measure, another job's GPU. SLURM names the job's GPUs in SLURM_JOB_GPUS (node-wide
ids, the order of gres.conf's `File=/dev/nvidiaN` lines, i.e. the devices' minor numbers); NVML maps
minor numbers to UUIDs, which name the same GPU to the container engine (CDI) and to CUDA everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# The step's GPUs first (inside srun), then the job's (the batch script, where a group runs).
GPU_ID_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")


class SlurmGpuError(RuntimeError):
    """The job's GPUs cannot be named exactly; the group does not start rather than see the node's GPUs."""


def slurm_gpu_ids(environ: Mapping[str, str]) -> list[int] | None:
    """The node-wide ids of the GPUs SLURM gave this job (None when SLURM names none)."""
    for var in GPU_ID_VARS:
        value = (environ.get(var) or "").strip()
        if value:
            try:
                return [int(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise SlurmGpuError(f"{var}={value!r}: expected comma-separated GPU ids") from None
    return None


def gpu_uuids_by_minor(nvml: Any = None) -> dict[int, str]:
    """UUID of each GPU this process can open, by minor number (/dev/nvidiaN). A GPU whose handle is refused
    (a device cgroup keeps the job off it) is left out, not an error."""
    if nvml is None:
        import pynvml as nvml
    nvml.nvmlInit()
    try:
        found: dict[int, str] = {}
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                minor = int(nvml.nvmlDeviceGetMinorNumber(handle))
                uuid = nvml.nvmlDeviceGetUUID(handle)
            except nvml.NVMLError:
                continue
            found[minor] = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        return found
    finally:
        nvml.nvmlShutdown()


def job_gpu_uuids(
    environ: Mapping[str, str], by_minor: Callable[[], dict[int, str]] = gpu_uuids_by_minor
) -> list[str]:
    """The UUIDs of exactly the GPUs SLURM gave this job, in SLURM's order."""
    ids = slurm_gpu_ids(environ)
    if ids is None:
        raise SlurmGpuError(
            "the group asked for GPUs but SLURM named none (SLURM_JOB_GPUS is unset): is GPU gres configured "
            "for this partition? Without it the container would see every GPU of the node"
        )
    try:
        table = by_minor()
    except Exception as error:  # noqa: BLE001 - no NVML on the node, a driver mismatch
        raise SlurmGpuError(f"cannot read the UUIDs of the job's GPUs {ids} through NVML: {error}") from None
    missing = [i for i in ids if i not in table]
    if missing:
        raise SlurmGpuError(f"SLURM gave this job GPU(s) {ids}, but NVML shows no GPU with minor number(s) "
                            f"{missing} (it can open {sorted(table)})")
    return [table[i] for i in ids]
