"""Synthetic campaigns on disk: valid result.json files with chosen energy and latency figures.

This machine measures no energy, so campaigns with energy are written from a real
result taken as a template (the tiny model's), with the figures replaced.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np


def write_campaign(
    template: dict[str, Any],
    out: Path,
    configs: dict[int, dict[str, float]],
    *,
    cycles: int = 4,
    noise: float = 0.01,
    seed: int = 0,
    energy_scale: float = 1.0,
    fail_jobs: tuple[int, ...] = (),
) -> Path:
    """One result.json per (config, cycle) under `out/<job>/`; configs: batch size -> {energy, ttft, itl, tps}.

    Energy is a CPU (RAPL) component, so no GPU telemetry rule applies; a job in `fail_jobs` gets an idle
    baseline above its energy (verdict fail).
    """
    rng = np.random.default_rng(seed)
    job = 0
    for cycle in range(cycles):
        for batch, figures in configs.items():
            r = copy.deepcopy(template)
            r["config"]["backend"]["batch_size"] = batch
            r["config_hash"] = f"synthetic{batch:07d}"
            r["duration_s"] = 30.0
            r["started_at"] = f"2026-01-01T00:{job:02d}:00+00:00"
            e = figures["energy"] * energy_scale * (1 + noise * rng.standard_normal())
            tokens = r["output_tokens"]
            adjusted = e * tokens
            base_w = 10.0
            total = adjusted + base_w * 30.0
            if job in fail_jobs:
                base_w = total / 30.0 * 2
            r["energy"].update(
                source="rapl", total_j=total, baseline_power_w=base_w, adjusted_j=adjusted, per_output_token_j=e,
                components={"gpu": None, "dram": None, "cpu": {
                    "source": "rapl", "devices": ["package-0"], "total_j": total, "baseline_power_w": base_w,
                    "adjusted_j": adjusted, "per_device": {"package-0": total}}},
                scope={"included": ["cpu"], "measured": ["cpu"]}, unavailable_reason=None, update_periods_s={},
                baseline={"device_state": {"model": "none loaded"}}, baseline_unavailable_reason=None,
            )  # fmt: skip
            r["model_reused"] = False
            r["timeseries_file"] = None
            lat = r["latency"]
            for name, key in (("ttft_ms", "ttft"), ("itl_ms", "itl")):
                value = figures[key] * (1 + noise * rng.standard_normal())
                lat[name].update(p50=value, p95=value * 1.2, p99=value * 1.3, mean=value)
            lat["e2e_ms"].update(p50=figures["ttft"] * 5, p99=figures["ttft"] * 7)
            r["throughput_tokens_per_s"] = figures["tps"] * (1 + noise * rng.standard_normal())
            r["verdict"] = None
            (out / str(job)).mkdir(parents=True, exist_ok=True)
            (out / str(job) / "result.json").write_text(json.dumps(r))
            job += 1
    return out


CONFIGS = {
    1: {"energy": 0.80, "ttft": 20.0, "itl": 10.0, "tps": 100.0},
    4: {"energy": 0.30, "ttft": 40.0, "itl": 15.0, "tps": 350.0},
    16: {"energy": 0.10, "ttft": 150.0, "itl": 60.0, "tps": 900.0},
}
