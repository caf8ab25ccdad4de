"""Run a launcher's jobs side by side on a node's GPUs (`hydra.launcher.parallel=true`).

Jobs are composed and started in plan order. Each goes to a worker pinned to its own GPU set
(`GpuPacker`); a job waits until enough GPUs are free, and for GPUs another campaign holds
(`GpuLocks`). The workers run on threads: the runner's per-worker state (health checks,
restarts, gaps) and the reporter are safe to share.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import DictConfig

from llem.launch.gpus import GpuBusy, GpuLocks, node_gpus
from llem.launch.jobs import Job
from llem.launch.options import LocalOptions
from llem.launch.outcome import JobFailure
from llem.launch.placement import GpuPacker, Slot
from llem.launch.pool import WorkerPool

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 60.0


class GpuNeedTooLarge(JobFailure):
    """A job needs more GPUs than the launcher's pool holds (no retry can change that)."""


def job_gpu_need(job: Job, config: DictConfig) -> int:
    """GPUs a job's engine uses: as planned, or, for a job no campaign planned, from its composed config
    (0 if that does not validate: the job fails on its own)."""
    if job.experiment is not None:
        return job.gpus
    from omegaconf import OmegaConf

    from llem.composed import validate_composed
    from llem.measure.job_devices import gpu_need

    try:
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])  # the config the task sees
        return gpu_need(validate_composed(task).experiment)
    except Exception:  # noqa: BLE001 - invalid configs are reported by the job itself
        return 0


class ParallelJobs:
    """What running side by side keeps across launch calls: the GPU packer, the GPU locks and the job threads.

    One executor for the launcher's lifetime: a local worker dies with the thread that started it
    (PR_SET_PDEATHSIG follows threads), so job threads must outlive every launch call.
    """

    def __init__(self, pool: WorkerPool, options: LocalOptions, *, owner: str, nvml: Any = None) -> None:
        self.pool = pool
        self.options = options
        self.packer = GpuPacker(node_gpus(options.gpus, nvml=nvml))
        self.locks = GpuLocks(owner=owner)
        # under a sweeper other than llem's nothing calls `close`: the kernel frees the locks at exit, and this
        # removes their notes, so no later campaign is told that a finished one holds its GPUs
        atexit.register(self.locks.release_all)
        self.executor = ThreadPoolExecutor(max_workers=max(1, len(self.packer.pool)) + 1,
                                           thread_name_prefix="llem-job")  # fmt: skip

    def run(self, jobs: Sequence[Job], compose: Callable[[Job], DictConfig], task_function: Any,
            hydra_context: Any) -> list[JobReturn]:
        return _ParallelRun(self).run(jobs, compose, task_function, hydra_context)

    def close(self, join_timeout_s: float = JOIN_TIMEOUT_S) -> None:
        """Stop taking jobs, wait for the job threads, and free the GPUs (the pool's workers are stopped by its owner
        first, so the threads end at once). Waiting means no job thread records a job after the campaign closed its
        state; the wait is bounded so a thread stuck elsewhere cannot hold the campaign's end."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        waiter = threading.Thread(target=self.executor.shutdown, kwargs={"wait": True}, name="llem-join", daemon=True)
        waiter.start()
        waiter.join(join_timeout_s)
        if waiter.is_alive():
            log.warning("llem: job threads still running %.0f s after their workers were stopped", join_timeout_s)
        self.locks.release_all()


class _ParallelRun:
    """One batch: the scheduling loop on this thread, the jobs on the job threads."""

    def __init__(self, shared: ParallelJobs) -> None:
        self.shared = shared
        self.pool = shared.pool
        self.packer = shared.packer
        self.locks = shared.locks
        self.running: dict[Future[JobReturn], tuple[int, Slot]] = {}

    def _say(self, message: str) -> None:
        if self.pool.reporter is not None:
            self.pool.reporter.say(message)
        else:
            log.info("llem: %s", message)

    def _collect(self, futures: Sequence[Future[JobReturn]], returns: list[JobReturn | None]) -> None:
        for future in futures:
            idx, slot = self.running.pop(future)
            returns[idx] = future.result()
            self.packer.finish(slot.worker)
            state = self.pool.keys.get(slot.worker)
            if state is not None and state.disabled_reason is not None:  # unusable: its GPUs go back to the pool
                self.pool.evict(slot.worker)
                self.packer.forget(slot.worker)
                self.locks.release(slot.gpus)

    def _wait_any(self, returns: list[JobReturn | None]) -> None:
        done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
        self._collect(list(done), returns)

    def _acquire(self, slot: Slot) -> None:
        """Take the locks of the slot's GPUs, waiting for other campaigns."""

        def waiting(gpu: Any, holder: str) -> None:
            self._say(f"waiting for {gpu.label}: in use by {holder}")

        self.locks.acquire(slot.gpus, self.shared.options.gpu_lock_timeout_s, on_wait=waiting)

    def run(self, jobs: Sequence[Job], compose: Callable[[Job], DictConfig], task_function: Any,
            hydra_context: Any) -> list[JobReturn]:
        returns: list[JobReturn | None] = [None] * len(jobs)
        pool_size = len(self.packer.pool)
        try:
            for idx, job in enumerate(jobs):
                try:
                    job_config = compose(job)
                except Exception as error:  # noqa: BLE001 - fails that job only
                    returns[idx] = self.pool.compose_failed(job, error)
                    continue
                route = self.pool.route_key(job_config)
                need = job_gpu_need(job, job_config) if pool_size else 0
                if need > pool_size:
                    failure = GpuNeedTooLarge(
                        f"job {job.num} needs {need} GPU(s); hydra.launcher.gpus gives this launcher {pool_size}"
                    )
                    returns[idx] = self.pool.refuse(job, job_config, failure)
                    continue
                slot = self.packer.place(route, need)
                while slot is None:
                    self._wait_any(returns)
                    slot = self.packer.place(route, need)
                for name in slot.evict:
                    self.pool.evict(name)
                    self.locks.release(g for g in self.packer.workers.get(name, ()) if g not in slot.gpus)
                try:
                    self._acquire(slot)
                except GpuBusy as busy:
                    returns[idx] = self.pool.refuse(job, job_config, JobFailure(str(busy)))
                    continue
                self.packer.start(slot)
                self.pool.pin(slot.worker, route, slot.gpus)
                placement = {
                    "gpus": [g.uuid for g in slot.gpus],
                    "gpu_indices": [g.index for g in slot.gpus],
                    "parallel": True,
                    "concurrent_jobs": len(self.running) + 1,
                }
                if self.pool.reporter is not None:
                    self.pool.reporter.placed(job.num, gpus=placement["gpus"])
                log.info("\t#%d : %s on %s", job.num, " ".join(filter_overrides(list(job.overrides))), slot.worker)
                future = self.shared.executor.submit(
                    self.pool.run_job, job, job_config, task_function, hydra_context,
                    key=slot.worker, placement=placement,
                )
                self.running[future] = (idx, slot)
            while self.running:
                self._wait_any(returns)
        except KeyboardInterrupt:
            for future, (idx, _) in list(self.running.items()):
                future.cancel()
                self.pool.mark_interrupted(jobs[idx].num)
            self.pool.close()  # kills the workers, which ends the jobs the threads wait on
            self.locks.release_all()
            raise
        return [r for r in returns if r is not None]
