"""A stable identity for a resolved experiment config (same settings, same hash, any key order)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace variation, so equal configs serialise identically."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the config's canonical JSON (defaults filled in)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    data = _without_unset_gpu(data)
    data = _without_later_defaults(data)
    data = _without_offline_scenario(data)
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


def _without_unset_gpu(data: Any) -> Any:
    """Leave an unset `gpu` section out, so configs written before it existed keep their hash (and resume)."""
    gpu = data.get("gpu") if isinstance(data, dict) else None
    if isinstance(gpu, dict) and all(gpu.get(k) is None for k in ("power_limit_w", "sm_clock_mhz", "mem_clock_mhz")):
        return {k: v for k, v in data.items() if k != "gpu"}
    return data


# Settings added after configs were first hashed: left out while at their default, so a config that does not use
# them keeps the hash it had before they existed (and a campaign planned then still resumes).
LATER_DEFAULTS: dict[str, dict[str, Any]] = {
    "warmup": {"mode": "fixed", "cv_threshold": 0.05, "window": 3, "min_batches": 3, "max_batches": 20},
    "baseline": {"strategy": "validated", "cache_ttl_seconds": 3600.0, "validation_interval": 5,
                 "validation_duration_seconds": 3.0, "drift_threshold": 0.1,
                 "max_age_seconds": 3600.0},
}


def _without_later_defaults(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for section, defaults in LATER_DEFAULTS.items():
        values = out.get(section)
        if isinstance(values, dict):
            out[section] = {k: v for k, v in values.items() if not (k in defaults and v == defaults[k])}
    return out


def _without_offline_scenario(data: Any) -> Any:
    """Leave out the scenario keys of an offline experiment, so configs from before scenarios existed keep their hash."""
    if not isinstance(data, dict) or data.get("scenario", "offline") != "offline":
        return data
    return {k: v for k, v in data.items() if not (k == "scenario" or (k in ("load", "serving", "slo") and v is None))}
