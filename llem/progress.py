"""Campaign progress: a live bar on a terminal, plain timestamped lines everywhere else.

A campaign runs for hours, often under nohup, tmux or CI. On a terminal people want a
bar with the current job and an ETA; in a log file they want one greppable line per
event. `quiet` selects the plain lines even on a terminal.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from types import TracebackType
from typing import Callable, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.table import Column
from rich.text import Text

DONE_STATUSES: frozenset[str] = frozenset({"completed", "skipped"})


def swept_label(label: str, swept_keys: Collection[str]) -> str:
    """The overrides of a job's label that set a swept key: a value every job shares tells nothing apart."""
    kept = [part for part in label.split() if part.split("=", 1)[0].lstrip("+~").split("@", 1)[0] in swept_keys]
    return " ".join(kept)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class GapPlan:
    """The gaps still to come: `config_gap_s` before each job after the first, `cycle_gap_s` instead where
    the cycle changes. `order` lists the jobs to run as (job number, cycle), in run order."""

    config_gap_s: float = 0.0
    cycle_gap_s: float = 0.0
    order: list[tuple[int, int]] = field(default_factory=list)

    def remaining_s(self, finished: set[int], started_any: bool) -> float:
        """Gap time before the jobs not yet finished (the first job of a run has no gap before it)."""
        total = 0.0
        previous: int | None = None  # the cycle of the job run before this one
        first = not started_any
        for num, cycle in self.order:
            if num not in finished:
                if not first:
                    changed = previous is not None and cycle != previous
                    total += self.cycle_gap_s if changed else self.config_gap_s
                first = False
            previous = cycle
        return total


class _LiveText(ProgressColumn):
    """A column whose text comes from the campaign, not from rich's own task timing."""

    def __init__(self, text: Callable[[], str]) -> None:
        super().__init__()
        self._text = text

    def render(self, task: Task) -> Text:
        return Text(self._text())


