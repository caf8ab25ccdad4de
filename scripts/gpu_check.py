#!/usr/bin/env python3
"""Check llem's measurements on a real NVIDIA GPU: one command, a table, a JSON report.

Checks, in the order they run (select with --only / --skip; --list prints them):

  update-period       the energy counter's update period, per GPU
  baseline-states     idle power with no CUDA context, with a context and an allocation,
                      with the engine loaded right after load, and after a cooldown
  steady-power        energy counter against integrated instant power, under a steady load
                      and with the load starting at the window start (2, 5 and 10 s windows)
  square-wave         a 50 %-duty square-wave load at periods of 17 to 230 ms (none divides the
                      ~100 ms sensor cycle), each window at a random phase: the counter's energy
                      over repeated windows, against instant power integrated at NVML's fastest rate
  baseline-settle     idle power right after a hot run against after a settle time: the settle
                      time that brings it within 2 %
  observer-overhead   generation time with telemetry sampling every 100 ms against none
  repeatability       five cycles of one experiment through llem's harness (PyTorch, CUDA)
  convergence         energy per token from windows of 16, 64 and 256 prompts
  device-scope        on a multi-GPU node: a one-GPU job unpinned against pinned to its GPU
  cross-engine-ttft   PyTorch against vLLM: TTFT measured on the same clock

Experiments run on CUDA device 0 (choose it with CUDA_VISIBLE_DEVICES); the NVML-level
checks run on --devices. Each check has a time budget (--budget NAME=SECONDS overrides it)
and stops with an error when it runs out.

Exit status: 0 every check that ran passed, 1 a check failed or could not finish,
2 bad arguments, 3 no usable NVIDIA GPU here (no driver, no NVML, no GPU visible).

`--budget-seconds N` fits the whole run into N seconds (shorter settings, then the most important
checks that fit); with --json the report is rewritten as each check ends, so a run cut short keeps
what it did. Without rich or pydantic installed (a bare GPU machine: torch, transformers and
nvidia-ml-py) tables are plain text and the experiment checks are skipped, saying why.

    python scripts/gpu_check.py --json gpu-check.json
    python scripts/gpu_check.py --budget-seconds 300 --json gpu-check.json
    python scripts/gpu_check.py --only steady-power,square-wave --devices 0
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import platform
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from llem.config import ExperimentConfig

try:
    import llem  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from rich.console import Console
    from rich.table import Table
except ImportError:  # a bare GPU machine (torch, transformers, nvidia-ml-py): plain-text tables
    Console = None  # type: ignore[assignment,misc]
    Table = None  # type: ignore[assignment,misc]

from llem.energy.devices import DeviceUnavailable
from llem.energy.devices.nvml import NvmlDevices
from llem.energy.monitor import EnergyMonitor, open_monitor
from llem.energy.sampler import TelemetrySampler

_MARKUP = re.compile(r"\[/?[a-z ]*\]")


class PlainTable:
    """What the report needs of rich's Table, as plain text, where rich is not installed."""

    def __init__(self, title: str = "", show_lines: bool = False) -> None:
        self.title, self.columns, self.rows = title, [], []  # type: ignore[var-annotated]

    def add_column(self, name: str, **_: Any) -> None:
        self.columns.append(name)

    def add_row(self, *cells: str) -> None:
        self.rows.append([_MARKUP.sub("", str(c)) for c in cells])

    def text(self) -> str:
        widths = [max(len(str(x)) for x in [c, *(r[i] for r in self.rows)]) for i, c in enumerate(self.columns)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([self.title, line(self.columns), *(line(r) for r in self.rows)])


class PlainConsole:
    """What the script needs of rich's Console, printing plain text."""

    def print(self, obj: Any = "") -> None:
        print(obj.text() if isinstance(obj, PlainTable) else _MARKUP.sub("", str(obj)), flush=True)


if Console is None:
    Console, Table = PlainConsole, PlainTable  # type: ignore[assignment,misc]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 3
PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"

# Thresholds. Each is a statement about llem's figures that a check confirms or refutes.
# The default measured window (10 s) spans at least 10 counter updates only if the counter updates
# at least once a second (quality.MIN_RESOLUTION_MULTIPLE = 10).
MAX_UPDATE_PERIOD_S = 1.0
COUNTER_VS_POWER_PCT = 3.0  # counter against integrated instant power over one window
SQUARE_WAVE_MAX_CV_PCT = 1.0  # counter energy over repeated windows of one square-wave load
SQUARE_WAVE_REFERENCE_PCT = 3.0  # counter energy against the fast instant-power integral, mean over windows
# The power sensor behind the counter updates about every 100 ms; a square wave whose period divides it
# (or is a multiple of it) puts the same phase of the load in every update, which hides sampling error.
SENSOR_PERIOD_MS = 100.0
SETTLE_WITHIN_PCT = 2.0  # idle power after a hot run, against idle power after the full settle span
DEFAULT_SETTLE_S = 5.0  # llem's baseline.settle_seconds default, which the settle check holds to
BASELINE_TOLERANCE_PCT = 5.0  # idle power: loaded engine against bare context; just loaded against cooled
REPEAT_MAX_CV_PCT = 2.0  # energy per output token over cycles of one experiment
CONVERGENCE_PCT = 2.0  # energy per output token: 64-prompt window against 256-prompt window
TTFT_SHARE_PCT = 10.0  # TTFT as a share of end-to-end latency, PyTorch against vLLM
OBSERVER_MAX_PCT = 1.0  # generation time with telemetry sampling against without
SCOPE_AGREE_PCT = 2.0  # energy per output token: unpinned one-GPU job against pinned


# ---------------------------------------------------------------------- arithmetic


def cv_pct(values: Sequence[float]) -> float | None:
    """Coefficient of variation in per cent (sample sd, n - 1); None below two values or at mean 0."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    if mean == 0:
        return None
    return statistics.stdev(values) / abs(mean) * 100.0


def diff_pct(value: float | None, reference: float | None) -> float | None:
    """|value - reference| relative to the reference, in per cent; None when either is missing."""
    if value is None or reference is None or reference == 0:
        return None
    return abs(value - reference) / abs(reference) * 100.0


def whole_periods(window_s: float, period_s: float) -> bool:
    """A window holds the same on-time at every phase of a square wave only if it spans whole periods."""
    ratio = window_s / period_s
    return ratio >= 1 and abs(ratio - round(ratio)) < 1e-6


def aliases_sensor(period_ms: float, sensor_ms: float = SENSOR_PERIOD_MS) -> bool:
    """True when the period divides the sensor's update cycle evenly, or the cycle divides the period."""
    ratios = (sensor_ms / period_ms, period_ms / sensor_ms)
    return any(r >= 1 and abs(r - round(r)) < 1e-6 for r in ratios)


def periods_window_s(window_s: float, period_s: float) -> float:
    """The whole number of periods closest to `window_s` (at least one), as seconds."""
    return max(1, round(window_s / period_s)) * period_s


def integrate(samples: Sequence[tuple[float, float]], t0: float, t1: float) -> float | None:
    """Trapezoidal integral of (time, watts) samples over [t0, t1], interpolated at the edges (None: no cover)."""
    if t1 <= t0 or len(samples) < 2 or samples[0][0] > t0 or samples[-1][0] < t1:
        return None

    def at(t: float) -> float:
        for (ta, wa), (tb, wb) in zip(samples, samples[1:]):
            if ta <= t <= tb:
                return wa if tb == ta else wa + (wb - wa) * (t - ta) / (tb - ta)
        return samples[-1][1]

    inner = [(t, w) for t, w in samples if t0 < t < t1]
    points = [(t0, at(t0)), *inner, (t1, at(t1))]
    return sum((tb - ta) * (wa + wb) / 2 for (ta, wa), (tb, wb) in zip(points, points[1:]))


def settle_time_s(times_s: Sequence[float], watts: Sequence[float], within_pct: float = SETTLE_WITHIN_PCT
                  ) -> tuple[float | None, float | None]:  # fmt: skip
    """(earliest time from which every later window is within `within_pct` of the last one, that reference).

    None when fewer than two windows, or when even the second-to-last window is off (still drifting).
    """
    if len(watts) < 2:
        return None, None
    reference = watts[-1]
    settled: float | None = None
    for t, w in zip(reversed(times_s[:-1]), reversed(watts[:-1])):
        if diff_pct(w, reference) is None or (diff_pct(w, reference) or 0.0) > within_pct:
            break
        settled = t
    return settled, reference


def abba(repeats: int) -> list[bool]:
    """Run order for an A/B timing (True = B): ABBA blocks cancel a linear drift between the two."""
    order: list[bool] = []
    while len(order) < 2 * repeats:
        order += [False, True, True, False]
    return order[: 2 * repeats]


def overhead_pct(on_s: Sequence[float], off_s: Sequence[float]) -> float | None:
    """Extra time with the observer running, from the medians, in per cent of the time without."""
    if not on_s or not off_s:
        return None
    off = statistics.median(off_s)
    return None if off <= 0 else (statistics.median(on_s) - off) / off * 100.0


# ---------------------------------------------------------------------- verdicts


@dataclass
class Outcome:
    """A check's verdict, its headline figure and the threshold it was held to."""

    verdict: str
    measured: str
    threshold: str
    detail: str = ""


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    return f"{value}{unit}"


def update_period_outcome(periods_s: Mapping[str, float | None], max_s: float = MAX_UPDATE_PERIOD_S) -> Outcome:
    threshold = f"measured, ≤ {max_s:g} s"
    missing = [k for k, v in periods_s.items() if v is None]
    known = {k: v for k, v in periods_s.items() if v is not None}
    measured = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in known.items()) or "—"
    if not periods_s:
        return Outcome(FAIL, "—", threshold, "no GPU measured")
    if missing:
        return Outcome(FAIL, measured, threshold, f"counter did not move within the time limit on {', '.join(missing)}")
    slow = [k for k, v in known.items() if v > max_s]
    if slow:
        return Outcome(FAIL, measured, threshold, f"counter too slow on {', '.join(slow)}: lengthen windows")
    return Outcome(PASS, measured, threshold)


