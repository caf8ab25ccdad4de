"""Typed options of the llem launchers; the Hydra confs (`hydra/launcher=llem_local|llem_container`) extend them.

No `from __future__ import annotations` here: OmegaConf reads these annotations as structured-config types.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, TypeVar

from llem.launch.images import DEFAULT_IMAGES

T = TypeVar("T", bound="LocalOptions")


@dataclass
class LocalOptions:
    # Config key whose value picks the worker a job runs on (one worker per value).
    route_by: str = "backend.name"
    # Fail a job that runs longer than this (null: no limit; campaign.execution.experiment_timeout_seconds wins).
    timeout_s: Optional[float] = None
    # Interpreter for the workers (null: the launcher's own).
    python: Optional[str] = None
    # Extra environment variables for the workers (not for secrets: those are inherited).
    env: Dict[str, str] = field(default_factory=dict)
    # The node's GPUs this launcher may use: "all", or a list of NVML indices or UUIDs.
    gpus: Any = "all"
    # Run jobs side by side, each worker pinned to its own GPU set (CUDA_VISIBLE_DEVICES), packed by each
    # job's GPU need. Off by default: jobs that share a node share its CPUs, memory bandwidth and power budget.
    parallel: bool = False
    # With `parallel`: how long to wait for a GPU another campaign on this node holds (null: as long as it takes).
    gpu_lock_timeout_s: Optional[float] = 3600.0

    @classmethod
    def from_config(cls: "type[T]", options: Mapping[str, Any]) -> "T":
        """Options as Hydra passes them (DictConfig values, `_target_` included) to this dataclass."""
        from omegaconf import DictConfig, ListConfig, OmegaConf

        known = {f.name for f in dataclasses.fields(cls)}
        plain: Dict[str, Any] = {}
        for key, value in options.items():
            if key not in known:
                continue
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
            plain[str(key)] = value
        return cls(**plain)


@dataclass
class ContainerOptions(LocalOptions):
    # Interpreter inside the image.
    python: Optional[str] = "python"
    # Container engine CLI: docker or podman.
    engine: str = "docker"
    # Image per routing key (per backend); see docker/ for how to build them.
    images: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    # GPUs given to the containers: "auto" (all of them when the host has NVIDIA GPUs, else none), "all", a
    # list of indices, or null for none. With `parallel`, the pool each container gets its own GPU set from.
    gpus: Any = "auto"
    # Container network (null: the engine's default).
    network: Optional[str] = None
    # Mount the host's Hugging Face cache (HF_HOME or ~/.cache/huggingface) and llem's cache.
    mount_caches: bool = True
    # Mount the launch directory at the same path and start there, so relative paths work as on the host.
    mount_cwd: bool = True
    # Extra bind mounts, "host_path:container_path[:ro|rw]".
    mounts: List[str] = field(default_factory=list)
    # Secrets passed from the host environment by name (values never written anywhere).
    env_passthrough: List[str] = field(default_factory=lambda: ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
    # Shared memory size for the containers (null: engine default).
    shm_size: Optional[str] = None
