"""A worker that is a long-lived container (docker or podman), driven through python-on-whales.

The container's main process is the worker, so a crash or an OOM kill ends the
container and shows in its state. The sweep dir and the socket dir are mounted at the
same absolute paths, so job dirs and results need no translation. Environment values
(secrets such as HF_TOKEN, and the worker's auth key) are passed by name: the engine
reads them from this process's environment, so they never appear in a command line
or in any file llem writes.

A serving job's engine server runs in the container too, as the worker's child. On a network with
published ports (the engine's default bridge, or a named network), the container gets one port
published on the host's loopback only, the same number inside and out, and the server listens there
(LLEM_SERVER_PORT, LLEM_SERVER_BIND): the job's client reaches it inside the container, and a person
on the host at 127.0.0.1:<port>. With network `host` or `none` nothing is published: the server binds
loopback, as on the host.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llem.launch import protocol
from llem.launch.handle import WorkerHandle
from llem.serving.server import BIND_ENV, LOOPBACK, PORT_ENV, free_port

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 30
PUBLISH_ATTEMPTS = 3  # a port found free can be taken before the engine binds it


@dataclass
class ContainerSpec:
    """How to run one backend's worker container."""

    engine: str
    image: str
    python: str = "python"
    gpus: str | list[int] | None = None
    network: str | None = None
    mounts: list[tuple[str, str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    env_passthrough: list[str] = field(default_factory=list)
    shm_size: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    extra_args: list[str] = field(default_factory=list)


def resolve_gpus(gpus: str | list[int] | None, host_gpus: int) -> str | list[int] | None:
    """`auto`: every GPU when the host has NVIDIA GPUs, none otherwise (asking for one that is not there fails)."""
    if gpus == "auto":
        return "all" if host_gpus > 0 else None
    return gpus


def gpu_args(engine: str, gpus: str | list[int] | None) -> list[str]:
    """The engine's GPU option: docker's --gpus, podman's CDI devices."""
    if gpus is None or gpus == [] or gpus == "none" or gpus == "auto":
        return []
    if engine == "podman":
        ids = ["all"] if gpus == "all" else [str(g) for g in gpus]  # type: ignore[union-attr]
        return [arg for i in ids for arg in ("--device", f"nvidia.com/gpu={i}")]
    if gpus == "all":
        return ["--gpus", "all"]
    return ["--gpus", "device=" + ",".join(str(g) for g in gpus)]  # type: ignore[union-attr]


def publishes_ports(network: str | None) -> bool:
    """Whether a container on `network` can have ports published (not on the host's network, none, or another
    container's or a given namespace's)."""
    if network is None:
        return True
    return network not in ("host", "none") and not network.startswith(("container:", "ns:"))


def remove_leftovers(engine: str, label: str, value: str) -> list[str]:
    """Remove containers a crashed launcher of the same campaign left behind (matched by label)."""
    from python_on_whales import DockerClient

    client = DockerClient(client_call=[engine])
    leftovers = client.container.list(all=True, filters=[("label", f"{label}={value}")])
    for container in leftovers:
        try:
            client.container.remove(container, force=True)
        except Exception:  # noqa: BLE001 - gone meanwhile
            pass
    return [c.name for c in leftovers]


class ContainerWorker(WorkerHandle):
    """One container per routing key; restarted in place, removed when the campaign ends."""

    def __init__(self, key: str, socket_dir: Path, singleton_state: Any, spec: ContainerSpec) -> None:
        super().__init__(key, socket_dir, singleton_state)
        from python_on_whales import DockerClient

        self.spec = spec
        self.client = DockerClient(client_call=[spec.engine])
        self.name = f"llem-{key}-{uuid.uuid4().hex[:8]}"
        self.container_id: str | None = None
        self.server_port: int | None = None  # published on the host's loopback; None when not published

    def run_command(self) -> list[str]:
        """The engine command line, as an argument list (never a shell string). On a network that publishes
        ports, the first call picks the server's port (kept in `server_port`)."""
        s = self.spec
        cmd = [*self.client.client_config.client_call, "run", "--detach", "--name", self.name]
        if s.network:
            cmd += ["--network", s.network]
        if self.server_port is None and publishes_ports(s.network):
            self.server_port = free_port(LOOPBACK)
        if self.server_port is not None:
            cmd += ["--publish", f"{LOOPBACK}:{self.server_port}:{self.server_port}"]
        if s.shm_size:
            cmd += ["--shm-size", s.shm_size]
        for key, value in {"llem.worker": self.key, **s.labels}.items():
            cmd += ["--label", f"{key}={value}"]
        gpus = s.gpus
        if gpus == "auto":
            from llem.energy import visible_gpu_count

            gpus = resolve_gpus(gpus, visible_gpu_count())
        cmd += gpu_args(s.engine, gpus)
        if s.workdir:
            cmd += ["--workdir", s.workdir]
        for source, target, mode in s.mounts:
            cmd += ["--volume", f"{source}:{target}:{mode}"]
        for key, value in s.env.items():
            cmd += ["--env", f"{key}={value}"]
        if self.server_port is not None:  # a published port does not reach the container's loopback
            cmd += ["--env", f"{PORT_ENV}={self.server_port}", "--env", f"{BIND_ENV}=0.0.0.0"]
        for name in [*s.env_passthrough, protocol.AUTHKEY_ENV]:
            cmd += ["--env", name]  # name only: the value comes from our environment
        cmd += s.extra_args
        cmd += [s.image, s.python, "-m", "llem.launch.worker", "--socket", str(self.socket_path)]
        return cmd

    def _launch(self) -> None:
        if self.container_id is not None:  # a previous attempt left a container behind
            self._remove()
        self.name = f"llem-{self.key}-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ)
        env[protocol.AUTHKEY_ENV] = self.authkey.hex()
        missing = [n for n in self.spec.env_passthrough if n not in env]
        for name in missing:
            env.pop(name, None)  # an unset secret is simply not passed
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            self.server_port = None  # a new container: a port free now
            proc = subprocess.run(self.run_command(), env=env, capture_output=True, text=True)
            if proc.returncode == 0:
                break
            self._remove_by_name()  # a start can fail after the container was created (e.g. a GPU it cannot get)
            error = proc.stderr.strip() or proc.stdout.strip()
            if self.server_port is None or "address already in use" not in error.lower() or attempt == PUBLISH_ATTEMPTS:
                raise RuntimeError(
                    f"{self.spec.engine} could not start the '{self.key}' worker from image {self.spec.image}: {error}"
                )
        self.container_id = proc.stdout.strip().splitlines()[-1]
        if self.server_port is not None:
            log.info("llem: worker '%s' (container %s): server port published on %s:%d",
                     self.key, self.name, LOOPBACK, self.server_port)

    def _remove_by_name(self) -> None:
        try:
            self.client.container.remove(self.name, force=True)
        except Exception:  # noqa: BLE001 - nothing was created
            pass

    def _relaunch(self) -> None:
        assert self.container_id is not None
        self.client.container.start(self.container_id)

    def _state(self) -> Any:
        if self.container_id is None:
            return None
        try:
            return self.client.container.inspect(self.container_id).state
        except Exception:  # noqa: BLE001 - the container may be gone
            return None

    def _alive(self) -> bool:
        state = self._state()
        return bool(state is not None and state.running)

    def _terminate(self) -> None:
        if self.container_id is not None and self._alive():
            try:
                self.client.container.kill(self.container_id)
            except Exception:  # noqa: BLE001 - it may have exited meanwhile
                pass

    def restart_container(self) -> None:
        """Full container restart (fresh process, same container)."""
        self.restart()

    def exit_report(self) -> str:
        state = self._state()
        if state is None:
            status = "container is gone"
        elif state.running:
            status = "container still running"
        else:
            status = f"container exited with code {state.exit_code}"
            if state.oom_killed:
                status += " (OOM-killed)"
        logs: Any = ""
        for attempt in range(5):  # right after a kill (and on a busy host) the engine may not have flushed the log yet
            try:
                logs = self.client.container.logs(self.container_id, tail=LOG_TAIL_LINES) if self.container_id else ""
            except Exception as error:  # noqa: BLE001
                logs = f"(logs unavailable: {error})"
                break
            if str(logs).strip() or self.container_id is None:
                break
            time.sleep(0.5 * (attempt + 1))
        return f"{status}; last lines of its log:\n{str(logs).strip()}"

    def _remove(self) -> None:
        if self.container_id is not None:
            self._terminate()
            try:
                self.client.container.remove(self.container_id, force=True)
            except Exception:  # noqa: BLE001 - already removed
                pass
            self.container_id = None

    def stop(self) -> None:
        super().stop()
        self._remove()
