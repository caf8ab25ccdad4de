"""Packing jobs onto a node's GPUs: which worker (routing key × GPU set) runs the next job, and when.

Jobs start in plan order; a job waits until enough GPUs are free. A warm worker of the job's
routing key whose GPU set fits is reused (its model stays loaded); otherwise free GPUs are
pinned to a new worker, evicting idle workers of other keys when their GPUs are needed.
Jobs that need no GPU run one at a time on a worker that sees none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llem.launch.gpus import Gpu


@dataclass(frozen=True)
class Slot:
    """Where one job runs: its worker's name and GPU set."""

    worker: str
    gpus: tuple[Gpu, ...]
    evict: tuple[str, ...] = ()  # idle workers to stop first, so their GPUs can be pinned again


def worker_name(route: str, gpus: tuple[Gpu, ...]) -> str:
    return f"{route}@{'cpu' if not gpus else 'gpu' + '-'.join(str(g.index) for g in gpus)}"


@dataclass
class GpuPacker:
    """The node's GPU pool and its workers; not thread-safe (the launcher's scheduling loop owns it)."""

    pool: list[Gpu]
    workers: dict[str, tuple[Gpu, ...]] = field(default_factory=dict)  # warm workers and their GPU sets
    running: set[str] = field(default_factory=set)  # workers running a job now

    def _busy_gpus(self) -> set[Gpu]:
        return {g for w in self.running for g in self.workers[w]}

    def place(self, route: str, need: int) -> Slot | None:
        """The slot for a job of `route` needing `need` GPUs, or None while it must wait."""
        if need == 0:
            name = worker_name(route, ())
            if any(not self.workers[w] for w in self.running):
                return None  # CPU jobs share the host's CPUs: one at a time
            self.workers.setdefault(name, ())
            return Slot(name, ())
        busy = self._busy_gpus()
        for name, gpus in self.workers.items():  # a warm worker of this route that fits
            if name.startswith(f"{route}@") and len(gpus) == need and name not in self.running and not busy & set(gpus):
                return Slot(name, gpus)
        pinned = {g for w, gs in self.workers.items() for g in gs}
        free = [g for g in self.pool if g not in pinned]
        evict: list[str] = []
        if len(free) < need:  # take GPUs from idle workers, those of other routes first
            idle = sorted(
                (w for w, gs in self.workers.items() if gs and w not in self.running),
                key=lambda w: (w.startswith(f"{route}@"), w),
            )
            for name in idle:
                if len(free) >= need:
                    break
                evict.append(name)
                free += list(self.workers[name])
        if len(free) < need:
            return None
        gpus = tuple(sorted(free)[:need])
        name = worker_name(route, gpus)
        return Slot(name, gpus, tuple(evict))

    def start(self, slot: Slot) -> None:
        for name in slot.evict:
            self.workers.pop(name, None)
        self.workers[slot.worker] = slot.gpus
        self.running.add(slot.worker)

    def finish(self, worker: str) -> None:
        self.running.discard(worker)

    def forget(self, worker: str) -> None:
        """A worker that stopped (evicted, or disabled): its GPUs are free again."""
        self.workers.pop(worker, None)
        self.running.discard(worker)
