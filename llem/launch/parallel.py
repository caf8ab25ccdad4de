"""Run a launcher's jobs side by side on a node's GPUs (`hydra.launcher.parallel=true`).

Jobs are composed and started in plan order. Each goes to a worker pinned to its own GPU set
(`GpuPacker`); a job waits until enough GPUs are free, and for GPUs another campaign holds
(`GpuLocks`). The workers run on threads: the runner's per-worker state (health checks,
restarts, gaps) and the campaign session are safe to share.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import DictConfig

from llem.launch.gpus import GpuBusy, GpuLocks, node_gpus
from llem.launch.outcome import JobFailure
from llem.launch.placement import GpuPacker, Slot
from llem.launch.runner import numbered

if TYPE_CHECKING:
    from llem.launch.hydra_launcher import LlemLauncher

log = logging.getLogger(__name__)


class GpuNeedTooLarge(JobFailure):
    """A job needs more GPUs than the launcher's pool holds (no retry can change that)."""


def job_gpu_need(config: DictConfig) -> int:
    """GPUs a composed job's engine uses (0 if its config does not validate: the job fails on its own)."""
    from omegaconf import OmegaConf

    from llem.composed import validate_composed
    from llem.measure.job_devices import gpu_need

    try:
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])  # the config the task sees
        return gpu_need(validate_composed(task).experiment)
    except Exception:  # noqa: BLE001 - invalid configs are reported by the job itself
        return 0


class ParallelRun:
    """One `launch` call: the scheduling loop on this thread, the jobs on worker threads."""

    def __init__(self, launcher: LlemLauncher) -> None:
        self.launcher = launcher
        self.pool = launcher._pool()
        if launcher.packer is None:
            launcher.packer = GpuPacker(node_gpus(launcher.options.gpus, nvml=launcher.nvml()))
        if launcher.gpu_locks is None:
            launcher.gpu_locks = GpuLocks(owner=str(launcher.config.hydra.sweep.dir) if launcher.config else "?")
            # under a sweeper other than llem's nothing calls `finish`: the kernel frees the locks at exit, and this
            # removes their notes, so no later campaign is told that a finished one holds its GPUs
            atexit.register(launcher.gpu_locks.release_all)
        self.packer: GpuPacker = launcher.packer
        self.locks: GpuLocks = launcher.gpu_locks
        self.running: dict[Future[JobReturn], tuple[int, Slot]] = {}

    def _say(self, message: str) -> None:
        if self.pool.session is not None:
            self.pool.session.say(message)
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

    def _acquire(self, slot: Slot, returns: list[JobReturn | None]) -> None:
        """Take the locks of the slot's GPUs, waiting for other campaigns (and letting our own jobs finish)."""
        timeout = self.launcher.options.gpu_lock_timeout_s

        def waiting(gpu: Any, holder: str) -> None:
            self._say(f"waiting for {gpu.label}: in use by {holder}")

        self.locks.acquire(slot.gpus, timeout, on_wait=waiting)

    def run(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        launcher = self.launcher
        config = launcher.config
        assert config is not None and launcher.hydra_context is not None
        composer = launcher.composer
        assert composer is not None  # made by the launcher before each launch
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        pool_size = len(self.packer.pool)
        # One executor for the launcher's lifetime: a local worker dies with the thread that started it
        # (PR_SET_PDEATHSIG follows threads), so job threads must outlive every launch call.
        if launcher.executor is None:
            launcher.executor = ThreadPoolExecutor(max_workers=max(1, pool_size) + 1, thread_name_prefix="llem-job")
        executor = launcher.executor
        try:
            for idx, overrides in enumerate(job_overrides):
                num = initial_job_idx + idx
                try:
                    job_config = numbered(composer.compose(overrides), num)
                except Exception as error:  # noqa: BLE001 - fails that job only
                    returns[idx] = self.pool.compose_failed(num, overrides, error)
                    continue
                route = self.pool.route_key(job_config)
                need = job_gpu_need(job_config) if pool_size else 0
                if need > pool_size:
                    failure = GpuNeedTooLarge(
                        f"job {num} needs {need} GPU(s); hydra.launcher.gpus gives this launcher {pool_size}"
                    )
                    returns[idx] = self.pool.refuse(job_config, overrides, failure)
                    continue
                slot = self.packer.place(route, need)
                while slot is None:
                    self._wait_any(returns)
                    slot = self.packer.place(route, need)
                for name in slot.evict:
                    self.pool.evict(name)
                    self.locks.release(g for g in self.packer.workers.get(name, ()) if g not in slot.gpus)
                try:
                    self._acquire(slot, returns)
                except GpuBusy as busy:
                    returns[idx] = self.pool.refuse(job_config, overrides, JobFailure(str(busy)))
                    continue
                self.packer.start(slot)
                self.pool.pin(slot.worker, route, slot.gpus)
                placement = {
                    "gpus": [g.uuid for g in slot.gpus],
                    "gpu_indices": [g.index for g in slot.gpus],
                    "parallel": True,
                    "concurrent_jobs": len(self.running) + 1,
                }
                if self.pool.session is not None:
                    self.pool.session.placed(num, gpus=placement["gpus"])
                log.info("\t#%d : %s on %s", num, " ".join(filter_overrides(list(overrides))), slot.worker)
                future = executor.submit(
                    self.pool.run_job, job_config, overrides, launcher.task_function, launcher.hydra_context,
                    key=slot.worker, placement=placement,
                )
                self.running[future] = (idx, slot)
            while self.running:
                self._wait_any(returns)
        except KeyboardInterrupt:
            for future, (idx, _) in list(self.running.items()):
                future.cancel()
                self.pool.mark_interrupted(initial_job_idx + idx)
            self.pool.close()  # kills the workers, which ends the jobs the threads wait on
            self.locks.release_all()
            raise
        return [r for r in returns if r is not None]

