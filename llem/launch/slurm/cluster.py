"""What the submitting side asks SLURM itself: job states, a partition's GPUs, cancelling a job.

Always argument lists (no shell); every call copes with a SLURM that does not answer by saying so
(None), so the caller decides what an unknown answer means.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

# SLURM states after which a job will not run again (a requeued job shows REQUEUED, then PENDING).
FINISHED_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
})
GONE = "GONE"  # no longer known to squeue


def squeue_states(job_ids: Sequence[str], run: Callable[..., Any] = subprocess.run) -> dict[str, str] | None:
    """SLURM state per job id (absent: no longer known to SLURM); None when squeue cannot answer."""
    if not job_ids:
        return {}
    try:
        proc = run(["squeue", "-h", "--states=all", "-o", "%i|%T", "-j", ",".join(job_ids)],
                   capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        # squeue rejects a list whose ids are all purged: then none is known
        return {} if "Invalid job id" in (proc.stderr or "") else None
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state.split()[0] if state else ""
    return states


def live_states(job_ids: Sequence[str], run: Callable[..., Any] = subprocess.run) -> dict[str, str] | None:
    """The ids among `job_ids` that SLURM may still run (queued, running, requeued, suspended), with their
    state; None when SLURM cannot answer."""
    states = squeue_states(sorted(set(job_ids)), run=run)
    if states is None:
        return None
    return {i: s for i, s in states.items() if s not in FINISHED_STATES}


def cancel(job_id: str, run: Callable[..., Any] = subprocess.run, wait_s: float = 120.0,
           sleep: Callable[[float], None] = time.sleep) -> bool:
    """scancel a job and wait until SLURM says it no longer runs. True when it is gone."""
    try:
        run(["scancel", str(job_id)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        live = live_states([str(job_id)], run=run)
        if live is not None and str(job_id) not in live:
            return True
        sleep(1.0)
    return False


def _has_gpu_gres(gres: str) -> bool:
    """Whether a `sinfo %G` value offers GPUs: "gpu:a100:4(S:0-1),mps:100" yes; "(null)" no."""
    return any(item.strip().startswith("gpu") for item in gres.split(","))


def partition_has_gpus(partition: str | None, run: Callable[..., Any] = subprocess.run) -> tuple[str, bool] | None:
    """(partition name, whether any of its nodes has GPU gres) for `partition` or, when None, the cluster's
    default partition; None when sinfo cannot say."""
    argv = ["sinfo", "-h", "-o", "%P|%G"]
    if partition:
        argv += ["-p", str(partition)]
    try:
        proc = run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    found: dict[str, bool] = {}
    default: str | None = None
    for line in proc.stdout.splitlines():
        name, sep, gres = line.strip().partition("|")
        if not sep:
            continue
        if name.endswith("*"):
            name = name[:-1]
            default = name
        found[name] = found.get(name, False) or _has_gpu_gres(gres)
    wanted = str(partition) if partition else default
    if wanted is None or wanted not in found:
        return None
    return wanted, found[wanted]
