"""Configs of the llem launchers (`hydra/launcher=llem_local`, `hydra/launcher=llem_container`)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from llem.launch.images import DEFAULT_IMAGES


@dataclass
class LlemLocalLauncherConf:
    _target_: str = "hydra_plugins.llem_launcher.llem_local_launcher.LlemLocalLauncher"
    # Config key whose value picks the worker a job runs on (one worker per value).
    route_by: str = "backend.name"
    # Fail a job that runs longer than this (null: no limit; campaign.execution.experiment_timeout_seconds wins).
    timeout_s: Optional[float] = None
    # Interpreter for the workers (null: the launcher's own).
    python: Optional[str] = None
    # Extra environment variables for the workers (not for secrets: those are inherited).
    env: Dict[str, str] = field(default_factory=dict)


@dataclass
class LlemContainerLauncherConf:
    _target_: str = "hydra_plugins.llem_launcher.llem_container_launcher.LlemContainerLauncher"
    route_by: str = "backend.name"
    timeout_s: Optional[float] = None
    # Container engine CLI: docker or podman.
    engine: str = "docker"
    # Image per routing key (per backend); see docker/ for how to build them.
    images: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    # GPUs given to each container: "auto" (all of them when the host has NVIDIA GPUs, else none),
    # "all", a list of indices, or null for none.
    gpus: Any = "auto"
    # Container network (null: the engine's default).
    network: Optional[str] = None
    # Python inside the image.
    python: str = "python"
    # Mount the host's Hugging Face cache (HF_HOME or ~/.cache/huggingface) and llem's cache.
    mount_caches: bool = True
    # Mount the launch directory at the same path and start there, so relative paths work as on the host.
    mount_cwd: bool = True
    # Extra bind mounts, "host_path:container_path[:ro|rw]".
    mounts: List[str] = field(default_factory=list)
    # Plain environment variables for the containers.
    env: Dict[str, str] = field(default_factory=dict)
    # Secrets passed from the host environment by name (values never written anywhere).
    env_passthrough: List[str] = field(default_factory=lambda: ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
    # Shared memory size for the containers (null: engine default).
    shm_size: Optional[str] = None


ConfigStore.instance().store(group="hydra/launcher", name="llem_local", node=LlemLocalLauncherConf, provider="llem")
ConfigStore.instance().store(
    group="hydra/launcher", name="llem_container", node=LlemContainerLauncherConf, provider="llem"
)
