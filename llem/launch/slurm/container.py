"""The command that runs a SLURM job's group inside a container on the node (podman or apptainer).

Always an argument list, never a shell string: config values reach the engine as single arguments.
Secrets are passed by name (podman `--env NAME` reads the value from the environment; apptainer
inherits the environment), so their values never appear in a command line or a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from llem.launch.slurm.options import SlurmContainerOptions

ENGINES = ("podman", "apptainer", "singularity")
# Set inside the container: where the job runs, as SLURM saw it (node, job id). Not SLURM's CUDA_VISIBLE_DEVICES:
# its indices are relative to the node, not to the container; the container gets its GPUs' UUIDs instead.
FORWARDED = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT", "LLEM_SLURM_NODE")


def parse_mount(text: str) -> tuple[str, str, str]:
    parts = str(text).split(":")
    if len(parts) == 2:
        return parts[0], parts[1], "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        return parts[0], parts[1], parts[2]
    raise ValueError(f"hydra.launcher.container.mounts: expected 'host:container[:ro|rw]', got {text!r}")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"hydra.launcher.container.engine: expected podman or apptainer, got {engine!r}")


def image_for(options: SlurmContainerOptions, key: str) -> str:
    image = options.images.get(key) or options.image
    if not image:
        raise ValueError(f"hydra.launcher.container: no image for '{key}' (set image, or images.{key})")
    return str(image)


def container_problem(options: SlurmContainerOptions, key: str) -> str | None:
    """What keeps a group of `key` from running in a container as configured (checked before it is submitted:
    on the node it would fail once per group, after waiting in the queue), or None."""
    try:
        check_engine(options.engine)
        for mount in options.mounts:
            parse_mount(mount)
        image_for(options, key)
    except ValueError as error:
        return str(error)
    return None


def cache_mounts(environ: Mapping[str, str]) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """The Hugging Face and llem caches of this node, mounted at the same paths, and the variables naming them."""
    hf_home = environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    llem_cache = environ.get("LLEM_CACHE_DIR") or str(Path.home() / ".cache" / "llem")
    mounts, env = [], {}
    for path, var in ((hf_home, "HF_HOME"), (llem_cache, "LLEM_CACHE_DIR")):
        mounts.append((path, path, "rw"))
        env[var] = path
    return mounts, env


def container_argv(
    options: SlurmContainerOptions,
    *,
    image: str,
    command: Sequence[str],
    mounts: Sequence[tuple[str, str, str]],
    workdir: str,
    gpus: int,
    env: Mapping[str, str],
    passthrough: Sequence[str],
    environ: Mapping[str, str],
    name: str | None = None,
    gpu_uuids: Sequence[str] = (),
) -> list[str]:
    """The engine's argv. `env` holds plain values; `passthrough` names variables whose values stay in
    `environ` (only those set there are passed). With `gpus`, the container gets exactly `gpu_uuids` (the GPUs
    SLURM gave the job), never the node's others."""
    engine = options.engine
    check_engine(engine)
    if gpus > 0:
        if not gpu_uuids:
            raise ValueError("a container that needs GPUs must be given the job's GPU UUIDs")
        env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(gpu_uuids)}  # CUDA takes UUIDs: the same GPUs by name
    names = [n for n in dict.fromkeys([*passthrough, *FORWARDED]) if n in environ and n not in env]
    if engine == "podman":
        argv = ["podman", "run", "--rm", "--init"]
        if name:
            argv += ["--name", name]
        for uuid in gpu_uuids if gpus > 0 else ():
            argv += ["--device", f"nvidia.com/gpu={uuid}"]  # CDI names each GPU by its UUID too
        for source, target, mode in mounts:
            argv += ["--volume", f"{source}:{target}:{mode}"]
        argv += ["--workdir", workdir]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        for var in names:
            argv += ["--env", var]  # name only: podman takes the value from its environment
    else:
        argv = [engine, "exec"]
        if gpus > 0:
            argv.append("--nv")  # the GPU libraries; CUDA_VISIBLE_DEVICES (UUIDs) picks the job's GPUs
        for source, target, mode in mounts:
            argv += ["--bind", f"{source}:{target}:{mode}"]
        argv += ["--pwd", workdir]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        # apptainer passes the caller's environment on (unless --cleanenv): the named variables need nothing
    argv += [str(a) for a in options.extra_args]
    argv += [image, *command]
    return argv


def mounts_for(options: SlurmContainerOptions, sweep_dir: str, environ: Mapping[str, str] | None = None
               ) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """The sweep dir (same path), the caches when asked, and the configured mounts; and the cache variables."""
    environ = os.environ if environ is None else environ
    mounts: list[tuple[str, str, str]] = [(sweep_dir, sweep_dir, "rw")]
    env: dict[str, str] = {}
    if options.mount_caches:
        extra, env = cache_mounts(environ)
        mounts += extra
    mounts += [parse_mount(m) for m in options.mounts]
    return mounts, env