def agreement_outcome(rows: Sequence[Mapping[str, Any]], tolerance_pct: float = COUNTER_VS_POWER_PCT) -> Outcome:
    """Rows carry `diff_pct` (counter against polled power); every one must be within the tolerance."""
    threshold = f"|counter − power| ≤ {tolerance_pct:g} %"
    if not rows:
        return Outcome(FAIL, "—", threshold, "no window measured")
    missing = [r for r in rows if r.get("diff_pct") is None]
    diffs = [float(r["diff_pct"]) for r in rows if r.get("diff_pct") is not None]
    measured = f"worst {max(diffs):.2f} %" if diffs else "—"
    sources = sorted({str(r.get("polled_source")) for r in rows if r.get("polled_source")})
    note = f"polled power: {', '.join(sources)}" if sources else ""
    if missing:
        return Outcome(FAIL, measured, threshold, _join(f"{len(missing)} window(s) without both figures", note))
    bad = [r for r in rows if float(r["diff_pct"]) > tolerance_pct]
    if bad:
        where = "; ".join(f"{r.get('mode')} {_fmt(r.get('window_s'))} s {r.get('device')}" for r in bad)
        return Outcome(FAIL, measured, threshold, _join(f"outside on {where}", note))
    return Outcome(PASS, measured, threshold, note)


