"""The verdict on one result: `pass`, `warn` or `fail`, with the rules that decided it.

Free-text warnings tell a person what went wrong; a verdict lets a report, a frontier or
a target leave out figures that cannot be trusted. Every rule is one row of `RULES`, so
the rules are written once: the harness judges a result as it is built, the report
re-judges an existing result.json (and the telemetry beside it) with the same table, and
docs/validity.md is generated from it (`python -m llem.measure.verdict > docs/validity.md`).

Rules read the result as plain JSON (`ExperimentResult.model_dump(mode="json")`), so a
result written by an older llem can be judged too; a rule whose inputs the result does
not hold does not apply, and says nothing.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PASS, WARN, FAIL = "pass", "warn", "fail"
Status = Literal["pass", "warn", "fail"]

MIN_WINDOW_S = 5.0
MIN_UPDATE_PERIODS = 100
CROSS_CHECK_PCT = 5.0
MIN_SAMPLE_COVERAGE = 0.9
MAX_SAMPLE_GAP_INTERVALS = 10
POWER_TOLERANCE_W = 1.0
_ROUNDING = 1e-9


class VerdictReason(BaseModel):
    """One rule that tripped: its name, what was measured and the limit it broke."""

    model_config = ConfigDict(extra="forbid")

    rule: str
    status: Literal["warn", "fail"]
    value: Any = Field(description="The measured value (a number where there is one).")
    limit: Any = Field(description="The limit the value broke.")
    detail: str = Field(description="One line a person can act on.")


class Verdict(BaseModel):
    """`fail`: a figure is wrong or missing; `warn`: usable with care; `pass`: no rule tripped."""

    model_config = ConfigDict(extra="forbid")

    status: Status
    reasons: list[VerdictReason] = Field(default_factory=list)


@dataclass(frozen=True)
class Telemetry:
    """What the power sampler saw over the window, per the worst device (from its rows or timeseries.parquet)."""

    samples: int
    span_s: float  # first to last sample
    max_gap_s: float
    interval_s: float | None
    throttle_thermal: bool
    throttle_power: bool

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], interval_s: float | None) -> Telemetry:
        by_device: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_device.setdefault(str(row.get("device")), []).append(row)
        samples, span, gap = 0, 0.0, 0.0
        thermal = power = False
        first = True
        for device_rows in by_device.values():
            times = sorted(
                float(r["t_s"]) for r in device_rows if r.get("t_s") is not None and r.get("power_w") is not None
            )
            n = len(times)
            s = times[-1] - times[0] if n > 1 else 0.0
            g = max((b - a for a, b in zip(times, times[1:])), default=0.0)
            samples, span, gap = (n, s, g) if first else (min(samples, n), min(span, s), max(gap, g))
            first = False
            thermal = thermal or any(bool(r.get("throttle_thermal")) for r in device_rows)
            power = power or any(bool(r.get("throttle_power")) for r in device_rows)
        return cls(samples, span, gap, interval_s, thermal, power)

    @classmethod
    def from_parquet(cls, path: Path, interval_s: float | None) -> Telemetry:
        import pandas as pd

        frame = pd.read_parquet(path)
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        return cls.from_rows(rows, interval_s)


@dataclass(frozen=True)
class Evidence:
    """What the rules read: the result as JSON and, where recorded, the window's telemetry."""

    result: Mapping[str, Any]
    telemetry: Telemetry | None = None

    def get(self, *path: str) -> Any:
        node: Any = self.result
        for key in path:
            if not isinstance(node, Mapping):
                return None
            node = node.get(key)
        return node


Trip = tuple[Any, Any, str]  # value, limit, detail
Check = Callable[[Evidence], list[Trip]]


@dataclass(frozen=True)
class Rule:
    name: str
    status: Literal["warn", "fail"]
    checks: str  # what the rule looks at, for the docs
    limit: str
    why: str
    check: Check


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(float(value)) else float(value)


