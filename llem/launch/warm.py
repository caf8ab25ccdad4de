"""The llem launchers' work, without Hydra's Launcher API: run planned jobs on warm workers.

Jobs run one at a time (the next one is composed while the current one runs), or side by side on
the node's GPUs (`parallel`, llem.launch.parallel). Each job's start and end goes to the attached
reporter. The Hydra `Launcher` classes (llem.launch.hydra_launcher) only adapt Hydra's calls to this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import DictConfig

from llem.launch.interrupts import sigterm_as_interrupt
from llem.launch.jobs import Job
from llem.launch.options import ContainerOptions, LocalOptions
from llem.launch.parallel import ParallelJobs
from llem.launch.pool import WorkerPool
from llem.launch.reporting import JobReporter
from llem.launch.workers import Workers

log = logging.getLogger(__name__)


class WarmLauncher:
    """One launcher's workers and jobs: `run` a batch of planned jobs, `finish` when the campaign ends."""

    def __init__(self, kind: str, options: LocalOptions, sweep_dir: Path, *, compose: Callable[[Job], DictConfig],
                 task_function: Any, hydra_context: Any, nvml: Any = None) -> None:
        self.kind = kind
        self.options = options
        self.sweep_dir = Path(sweep_dir)
        self.compose = compose
        self.task_function = task_function
        self.hydra_context = hydra_context
        self.nvml = nvml  # the NVML module to list the node's GPUs with (a scripted one in tests)
        self.reporter: JobReporter | None = None
        self.pool: WorkerPool | None = None
        self.parallel: ParallelJobs | None = None

    def attach(self, reporter: JobReporter) -> None:
        self.reporter = reporter
        if self.pool is not None:
            self.pool.attach(reporter)

    def _pool(self) -> WorkerPool:
        if self.pool is None:
            self.pool = WorkerPool(self.kind, self.options, self.sweep_dir, nvml=self.nvml)
            if self.reporter is not None:
                self.pool.attach(self.reporter)
        return self.pool

    def workers(self) -> Workers:
        """Where this launcher's jobs run, for the campaign's preflight."""
        from llem.energy import visible_gpu_count

        options = self.options
        gpus = visible_gpu_count(nvml_module=self.nvml)
        if isinstance(options, ContainerOptions):
            return Workers("container", engine=options.engine, images=dict(options.images), gpu_count=gpus)
        return Workers("local", python=options.python, gpu_count=gpus)

    def finish(self) -> None:
        """Stop every worker (at the end of a campaign, and at exit), then free the GPUs it held."""
        if self.pool is not None:
            self.pool.close()
        if self.parallel is not None:
            self.parallel.close()
            self.parallel = None

    def run(self, jobs: Sequence[Job]) -> list[JobReturn]:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        pool = self._pool()
        if self.options.parallel:
            if self.parallel is None:
                self.parallel = ParallelJobs(pool, self.options, owner=str(self.sweep_dir), nvml=self.nvml)
            with sigterm_as_interrupt():
                return self.parallel.run(jobs, self.compose, self.task_function, self.hydra_context)
        log.info("llem %s launcher: %d job(s)", self.kind, len(jobs))
        returns: list[JobReturn] = []
        current: int | None = None
        composed: dict[int, DictConfig | Exception] = {}

        def compose(idx: int) -> None:
            """Compose job `idx` (if any and not yet done); called for the next job while one runs."""
            if idx < len(jobs) and idx not in composed:
                try:
                    composed[idx] = self.compose(jobs[idx])
                except Exception as error:  # noqa: BLE001 - fails that job only (e.g. a config file edited meanwhile)
                    composed[idx] = error

        with sigterm_as_interrupt():
            try:
                for idx, job in enumerate(jobs):
                    current = job.num
                    log.info("\t#%d : %s", current, " ".join(filter_overrides(list(job.overrides))))
                    compose(idx)
                    job_config = composed.pop(idx)
                    if isinstance(job_config, Exception):
                        returns.append(pool.compose_failed(job, job_config))
                        current = None
                        continue
                    returns.append(
                        pool.run_job(
                            job, job_config, self.task_function, self.hydra_context,
                            while_waiting=lambda i=idx: compose(i + 1),
                        )
                    )
                    current = None
            except KeyboardInterrupt:
                pool.mark_interrupted(current)
                pool.close()
                raise
        return returns