def square_wave_row(
    period_ms: float,
    counter_j: Sequence[float],
    polled_j: Sequence[float | None],
    duty: float | None = None,
    reference_j: Sequence[float | None] | None = None,
    reference_outer_j: Sequence[float | None] | None = None,
    durations_s: Sequence[float | None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One period's figures over its repeated windows.

    `reference_j`: the fast instant-power integral over each window. With `reference_outer_j` too, the two
    bracket the counter's window (the reference from just after it opened to just before it closed, and from
    just before it opened to just after it closed), and a counter inside the bracket is 0 % off. With
    `durations_s` (each window's length as the counter timed it) the CV is that of the counter's mean power,
    so a window that closed a few ms late does not count as noise.
    """
    polled = [p for p in polled_j if p is not None]
    mean_c = statistics.fmean(counter_j) if counter_j else None
    mean_p = statistics.fmean(polled) if len(polled) == len(polled_j) and polled else None
    refs = [r for r in (reference_j or []) if r is not None]
    complete = bool(refs) and len(refs) == len(reference_j or [])
    mean_r = statistics.fmean(refs) if complete else None
    off = diff_pct(mean_c, mean_r)
    if complete and reference_outer_j is not None and None not in reference_outer_j and len(counter_j) == len(refs):
        outer = [float(o) for o in reference_outer_j if o is not None]
        gaps = [0.0 if lo <= c <= hi else min(abs(c - lo) / lo, abs(c - hi) / hi) * 100.0
                for c, lo, hi in zip(counter_j, refs, outer)]  # fmt: skip
        off = statistics.fmean(gaps)
        extra["reference_bracket_pct"] = statistics.fmean((hi - lo) / lo * 100.0 for lo, hi in zip(refs, outer))
    return {
        "period_ms": period_ms,
        "repeats": len(counter_j),
        "counter_mean_j": mean_c,
        "counter_cv_pct": cv_pct(
            [c / d for c, d in zip(counter_j, durations_s)]  # type: ignore[operator]
            if durations_s is not None and len(durations_s) == len(counter_j) and all(durations_s)
            else counter_j
        ),
        "polled_mean_j": mean_p,
        "polled_cv_pct": cv_pct(polled) if len(polled) == len(polled_j) else None,
        "polled_vs_counter_pct": diff_pct(mean_p, mean_c),
        "reference_mean_j": mean_r,
        "counter_vs_reference_pct": off,
        "achieved_duty": duty,
        **extra,
    }


def square_wave_outcome(rows: Sequence[Mapping[str, Any]], max_cv_pct: float = SQUARE_WAVE_MAX_CV_PCT,
                        reference_pct: float = SQUARE_WAVE_REFERENCE_PCT) -> Outcome:  # fmt: skip
    """Passes when, at every period, the counter is steady over windows (CV) and agrees with the reference
    (the instant-power integral at NVML's fastest rate): a constant bias keeps the CV low but fails the second."""
    threshold = f"counter CV < {max_cv_pct:g} % and within {reference_pct:g} % of the instant-power reference"
    if not rows:
        return Outcome(FAIL, "—", threshold, "no period measured")
    cvs = [r["counter_cv_pct"] for r in rows]
    refs = [r.get("counter_vs_reference_pct") for r in rows]
    known = [c for c in cvs if c is not None]
    known_refs = [d for d in refs if d is not None]
    measured = _join(f"worst CV {max(known):.3f} %" if known else "",
                     f"worst vs reference {max(known_refs):.2f} %" if known_refs else "") or "—"  # fmt: skip
    if len(known) < len(cvs):
        return Outcome(FAIL, measured, threshold, "a period has fewer than two windows or no energy")
    if len(known_refs) < len(refs):
        return Outcome(FAIL, measured, threshold, "no instant-power reference at some period (no instant power?)")
    problems = []
    noisy = [r for r in rows if r["counter_cv_pct"] >= max_cv_pct]
    if noisy:
        problems.append("noisy at " + ", ".join(f"{_fmt(r['period_ms'])} ms" for r in noisy))
    biased = [r for r in rows if r["counter_vs_reference_pct"] > reference_pct]
    if biased:
        problems.append("counter off the reference at " + ", ".join(
            f"{_fmt(r['period_ms'])} ms ({r['counter_vs_reference_pct']:.1f} %)" for r in biased))  # fmt: skip
    if problems:
        return Outcome(FAIL, measured, threshold, "; ".join(problems))
    return Outcome(PASS, measured, threshold)


def settle_outcome(rows: Sequence[Mapping[str, Any]], within_pct: float = SETTLE_WITHIN_PCT,
                   max_settle_s: float = DEFAULT_SETTLE_S) -> Outcome:  # fmt: skip
    """Idle power after a hot run, window by window: the settle time that brings it within `within_pct` of
    the settled figure must not exceed llem's default baseline.settle_seconds."""
    threshold = f"within {within_pct:g} % of settled idle after ≤ {max_settle_s:g} s (baseline.settle_seconds)"
    if len(rows) < 2:
        return Outcome(FAIL, "—", threshold, "fewer than two idle windows after the load")
    settled, reference = settle_time_s([r["t_s"] for r in rows], [r["watts"] for r in rows], within_pct)
    first = diff_pct(rows[0]["watts"], reference)
    note = "" if first is None else f"just after the load idle power is {first:.1f} % off the settled {reference:.4g} W"
    if settled is None:
        drifting = "still drifting at the end: lengthen --settle-max-s"
        return Outcome(FAIL, "not settled", threshold, _join(drifting, note))
    measured = f"settles in {settled:.1f} s"
    if settled > max_settle_s:
        return Outcome(FAIL, measured, threshold, _join(f"set baseline.settle_seconds ≥ {math.ceil(settled)}", note))
    return Outcome(PASS, measured, threshold, note)


BASELINE_STATES = ("no_context", "context_alloc", "loaded_right_after_load", "loaded_after_cooldown")


def baseline_outcome(
    states_w: Mapping[str, Mapping[str, float | None] | None], tolerance_pct: float = BASELINE_TOLERANCE_PCT
) -> Outcome:
    """Idle power (W per GPU) by state. Passes when, on every GPU, a loaded idle engine draws what a
    bare context draws (so a warm worker's baseline matches a cold one's) and idle power right after
    load has settled to the cooled figure (so the baseline does not depend on what ran just before)."""
    threshold = f"loaded ≈ context and just loaded ≈ cooled, within {tolerance_pct:g} % per GPU"
    total = {s: _sum_w(states_w.get(s)) for s in BASELINE_STATES}
    measured = ", ".join(f"{s} {_fmt(w, ' W')}" for s, w in total.items() if w is not None) or "—"
    labels = list(dict.fromkeys(k for per_gpu in states_w.values() for k in (per_gpu or {})))
    problems = []
    pairs = (
        ("loaded_after_cooldown", "context_alloc", "a loaded idle engine differs from a bare context by {d:.1f} %"),
        (
            "loaded_right_after_load",
            "loaded_after_cooldown",
            "idle power right after load is {d:.1f} % off the cooled figure: baseline.settle_seconds must cover it",
        ),
    )
    for state, reference, message in pairs:
        now, then = states_w.get(state) or {}, states_w.get(reference) or {}
        diffs = {k: diff_pct(now.get(k), then.get(k)) for k in labels}
        missing = [k for k, d in diffs.items() if d is None]
        if missing or not labels:
            problems.append(f"{state} or {reference} not measured on {', '.join(missing) or 'any GPU'}")
            continue
        worst = max(diffs, key=lambda k: diffs[k] or 0.0)
        if (diffs[worst] or 0.0) > tolerance_pct:
            problems.append(message.format(d=diffs[worst]) + f" on {worst}")
    context_cost = diff_pct(total["context_alloc"], total["no_context"])
    note = "" if context_cost is None else f"context + allocation adds {context_cost:.1f} % over no context"
    if problems:
        return Outcome(FAIL, measured, threshold, _join("; ".join(problems), note))
    return Outcome(PASS, measured, threshold, note)


def _sum_w(per_gpu: Mapping[str, float | None] | None) -> float | None:
    if not per_gpu or any(v is None for v in per_gpu.values()):
        return None
    return float(sum(v for v in per_gpu.values() if v is not None))


def repeatability_outcome(values: Sequence[float | None], max_cv_pct: float = REPEAT_MAX_CV_PCT) -> Outcome:
    threshold = f"CV of energy per output token < {max_cv_pct:g} %"
    known = [v for v in values if v is not None]
    if len(known) < len(values) or len(known) < 2:
        return Outcome(FAIL, "—", threshold, f"energy measured in {len(known)} of {len(values)} cycles")
    cv = cv_pct(known)
    measured = f"CV {_fmt(cv)} % over {len(known)} cycles"
    if cv is None or cv >= max_cv_pct:
        return Outcome(FAIL, measured, threshold)
    return Outcome(PASS, measured, threshold)


def convergence_outcome(per_token_j: Mapping[int, float | None], tolerance_pct: float = CONVERGENCE_PCT) -> Outcome:
    """Energy per output token by window size in prompts: the two largest windows must agree."""
    threshold = f"two largest windows agree within {tolerance_pct:g} %"
    sizes = sorted(per_token_j)
    if len(sizes) < 2:
        return Outcome(FAIL, "—", threshold, "needs at least two window sizes")
    largest = per_token_j[sizes[-1]]
    diffs = {n: diff_pct(per_token_j[n], largest) for n in sizes[:-1]}
    measured = ", ".join(f"{n}: {_fmt(d, ' %')}" for n, d in diffs.items()) + f" off {sizes[-1]}"
    d = diffs[sizes[-2]]
    if d is None:
        return Outcome(FAIL, measured, threshold, "energy missing for a window")
    if d > tolerance_pct:
        return Outcome(FAIL, measured, threshold, f"{sizes[-2]} prompts are not enough for a stable figure")
    return Outcome(PASS, measured, threshold)


def ttft_share(ttft_mean_ms: float | None, e2e_mean_ms: float | None) -> float | None:
    """Mean TTFT as a share of mean end-to-end latency: engine speed cancels, the clock's definition does not."""
    if ttft_mean_ms is None or not e2e_mean_ms:
        return None
    return ttft_mean_ms / e2e_mean_ms


def ttft_outcome(shares: Mapping[str, float | None], tolerance_pct: float = TTFT_SHARE_PCT) -> Outcome:
    """With one prompt at a time and every prompt arriving at the start of the pass, TTFT is mostly
    queueing behind earlier prompts on every engine; an engine timing TTFT from another start shows
    a share far from the others."""
    threshold = f"TTFT / e2e agrees within {tolerance_pct:g} %"
    measured = ", ".join(f"{k} {_fmt(v)}" for k, v in shares.items())
    values = list(shares.values())
    if len(values) != 2 or any(v is None for v in values):
        return Outcome(FAIL, measured, threshold, "latency missing for an engine")
    d = diff_pct(values[1], values[0])
    if d is None or d > tolerance_pct:
        detail = f"shares differ by {_fmt(d, ' %')}: the engines time TTFT differently"
        return Outcome(FAIL, measured, threshold, detail)
    return Outcome(PASS, measured, threshold, f"shares differ by {d:.1f} %")


def observer_outcome(on_s: Sequence[float], off_s: Sequence[float], max_pct: float = OBSERVER_MAX_PCT) -> Outcome:
    threshold = f"< {max_pct:g} % slower with sampling"
    pct = overhead_pct(on_s, off_s)
    measured = f"{_fmt(pct)} % (median of {len(on_s)} against {len(off_s)})"
    if pct is None:
        return Outcome(FAIL, measured, threshold, "no timing")
    if pct >= max_pct:
        return Outcome(FAIL, measured, threshold)
    return Outcome(PASS, measured, threshold)


def scope_outcome(
    unpinned: Mapping[str, Any], pinned: Mapping[str, Any], tolerance_pct: float = SCOPE_AGREE_PCT
) -> Outcome:
    """Each side: `devices` (GPU labels measured) and `per_token_j`. The unpinned job must measure
    only the job's own GPU, the same as the pinned one, and give the same figure."""
    threshold = f"same GPUs measured; energy per token within {tolerance_pct:g} %"
    d = diff_pct(unpinned.get("per_token_j"), pinned.get("per_token_j"))
    measured = f"unpinned {unpinned.get('devices')} vs pinned {pinned.get('devices')}; {_fmt(d, ' %')}"
    if list(unpinned.get("devices") or []) != list(pinned.get("devices") or []):
        return Outcome(FAIL, measured, threshold, "the unpinned job measured other GPUs than its own")
    if d is None:
        return Outcome(FAIL, measured, threshold, "energy missing")
    if d > tolerance_pct:
        return Outcome(FAIL, measured, threshold, "figures disagree")
    return Outcome(PASS, measured, threshold)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# ---------------------------------------------------------------------- GPU work


class Load(Protocol):
    def start(self) -> None: ...

    def stop(self) -> dict[str, Any]: ...


class GpuWork(Protocol):
    """Everything the checks do to GPUs besides reading NVML (tests swap in a fake)."""

    def problem(self) -> str | None:
        """Why no work can run on the GPUs (None: it can)."""

    def context_exists(self) -> bool: ...

    def hold_memory(self, indices: list[int], nbytes: int) -> None: ...

    def release_memory(self) -> None: ...

    def load(self, indices: list[int], matrix: int, period_s: float | None = None, duty: float = 1.0) -> Load: ...


class TorchLoad:
    """Back-to-back bf16 matmuls on each GPU; with `period_s`, only during the on phase of a square wave."""

    def __init__(self, indices: list[int], matrix: int, period_s: float | None = None, duty: float = 1.0) -> None:
        self.indices, self.matrix, self.period_s, self.duty = indices, matrix, period_s, duty
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy: dict[int, float] = {}
        self._elapsed: dict[int, float] = {}
        self._errors: list[str] = []

    def start(self) -> None:
        import torch

        ready = threading.Barrier(len(self.indices) + 1)
        for i in self.indices:
            thread = threading.Thread(target=self._run, args=(torch, i, ready), daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            ready.wait(timeout=60)  # operands allocated on every GPU: the load starts now
        except threading.BrokenBarrierError:
            self.stop()  # raises with the reason when a GPU failed
            raise RuntimeError("GPU load did not start within 60 s") from None

    def _run(self, torch: Any, i: int, ready: threading.Barrier) -> None:
        try:
            dev = torch.device(f"cuda:{i}")
            a = torch.randn(self.matrix, self.matrix, device=dev, dtype=torch.bfloat16)
            b = torch.randn(self.matrix, self.matrix, device=dev, dtype=torch.bfloat16)
            torch.cuda.synchronize(dev)
        except Exception as exc:  # noqa: BLE001 - reported by stop()
            self._errors.append(f"cuda:{i}: {exc}")
            ready.abort()
            return
        try:
            ready.wait()
        except threading.BrokenBarrierError:  # another GPU failed to start: stop() reports it
            return
        start, busy, k = time.perf_counter(), 0.0, 0
        while not self._stop.is_set():
            if self.period_s is None:
                t0 = time.perf_counter()
                for _ in range(4):
                    torch.matmul(a, b)
                torch.cuda.synchronize(dev)
                busy += time.perf_counter() - t0
                continue
            on_at = start + k * self.period_s
            off_at = on_at + self.duty * self.period_s
            k += 1
            now = time.perf_counter()
            if now >= off_at:  # fell behind: skip to the next period rather than shift the phase
                continue
            if now < on_at:
                time.sleep(on_at - now)
            t0 = time.perf_counter()
            while time.perf_counter() < off_at:
                torch.matmul(a, b)
                torch.cuda.synchronize(dev)
            busy += time.perf_counter() - t0
        self._busy[i], self._elapsed[i] = busy, time.perf_counter() - start

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self._errors:
            raise RuntimeError("GPU load failed: " + "; ".join(self._errors))
        duty = [self._busy[i] / self._elapsed[i] for i in self._busy if self._elapsed.get(i)]
        return {"achieved_duty": statistics.fmean(duty) if duty else None}


class TorchWork:
    """GPU work through torch on CUDA."""

    def __init__(self) -> None:
        self._held: list[Any] = []

    def problem(self) -> str | None:
        try:
            import torch
        except ImportError:
            return "torch is not installed (pip install -e '.[pytorch]' with a CUDA build of torch)"
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} has no usable CUDA"
        return None

    def context_exists(self) -> bool:
        torch = sys.modules.get("torch")
        return bool(torch is not None and torch.cuda.is_initialized())

    def hold_memory(self, indices: list[int], nbytes: int) -> None:
        import torch

        for i in indices:
            block = torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{i}")
            block.fill_(1)  # touch it, so the memory is really committed
            self._held.append(block)
            torch.cuda.synchronize(i)

    def release_memory(self) -> None:
        self._held.clear()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def load(self, indices: list[int], matrix: int, period_s: float | None = None, duty: float = 1.0) -> Load:
        return TorchLoad(indices, matrix, period_s, duty)


# ---------------------------------------------------------------------- experiments


class Experiments(Protocol):
    """llem's own harness and sessions (tests swap in a fake)."""

    def problem(self, backend: str) -> str | None: ...

    def session(self) -> Any: ...

    def run(self, experiment: ExperimentConfig, output_dir: Path, session: Any) -> Any: ...


class HarnessExperiments:
    def problem(self, backend: str) -> str | None:
        try:
            import llem.config  # noqa: F401 - needs pydantic, which a bare GPU machine may lack
        except ImportError as exc:
            return f"llem's experiments need its dependencies ({exc}; pip install -e . in the checkout)"
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            return "vLLM is not installed (pip install -e '.[vllm]')"
        return None

    def session(self) -> Any:
        from llem.measure.session import BackendSession

        return BackendSession()

    def run(self, experiment: ExperimentConfig, output_dir: Path, session: Any) -> Any:
        from llem.measure.harness import run_experiment

        output_dir.mkdir(parents=True, exist_ok=True)
        return run_experiment(experiment, output_dir, session)


def experiment_config(args: argparse.Namespace, **changes: Any) -> ExperimentConfig:
    """The check's workload: fixed-length synthetic prompts, forced output length, GPU energy only.

    Keyword changes: `backend` (a backend config), `prompts`, `devices` (energy.devices),
    `min_window_s`, `source`, `baseline`. Needs pydantic (llem's configuration); the NVML-level
    checks do not, so it is imported here.
    """
    from llem.config import (
        BaselineConfig,
        EnergyConfig,
        ExperimentConfig,
        MeasureConfig,
        ModelConfig,
        PyTorchConfig,
        SyntheticPrompts,
        WarmupConfig,
    )

    return ExperimentConfig(
        experiment_name="gpu-check",
        model=ModelConfig(name=args.model),
        backend=changes.get("backend") or PyTorchConfig(device="cuda", batch_size=args.batch_size),
        fp_precision=args.precision,
        dataset=SyntheticPrompts(input_tokens=args.input_tokens),
        num_input_prompts=changes.get("prompts", args.prompts),
        max_input_tokens=args.input_tokens,
        max_output_tokens=args.output_tokens,
        force_output_length=True,
        baseline=BaselineConfig(enabled=changes.get("baseline", True), duration_seconds=args.baseline_s),
        energy=EnergyConfig(
            source=changes.get("source", "nvml"),
            include_host=False,
            sample_interval_ms=args.interval_ms,
            devices=changes.get("devices"),
        ),
        measure=MeasureConfig(min_window_seconds=changes.get("min_window_s"), phase_split=False),
        warmup=WarmupConfig(num_prompts=None),
    )


def per_token_j(result: Any) -> float | None:
    """Raw GPU energy of the window per output token (no baseline subtracted, so no idle-power noise)."""
    total = result.energy.total_j
    tokens = result.output_tokens
    return None if total is None or not tokens else total / tokens


def measured_gpus(result: Any) -> list[str]:
    gpu = result.energy.components.get("gpu")
    return [] if gpu is None else list(gpu.devices)


# ---------------------------------------------------------------------- running checks


class OutOfTime(RuntimeError):
    """A check's budget would run out before its next step."""


class Run:
    """One check's running state: its budget and the figures gathered so far (kept if it stops early)."""

    def __init__(self, budget_s: float, clock: Callable[[], float]) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self._start = clock()
        self.rows: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return self._clock() - self._start

    def need(self, seconds: float, what: str) -> None:
        """Stop the check unless `seconds` more fit in its budget."""
        left = self.budget_s - self.elapsed()
        if seconds > left:
            raise OutOfTime(
                f"budget of {self.budget_s:g} s ran out before {what} ({left:.0f} s left, {seconds:g} s needed)"
            )


@dataclass
class Rig:
    """What the checks touch besides the CLI arguments; tests swap in fakes."""

    nvml: Any = None
    environ: Mapping[str, str] | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    work: GpuWork = field(default_factory=TorchWork)
    experiments: Experiments = field(default_factory=HarnessExperiments)


@dataclass
class Ctx:
    args: argparse.Namespace
    rig: Rig
    devs: NvmlDevices
    workdir: Path

    @property
    def indices(self) -> list[int]:
        return self.devs.indices

    def monitor(self) -> EnergyMonitor:
        """GPU energy only (counter cross-checked by polled power) on the selected GPUs."""
        return open_monitor(
            "nvml",
            self.indices,
            include_host=False,
            interval_s=self.args.interval_ms / 1000.0,
            nvml_module=self.rig.nvml,
            environ=self.rig.environ,
        )

    def window(
        self, monitor: EnergyMonitor, name: str, seconds: float, during: Callable[[], None] | None = None
    ) -> Any:
        """One monitor window `seconds` long; `during` runs right after it opens."""
        monitor.begin_window(name)
        try:
            if during is not None:
                during()
            self.rig.sleep(seconds)
        finally:
            window = monitor.end_window(name)
        return window


@dataclass
class CheckResult:
    name: str
    title: str
    verdict: str
    measured: str
    threshold: str
    detail: str
    duration_s: float
    budget_s: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    traceback: str | None = None


CheckFn = Callable[[Ctx, Run], Outcome]


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    run: CheckFn
    estimate_s: Callable[[argparse.Namespace], float]  # expected duration; the budget is derived from it
    startup_s: float = 60.0  # model loads, CUDA start-up: what a short budget must still leave room for


def budget_for(check: Check, args: argparse.Namespace) -> float:
    """Expected duration x 1.5 plus a minute for model loads and start-up, unless --budget names one."""
    override = dict(args.budget or []).get(check.name)
    return float(override) if override is not None else math.ceil(check.estimate_s(args) * 1.5 + 60)


def run_check(check: Check, ctx: Ctx) -> CheckResult:
    budget = budget_for(check, ctx.args)
    run = Run(budget, ctx.rig.clock)
    trace = None
    try:
        outcome = check.run(ctx, run)
    except OutOfTime as exc:
        outcome = Outcome(ERROR, "—", "—", str(exc))
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others' figures
        outcome = Outcome(ERROR, "—", "—", f"{type(exc).__name__}: {exc}")
        trace = traceback.format_exc()
    return CheckResult(
        check.name, check.title, outcome.verdict, outcome.measured, outcome.threshold, outcome.detail,
        run.elapsed(), budget, run.rows, trace,
    )  # fmt: skip


def exit_code(results: Iterable[CheckResult]) -> int:
    return EXIT_FAILED if any(r.verdict in (FAIL, ERROR) for r in results) else EXIT_OK


# ---------------------------------------------------------------------- the checks


def _need_gpu_work(ctx: Ctx) -> str | None:
    return ctx.rig.work.problem()


def visible_gpus(ctx: Ctx) -> int:
    """GPUs NVML shows this process (honouring CUDA_VISIBLE_DEVICES), whatever --devices selected."""
    devs = NvmlDevices.open(None, nvml=ctx.rig.nvml, environ=ctx.rig.environ)
    try:
        return len(devs.indices)
    finally:
        devs.close()


def check_update_period(ctx: Ctx, run: Run) -> Outcome:
    """Read the counter in a tight loop until it has changed several times, a few times per GPU."""
    devs, clock = ctx.devs, ctx.rig.clock
    periods: dict[str, float | None] = {}
    for i in ctx.indices:
        label = devs.label(i)
        values = []
        for repeat in range(ctx.args.period_repeats):
            run.need(ctx.args.period_timeout_s, f"{label} update period {repeat + 1}")
            values.append(devs.counter_update_period_s(i, changes=5, timeout_s=ctx.args.period_timeout_s))
        t0 = clock()
        reads = 20
        for _ in range(reads):
            devs.energy_mj(i)
        read_ms = (clock() - t0) / reads * 1000.0
        known = [v for v in values if v is not None]
        periods[label] = statistics.median(known) if len(known) == len(values) else None
        run.rows.append(
            {"device": label, "period_s": periods[label], "each_s": values, "counter_read_ms": read_ms,
             "power_source": devs.power_source(i)}
        )  # fmt: skip
    return update_period_outcome(periods)


def _agreement_rows(window: Any, mode: str, window_s: float) -> list[dict[str, Any]]:
    gpu = window.components["gpu"]
    polled = gpu.polled_per_device or {}
    rows = []
    for label, counter in gpu.per_device.items():
        p = polled.get(label)
        rows.append(
            {"mode": mode, "window_s": window_s, "device": label, "duration_s": window.duration_s,
             "counter_j": counter, "polled_j": p, "diff_pct": diff_pct(p, counter),
             "polled_source": gpu.polled_source}
        )  # fmt: skip
    return rows


def check_steady_power(ctx: Ctx, run: Run) -> Outcome:
    """Counter against integrated polled power, with the load running before the window opens
    (steady) and with the load starting as the window opens (a step the polled power must follow)."""
    problem = _need_gpu_work(ctx)
    if problem:
        return Outcome(SKIP, "—", f"≤ {COUNTER_VS_POWER_PCT:g} %", problem)
    args, work = ctx.args, ctx.rig.work
    with ctx.monitor() as monitor:
        load = work.load(ctx.indices, args.matrix)
        load.start()
        try:
            ctx.rig.sleep(args.warmup_s)
            for length in args.windows:
                run.need(length, f"the steady {length:g} s window")
                run.rows += _agreement_rows(ctx.window(monitor, f"steady-{length:g}", length), "steady", length)
        finally:
            load.stop()
        for length in args.windows:
            run.need(args.idle_gap_s + length, f"the {length:g} s window with the load starting at its start")
            ctx.rig.sleep(args.idle_gap_s)  # back to idle, so the window sees the whole step
            step = work.load(ctx.indices, args.matrix)
            try:
                window = ctx.window(monitor, f"step-{length:g}", length, during=step.start)
            finally:
                step.stop()
            run.rows += _agreement_rows(window, "load at window start", length)
    return agreement_outcome(run.rows)


class InstantReference:
    """Instant power (NVML_FI_DEV_POWER_INSTANT) read in a tight loop, as fast as NVML answers, and integrated:
    the reference the counter's energy is held to. Its only error is the instant field's own."""

    def __init__(self, devs: NvmlDevices, indices: Sequence[int], clock: Callable[[], float]) -> None:
        self.devs, self.indices, self.clock = devs, list(indices), clock
        self.samples: dict[int, list[tuple[float, float]]] = {i: [] for i in self.indices}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.error: str | None = None

    def __enter__(self) -> InstantReference:
        self._thread = threading.Thread(target=self._run, name="gpu-check-instant", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i in self.indices:
                before = self.clock()
                try:
                    watts = self.devs.instant_power_mw(i) / 1000.0
                except Exception as exc:  # noqa: BLE001 - reported as the reason there is no reference
                    self.error = f"{self.devs.label(i)}: {exc}"
                    return
                after = self.clock()
                if after - before > 0.002:  # preempted mid-read: when it read is not known closely enough
                    continue
                with self._lock:
                    self.samples[i].append(((before + after) / 2, watts))
            time.sleep(0)  # let the load and the meters run

    def energy_j(self, t0: float, t1: float) -> float | None:
        """Integral over [t0, t1] summed over the GPUs; None if any GPU's samples do not cover it."""
        deadline = time.monotonic() + 1.0  # the next reading after t1 is at most one NVML call away
        while time.monotonic() < deadline and self.error is None and self._thread is not None:
            with self._lock:
                if all(v and v[-1][0] >= t1 for v in self.samples.values()):
                    break
            time.sleep(0.001)
        total = 0.0
        for i in self.indices:
            with self._lock:
                samples = list(self.samples[i])
            part = integrate(samples, t0, t1)
            if part is None:
                return None
            total += part
        return total

    def rate_hz(self) -> float | None:
        counts = [len(v) for v in self.samples.values()]
        spans = [v[-1][0] - v[0][0] for v in self.samples.values() if len(v) > 1]
        return min(counts) / max(spans) if spans and max(spans) > 0 else None


def check_square_wave(ctx: Ctx, run: Run) -> Outcome:
    """Square-wave load at periods that do not divide the sensor's ~100 ms cycle, each window starting at a
    random phase; per period, the counter's energy over repeated windows of whole periods, against the
    instant-power reference integrated over the same windows."""
    problem = _need_gpu_work(ctx)
    if problem:
        return Outcome(SKIP, "—", f"CV < {SQUARE_WAVE_MAX_CV_PCT:g} %", problem)
    args, clock = ctx.args, ctx.rig.clock
    for period_ms in args.square_periods_ms:
        if aliases_sensor(period_ms):
            raise ValueError(f"--square-periods-ms {period_ms:g} divides the ~{SENSOR_PERIOD_MS:g} ms sensor cycle "
                             "evenly (or is a multiple of it): choose a period such as 37, 70 or 130 ms")  # fmt: skip
    rng = random.Random(args.seed)
    with ctx.monitor() as monitor, InstantReference(ctx.devs, ctx.indices, clock) as reference:
        for period_ms in args.square_periods_ms:
            period_s = period_ms / 1000.0
            window_s = periods_window_s(args.square_window_s, period_s)
            run.need(args.warmup_s + args.square_repeats * (window_s + period_s), f"the {period_ms:g} ms square wave")
            load = ctx.rig.work.load(ctx.indices, args.square_matrix, period_s, 0.5)
            counter: list[float] = []
            polled: list[float | None] = []
            refs: list[float | None] = []
            outer: list[float | None] = []
            durations: list[float | None] = []
            phases: list[float] = []
            load.start()
            try:
                ctx.rig.sleep(args.warmup_s)
                for k in range(args.square_repeats):
                    phases.append(rng.uniform(0.0, period_s))
                    ctx.rig.sleep(phases[-1])  # each window starts at another phase of the wave
                    name = f"square-{period_ms:g}-{k}"
                    opening = clock()
                    monitor.begin_window(name)
                    opened = clock()
                    try:
                        ctx.rig.sleep(window_s)
                    finally:
                        closing = clock()
                        gpu = monitor.end_window(name).components["gpu"]
                        closed = clock()
                    if gpu.joules is None:
                        raise RuntimeError(f"no counter energy: {gpu.unavailable_reason}")
                    counter.append(gpu.joules)
                    durations.append(gpu.duration_s)
                    polled.append(gpu.polled_j)
                    refs.append(reference.energy_j(opened, closing))
                    outer.append(reference.energy_j(opening, closed))
            finally:
                info = load.stop()
            run.rows.append(square_wave_row(
                period_ms, counter, polled, info.get("achieved_duty"), refs, outer, durations, window_s=window_s,
                phases_ms=[round(ph * 1000, 2) for ph in phases], reference_hz=reference.rate_hz(),
                reference_error=reference.error,
            ))  # fmt: skip
    return square_wave_outcome(run.rows)


def check_baseline_settle(ctx: Ctx, run: Run) -> Outcome:
    """A hot run, then idle power in back-to-back windows: how long until it is within 2 % of where it settles."""
    problem = _need_gpu_work(ctx)
    if problem:
        return Outcome(SKIP, "—", f"within {SETTLE_WITHIN_PCT:g} %", problem)
    args, clock = ctx.args, ctx.rig.clock
    run.need(args.hot_s + args.settle_max_s, "the hot run and the settle windows")
    with ctx.monitor() as monitor:
        load = ctx.rig.work.load(ctx.indices, args.matrix)
        load.start()
        try:
            ctx.rig.sleep(args.hot_s)
        finally:
            load.stop()
        stopped = clock()
        k = 0
        while clock() - stopped + args.settle_step_s <= args.settle_max_s + 1e-9:
            window = ctx.window(monitor, f"settle-{k}", args.settle_step_s)
            gpu = window.components["gpu"]
            if gpu.joules is None:
                raise RuntimeError(f"no counter energy: {gpu.unavailable_reason}")
            run.rows.append({"t_s": round(clock() - stopped, 3), "watts": gpu.joules / window.duration_s,
                             "device_state": monitor.device_state()})  # fmt: skip
            k += 1
    return settle_outcome(run.rows)


def check_baseline_states(ctx: Ctx, run: Run) -> Outcome:
    """Idle power in four states, in the order a worker goes through them."""
    problem = _need_gpu_work(ctx) or ctx.rig.experiments.problem("pytorch")
    if problem:
        return Outcome(SKIP, "—", f"within {BASELINE_TOLERANCE_PCT:g} %", problem)
    args, work = ctx.args, ctx.rig.work
    states: dict[str, dict[str, float | None] | None] = {}
    note = ""
    session = None
    with ctx.monitor() as monitor:

        def idle(state: str, settle_s: float) -> None:
            run.need(settle_s + args.baseline_s, f"the {state} baseline")
            ctx.rig.sleep(settle_s)
            window = ctx.window(monitor, f"baseline-{state}", args.baseline_s)
            gpu = window.components["gpu"]
            watts = {k: (None if v is None else v / window.duration_s) for k, v in gpu.per_device.items()}
            states[state] = watts
            run.rows.append({"state": state, "duration_s": window.duration_s, **{f"{k}_w": v for k, v in watts.items()},
                             "device_state": monitor.device_state()})

        if work.context_exists():
            note = "a CUDA context existed before this check: no_context not measured"
            states["no_context"] = None
        else:
            idle("no_context", args.settle_s)
        try:
            work.hold_memory(ctx.indices, int(args.alloc_gib * 2**30))
            idle("context_alloc", args.settle_s)
            session = ctx.rig.experiments.session()
            session.acquire(experiment_config(args))
            idle("loaded_right_after_load", 0.0)
            run.need(args.cooldown_s, "the cooldown")
            ctx.rig.sleep(args.cooldown_s)
            idle("loaded_after_cooldown", 0.0)
        finally:
            if session is not None:
                session.release()
            work.release_memory()
    outcome = baseline_outcome(states)
    outcome.detail = _join(outcome.detail, note)
    return outcome


def time_with_and_without(
    work: Callable[[], float], observe: Callable[[], Callable[[], Any]], repeats: int, run: Run
) -> tuple[list[float], list[float]]:
    """Time `work` `repeats` times with an observer running (`observe` starts it and returns its stop)
    and as often without, in ABBA order; each timing is also a row of `run`."""
    on: list[float] = []
    off: list[float] = []
    for observed in abba(repeats):
        if observed:
            stop = observe()
            try:
                on.append(work())
            finally:
                stop()
        else:
            off.append(work())
        run.rows.append({"sampling": observed, "seconds": (on if observed else off)[-1]})
    return on, off


def check_observer_overhead(ctx: Ctx, run: Run) -> Outcome:
    """The same generation, timed with the telemetry sampler running at --interval-ms and without."""
    problem = _need_gpu_work(ctx) or ctx.rig.experiments.problem("pytorch")
    if problem:
        return Outcome(SKIP, "—", f"< {OBSERVER_MAX_PCT:g} %", problem)
    from llem.prompts.load import load_prompts

    args = ctx.args
    experiment = experiment_config(args)
    session = ctx.rig.experiments.session()
    try:
        backend, _, _ = session.acquire(experiment)
        prompts = load_prompts(
            experiment.dataset, backend.tokenizer, n=experiment.num_input_prompts,
            max_input_tokens=experiment.max_input_tokens, seed=experiment.random_seed,
        )  # fmt: skip

        def generate() -> float:
            backend.synchronize()
            t0 = time.perf_counter()
            backend.generate(prompts, experiment)
            backend.synchronize()
            return time.perf_counter() - t0

        first = generate()  # warmup, and the time one run takes
        run.need(2 * args.overhead_repeats * first, "the timed generations")

        def observe() -> Callable[[], Any]:
            sampler = TelemetrySampler(ctx.devs, args.interval_ms / 1000.0)
            sampler.start()
            return sampler.stop

        on, off = time_with_and_without(generate, observe, args.overhead_repeats, run)
    finally:
        session.release()
    return observer_outcome(on, off)


def _experiment_row(label: str, result: Any) -> dict[str, Any]:
    return {
        "run": label,
        "passes": result.passes,
        "window_s": result.duration_s,
        "output_tokens": result.output_tokens,
        "energy_j": result.energy.total_j,
        "per_token_j": per_token_j(result),
        "adjusted_per_token_j": result.energy.per_output_token_j,
        "gpus": measured_gpus(result),
    }


def check_repeatability(ctx: Ctx, run: Run) -> Outcome:
    """Cycles of one experiment in one warm session, as a campaign runs them."""
    problem = _need_gpu_work(ctx) or ctx.rig.experiments.problem("pytorch")
    if problem:
        return Outcome(SKIP, "—", f"CV < {REPEAT_MAX_CV_PCT:g} %", problem)
    experiments = ctx.rig.experiments
    session = experiments.session()
    values: list[float | None] = []
    try:
        for cycle in range(ctx.args.cycles):
            run.need(0, f"cycle {cycle + 1}")
            result = experiments.run(experiment_config(ctx.args), ctx.workdir / "repeatability" / str(cycle), session)
            run.rows.append(_experiment_row(f"cycle {cycle + 1}", result))
            values.append(per_token_j(result))
    finally:
        session.release()
    outcome = repeatability_outcome(values)
    adjusted = [r["adjusted_per_token_j"] for r in run.rows if r["adjusted_per_token_j"] is not None]
    if len(adjusted) >= 2:
        outcome.detail = _join(outcome.detail, f"above idle: CV {_fmt(cv_pct(adjusted))} %")
    return outcome


def check_convergence(ctx: Ctx, run: Run) -> Outcome:
    """One pass per window (no minimum length), so the window grows with the prompt count."""
    problem = _need_gpu_work(ctx) or ctx.rig.experiments.problem("pytorch")
    if problem:
        return Outcome(SKIP, "—", f"within {CONVERGENCE_PCT:g} %", problem)
    experiments = ctx.rig.experiments
    session = experiments.session()
    figures: dict[int, float | None] = {}
    try:
        for n in sorted(ctx.args.window_prompts):
            run.need(0, f"the {n}-prompt window")
            experiment = experiment_config(ctx.args, prompts=n, min_window_s=0.0)
            result = experiments.run(experiment, ctx.workdir / "convergence" / str(n), session)
            run.rows.append(_experiment_row(f"{n} prompts", result))
            figures[n] = per_token_j(result)
    finally:
        session.release()
    return convergence_outcome(figures)


def check_device_scope(ctx: Ctx, run: Run) -> Outcome:
    """A one-GPU job with energy.devices unset against the same job pinned to CUDA device 0."""
    threshold = f"same GPUs; within {SCOPE_AGREE_PCT:g} %"
    visible = visible_gpus(ctx)
    if visible < 2:
        return Outcome(SKIP, "—", threshold, f"needs a node with at least two GPUs ({visible} visible)")
    problem = _need_gpu_work(ctx) or ctx.rig.experiments.problem("pytorch")
    if problem:
        return Outcome(SKIP, "—", threshold, problem)
    experiments = ctx.rig.experiments
    session = experiments.session()
    sides: dict[str, dict[str, Any]] = {}
    try:
        for label, devices in (("unpinned", None), ("pinned", [0])):
            run.need(0, f"the {label} job")
            experiment = experiment_config(ctx.args, devices=devices)
            result = experiments.run(experiment, ctx.workdir / "scope" / label, session)
            run.rows.append(_experiment_row(label, result))
            sides[label] = {"devices": measured_gpus(result), "per_token_j": per_token_j(result)}
    finally:
        session.release()
    outcome = scope_outcome(sides["unpinned"], sides["pinned"])
    outcome.detail = _join(outcome.detail, f"{visible} GPUs visible")
    return outcome


def check_cross_engine_ttft(ctx: Ctx, run: Run) -> Outcome:
    """PyTorch at batch size 1 against vLLM at max_num_seqs 1: the same workload, one prompt at a time."""
    threshold = f"TTFT / e2e within {TTFT_SHARE_PCT:g} %"
    problem = _need_gpu_work(ctx) or ctx.rig.experiments.problem("pytorch") or ctx.rig.experiments.problem("vllm")
    if problem:
        return Outcome(SKIP, "—", threshold, problem)
    from llem.config import PyTorchConfig, VLLMConfig

    args = ctx.args
    engines = {
        "pytorch": PyTorchConfig(device="cuda", batch_size=1),
        "vllm": VLLMConfig(max_num_seqs=1, gpu_memory_utilization=args.vllm_memory),
    }
    shares: dict[str, float | None] = {}
    experiments = ctx.rig.experiments
    for name, backend in engines.items():
        run.need(0, f"the {name} run")
        experiment = experiment_config(args, backend=backend, source="none", baseline=False, min_window_s=0.0)
        session = experiments.session()
        try:
            result = experiments.run(experiment, ctx.workdir / "ttft" / name, session)
        finally:
            session.release()
        lat = result.latency
        shares[name] = ttft_share(lat.ttft_ms.mean, lat.e2e_ms.mean)
        run.rows.append(
            {"engine": name, "ttft_p50_ms": lat.ttft_ms.p50, "ttft_mean_ms": lat.ttft_ms.mean,
             "e2e_mean_ms": lat.e2e_ms.mean, "queue_p50_ms": lat.queue_ms.p50, "prefill_p50_ms": lat.prefill_ms.p50,
             "ttft_share": shares[name]}
        )  # fmt: skip
    return ttft_outcome(shares)


def _n(args: argparse.Namespace) -> int:
    return len(args.devices) if args.devices else 1


CHECKS: tuple[Check, ...] = (
    Check("update-period", "Energy counter update period", check_update_period,
          lambda a: _n(a) * a.period_repeats * a.period_timeout_s, 5.0),
    Check("baseline-states", "Idle baseline by device state", check_baseline_states,
          lambda a: 4 * a.baseline_s + 2 * a.settle_s + a.cooldown_s + 30),
    Check("steady-power", "Counter against instant power", check_steady_power,
          lambda a: a.warmup_s + 2 * sum(a.windows) + len(a.windows) * a.idle_gap_s, 20.0),
    Check("square-wave", "Square-wave load against instant power", check_square_wave,
          lambda a: sum(a.warmup_s + a.square_repeats * (periods_window_s(a.square_window_s, p / 1000) + p / 1000)
                        for p in a.square_periods_ms), 20.0),
    Check("baseline-settle", "Idle power settling after a hot run", check_baseline_settle,
          lambda a: a.hot_s + a.settle_max_s, 20.0),
    Check("observer-overhead", "Telemetry sampling overhead", check_observer_overhead,
          lambda a: 2 * a.overhead_repeats * 10 + 30),
    Check("repeatability", "Repeatability over cycles", check_repeatability,
          lambda a: a.cycles * 25 + a.baseline_s + 30),
    Check("convergence", "Window-length convergence", check_convergence,
          lambda a: sum(a.window_prompts) * a.output_tokens * 0.004 * 2 + a.baseline_s + 30),
    Check("device-scope", "Unpinned against pinned GPU", check_device_scope,
          lambda a: 2 * (25 + a.baseline_s) + 30),
    Check("cross-engine-ttft", "Cross-engine TTFT", check_cross_engine_ttft,
          lambda a: 240),
)  # fmt: skip
CHECK_NAMES = tuple(c.name for c in CHECKS)


# What a short slot on a GPU machine should confirm first: the energy figures themselves, then the baseline,
# then the experiment-level checks that need a model loaded.
PRIORITY = ("update-period", "steady-power", "square-wave", "baseline-settle", "baseline-states", "repeatability",
            "convergence", "observer-overhead", "device-scope", "cross-engine-ttft")  # fmt: skip
# Shorter settings for --budget-seconds, applied to any setting left at its default.
SHORT_SETTINGS: dict[str, Any] = {
    "windows": [5.0], "warmup_s": 2.0, "idle_gap_s": 2.0, "period_repeats": 2,
    "square_periods_ms": [43.0, 70.0, 130.0], "square_window_s": 2.0, "square_repeats": 4,
    "hot_s": 15.0, "settle_max_s": 30.0, "baseline_s": 5.0, "settle_s": 3.0, "cooldown_s": 30.0,
    "cycles": 3, "window_prompts": [16, 64], "overhead_repeats": 4,
}  # fmt: skip


def fitted_budget(check: Check, args: argparse.Namespace) -> float:
    """A check's budget under --budget-seconds: its expected duration plus a quarter, plus its start-up."""
    return math.ceil(check.estimate_s(args) * 1.25 + check.startup_s)


def fit_budget(checks: Sequence[Check], args: argparse.Namespace, total_s: float,
               defaults: argparse.Namespace) -> tuple[list[Check], list[Check], list[str]]:  # fmt: skip
    """(checks that fit, checks left out, settings shortened) for `total_s` seconds in all.

    If the checks do not fit as set, every setting still at its default is shortened (SHORT_SETTINGS);
    then checks are taken in PRIORITY order while their budgets fit, and each gets its fitted budget
    (`--budget` still wins for a check it names).
    """
    shortened: list[str] = []
    if sum(fitted_budget(c, args) for c in checks) > total_s:
        for key, value in SHORT_SETTINGS.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
                shortened.append(key)
    ordered = sorted(checks, key=lambda c: PRIORITY.index(c.name) if c.name in PRIORITY else len(PRIORITY))
    chosen, left, used = [], [], 0.0
    explicit = dict(args.budget or [])
    for check in ordered:
        cost = explicit.get(check.name, fitted_budget(check, args))
        if used + cost <= total_s:
            chosen.append(check)
            used += cost
            explicit.setdefault(check.name, cost)
        else:
            left.append(check)
    args.budget = list(explicit.items())
    in_order = [c for c in CHECKS if c in chosen]
    return in_order, left, shortened


def select_checks(only: Sequence[str] | None, skip: Sequence[str] | None) -> list[Check]:
    """Checks to run, in their fixed order; unknown names raise ValueError naming them."""
    unknown = [n for n in [*(only or []), *(skip or [])] if n not in CHECK_NAMES]
    if unknown:
        raise ValueError(f"unknown check {', '.join(unknown)} (checks: {', '.join(CHECK_NAMES)})")
    wanted = set(only) if only else set(CHECK_NAMES)
    return [c for c in CHECKS if c.name in wanted and c.name not in set(skip or [])]


# ---------------------------------------------------------------------- report


VERDICT_STYLE = {PASS: "green", FAIL: "bold red", ERROR: "bold red", SKIP: "yellow"}


def summary_table(results: Sequence[CheckResult]) -> Table:
    table = Table(title="llem GPU checks", show_lines=False)
    for column in ("Check", "Result", "Measured", "Threshold", "Detail", "Time"):
        table.add_column(column, overflow="fold")
    for r in results:
        style = VERDICT_STYLE.get(r.verdict, "")
        table.add_row(
            r.name, f"[{style}]{r.verdict.upper()}[/]", r.measured, r.threshold, r.detail,
            f"{r.duration_s:.0f} / {r.budget_s:.0f} s",
        )  # fmt: skip
    return table


def figures_table(result: CheckResult) -> Table | None:
    """A check's figures, one row each; lists and nested values are shown compactly."""
    if not result.rows:
        return None
    columns = list(dict.fromkeys(k for row in result.rows for k in row if not isinstance(row[k], dict)))
    table = Table(title=f"{result.name}: {result.title}")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in result.rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _fmt(value)


def report(results: Sequence[CheckResult], devices: Mapping[str, Any], args: argparse.Namespace,
           started_at: str, *, planned: Sequence[str] = (), complete: bool = True) -> dict[str, Any]:  # fmt: skip
    """The JSON report: environment, arguments, every check with its figures and verdict.

    `complete` is false while checks are still running: `planned` names them all, `checks` holds those done.
    """
    from llem import __version__ as llem_version

    return {
        "tool": "scripts/gpu_check.py",
        "llem_version": llem_version,
        "started_at": started_at,
        "finished_at": _now(),
        "host": platform.node(),
        "devices": dict(devices),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "thresholds": {
            "max_update_period_s": MAX_UPDATE_PERIOD_S,
            "counter_vs_power_pct": COUNTER_VS_POWER_PCT,
            "square_wave_max_cv_pct": SQUARE_WAVE_MAX_CV_PCT,
            "square_wave_reference_pct": SQUARE_WAVE_REFERENCE_PCT,
            "settle_within_pct": SETTLE_WITHIN_PCT,
            "settle_max_s": DEFAULT_SETTLE_S,
            "baseline_tolerance_pct": BASELINE_TOLERANCE_PCT,
            "repeat_max_cv_pct": REPEAT_MAX_CV_PCT,
            "convergence_pct": CONVERGENCE_PCT,
            "ttft_share_pct": TTFT_SHARE_PCT,
            "observer_max_pct": OBSERVER_MAX_PCT,
            "scope_agree_pct": SCOPE_AGREE_PCT,
        },
        "complete": complete,
        "planned": list(planned),
        "checks": [asdict(r) for r in results],
        "exit_code": exit_code(results) if complete else None,
    }


def write_report(path: Path, data: Mapping[str, Any]) -> Path:
    from llem.atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- command line


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in _names(text)]


def _floats(text: str) -> list[float]:
    values = [float(x) for x in _names(text)]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("expected positive numbers, e.g. 2,5,10")
    return values


def _budget(text: str) -> tuple[str, float]:
    name, sep, seconds = text.partition("=")
    if not sep or name not in CHECK_NAMES:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS with NAME one of {', '.join(CHECK_NAMES)}")
    return name, float(seconds)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the checks and their budgets, then exit")
    ap.add_argument("--only", type=_names, action="extend", metavar="NAMES", help="run only these checks")
    ap.add_argument("--skip", type=_names, action="extend", metavar="NAMES", help="leave these checks out")
    ap.add_argument("--json", type=Path, default=None, help="write the report here too")
    ap.add_argument("--budget", type=_budget, action="append", metavar="NAME=SECONDS", help="a check's time budget")
    ap.add_argument("--budget-seconds", type=float, default=None, metavar="N",
                    help="fit the run into N seconds: shorten settings left at their defaults, then run the most "
                    "important checks that fit (the rest are reported as skipped)")
    ap.add_argument("--devices", type=_ints, default=None, help="CUDA indices for NVML-level checks (default: all)")
    ap.add_argument("--workdir", type=Path, default=None, help="where experiment results go (default: a temp dir)")
    g = ap.add_argument_group("power and load")
    g.add_argument("--interval-ms", type=int, default=100, help="power polling and telemetry interval")
    g.add_argument("--windows", type=_floats, default=[2.0, 5.0, 10.0], help="steady-power window lengths, s")
    g.add_argument("--warmup-s", type=float, default=3.0, help="load before the first window")
    g.add_argument("--idle-gap-s", type=float, default=3.0, help="idle before each load-at-start window")
    g.add_argument("--matrix", type=int, default=8192, help="matmul size of the steady load")
    g.add_argument("--square-matrix", type=int, default=4096, help="matmul size of the square-wave load")
    g.add_argument("--square-periods-ms", type=_floats, default=[17.0, 43.0, 70.0, 130.0, 230.0],
                   help="square-wave periods; none may divide the ~100 ms sensor cycle evenly or be a multiple of it")
    g.add_argument("--square-window-s", type=float, default=5.0, help="window length, rounded to whole periods")
    g.add_argument("--seed", type=int, default=0, help="seed of the square wave's random window phases")
    g.add_argument("--square-repeats", type=int, default=5)
    g.add_argument("--period-repeats", type=int, default=3, help="update-period measurements per GPU")
    g.add_argument("--period-timeout-s", type=float, default=2.0)
    g = ap.add_argument_group("baseline")
    g.add_argument("--baseline-s", type=float, default=10.0, help="length of each idle window")
    g.add_argument("--settle-s", type=float, default=5.0, help="wait before the no-context and context baselines")
    g.add_argument("--cooldown-s", type=float, default=60.0, help="wait between right-after-load and cooled")
    g.add_argument("--alloc-gib", type=float, default=1.0, help="memory held in the context-plus-allocation state")
    g.add_argument("--hot-s", type=float, default=30.0, help="steady load before the settle windows")
    g.add_argument("--settle-step-s", type=float, default=1.0, help="length of each idle window after the load")
    g.add_argument("--settle-max-s", type=float, default=60.0, help="how long idle power is followed after the load")
    g = ap.add_argument_group("experiments")
    g.add_argument("--model", default="builtin:tiny", help="model name or path (default: the built-in tiny model)")
    g.add_argument("--precision", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--prompts", type=int, default=16, help="prompts per experiment")
    g.add_argument("--input-tokens", type=int, default=128)
    g.add_argument("--output-tokens", type=int, default=64)
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--cycles", type=int, default=5)
    g.add_argument("--window-prompts", type=_ints, default=[16, 64, 256])
    g.add_argument("--overhead-repeats", type=int, default=6, help="timed generations with and without sampling")
    g.add_argument("--vllm-memory", type=float, default=0.5, help="vLLM gpu_memory_utilization")
    return ap


def _list(console: Console, args: argparse.Namespace, checks: Sequence[Check], left_out: Sequence[Check]) -> None:
    table = Table(title="llem GPU checks")
    for column in ("Check", "What", "Budget"):
        table.add_column(column)
    for check in CHECKS:
        if check in checks:
            table.add_row(check.name, check.title, f"{budget_for(check, args):.0f} s")
        elif check in left_out:
            table.add_row(check.name, check.title, "left out (--budget-seconds)")
    console.print(table)


def main(argv: Sequence[str] | None = None, *, rig: Rig | None = None, console: Console | None = None) -> int:
    """Run the selected checks; `rig` swaps in fakes (tests), `console` captures the tables."""
    ap = parser()
    args = ap.parse_args(argv)
    try:
        checks = select_checks(args.only, args.skip)
        try:
            experiment_config(args)  # the experiment settings are llem's: refuse bad ones before any check runs
        except ImportError:
            pass  # a bare GPU machine: the experiment checks skip, saying why
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        ap.error(str(exc))
    rig = rig or Rig()
    console = console or Console()
    left_out: list[Check] = []
    if args.budget_seconds is not None:
        if args.budget_seconds <= 0:
            ap.error("--budget-seconds must be positive")
        checks, left_out, shortened = fit_budget(checks, args, args.budget_seconds, ap.parse_args([]))
        console.print(f"--budget-seconds {args.budget_seconds:g}: running {', '.join(c.name for c in checks) or 'none'}"
                      + (f"; left out {', '.join(c.name for c in left_out)}" if left_out else "")
                      + (f"; shortened {', '.join(shortened)}" if shortened else ""))  # fmt: skip
    if args.list:
        _list(console, args, checks, left_out)
        return EXIT_OK
    try:
        devs = NvmlDevices.open(args.devices, nvml=rig.nvml, environ=rig.environ, clock=rig.clock)
    except DeviceUnavailable as exc:
        print(f"gpu_check: no usable NVIDIA GPU here: {exc.reason}", file=sys.stderr)
        return EXIT_NO_GPU
    started_at = _now()
    results: list[CheckResult] = [
        CheckResult(c.name, c.title, SKIP, "—", "—", f"left out to fit --budget-seconds {args.budget_seconds:g}",
                    0.0, 0.0)
        for c in left_out
    ]  # fmt: skip
    planned = [c.name for c in checks]

    def save(complete: bool) -> None:
        """The JSON as it stands: written after every check, so a run cut short keeps what it did."""
        if args.json:
            write_report(args.json, report(results, devices, args, started_at, planned=planned, complete=complete))

    devices: Mapping[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="llem-gpu-check-") as tmp:
        workdir = args.workdir or Path(tmp)
        try:
            devices = devs.describe_all()
            save(False)
            ctx = Ctx(args, rig, devs, workdir)
            for check in checks:
                console.print(f"[bold]{check.name}[/]: {check.title} …")
                results.append(run_check(check, ctx))
                save(False)
        finally:
            devs.close()
    for result in results:
        table = figures_table(result)
        if table is not None:
            console.print(table)
    console.print(summary_table(results))
    code = exit_code(results)
    if args.json:
        save(True)
        console.print(f"report written to {args.json}")
    failed = [r.name for r in results if r.verdict in (FAIL, ERROR)]
    if failed:
        print(f"gpu_check: FAILED: {', '.join(failed)}", file=sys.stderr)
    else:
        print("gpu_check: OK")
    return code


if __name__ == "__main__":
    sys.exit(main())
