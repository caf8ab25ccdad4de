"""Warm-up that runs until the engine has settled, instead of a fixed number of prompts.

Caches, autotuning and clocks settle at a different pace on each engine and device: a fixed
warm-up is either too short (the window measures a device still warming up) or wastes time.
In `converged` mode llem repeats warm-up batches until the latencies of the last `window`
batches agree within `cv_threshold` (coefficient of variation: standard deviation over
mean), after at least `min_batches` and at most `max_batches`. A warm-up that hits the
maximum is recorded as not converged and warned about on the result.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Convergence:
    """How a converged warm-up went: what result.json's `warmup` section records."""

    batches: int = 0
    converged: bool = False
    final_cv: float | None = None
    latencies_s: list[float] = field(default_factory=list)
    cv_threshold: float = 0.05
    window: int = 3
    max_batches: int = 20

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "converged": self.converged,
            "stopped_by": "converged" if self.converged else "max_batches",
            "final_cv": self.final_cv,
            "cv_threshold": self.cv_threshold,
            "window": self.window,
            "latencies_s": [round(x, 6) for x in self.latencies_s],
        }


def coefficient_of_variation(values: list[float]) -> float | None:
    """Population standard deviation over mean; None when the mean is not positive."""
    mean = statistics.fmean(values)
    if mean <= 0:
        return None
    return statistics.pstdev(values) / mean


def run_until_converged(
    run_batch: Callable[[], None],
    *,
    cv_threshold: float,
    window: int,
    min_batches: int,
    max_batches: int,
    clock: Callable[[], float] = time.perf_counter,
) -> Convergence:
    """Run `run_batch` until the last `window` latencies have a CV below `cv_threshold` (see the module doc)."""
    out = Convergence(cv_threshold=cv_threshold, window=window, max_batches=max_batches)
    least = max(min_batches, window)
    while out.batches < max_batches:
        start = clock()
        run_batch()
        out.latencies_s.append(clock() - start)
        out.batches += 1
        if out.batches >= window:
            out.final_cv = coefficient_of_variation(out.latencies_s[-window:])
            if out.batches >= least and out.final_cv is not None and out.final_cv < cv_threshold:
                out.converged = True
                break
    return out


def warmup_warnings(info: dict[str, Any]) -> list[str]:
    """A warning for a converged-mode warm-up that stopped at its maximum."""
    if info.get("mode") != "converged" or info.get("converged", True):
        return []
    cv = info.get("final_cv")
    shown = "n/a" if cv is None else f"{cv:.3f}"
    return [
        f"warm-up did not converge: after {info.get('batches')} batches (warmup.max_batches) the coefficient of "
        f"variation of the last {info.get('window')} batch latencies was {shown}, above warmup.cv_threshold "
        f"{info.get('cv_threshold')}"
    ]


def warmup_batch_size(experiment: Any, available: int) -> int:
    """Prompts in one warm-up batch: as many as the engine runs together in the measured window."""
    backend = experiment.backend
    for name in ("batch_size", "max_num_seqs", "max_batch_size"):
        size = getattr(backend, name, None)
        if isinstance(size, int) and size > 0:
            return max(1, min(size, available))
    return max(1, available)


def converged_warmup(backend: Any, experiment: Any, prompts: list[Any]) -> dict[str, Any]:
    """Warm-up batches of full-length prompts until their latency settles (the `warmup` section's fields)."""
    settings = experiment.warmup
    size = warmup_batch_size(experiment, len(prompts))
    batch = [prompts[i % len(prompts)] for i in range(size)]
    full_length = experiment.model_copy(update={"force_output_length": True})

    def run_batch() -> None:
        backend.generate(batch, full_length)
        backend.synchronize()

    outcome = run_until_converged(run_batch, cv_threshold=settings.cv_threshold, window=settings.window,
                                  min_batches=settings.min_batches, max_batches=settings.max_batches)
    return {"mode": "converged", "prompts_per_batch": size, "batching": "one measured batch",
            **outcome.as_dict()}