def _gpu_measured(ev: Evidence) -> bool:
    gpu = ev.get("energy", "components", "gpu")
    return isinstance(gpu, Mapping) and _num(gpu.get("total_j")) is not None


# ---------------------------------------------------------------------------- the rules


def _energy_unreadable(ev: Evidence) -> list[Trip]:
    quality = ev.get("quality")
    if not isinstance(quality, Mapping):
        return []
    failures = list(quality.get("failures") or [])
    if quality.get("status") != "fail" and not failures:
        return []
    detail = "; ".join(failures) or "the result's quality is `fail`"
    return [("unreadable", "every device in the energy scope read", detail)]


def _window_short(ev: Evidence) -> list[Trip]:
    duration = _num(ev.get("duration_s"))
    if duration is None or _num(ev.get("energy", "total_j")) is None:
        return []
    periods = {k: p for k, v in (ev.get("energy", "update_periods_s") or {}).items() if (p := _num(v))}
    limit = MIN_WINDOW_S
    where = f"{MIN_WINDOW_S:g} s"
    if periods:
        device, period = max(periods.items(), key=lambda kv: kv[1])
        if MIN_UPDATE_PERIODS * period > limit:
            limit = MIN_UPDATE_PERIODS * period
            where = f"{MIN_UPDATE_PERIODS} update periods of {period * 1000:.1f} ms on {device}"
    if duration >= limit:
        return []
    return [(round(duration, 4), round(limit, 4), f"window of {duration:.3f} s is shorter than {where}; measure "
             "more prompts or set measure.min_window_seconds")]


def _counter_polled(ev: Evidence) -> list[Trip]:
    gpu = ev.get("energy", "components", "gpu")
    if not isinstance(gpu, Mapping):
        return []
    counter, polled = _num(gpu.get("total_j")), _num(gpu.get("polled_j"))
    if counter is None or polled is None or counter <= 0:
        return []
    diff = abs(counter - polled) / counter * 100.0
    if diff <= CROSS_CHECK_PCT:
        return []
    source = gpu.get("polled_source") or "polled"
    return [(round(diff, 2), CROSS_CHECK_PCT, f"GPU energy counter {counter:.1f} J and integrated {source} power "
             f"{polled:.1f} J differ by {diff:.1f} %")]


def _below_idle(ev: Evidence) -> list[Trip]:
    duration = _num(ev.get("duration_s"))
    if duration is None:
        return []
    out: list[Trip] = []
    for name, comp in (ev.get("energy", "components") or {}).items():
        if not isinstance(comp, Mapping):
            continue
        raw, idle_w = _num(comp.get("total_j")), _num(comp.get("baseline_power_w"))
        if raw is None or idle_w is None:
            continue
        idle = idle_w * duration
        if idle - raw > _ROUNDING * max(abs(raw), abs(idle)):
            out.append((round(raw, 3), round(idle, 3), f"{name}: {raw:.2f} J in the window is below idle "
                        f"({idle_w:.2f} W x {duration:.3f} s = {idle:.2f} J); the baseline was not idle power"))
    return out


def _throttled(ev: Evidence) -> list[Trip]:
    t = ev.telemetry
    if t is not None:
        kinds = [k for k, seen in (("thermal", t.throttle_thermal), ("power", t.throttle_power)) if seen]
    else:  # no telemetry at hand: what the harness noted
        kinds = ["thermal"] if any("throttling was seen" in str(w) for w in ev.get("warnings") or []) else []
    if not kinds:
        return []
    return [("+".join(kinds), "none", f"{' and '.join(kinds)} throttling was seen in the window; clocks and "
             "energy reflect a capped device")]


