"""Print a plan as a table: job, cycle, backend, swept values, status; and counts per backend."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table

from llem.plan.planner import Plan, PlannedJob

RICH_ROW_LIMIT = 500  # rich renders ~1.5k rows/s; larger plans print as plain aligned text


def _swept(job: PlannedJob, keys: list[str]) -> str:
    return " ".join(f"{k}={job.config.params[k]}" for k in keys if k in job.config.params)


def plan_rows(plan: Plan) -> list[tuple[str, str, str, str, str]]:
    keys = [k for k in plan.swept_keys if k != "backend"]
    return [
        (str(j.job_num), str(j.cycle), j.config.backend, _swept(j, keys), j.status)
        for j in plan.jobs
    ]


def print_plan(plan: Plan, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    header = ("job", "cycle", "backend", "swept values", "status")
    rows = plan_rows(plan)
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
    if plan.duplicates:
        stream.write(f"{len(plan.duplicates)} duplicate configuration(s) dropped (listed in the manifest)\n")
