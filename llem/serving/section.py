"""The `serving` section of result.json, shaped like the offline `latency` section.

It holds the load settings, the latency statistics, the throughputs, the steady window,
the energy figures and the checks of one load point.
"""

from __future__ import annotations

import json
from typing import Any

from llem.config.serving import LoadConfig, SloConfig
from llem.serving.checks import run_checks
from llem.serving.client import LoadRun
from llem.serving.energy import WindowEnergy, energy_figures
from llem.serving.figures import latency_figures, throughput_figures
from llem.serving.steady import SteadyRule, steady_window

NOT_MEASURED = WindowEnergy(None, None, None, "energy was not measured")


def serving_section(
    run: LoadRun,
    rule: SteadyRule,
    *,
    load: LoadConfig,
    slo: SloConfig | None,
    min_steady_seconds: float,
    saturation_fraction: float = 0.8,
    steady_energy: WindowEnergy | None = None,
    run_energy: WindowEnergy | None = None,
) -> dict[str, Any]:
    """Every figure of one load point, computed from the run's records and the windows' energy."""
    steady = steady_window(run.records, rule, run.measured_start_s)
    throughput = throughput_figures(run.records, run.duration_s, slo)
    section: dict[str, Any] = {
        "load": json.loads(load.model_dump_json()),  # an infinite rate as "Infinity", valid JSON
        "slo": slo.model_dump(mode="json") if slo is not None else None,
        "rule": rule.kind,
        "concurrency": rule.concurrency,
        **latency_figures(run.records),
        **throughput,
        "steady": steady.to_dict(),
    }
    section["energy"] = energy_figures(
        steady,
        steady_energy or NOT_MEASURED,
        run_energy or NOT_MEASURED,
        completed=throughput["completed"],
        good=throughput["good_requests"],
        output_tokens=throughput["output_tokens"],
        mean_output_tokens=throughput["mean_output_tokens"],
    )
    section.update(run_checks(run.records, steady, run.metrics, min_steady_seconds=min_steady_seconds,
                              saturation_fraction=saturation_fraction))
    return section
