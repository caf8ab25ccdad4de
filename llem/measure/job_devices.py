"""Which GPUs a job's engine uses, decided from its config before the model loads.

Energy is measured on exactly these devices (unless `energy.devices` names others), so a
one-GPU job on an eight-GPU node does not add seven idle GPUs to its figure, and a CPU job
measures CPU sources even where GPUs are visible.
"""

from __future__ import annotations

from collections.abc import Callable

from llem.config import ExperimentConfig


def gpu_need(experiment: ExperimentConfig) -> int:
    """GPUs the engine uses when GPUs are present: TP x PP for vLLM and TensorRT-LLM, one for PyTorch, 0 on CPU."""
    b = experiment.backend
    if b.name == "pytorch":
        return 0 if b.device == "cpu" else 1
    if b.name == "vllm":
        return b.tensor_parallel_size * b.pipeline_parallel_size
    if b.name == "tensorrt":
        return b.tp_size * b.pp_size
    raise ValueError(f"unknown backend {b.name!r}")


def job_gpu_devices(experiment: ExperimentConfig, visible_gpus: int) -> list[int]:
    """CUDA indices to measure: `energy.devices` when set, else the first `gpu_need` visible GPUs ([] for CPU jobs).

    Engines place their ranks on CUDA devices 0..n-1 of what CUDA_VISIBLE_DEVICES exposes, so the job's
    own GPUs are the first n visible ones; a launcher that pins a job sets CUDA_VISIBLE_DEVICES accordingly.
    """
    if experiment.energy.devices is not None:
        return list(experiment.energy.devices)
    if visible_gpus <= 0:
        return []
    return list(range(min(gpu_need(experiment), visible_gpus)))


def torch_cuda_device_count() -> int:
    """CUDA devices as PyTorch counts them (what the PyTorch engine decides by); 0 without a CUDA build of torch."""
    try:
        import torch
    except ImportError:
        return 0
    try:
        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - a broken CUDA install counts no device
        return 0


def job_gpus(
    experiment: ExperimentConfig, nvml_gpus: int, cuda_count: Callable[[], int] = torch_cuda_device_count
) -> list[int]:
    """The job's CUDA indices, also when NVML sees no GPU but CUDA does.

    NVML can be unusable while CUDA works (a container without the driver's utility
    libraries, a driver/library mismatch). The job then still runs on a GPU, so its GPU
    stays in the energy scope, unmeasured, instead of the job passing for a CPU job. Only
    the PyTorch engine is asked here, in-process, as it decides its device the same way;
    other engines are checked against the devices they report after the run.
    """
    gpus = job_gpu_devices(experiment, nvml_gpus)
    if gpus or nvml_gpus > 0 or experiment.backend.name != "pytorch" or gpu_need(experiment) == 0:
        return gpus
    return job_gpu_devices(experiment, cuda_count())