def _samples_cover(ev: Evidence) -> list[Trip]:
    duration = _num(ev.get("duration_s"))
    if duration is None or duration <= 0 or not _gpu_measured(ev):
        return []
    t = ev.telemetry
    if t is None or t.samples == 0:
        return [(0, f"{MIN_SAMPLE_COVERAGE:.0%} of the window", "no power samples were recorded over the window")]
    out: list[Trip] = []
    coverage = t.span_s / duration
    if coverage < MIN_SAMPLE_COVERAGE:
        out.append((round(coverage, 3), MIN_SAMPLE_COVERAGE, f"power samples span {t.span_s:.3f} s of the "
                    f"{duration:.3f} s window ({coverage:.0%})"))
    if t.interval_s:
        max_gap = max(MAX_SAMPLE_GAP_INTERVALS * t.interval_s, 0.0)
        if t.max_gap_s > max_gap:
            out.append((round(t.max_gap_s, 3), round(max_gap, 3), f"a {t.max_gap_s:.3f} s gap between power samples "
                        f"(more than {MAX_SAMPLE_GAP_INTERVALS} sample intervals)"))
    return out


def _baseline_state(ev: Evidence) -> list[Trip]:
    baseline = ev.get("energy", "baseline")
    reused = ev.get("model_reused")
    if not isinstance(baseline, Mapping) or not isinstance(reused, bool):
        return []
    state = (baseline.get("device_state") or {}).get("model")
    if not isinstance(state, str):
        return []
    baseline_loaded = not state.startswith("none")
    if baseline_loaded == reused:
        return []
    job = "warm: the model was resident" if reused else "cold: no model was loaded"
    return [(state, "the job's own device state", f"the idle baseline was taken with {state!r}, but the job's worker "
             f"was {job}; energy above idle is not comparable with jobs whose baseline matches")]


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _baseline_age(ev: Evidence) -> float | None:
    """Seconds since the baseline's full measurement when the job took it: `energy.baseline.age_s` as the harness
    records it (0 for one measured for this job), else the difference of a recorded `measured_at` and `started_at`."""
    age = _num(ev.get("energy", "baseline", "age_s"))
    if age is not None:
        return age
    measured = _parse_time(ev.get("energy", "baseline", "measured_at") or ev.get("energy", "baseline", "device_state",
                                                                                 "measured_at"))
    started = _parse_time(ev.get("started_at"))
    return None if measured is None or started is None else (started - measured).total_seconds()


def _baseline_stale(ev: Evidence) -> list[Trip]:
    max_age = _num(ev.get("config", "baseline", "max_age_seconds"))
    age = _baseline_age(ev)
    if max_age is None or age is None or age <= max_age:
        return []
    return [(round(age, 1), max_age, f"the idle baseline was {age:.0f} s old when the job took it "
             f"(baseline.max_age_seconds = {max_age:g}); measure it again (baseline.strategy=fresh or a shorter "
             "baseline.cache_ttl_seconds)")]


def _output_tokens(ev: Evidence) -> list[Trip]:
    config = ev.get("config") or {}
    asked, prompts, got = config.get("max_output_tokens"), ev.get("num_prompts"), ev.get("output_tokens")
    if not config.get("force_output_length") or not all(isinstance(v, int) for v in (asked, prompts, got)):
        return []
    expected = asked * prompts
    if got == expected:
        return []
    return [(got, expected, f"{got} output tokens generated, {expected} asked ({prompts} prompts x {asked}); "
             "the engine did not honour the forced length")]


def _range(applied: Any) -> tuple[float, float] | None:
    if isinstance(applied, list) and len(applied) == 2 and all(_num(v) is not None for v in applied):
        return float(min(applied)), float(max(applied))
    value = _num(applied)
    return None if value is None else (value, value)


