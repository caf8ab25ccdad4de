# ruff: noqa: UP006, UP035, UP045  (OmegaConf structured configs need typing generics)
"""Options of `hydra/launcher=llem_slurm`, typed, and how they become submitit's SLURM parameters.

The dataclasses use `typing` generics so OmegaConf can type-check them as Hydra structured configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

# Secrets a job may need: passed from the submitting environment by name, their values never written.
DEFAULT_PASSTHROUGH = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]


@dataclass
class SlurmContainerOptions:
    """Run each SLURM job's group inside a container on the node: on as soon as an image is set.

    Present by default (not null), so `hydra.launcher.container.image=...` works on the command line.
    """

    # podman or apptainer (singularity works as apptainer's older name).
    engine: str = "podman"
    # Image for every group (podman: an image reference; apptainer: a .sif path or a URI).
    image: Optional[str] = None
    # Image per routing key (per backend); wins over `image` for its key.
    images: Dict[str, str] = field(default_factory=dict)
    # Python inside the image.
    python: str = "python"
    # Mount the Hugging Face cache (HF_HOME or ~/.cache/huggingface) and llem's cache at the same paths.
    mount_caches: bool = True
    # Extra bind mounts, "host_path:container_path[:ro|rw]".
    mounts: List[str] = field(default_factory=list)
    # Extra engine arguments, placed before the image.
    extra_args: List[str] = field(default_factory=list)


@dataclass
class SlurmOptions:
    # Config key whose value picks the group a job runs in (one model load per group where possible).
    route_by: str = "backend.name"
    # SLURM partition, account and QOS (null: the cluster's defaults).
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    # Time limit of one SLURM job (one group), minutes.
    time_min: int = 60
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    # GPUs per SLURM job; null: the most any job of the group needs (0 requests none).
    gpus_per_task: Optional[int] = None
    # SLURM job name.
    job_name: str = "llem"
    # Extra sbatch options, e.g. {constraint: a100, exclusive: true} (become #SBATCH --key=value).
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    # Shell lines run in the batch script before the job starts (module load, source a venv).
    setup: List[str] = field(default_factory=list)
    # Where submitit keeps the SLURM jobs' scripts, pickles and logs.
    folder: str = "${hydra.sweep.dir}/.slurm"
    # Times a SLURM job that hit its time limit is requeued (preempted jobs are always requeued).
    max_num_timeout: int = 3
    # Seconds between checks of the submitted jobs.
    poll_interval_s: float = 10.0
    # Interpreter on the nodes (null: the submitting one, which must exist at the same path there).
    python: Optional[str] = None
    # Plain environment variables for the jobs (not for secrets).
    env: Dict[str, str] = field(default_factory=dict)
    # Secrets passed from the submitting environment by name (values never written anywhere).
    env_passthrough: List[str] = field(default_factory=lambda: list(DEFAULT_PASSTHROUGH))
    # Run each group inside a container on the node (when container.image or container.images is set).
    # null turns containers off as well.
    container: Optional[SlurmContainerOptions] = field(default_factory=SlurmContainerOptions)
    # Let jobs set gpu.power_limit_w / gpu.sm_clock_mhz / gpu.mem_clock_mhz on the nodes (shared nodes usually
    # forbid it; off by default).
    allow_gpu_settings: bool = False

    @property
    def in_container(self) -> Optional[SlurmContainerOptions]:
        """The container options when groups run in a container, else None (directly on the node)."""
        c = self.container
        return c if c is not None and (c.image or c.images) else None


def gpu_settings_refusal(options: SlurmOptions, keys: List[str]) -> Optional[str]:
    """Why a job that sets `keys` (gpu.*) may not run under these options, or None when it may."""
    if options.allow_gpu_settings:
        return None
    return (f"{', '.join(keys)} set, but SLURM nodes are usually shared and forbid changing GPU settings; set "
            "hydra.launcher.allow_gpu_settings=true where the cluster allows it (jobs then need root on the node)")


def _plain(value: Any) -> Any:
    """A DictConfig/ListConfig (what Hydra passes) as plain containers."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return value


def options_from(values: Mapping[str, Any]) -> SlurmOptions:
    """The launcher's keyword arguments (Hydra's instantiated config) as typed options."""
    known = {f.name for f in dataclasses.fields(SlurmOptions)}
    unknown = sorted(k for k in values if k not in known and not k.startswith("_"))
    if unknown:
        raise ValueError(f"hydra.launcher: unknown llem_slurm option(s): {', '.join(unknown)}")
    data = {k: _plain(v) for k, v in values.items() if k in known}
    container = data.get("container")
    if container is not None and not isinstance(container, SlurmContainerOptions):
        data["container"] = SlurmContainerOptions(**dict(container))
    return SlurmOptions(**data)


def executor_parameters(options: SlurmOptions, gpus: int) -> dict[str, Any]:
    """Parameters for `submitit.SlurmExecutor.update_parameters` for one group needing `gpus` GPUs."""
    params: dict[str, Any] = {
        "job_name": options.job_name,
        "time": int(options.time_min),
        "nodes": 1,
        "ntasks_per_node": 1,
    }
    for name in ("partition", "account", "qos", "cpus_per_task"):
        value = getattr(options, name)
        if value is not None:
            params[name] = value
    if options.mem_gb is not None:
        params["mem"] = f"{int(options.mem_gb * 1024)}MB"
    wanted = options.gpus_per_task if options.gpus_per_task is not None else gpus
    if wanted and wanted > 0:
        params["gpus_per_task"] = int(wanted)
    if options.setup:
        params["setup"] = [str(line) for line in options.setup]
    if options.additional_parameters:
        params["additional_parameters"] = {str(k): v for k, v in options.additional_parameters.items()}
    return params
