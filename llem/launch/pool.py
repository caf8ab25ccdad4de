"""The warm workers of one llem launcher: how each is made (a local process or a container), pinned and removed.

`WorkerPool` is the runner (llem.launch.runner) of the local and the container launcher: it makes
the worker of each routing key (or of each GPU set, side by side), owns their socket dir and cleans
up at exit, also removing containers a crash of an earlier run of the campaign left behind. For
containers it applies each job's `gpu.*` settings on the host (llem.launch.host_gpu_settings) and
restores a worker's GPUs when the worker stops.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from omegaconf import DictConfig

from llem.energy.devices.gpu_restore import restore_stale
from llem.launch.container import ContainerSpec, ContainerWorker, remove_leftovers
from llem.launch.gpus import Gpu
from llem.launch.handle import WorkerHandle, WorkerUnkillable
from llem.launch.host_gpu_settings import HostGpuSettings, job_experiment
from llem.launch.jobs import Job
from llem.launch.local import LocalWorker
from llem.launch.options import ContainerOptions, LocalOptions
from llem.launch.runner import CampaignRunner, RunnerOptions
from llem.measure.gpu_settings import HOST_APPLIED_ENV

log = logging.getLogger(__name__)

CAMPAIGN_LABEL = "llem.campaign"


def campaign_label(sweep_dir: str) -> str:
    """A label value naming the campaign (its sweep dir), to find containers a crash left behind."""
    return hashlib.sha256(sweep_dir.encode()).hexdigest()[:16]


def _parse_mount(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) == 2:
        return parts[0], parts[1], "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        return parts[0], parts[1], parts[2]
    raise ValueError(f"hydra.launcher.mounts: expected 'host:container[:ro|rw]', got {text!r}")


def container_spec(
    options: ContainerOptions, key: str, sweep_dir: str, socket_dir: Path, gpus: Sequence[Gpu] | None = None
) -> ContainerSpec:
    """How the worker container for routing key `key` runs: image, mounts, environment, GPUs
    (`gpus`: the set a parallel launcher pinned it to; else `options.gpus`)."""
    if key not in options.images:
        raise RuntimeError(f"hydra.launcher.images has no image for '{key}' (known: {sorted(options.images)})")
    mounts = [(sweep_dir, sweep_dir, "rw"), (str(socket_dir), str(socket_dir), "rw")]
    env = {str(k): str(v) for k, v in options.env.items()}
    if options.mount_caches:
        hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
        llem_cache = os.environ.get("LLEM_CACHE_DIR") or str(Path.home() / ".cache" / "llem")
        for path, var in ((hf_home, "HF_HOME"), (llem_cache, "LLEM_CACHE_DIR")):
            Path(path).mkdir(parents=True, exist_ok=True)
            mounts.append((path, path, "rw"))
            env.setdefault(var, path)
    workdir = None
    if options.mount_cwd:
        workdir = str(Path.cwd())
        if workdir != sweep_dir:
            mounts.append((workdir, workdir, "rw"))
    mounts += [_parse_mount(str(m)) for m in options.mounts]
    env[HOST_APPLIED_ENV] = "1"  # the launcher applies gpu.* on the host: the worker only reads them back
    devices: Any = options.gpus
    if gpus is not None:
        devices = [g.index for g in gpus] or None
    elif devices is not None and not isinstance(devices, str):
        devices = [int(g) for g in devices]
    return ContainerSpec(
        engine=options.engine,
        image=str(options.images[key]),
        python=str(options.python or "python"),
        gpus=devices,
        network=options.network,
        mounts=mounts,
        env=env,
        env_passthrough=[str(n) for n in options.env_passthrough],
        shm_size=options.shm_size,
        labels={CAMPAIGN_LABEL: campaign_label(sweep_dir)},
        workdir=workdir,
    )


class WorkerPool(CampaignRunner):
    """A CampaignRunner that makes the launcher's workers, owns their socket dir and cleans up at exit."""

    def __init__(self, kind: str, options: LocalOptions, sweep_dir: Path, *, nvml: Any = None) -> None:
        self.kind = kind
        self.launcher_options = options
        self.sweep_dir = str(sweep_dir.absolute())
        if isinstance(options, ContainerOptions):
            gone = remove_leftovers(options.engine, CAMPAIGN_LABEL, campaign_label(self.sweep_dir))
            if gone:
                log.warning("llem: removed containers left by an earlier run of this campaign: %s", ", ".join(gone))
        super().__init__(self._make_worker, RunnerOptions(route_by=options.route_by, timeout_s=options.timeout_s,
                                                          gaps_per_worker=options.parallel))
        # Unix socket paths are limited to ~100 bytes: keep them short, outside the sweep dir.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="llem-w-"))
        self.log_dir = Path(self.sweep_dir) / ".workers"
        self.pins: dict[str, tuple[str, tuple[Gpu, ...]]] = {}  # worker name -> (routing key, pinned GPUs)
        # containers: gpu.* applied here, on the host (`nvml`: a scripted NVML in tests)
        self.host_gpus = HostGpuSettings(nvml) if isinstance(options, ContainerOptions) else None
        self.nvml = nvml
        self._closed = False
        atexit.register(self.close)

    def pin(self, worker: str, route: str, gpus: tuple[Gpu, ...]) -> None:
        """Worker `worker` (made on first use) runs jobs of `route` on exactly `gpus`."""
        self.pins[worker] = (route, gpus)

    def evict(self, worker: str) -> None:
        """Stop an idle pinned worker so its GPUs can be pinned to another."""
        state = self.keys.pop(worker, None)
        self.pins.pop(worker, None)
        if state is not None and state.worker is not None:
            try:
                state.worker.stop()
            except Exception as error:  # noqa: BLE001 - it is being discarded anyway
                log.warning("llem: could not stop worker %s: %s", worker, error)
                try:
                    state.worker.kill()
                except WorkerUnkillable as unkillable:
                    log.warning("llem: %s", unkillable)
                    return  # it may still run a job on its GPUs: their settings stay until the campaign ends
            self._restore_gpus(state.worker)

    def _worker_gpus(self, worker: WorkerHandle) -> list[Gpu]:
        """The host's GPUs a container worker was given."""
        assert self.host_gpus is not None
        if not isinstance(worker, ContainerWorker):
            return []
        return self.host_gpus.container_gpus(worker.spec.gpus)

    def _restore_gpus(self, worker: WorkerHandle | None = None) -> None:
        """Put back the original settings of the GPUs a stopped worker (None: every one) ran on.

        Containers: the host set them, and restores them. Local workers set their own and restore them as they
        exit; one that was killed (a timeout, Ctrl-C, a stop) could not, and left its restore record behind with
        its dead PID: such stale records are restored here, so no GPU stays capped until the next llem run.
        """
        try:
            if self.host_gpus is None:
                restored, problems = restore_stale(self.nvml)
                for line in restored:
                    log.warning("llem: %s", line)
            else:
                problems = self.host_gpus.restore(None if worker is None else self._worker_gpus(worker))
        except Exception as error:  # noqa: BLE001 - say it, keep stopping; the record stays for the next run
            problems = [str(error)]
        for problem in problems:
            log.warning("llem: could not restore GPU settings: %s", problem)

    def before_job(self, key: str, worker: WorkerHandle, job: Job, config: DictConfig) -> dict[str, Any]:
        """Containers: put the job's `gpu.*` settings in force on its GPUs, from the host; the job is told
        what was applied (`gpu_settings`), and only reads it back."""
        if self.host_gpus is None:
            return {}
        facts = self.host_gpus.before_job(job_experiment(job, config), self._worker_gpus(worker))
        return {"gpu_settings": facts}

    def _make_worker(self, key: str) -> WorkerHandle:
        state = Singleton.get_state()
        options = self.launcher_options
        route, gpus = self.pins.get(key, (key, None))
        socket_name = key.replace("@", "-")
        if isinstance(options, ContainerOptions):
            spec = container_spec(options, route, self.sweep_dir, self.socket_dir, gpus)
            return ContainerWorker(socket_name, self.socket_dir, state, spec)
        env = {str(k): str(v) for k, v in options.env.items()}
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in gpus)  # UUIDs: CUDA's order may differ from NVML's
        return LocalWorker(socket_name, self.socket_dir, self.log_dir, state, python=options.python or sys.executable,
                           env=env)  # fmt: skip

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop_all()
        self._restore_gpus()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
