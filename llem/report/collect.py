"""Read a campaign (manifest + result.json files) into one flat row per completed job.

The manifest says which jobs exist and how they went; result.json files hold the
numbers. Both can be incomplete — a campaign still running, resumed, or copied without
its `.state/` — so this reads whatever is there, counts what is not a row, and never
turns a missing figure into 0.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llem.measure.result import RESULT_FILENAME, ExperimentResult, read_result
from llem.plan.manifest import CampaignManifest, ManifestJob, read_manifest
from llem.report.validity import verdict_values

MANIFEST_RELPATH = Path(".state") / "campaign_manifest.json"

# Status given to a job whose manifest entry says completed but whose result.json is
# missing or fails validation: it is counted, not turned into a row.
UNREADABLE = "unreadable"


class ReportWarning(UserWarning):
    """A result that could not be used (missing, truncated, foreign schema)."""


class NotACampaign(ValueError):
    """The directory has neither a campaign manifest nor any result.json."""


@dataclass
class Campaign:
    """What was read from one sweep dir."""

    sweep_dir: Path
    name: str
    rows: list[dict[str, Any]]
    param_keys: list[str]  # the swept keys: those whose value differs between jobs
    counts: dict[str, int]
    total: int
    manifest: CampaignManifest | None = None
    problems: list[str] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)  # overrides every job gives the same value


def default_manifest_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / MANIFEST_RELPATH


def _result_files(sweep_dir: Path) -> list[Path]:
    """`result.json` files under the sweep dir, outside hidden dirs (`.state`, `.hydra`)."""
    found = []
    for path in Path(sweep_dir).rglob(RESULT_FILENAME):
        if not any(part.startswith(".") for part in path.relative_to(sweep_dir).parts[:-1]):
            found.append(path)
    return sorted(found, key=_job_sort_key)


def _job_sort_key(path: Path) -> tuple[int, int, str]:
    name = path.parent.name
    return (0, int(name), str(path)) if name.isdigit() else (1, 0, str(path))


def is_campaign(sweep_dir: Path, manifest_path: Path | None = None) -> bool:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return False
    if Path(manifest_path or default_manifest_path(sweep_dir)).is_file():
        return True
    return bool(_result_files(sweep_dir))


def metric_values(result: ExperimentResult) -> dict[str, Any]:
    """The headline figures of one result, flat; None stays None."""
    lat, energy, mem = result.latency, result.energy, result.memory
    prefill, decode = result.prefill, result.decode
    return {
        "model_name": result.model,
        "energy_source": energy.source,
        "energy_total_j": energy.total_j,
        "energy_adjusted_j": energy.adjusted_j,
        "energy_per_output_token_j": energy.per_output_token_j,
        "energy_unavailable_reason": energy.unavailable_reason,
        "energy_scope": "+".join(energy.scope.get("measured", energy.scope.get("included", []))) or "none",
        "energy_gpu_j": _component_j(result, "gpu"),
        "energy_cpu_j": _component_j(result, "cpu"),
        "energy_dram_j": _component_j(result, "dram"),
        "passes": result.passes,
        "throughput_tokens_per_s": result.throughput_tokens_per_s,
        "requests_per_s": result.requests_per_s,
        "output_tokens": result.output_tokens,
        "duration_s": result.duration_s,
        "ttft_ms_p50": lat.ttft_ms.p50,
        "ttft_ms_p95": lat.ttft_ms.p95,
        "ttft_ms_p99": lat.ttft_ms.p99,
        "itl_ms_p50": lat.itl_ms.p50,
        "itl_ms_p95": lat.itl_ms.p95,
        "itl_ms_p99": lat.itl_ms.p99,
        "queue_ms_p50": lat.queue_ms.p50,
        "prefill_ms_p50": lat.prefill_ms.p50,
        "prefill_energy_per_token_j": None if prefill is None else prefill.per_token_j,
        "decode_energy_per_token_j": None if decode is None else decode.per_token_j,
        "prefill_tokens_per_s": None if prefill is None else prefill.tokens_per_s,
        "decode_tokens_per_s": None if decode is None else decode.tokens_per_s,
        "flops_total": result.flops.total,
        "flops_per_output_token": result.flops.per_output_token,
        "memory_weights_bytes": mem.weights_bytes,
        "memory_weights_kv_peak_bytes": mem.weights_kv_peak_bytes,
        "memory_peak_allocated_bytes": mem.peak_allocated_bytes,
        "memory_reserved_bytes": mem.reserved_bytes,
        "model_reused": result.model_reused,
        "warnings_count": len(result.warnings),
        **_serving_values(result.serving),
    }


def _serving_values(s: dict[str, Any] | None) -> dict[str, Any]:
    """The serving section's headline figures; all None for an offline result."""
    s = s or {}
    ttft, tpot = s.get("ttft_ms") or {}, s.get("tpot_ms") or {}
    energy, steady = s.get("energy") or {}, s.get("steady") or {}
    return {
        "serving_ttft_ms_p50": ttft.get("p50"),
        "serving_ttft_ms_p99": ttft.get("p99"),
        "serving_tpot_ms_p50": tpot.get("p50"),
        "serving_tpot_ms_p99": tpot.get("p99"),
        "serving_output_tokens_per_s": s.get("output_tokens_per_s"),
        "serving_requests_per_s": s.get("requests_per_s"),
        "serving_goodput_rps": s.get("goodput_rps"),
        "serving_steady_s": steady.get("seconds"),
        "serving_j_per_output_token": energy.get("j_per_output_token"),
        "serving_j_per_request": energy.get("j_per_request"),
        "serving_valid": s.get("valid"),
    }


