"""The llem launchers as Hydra `Launcher`s: warm workers per routing key, local processes or containers.

The Hydra plugin classes only name a conf and a kind; everything else is here, so a campaign
driven from Python (`llem.campaign.run_campaign`) uses the very same launcher.
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
from typing import Any, ClassVar

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from llem.launch.container import ContainerSpec, ContainerWorker, remove_leftovers
from llem.launch.gpus import Gpu
from llem.launch.handle import WorkerHandle
from llem.launch.interrupts import sigterm_as_interrupt
from llem.launch.job_config import JobComposer
from llem.launch.local import LocalWorker
from llem.launch.options import ContainerOptions, LocalOptions
from llem.launch.runner import CampaignRunner, RunnerOptions, numbered

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

    def __init__(self, kind: str, options: LocalOptions, sweep_dir: Path) -> None:
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
                state.worker.kill()

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
        shutil.rmtree(self.socket_dir, ignore_errors=True)


class LlemLauncher(Launcher):
    """Runs each job on the warm worker of its routing key; reports every job to the campaign's session."""

    kind: ClassVar[str] = "local"
    options_type: ClassVar[type[LocalOptions]] = LocalOptions
    # The launcher reports each job's start and end to the campaign itself (llem.campaign.JobSession).
    reports_jobs: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        self.options = self.options_type.from_config(options)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.pool: WorkerPool | None = None
        self.session: Any = None
        self.composer: JobComposer | None = None
        self.packer: Any = None  # llem.launch.placement.GpuPacker, with `parallel`
        self.gpu_locks: Any = None  # llem.launch.gpus.GpuLocks, with `parallel`
        self.executor: Any = None  # the job threads, with `parallel` (they outlive launch calls: see parallel.py)

    @staticmethod
    def nvml() -> Any:
        """The NVML module to list the node's GPUs with (a scripted one under LLEM_NVML_FACTORY)."""
        from llem.launch.protocol import nvml_from_env

        return nvml_from_env()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def attach_campaign(self, session: Any) -> None:
        """Called by the campaign engine: the session every job is reported to."""
        self.session = session
        if self.pool is not None:
            self.pool.attach(session)

    def _pool(self) -> WorkerPool:
        if self.pool is None:
            assert self.config is not None
            self.pool = WorkerPool(self.kind, self.options, Path(str(self.config.hydra.sweep.dir)))
            if self.session is not None:
                self.pool.attach(self.session)
        return self.pool

    def preflight_workers(self) -> Any:
        """Where this launcher's jobs run, for the campaign's preflight (llem.plan.preflight.Workers)."""
        from llem.energy import visible_gpu_count
        from llem.plan.preflight import Workers

        options = self.options
        gpus = visible_gpu_count(nvml_module=self.nvml())
        if isinstance(options, ContainerOptions):
            return Workers("container", engine=options.engine, images=dict(options.images), gpu_count=gpus)
        return Workers("local", python=options.python, gpu_count=gpus)

    def finish(self) -> None:
        """Stop every worker (at the end of a campaign, and at exit), then free the GPUs it held."""
        if self.pool is not None:
            self.pool.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        if self.gpu_locks is not None:
            self.gpu_locks.release_all()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        config = self.config
        assert config is not None and self.hydra_context is not None
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if self.composer is None:
            self.composer = JobComposer(self.hydra_context.config_loader, config)
        if self.options.parallel:
            from llem.launch.parallel import ParallelRun

            with sigterm_as_interrupt():
                return ParallelRun(self).run(job_overrides, initial_job_idx)
        pool = self._pool()
        composer = self.composer
        log.info("llem %s launcher: %d job(s)", self.kind, len(job_overrides))
        returns: list[JobReturn] = []
        current: int | None = None
        composed: dict[int, DictConfig | Exception] = {}

        def compose(idx: int) -> None:
            """Compose job `idx` (if any and not yet done); called for the next job while one runs."""
            if idx < len(job_overrides) and idx not in composed:
                try:
                    composed[idx] = numbered(composer.compose(job_overrides[idx]), initial_job_idx + idx)
                except Exception as error:  # noqa: BLE001 - fails that job only (e.g. a config file edited meanwhile)
                    composed[idx] = error

        with sigterm_as_interrupt():
            try:
                for idx, overrides in enumerate(job_overrides):
                    current = initial_job_idx + idx
                    log.info("\t#%d : %s", current, " ".join(filter_overrides(list(overrides))))
                    compose(idx)
                    job_config = composed.pop(idx)
                    if isinstance(job_config, Exception):
                        returns.append(pool.compose_failed(current, overrides, job_config))
                        current = None
                        continue
                    returns.append(
                        pool.run_job(
                            job_config, overrides, self.task_function, self.hydra_context,
                            while_waiting=lambda i=idx: compose(i + 1),
                        )
                    )
                    current = None
            except KeyboardInterrupt:
                pool.mark_interrupted(current)
                pool.close()
                raise
        return returns


class LlemContainerLauncherBase(LlemLauncher):
    kind: ClassVar[str] = "container"
    options_type: ClassVar[type[LocalOptions]] = ContainerOptions
