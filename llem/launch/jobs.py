"""A job as a value: everything a launcher needs to know about one job, decided once, before it launches.

The campaign plans each job once (its overrides composed and validated, its GPU need and result path
worked out) and hands launchers these values. A launcher runs them and reports what happened through a
`JobReporter` (llem.launch.reporting); it never asks the campaign about a job, so `llem.launch` knows
nothing of `llem.campaign`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn

    from llem.config import ExperimentConfig
    from llem.launch.reporting import JobReporter
    from llem.plan.compose import Composition


@dataclass(frozen=True)
class Job:
    """One job of a campaign, as planned.

    `cycle` and `repetition` are None outside a campaign (a llem launcher under Hydra's basic sweeper): gaps
    and per-cycle health checks then follow the launcher alone. `experiment` is None when the job was not
    validated before it launched (such a job validates itself when it runs, and fails with its own message).
    `composition` is the plan's composition of its config: the launcher assembles the job from it (None: the
    launcher composes the job itself). A job assembled from it runs with `experiment` as its validated settings.
    """

    num: int
    overrides: tuple[str, ...]
    cycle: int | None = None
    repetition: int | None = None
    experiment: ExperimentConfig | None = None  # the validated settings
    gpus: int = 0  # GPUs its engine uses (0: none, or not known before it runs)
    result_path: str | None = None  # where its result.json goes (None: known once it runs)
    config_hash: str | None = None  # reuse key: a whole result carrying this hash is this job's, and is kept
    # how the plan composed its config (shared by many jobs, never changed)
    composition: Composition | None = field(default=None, repr=False, compare=False)

    @property
    def planned_experiment(self) -> ExperimentConfig | None:
        """The settings the job runs with, validated by the plan from the very config it is assembled from
        (None: the job validates itself; also when its config resolves interpolations as it runs)."""
        if self.composition is None or self.composition.interpolated:
            return None
        return self.experiment

    @property
    def period(self) -> tuple[int | None, int | None]:
        """(repetition, cycle): a cycle gap and a per-cycle health check come when it changes."""
        return (self.repetition, self.cycle)

    @property
    def label(self) -> str:
        return " ".join(self.overrides)


def numbered_jobs(job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Job]:
    """Jobs from a Hydra `launch` call (no campaign planned them): numbers and overrides only."""
    return [Job(num=initial_job_idx + i, overrides=tuple(o)) for i, o in enumerate(job_overrides)]


@runtime_checkable
class JobLauncher(Protocol):
    """A launcher that runs planned jobs and reports each one's start and end itself (the llem launchers).

    The campaign attaches its reporter once, then hands over batches of jobs; a launcher's `finish`
    stops its workers when the campaign ends.
    """

    def attach(self, reporter: JobReporter) -> None: ...

    def run_jobs(self, jobs: Sequence[Job]) -> Sequence[JobReturn]: ...

    def workers(self) -> Any:
        """Where the jobs run (llem.launch.workers.Workers) for the campaign's preflight; None: not checked."""
        ...
