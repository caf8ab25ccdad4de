"""What a finished Hydra job means for the campaign: status, reason, whether a retry could help."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus


class JobFailure(RuntimeError):
    """Why the launcher itself failed a job (worker death, timeout, unhealthy worker)."""


# Failures no retry can change in the same environment: the engine is not installed, the hardware cannot run
# the settings, the settings are invalid for this machine, the requested energy source does not exist here.
PERMANENT_FAILURES = frozenset(
    {"HardwareUnsupported", "ConfigError", "EngineArgsError", "BuildArgsError", "MeasurementError", "ValidationError",
     "GpuNeedTooLarge"}
)


def failure_type(error: BaseException) -> str:
    """The original exception class of a failure, also when it travelled from a worker as text."""
    name = type(error).__name__
    if name == "RuntimeError":  # a worker's exception, packed as "<Type>: <message>" (see llem.launch.worker)
        head = str(error).split(":", 1)[0].strip()
        if head.isidentifier():
            return head
    return name


def retryable(error: BaseException) -> bool:
    """Whether running the job again could succeed (a crash, a timeout, a lost device may be transient)."""
    return failure_type(error) not in PERMANENT_FAILURES


def first_line(error: str, limit: int = 240) -> str:
    """The part of an error a console line shows: its first line, shortened."""
    line = error.strip().splitlines()[0] if error.strip() else "no error message"
    wrapper, _, rest = line.partition(": ")
    if wrapper == "RuntimeError" and rest.split(":", 1)[0].strip().isidentifier() and ": " in rest:
        line = rest  # a worker's exception packed as text: show its own type
    return line if len(line) <= limit else line[: limit - 1] + "…"


def result_path_of(ret: JobReturn) -> str | None:
    """Where a job's result.json is (None when the job has no output dir, e.g. it never started)."""
    from llem.measure.result import RESULT_FILENAME

    try:
        return str(Path(ret.hydra_cfg.hydra.runtime.output_dir) / RESULT_FILENAME)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a failed or foreign job return may lack hydra_cfg
        return None


def job_outcome(ret: JobReturn) -> dict[str, Any]:
    """The manifest fields a job return sets: status, error (type and message), retryable, result path, and for a
    serving job the server it ran against (so the manifest records each server start)."""
    fields: dict[str, Any] = {}
    path = result_path_of(ret)
    if path is not None:
        fields["result_path"] = path
    if ret.status == JobStatus.COMPLETED:
        value = ret.return_value
        if isinstance(value, dict) and isinstance(value.get("server"), dict):
            fields["server"] = value["server"]  # a serving job: the server it started or reused
        return {**fields, "status": "completed", "error": None}
    error = ret._return_value  # the exception a FAILED job carries
    return {**fields, "status": "failed", "error": f"{type(error).__name__}: {error}", "retryable": retryable(error)}