class CampaignProgress:
    """Shows how far a campaign is: done/failed/total, the running job, elapsed time and ETA.

    Use as a context manager; the launcher calls `job_started` and `job_finished` per job
    (thread-safe, jobs may overlap). `already_done` counts jobs finished before a resume:
    they count as done but not towards the ETA's time per job. With `swept_keys`, a job's
    label keeps only the overrides of those keys (constant settings are the same for every job).
    """

    _BAR_WIDTH = 24

    def __init__(
        self,
        total: int,
        *,
        quiet: bool = False,
        stream: TextIO | Console | None = None,
        already_done: int = 0,
        clock: Callable[[], float] = time.monotonic,
        gaps: GapPlan | None = None,
        title: str | None = None,
        swept_keys: Collection[str] | None = None,
    ) -> None:
        self.total = total
        self._swept_keys = None if swept_keys is None else frozenset(swept_keys)
        self._ended = False  # after an interrupt or an error: no ETA is shown any more
        self.console = stream if isinstance(stream, Console) else Console(file=stream, stderr=stream is None)
        self.live = self.console.is_terminal and not quiet
        self._already_done = already_done
        self._done_jobs: set[int] = set()
        self._failed_jobs: set[int] = set()  # failed at their latest attempt
        self._finished_here = 0
        self._last_finish: float | None = None
        self._running: dict[int, tuple[str, str, float]] = {}
        self._clock = clock
        self._start = clock()
        self._lock = threading.RLock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._gaps = gaps
        self._gap_slept = 0.0  # gaps before jobs that have finished
        self._gap_pending = 0.0  # a gap slept since the last finish
        self._title = title
        self._description: Column | None = None

    # -- figures ---------------------------------------------------------------------

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._start

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.done - self.failed)

    def eta_s(self) -> float | None:
        """Time left: the mean time per finished job (gaps excluded; it allows for jobs that overlap) times the
        jobs remaining, plus the gaps still to come, counting down from the last finish; None before any finish."""
        if self.remaining == 0:
            return 0.0
        if self._ended:
            return None
        if self._finished_here == 0 or self._last_finish is None:
            return None
        per_job = max(0.0, self._last_finish - self._start - self._gap_slept) / self._finished_here
        gaps = 0.0
        if self._gaps is not None:
            gaps = self._gaps.remaining_s(self._done_jobs | self._failed_jobs, started_any=True)
        return max(0.0, per_job * self.remaining + gaps - (self._clock() - self._last_finish))

    def gap(self, seconds: float) -> None:
        """A gap of `seconds` is about to be slept: job time excludes it, the ETA counts it where it lies ahead."""
        with self._lock:
            self._gap_pending += seconds

    def _counts(self) -> str:
        return (
            f"{self.done}/{self.total} done, {self.failed} failed, elapsed {_duration(self.elapsed_s)}, "
            f"ETA {_duration(self.eta_s())}"
        )

    def _eta_text(self) -> str:
        return "" if self._ended else f"ETA {_duration(self.eta_s())}"

    # -- context ---------------------------------------------------------------------

    def __enter__(self) -> CampaignProgress:
        self._start = self._clock()
        if self.live:
            # One line at any width: the job's description gives way (ellipsis) before the bar wraps.
            self._description = Column(no_wrap=True, overflow="ellipsis", min_width=8)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}", markup=False, style="bold", table_column=self._description),
                BarColumn(bar_width=self._BAR_WIDTH),
                MofNCompleteColumn(),
                _LiveText(lambda: f"failed {self.failed}"),
                _LiveText(lambda: f"elapsed {_duration(self.elapsed_s)}"),
                _LiveText(self._eta_text),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self.total, completed=self.done + self.failed)
        else:
            what = f"{self._title}: " if self._title else "campaign "
            self._line(f"{what}started: {self.total} jobs ({self.done} already done)")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            ending = "finished"
        elif issubclass(exc_type, KeyboardInterrupt) or getattr(exc, "exit_code", None) == 130:
            ending = "interrupted"  # Ctrl-C, a signal, or a stop that ends the campaign as one (exit status 130)
        else:  # a mistake or a failure, reported by whoever handles it: not an interrupt
            ending = "stopped by an error"
        what = f"{self._title}" if self._title else "campaign"
        summary = (
            f"{what} {ending}: {self.done} done, {self.failed} failed of {self.total} "
            f"in {_duration(self.elapsed_s)}"
        )
        with self._lock:
            self._ended = exc_type is not None
            self._running.clear()
        if self._progress is not None:
            if exc_type is None:
                self._refresh("done")
            else:  # the bar goes: its running job and ETA no longer hold, and the summary says the rest
                self._progress.live.transient = True
            self._progress.stop()
            self._progress = None
            self.console.print(summary, markup=False, highlight=False)
        else:
            self._line(summary)

    # -- events ----------------------------------------------------------------------

    def job_started(self, job_num: int, backend: str, label: str) -> None:
        if self._swept_keys is not None:
            label = swept_label(label, self._swept_keys)
        with self._lock:
            self._running[job_num] = (backend, label, self._clock())
            if self._progress is None:
                self._line(f"job {job_num} started ({backend}{': ' + label if label else ''}) — {self._counts()}")
            else:
                self._refresh()

    @property
    def done(self) -> int:
        return self._already_done + len(self._done_jobs)

    @property
    def failed(self) -> int:
        return len(self._failed_jobs)

    def job_finished(self, job_num: int, status: str, reason: str | None = None) -> None:
        """Count a job once however often it was tried: a retry that succeeds is no longer a failure."""
        with self._lock:
            started = self._running.pop(job_num, None)
            if status in DONE_STATUSES:
                self._done_jobs.add(job_num)
                self._failed_jobs.discard(job_num)
            else:
                self._failed_jobs.add(job_num)
            self._finished_here += 1
            self._last_finish = self._clock()
            self._gap_slept += self._gap_pending
            self._gap_pending = 0.0
            took = f" in {self._clock() - started[2]:.1f} s" if started else ""
            why = f": {reason}" if reason and status not in DONE_STATUSES else ""
            if self._progress is None:
                self._line(f"job {job_num} {status}{took}{why} — {self._counts()}")
            else:
                if status not in DONE_STATUSES:
                    self._progress.console.print(f"job {job_num} {status}{took}{why}", markup=False, highlight=False)
                self._refresh()

    def log(self, message: str) -> None:
        """A free-form line: above the bar on a terminal, timestamped otherwise."""
        with self._lock:
            if self._progress is None:
                self._line(message)
            else:
                self._progress.console.print(message, markup=False, highlight=False)

    # -- output ----------------------------------------------------------------------

    def _line(self, message: str) -> None:
        stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
        self.console.print(f"{stamp} llem: {message}", markup=False, highlight=False, soft_wrap=True)

    def _describe_running(self) -> str:
        if not self._running:
            return "waiting"
        job_num, (backend, label, _) = max(self._running.items(), key=lambda item: item[1][2])
        more = f" (+{len(self._running) - 1} running)" if len(self._running) > 1 else ""
        return f"job {job_num} {backend}{' ' + label if label else ''}{more}"

    def _fit_description(self) -> None:
        """Give the description what the other columns leave of the terminal's width (they never shrink)."""
        if self._description is None:
            return
        others = [
            "⠋", "━" * self._BAR_WIDTH, f"{self.total}/{self.total}", f"failed {self.failed}",
            f"elapsed {_duration(self.elapsed_s)}", self._eta_text(),
        ]
        used = sum(len(text) + 1 for text in others) + 2  # a space between columns; hours may gain a digit
        self._description.max_width = max(8, self.console.width - used)

    def _refresh(self, description: str | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        self._fit_description()
        self._progress.update(
            self._task,
            description=description or self._describe_running(),
            completed=self.done + self.failed,
        )
