"""Energy of a load point: the steady window's energy attributed to its tokens and requests.

J per output token = energy above idle in the steady window / output tokens whose chunks
arrived inside it. J per request = J per token x mean output tokens of the answered
requests (an attribution, as ML.ENERGY makes it: a request's own energy cannot be
separated from the batch it ran in). J per good request = J per request x answered /
good requests: work that missed its latency targets is charged to the work that met them.
Whole-run totals (measured phase, ramp-up and tail included) stand beside them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from llem.energy import AdjustedEnergy, EnergyMonitor, MonitorWindow
from llem.serving.steady import STEADY, SteadyWindow


@dataclass(frozen=True)
class WindowEnergy:
    """One window's energy: raw, above idle, and why either is missing."""

    seconds: float | None
    joules: float | None
    above_idle_j: float | None
    unavailable_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_energy(window: MonitorWindow | None, adjusted: AdjustedEnergy | None, reason: str | None = None
                  ) -> WindowEnergy:
    """From the energy layer's window and its baseline-adjusted figure; `reason` when there is no window."""
    if window is None:
        return WindowEnergy(None, None, None, reason or "no energy window was measured")
    above = adjusted.total_j if adjusted is not None else None
    why = None
    if window.total_j is None:
        why = window.unavailable_reason
    elif above is None:
        why = adjusted.unavailable_reason if adjusted is not None else "no idle baseline"
    return WindowEnergy(window.duration_s, window.total_j, above, why)


class MonitorWindows:
    """`WindowHooks` that open and close energy monitor windows at the steady and run boundaries."""

    def __init__(self, monitor: EnergyMonitor, prefix: str = "serving_") -> None:
        self.monitor = monitor
        self.prefix = prefix
        self.windows: dict[str, MonitorWindow] = {}
        self.reasons: dict[str, str] = {}

    def window_started(self, name: str, t: float) -> None:
        self.monitor.begin_window(self.prefix + name)

    def window_ended(self, name: str, t: float) -> None:
        window = self.monitor.end_window(self.prefix + name)
        if math.isnan(t):
            self.reasons[name] = "the load ended before the steady window closed" if name == STEADY else "aborted"
        else:
            self.windows[name] = window


def _div(a: float | None, b: float | int | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def energy_figures(
    steady: SteadyWindow,
    steady_energy: WindowEnergy,
    run_energy: WindowEnergy,
    *,
    completed: int,
    good: int,
    output_tokens: int,
    mean_output_tokens: float | None,
) -> dict[str, Any]:
    """The energy part of the `serving` section; each figure null with a reason when it cannot be given."""
    reason = steady.unavailable_reason or steady_energy.unavailable_reason
    if not steady.output_tokens:
        reason = reason or "no output token arrived inside the steady window"
    j_tok = _div(steady_energy.above_idle_j, steady.output_tokens)
    j_tok_raw = _div(steady_energy.joules, steady.output_tokens)
    j_req = None if j_tok is None or mean_output_tokens is None else j_tok * mean_output_tokens
    j_good = None if j_req is None or good <= 0 else j_req * completed / good
    good_reason = None if j_good is not None or j_req is None else "no request met the latency targets"
    return {
        "j_per_output_token": j_tok,
        "j_per_output_token_raw": j_tok_raw,
        "j_per_request": j_req,
        "j_per_good_request": j_good,
        "steady_energy_j": steady_energy.joules,
        "steady_energy_above_idle_j": steady_energy.above_idle_j,
        "unavailable_reason": reason if j_tok is None else None,
        "good_request_reason": good_reason,
        "run": {
            "seconds": run_energy.seconds,
            "energy_j": run_energy.joules,
            "energy_above_idle_j": run_energy.above_idle_j,
            "output_tokens": output_tokens,
            "j_per_output_token": _div(run_energy.above_idle_j, output_tokens),
            "j_per_output_token_raw": _div(run_energy.joules, output_tokens),
            "unavailable_reason": run_energy.unavailable_reason,
        },
    }