def _gpu_settings(ev: Evidence) -> list[Trip]:
    """Per GPU and knob (`power_limit_w`, `sm_clock_mhz`, `mem_clock_mhz`): effective against what was set."""
    settings = ev.get("gpu_settings")
    if not isinstance(settings, Mapping):
        return []
    out: list[Trip] = []
    for gpu, entry in settings.items():
        if not isinstance(entry, Mapping):
            continue
        for knob in ("power_limit_w", "sm_clock_mhz", "mem_clock_mhz"):
            k = entry.get(knob)
            if not isinstance(k, Mapping):
                continue
            requested, applied, effective = k.get("requested"), k.get("applied", k.get("requested")), k.get("effective")
            span = _range(applied)
            if span is None:
                continue
            tolerance = POWER_TOLERANCE_W if knob == "power_limit_w" else 0.0
            value = _num(effective)
            if value is None:
                out.append((None, applied, f"{gpu}: {knob} could not be read back (requested {requested})"))
            elif not span[0] - tolerance <= value <= span[1] + tolerance:
                out.append((value, applied, f"{gpu}: {knob} was {value:g} in effect, {applied} set "
                            f"(requested {requested})"))
    return out


def _serving_checks(ev: Evidence) -> list[Trip]:
    """A serving load point's own checks (`serving.checks`): each one that failed (unknown is not a failure)."""
    checks = ev.get("serving", "checks")
    if not isinstance(checks, Mapping):
        return []
    out: list[Trip] = []
    for name, check in checks.items():
        if isinstance(check, Mapping) and check.get("passed") is False:
            out.append((check.get("value"), check.get("required"), f"{name}: {check.get('reason') or 'failed'}"))
    return out


RULES: tuple[Rule, ...] = (
    Rule("energy_unreadable", FAIL, "`quality.status` and `quality.failures`", "every device in the job's energy "
         "scope read", "A GPU the job runs on could not be read: its energy is null, and any other total would "
         "pass for the job's.", _energy_unreadable),
    Rule("energy_below_idle", FAIL, "each component's `total_j` against `baseline_power_w` x `duration_s`",
         "energy in the window ≥ idle power x window", "Less energy than idle over the same time means the "
         "baseline was not idle power for this window.", _below_idle),
    Rule("serving_check_failed", FAIL, "`serving.checks` of a serving load point (steady window, batch "
         "saturation, all answered, token counts)", "every check passed (see serving.md)", "A load point whose "
         "steady window was too short, whose batch never filled or whose requests failed did not measure the "
         "load it names.", _serving_checks),
    Rule("window_short", WARN, "`duration_s` against `energy.update_periods_s`", f"max({MIN_WINDOW_S:g} s, "
         f"{MIN_UPDATE_PERIODS} measured counter update periods)", "Each edge of the window carries up to one "
         "update period of error; 100 periods keep it near 1 %.", _window_short),
    Rule("counter_polled_disagree", WARN, "`energy.components.gpu.total_j` against `polled_j`", f"within "
         f"{CROSS_CHECK_PCT:g} % of the counter", "Two independent readings of the same energy should agree; a "
         "larger gap means one of them is wrong for this device or window.", _counter_polled),
    Rule("throttled", WARN, "`throttle_thermal` and `throttle_power` in timeseries.parquet", "no throttling in "
         "the window", "A throttled device runs at capped clocks: its figures describe the cap, not the "
         "configuration.", _throttled),
    Rule("samples_cover_window", WARN, "power samples in timeseries.parquet against `duration_s`",
         f"samples span ≥ {MIN_SAMPLE_COVERAGE:.0%} of the window, no gap over {MAX_SAMPLE_GAP_INTERVALS} sample "
         "intervals", "The telemetry that explains a figure (and the polled cross-check) must cover the window "
         "it explains.", _samples_cover),
    Rule("baseline_state_differs", WARN, "`energy.baseline.device_state.model` against `model_reused`",
         "baseline taken in the job's device state (no model for a cold worker, the model resident for a warm "
         "one)", "A resident model draws power at idle; a baseline from the other state moves energy above idle "
         "by that difference.", _baseline_state),
    Rule("baseline_stale", WARN, "`energy.baseline.age_s` (seconds since the reused baseline was measured in full) "
         "against `config.baseline.max_age_seconds`", "age ≤ `baseline.max_age_seconds` (default 3600 s, the "
         "default reuse limit `cache_ttl_seconds`)", "Idle power drifts with room and device temperature; a "
         "baseline reused for longer (a raised `cache_ttl_seconds`) may no longer be idle power. Applies where the "
         "result records both.", _baseline_stale),
    Rule("output_tokens_differ", WARN, "`output_tokens` against `max_output_tokens` x `num_prompts` when "
         "`force_output_length`", "exactly as asked", "Energy per token compares configurations only when they "
         "did the same work.", _output_tokens),
    Rule("gpu_settings_differ", WARN, "`gpu_settings.<gpu>.<knob>.effective` against `applied` (power limit, "
         "SM and memory clocks)", f"power limit within {POWER_TOLERANCE_W:g} W, clocks inside the locked range",
         "A power limit or clock that did not take effect measures another setting than the one named.", _gpu_settings),
)


