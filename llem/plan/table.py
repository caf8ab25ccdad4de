"""Print a plan as a table: job, cycle, backend, swept values, status; and counts per backend."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table

from llem.plan.memory import MemoryEstimate, gib
from llem.plan.planner import Plan, PlannedJob

PlanMemory = tuple[dict[str, MemoryEstimate], dict[str, str], "list[tuple[str, int]] | None"]

EQUIVALENT_LINES = 20
RICH_ROW_LIMIT = 500  # rich renders ~1.5k rows/s; larger plans print as plain aligned text


def _swept(job: PlannedJob, keys: list[str]) -> str:
    return " ".join(f"{k}={job.config.params[k]}" for k in keys if k in job.config.params)


def plan_rows(plan: Plan) -> list[tuple[str, str, str, str, str]]:
    keys = [k for k in plan.swept_keys if k != "backend"]
    return [
        (str(j.job_num), str(j.cycle), j.config.backend, _swept(j, keys), j.status)
        for j in plan.jobs
    ]


def _memory_cell(job: PlannedJob, memory: PlanMemory) -> str:
    estimate = memory[0].get(job.config_hash or "")
    if estimate is None or estimate.per_gpu_bytes is None:
        return "-"
    flag = " (will not fit)" if job.config_hash in memory[1] else ""
    return gib(estimate.per_gpu_bytes) + flag


def print_plan(plan: Plan, stream: TextIO | None = None, *, memory: PlanMemory | None = None) -> None:
    """The plan table; with `memory` (llem.plan.memory.plan_memory) a column of each job's estimated GPU memory."""
    stream = stream or sys.stdout
    header: tuple[str, ...] = ("job", "cycle", "backend", "swept values", "status")
    rows: list[tuple[str, ...]] = list(plan_rows(plan))
    if memory is not None:
        header += ("est. GPU memory",)
        rows = [row + (_memory_cell(job, memory),) for row, job in zip(rows, plan.jobs)]
    if len(rows) <= RICH_ROW_LIMIT:
        table = Table(title=f"llem plan: {len(plan.runnable)} job(s) to run", title_justify="left")
        for name in header:
            table.add_column(name, justify="right" if name in ("job", "cycle") else "left")
        for row in rows:
            table.add_row(*row)
        Console(file=stream, width=max(100, min(200, 40 + max((len(r[3]) for r in rows), default=0)))).print(table)
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = [f"llem plan: {len(plan.runnable)} job(s) to run"]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        stream.write("\n".join(lines) + "\n")
    counts = plan.counts_by_backend()
    summary = "; ".join(
        f"{backend}: " + ", ".join(f"{n} {status}" for status, n in sorted(per.items()))
        for backend, per in counts.items()
    )
    stream.write(f"per backend: {summary or 'no jobs'}\n")
    for note in plan.notes:
        stream.write(f"note: {note}\n")
    identical = [d for d in plan.duplicates if d.kind == "identical"]
    if identical:
        stream.write(f"{len(identical)} duplicate configuration(s) dropped (listed in the manifest)\n")
    equivalent = [d for d in plan.duplicates if d.kind == "equivalent"]
    if equivalent:
        stream.write(f"{len(equivalent)} configuration(s) equivalent to another run once (campaign.dedup=resolved):\n")
        for d in equivalent[:EQUIVALENT_LINES]:
            stream.write(f"  [{' '.join(d.overrides)}] = [{' '.join(d.same_as)}] (only "
                         f"{', '.join(d.differs_in) or 'spelling'} differs, without effect)\n")
        if len(equivalent) > EQUIVALENT_LINES:
            stream.write(f"  ... and {len(equivalent) - EQUIVALENT_LINES} more (listed in the manifest)\n")


def print_memory(plan: Plan, memory: PlanMemory, stream: TextIO | None = None) -> None:
    """What the memory column rests on: the GPUs found here, the jobs that will not fit, what was not estimated."""
    stream = stream or sys.stdout
    estimates, misfits, gpus = memory
    if gpus:
        shown = ", ".join(f"{name} ({gib(total)})" for name, total in gpus)
        stream.write(f"GPUs here: {shown}; estimates are weights + KV cache, per GPU\n")
    else:
        stream.write("GPUs here: none found; estimates are weights + KV cache, per GPU, not checked against a GPU\n")
    bad = [j for j in plan.runnable if j.config_hash in misfits]
    if bad:
        stream.write(f"warning: {len(bad)} job(s) will not fit on this machine's GPUs:\n")
        for job in bad[:EQUIVALENT_LINES]:
            stream.write(f"  job {job.job_num} [{' '.join(job.config.overrides) or 'defaults'}]: "
                         f"{misfits[job.config_hash or '']}\n")
    reasons = sorted({e.reason for e in estimates.values() if e.reason})
    for reason in reasons:
        stream.write(f"not estimated for some jobs: {reason}\n")