def _component_j(result: ExperimentResult, name: str) -> float | None:
    component = result.energy.components.get(name)
    return None if component is None else component.total_j


def _load(path: Path, problems: list[str]) -> ExperimentResult | None:
    try:
        return read_result(path)
    except FileNotFoundError:
        message = f"{path}: result.json is missing; job not included"
    except (ValidationError, ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"{path}: not a valid result.json ({first}); skipped"
    problems.append(message)
    warnings.warn(message, ReportWarning, stacklevel=3)
    return None


def _job_result_path(sweep_dir: Path, recorded_root: Path, job: ManifestJob) -> Path:
    """Where the job's result lives now. Paths recorded under the manifest's sweep dir are
    re-rooted onto `sweep_dir`, so a moved or copied campaign reads its own files; with no
    usable recorded path, `<sweep_dir>/<job_num>/result.json`."""
    fallback = sweep_dir / str(job.job_num) / RESULT_FILENAME
    if not job.result_path:
        return fallback
    recorded = Path(job.result_path)
    if not recorded.is_absolute():
        recorded = sweep_dir / recorded
    elif recorded.is_relative_to(recorded_root):
        recorded = sweep_dir / recorded.relative_to(recorded_root)
    if recorded.is_dir():
        recorded = recorded / RESULT_FILENAME
    return recorded if recorded.is_file() or not fallback.is_file() else fallback


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _split_keys(swept: list[str], jobs_params: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The swept keys (the manifest's, and any other whose value, or presence, differs between jobs) and
    the fixed settings: keys every job sets to the same value, which tell no configuration apart."""
    keys = list(dict.fromkeys(swept))
    for params in jobs_params:
        keys.extend(k for k in params if k not in keys)
    absent = object()
    varying, fixed = [], {}
    for key in keys:
        values = {json.dumps(p.get(key, absent), sort_keys=True, default=repr) for p in jobs_params}
        if key in swept or len(values) > 1:
            varying.append(key)
        elif jobs_params:
            fixed[key] = jobs_params[0][key]
    return varying, fixed


def _from_manifest(sweep_dir: Path, manifest: CampaignManifest) -> Campaign:
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    counts: dict[str, int] = defaultdict(int)
    for job in sorted(manifest.jobs, key=lambda j: j.job_num):
        if job.status != "completed":
            counts[job.status] += 1
            continue
        path = _job_result_path(sweep_dir, Path(manifest.sweep_dir), job)
        result = _load(path, problems)
        if result is not None and job.config_hash and result.config_hash != job.config_hash:
            message = (
                f"{path}: config_hash {result.config_hash} does not match job {job.job_num}'s "
                f"{job.config_hash} in the manifest; skipped"
            )
            problems.append(message)
            warnings.warn(message, ReportWarning, stacklevel=2)
            result = None
        if result is None:
            counts[UNREADABLE] += 1
            continue
        counts["completed"] += 1
        rows.append(
            {
                "job_num": job.job_num,
                "cycle": job.cycle,
                "repetition": job.repetition,
                "backend": job.backend or result.backend,
                "config_hash": result.config_hash,
                "params": dict(job.params),
                **metric_values(result),
                **verdict_values(path, result),
                "result_path": _relative(path, sweep_dir),
            }
        )
    keys, fixed = _split_keys(manifest.swept_keys, [job.params for job in manifest.jobs])
    return Campaign(
        sweep_dir=sweep_dir,
        name=manifest.campaign_name or sweep_dir.name,
        rows=rows,
        param_keys=keys,
        counts=dict(counts),
        total=len(manifest.jobs),
        manifest=manifest,
        problems=problems,
        fixed=fixed,
    )


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted config keys whose value differs between results: the swept ones, as far as files tell."""
    keys: list[str] = []
    for config in configs:
        keys.extend(k for k in config if k not in keys)
    varying = []
    for key in keys:
        seen = {json.dumps(config.get(key), sort_keys=True, default=str) for config in configs}
        if len(seen) > 1:
            varying.append(key)
    return varying


def _from_files(sweep_dir: Path) -> Campaign:
    """No manifest: every readable result.json is a completed job; cycles follow start time per config."""
    problems: list[str] = []
    found = _result_files(sweep_dir)
    loaded = [(path, _load(path, problems)) for path in found]
    results = [(path, result) for path, result in loaded if result is not None]
    flat = [_flatten(result.config) for _, result in results]
    keys = [k for k in _varying_keys(flat) if k != "backend.name"]
    cycles: dict[str, int] = defaultdict(int)
    by_start = sorted(range(len(results)), key=lambda i: (results[i][1].started_at, i))
    cycle_of: dict[int, int] = {}
    for i in by_start:
        config_hash = results[i][1].config_hash
        cycle_of[i] = cycles[config_hash]
        cycles[config_hash] += 1
    rows = []
    for i, (path, result) in enumerate(results):
        name = path.parent.name
        rows.append(
            {
                "job_num": int(name) if name.isdigit() else None,
                "cycle": cycle_of[i],
                "repetition": 0,
                "backend": result.backend,
                "config_hash": result.config_hash,
                "params": {k: flat[i].get(k) for k in keys},
                **metric_values(result),
                **verdict_values(path, result),
                "result_path": _relative(path, sweep_dir),
            }
        )
    counts = {"completed": len(results)}
    if len(results) < len(found):
        counts[UNREADABLE] = len(found) - len(results)
    return Campaign(
        sweep_dir=sweep_dir,
        name=sweep_dir.name,
        rows=rows,
        param_keys=keys,
        counts=counts,
        total=len(found),
        problems=problems,
    )


def collect(sweep_dir: Path, manifest_path: Path | None = None) -> Campaign:
    """Read one sweep dir; raises NotACampaign when it has no manifest and no result.json."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise NotACampaign(f"{sweep_dir} is not a directory")
    path = Path(manifest_path) if manifest_path is not None else default_manifest_path(sweep_dir)
    bad_manifest: str | None = None
    if path.is_file():
        try:
            manifest = read_manifest(path)
        except (ValidationError, ValueError) as error:
            bad_manifest = (
                f"{path} is not a valid campaign manifest ({type(error).__name__}); read result.json files only"
            )
        else:
            return _from_manifest(sweep_dir, manifest)
    elif manifest_path is not None:
        raise NotACampaign(f"manifest {path} does not exist")
    if not _result_files(sweep_dir):
        raise NotACampaign(
            f"{sweep_dir} is not a campaign: no valid {MANIFEST_RELPATH} and no */{RESULT_FILENAME} under it"
        )
    if bad_manifest:
        warnings.warn(bad_manifest, ReportWarning, stacklevel=2)
    campaign = _from_files(sweep_dir)
    if bad_manifest:
        campaign.problems.insert(0, bad_manifest)
    return campaign