def judge(result: Mapping[str, Any], telemetry: Telemetry | None = None, rules: Iterable[Rule] = RULES) -> Verdict:
    """Apply every rule to `result` (result.json as JSON) and the window's `telemetry`."""
    ev = Evidence(result, telemetry)
    reasons = [
        VerdictReason(rule=rule.name, status=rule.status, value=value, limit=limit, detail=detail)
        for rule in rules
        for value, limit, detail in rule.check(ev)
    ]
    status: Status = FAIL if any(r.status == FAIL for r in reasons) else WARN if reasons else PASS
    return Verdict(status=status, reasons=reasons)


def judge_file(result_path: Path, result: Mapping[str, Any] | None = None) -> Verdict:
    """Re-judge an existing result.json, with the timeseries.parquet it names where that is readable."""
    import json

    path = Path(result_path)
    data = dict(result) if result is not None else json.loads(path.read_text())
    telemetry = None
    name = data.get("timeseries_file")
    interval_ms = _num((data.get("config") or {}).get("energy", {}).get("sample_interval_ms"))
    if isinstance(name, str) and (path.parent / name).is_file():
        try:
            telemetry = Telemetry.from_parquet(path.parent / name, None if interval_ms is None else interval_ms / 1000)
        except (OSError, ValueError, KeyError):
            telemetry = None
    return judge(data, telemetry)


def reasons_text(verdict: Verdict) -> str:
    """The reasons on one line, for a summary cell: `rule (value vs limit)` joined by `; `."""
    return "; ".join(f"{r.rule} ({r.value} vs {r.limit})" for r in verdict.reasons)


def validity_markdown(rules: Iterable[Rule] = RULES) -> str:
    """docs/validity.md, generated from `RULES`."""
    lines = [
        "# Validity: the verdict on every result",
        "",
        "<!-- Generated from llem/measure/verdict.py by `python -m llem.measure.verdict > docs/validity.md`; "
        "do not edit by hand. -->",
        "",
        "Every result.json carries a `verdict`: `status` is `pass`, `warn` or `fail`, and `reasons` lists each "
        "rule that tripped with its name (`rule`), the measured `value`, the `limit` it broke and a `detail` line. "
        "`fail` wins over `warn`. The report re-judges every result.json with the same rules (reading the "
        "timeseries.parquet beside it), shows a badge per job and a table of the reasons, and leaves `fail` "
        "results out of frontiers and targets. A rule whose inputs a result does not hold does not apply.",
        "",
        "| Rule | Verdict | Reads | Limit | Why |",
        "|---|---|---|---|---|",
    ]
    for rule in rules:
        lines.append(f"| `{rule.name}` | `{rule.status}` | {rule.checks} | {rule.limit} | {rule.why} |")
    lines += [
        "",
        "Statistics across cycles add two group-level checks (see [results-guide.md](results-guide.md)): runs "
        "whose energy scope differs (for example `gpu+cpu+dram` in one cycle, `gpu` in another) are not pooled "
        "for energy figures, and a group whose coefficient of variation exceeds `--cv-threshold` gets `warn`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(validity_markdown())
