"""Measure one experiment: baseline -> load -> warmup -> measured window -> result.json.

The order matters: idle power is read before the model occupies the device, warmup
runs full-length prompts so kernels and clocks are warm, and the measured window is
bracketed by device synchronisation so it holds exactly the work it reports.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llem.backends.base import Backend, GenerationOutput, LoadInfo
from llem.config import ExperimentConfig
from llem.config.hashing import config_hash
from llem.energy import (
    BaselineResult,
    DeviceUnavailable,
    EnergyMeter,
    TelemetrySampler,
    adjust_window,
    energy_per_token_j,
    measure_baseline,
    quality_warnings,
    select_meter,
)
from llem.measure import latency
from llem.measure.environment import snapshot
from llem.measure.flops import METHOD as FLOPS_METHOD
from llem.measure.flops import Architecture, total_flops
from llem.measure.result import (
    TIMESERIES_FILENAME,
    Energy,
    ExperimentResult,
    Flops,
    Latency,
    Memory,
    write_result,
)
from llem.measure.session import BackendSession
from llem.prompts.load import Prompt, load_prompts

LATENCY_METHOD = (
    "per-token host timestamps during generation; TTFT and end-to-end from the start of each prompt's batch"
)


class MeasurementError(RuntimeError):
    """The experiment cannot be measured as configured on this machine; the message says why."""


@dataclass
class _Window:
    output: GenerationOutput
    duration_s: float
    energy: Any
    sampler: TelemetrySampler

    @property
    def samples(self) -> int:
        return self.sampler.samples

    @property
    def throttled(self) -> bool:
        return self.sampler.throttled


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _open_meter(experiment: ExperimentConfig, nvml_module: Any = None) -> EnergyMeter:
    e = experiment.energy
    try:
        return select_meter(e.source, e.devices, e.sample_interval_ms / 1000.0, nvml_module=nvml_module)
    except DeviceUnavailable as error:
        raise MeasurementError(f"energy.source={e.source} is not available here: {error}") from None


def _baseline(experiment: ExperimentConfig, meter: EnergyMeter, sleep: Callable[[float], None]) -> tuple[
    BaselineResult | None, str | None
]:
    if not experiment.baseline.enabled:
        return None, "baseline disabled (baseline.enabled=false)"
    if meter.source == "none":
        return None, "no energy source to measure idle power with"
    baseline = measure_baseline(meter, experiment.baseline.duration_seconds, sleep=sleep)
    return baseline, baseline.unavailable_reason


def _campaign_warmup(
    backend: Backend, experiment: ExperimentConfig, prompts: list[Prompt], spec: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A campaign worker's once-per-worker warmup: full-length prompts one by one, within a time limit."""
    if not spec or int(spec.get("prompts", 0)) <= 0:
        return None
    full_length = experiment.model_copy(update={"force_output_length": True})
    limit = float(spec.get("timeout_s") or 0) or None
    start = time.perf_counter()
    done = 0
    for i in range(int(spec["prompts"])):
        if limit is not None and time.perf_counter() - start > limit:
            break
        backend.generate([prompts[i % len(prompts)]], full_length)
        done += 1
    backend.synchronize()
    return {"prompts": done, "duration_s": time.perf_counter() - start, "timed_out": done < int(spec["prompts"])}


def _warmup(backend: Backend, experiment: ExperimentConfig, prompts: list[Prompt]) -> dict[str, Any]:
    n = experiment.warmup.num_prompts
    info: dict[str, Any] = {"prompts": n, "duration_s": None, "thermal_floor_seconds": experiment.warmup.thermal_floor_seconds}
    if n > 0:
        full_length = experiment.model_copy(update={"force_output_length": True})
        chosen = [prompts[i % len(prompts)] for i in range(n)]
        start = time.perf_counter()
        backend.generate(chosen, full_length)
        backend.synchronize()
        info["duration_s"] = time.perf_counter() - start
    if experiment.warmup.thermal_floor_seconds > 0:
        time.sleep(experiment.warmup.thermal_floor_seconds)
    return info


def _measure(backend: Backend, experiment: ExperimentConfig, prompts: list[Prompt], meter: EnergyMeter) -> _Window:
    sampler = TelemetrySampler(meter.nvml_devices, experiment.energy.sample_interval_ms / 1000.0)
    backend.reset_peak_memory()
    sampler.start()
    try:
        backend.synchronize()
        meter.begin_window("measure")
        start = time.perf_counter()
        output = backend.generate(prompts, experiment)
        backend.synchronize()
        duration = time.perf_counter() - start
        energy = meter.end_window("measure")
    finally:
        sampler.stop()
    return _Window(output, duration, energy, sampler)


def _architecture(info: LoadInfo) -> Architecture | None:
    arch = info.settings.get("architecture")
    if not arch or info.parameters is None:
        return None
    return Architecture(
        parameters=info.parameters,
        embedding_parameters=int(arch["embedding_parameters"]),
        num_layers=int(arch["num_layers"]),
        hidden_size=int(arch["hidden_size"]),
    )


def _energy_section(window: _Window, baseline: BaselineResult | None, baseline_reason: str | None, output_tokens: int) -> Energy:
    e = window.energy
    adjusted = adjust_window(e, baseline)
    per_device = {
        key: {
            "total_j": raw,
            "baseline_power_w": None if baseline is None else baseline.per_device_w.get(key),
            "adjusted_j": adjusted.per_device_j.get(key),
        }
        for key, raw in e.per_device.items()
    }
    return Energy(
        source=e.source,
        total_j=e.total_j,
        baseline_power_w=None if baseline is None else baseline.total_w,
        adjusted_j=adjusted.total_j,
        per_output_token_j=energy_per_token_j(adjusted.total_j, output_tokens),
        per_device=per_device,
        polled_total_j=e.polled_total_j,
        baseline_unavailable_reason=baseline_reason,
        unavailable_reason=e.unavailable_reason if e.total_j is None else adjusted.unavailable_reason,
    )


def run_experiment(
    experiment: ExperimentConfig,
    output_dir: Path,
    session: BackendSession,
    *,
    force_cold_start: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    nvml_module: Any = None,
    campaign_warmup: dict[str, Any] | None = None,
) -> ExperimentResult:
    """Measure `experiment` and write result.json (and the telemetry Parquet) into `output_dir`.

    `nvml_module` replaces `pynvml` (tests use a scripted fake); `sleep` paces the baseline;
    `campaign_warmup` ({prompts, timeout_s}) is a campaign worker's once-per-worker warmup.
    """
    output_dir = Path(output_dir)
    started_at = _now()
    meter = _open_meter(experiment, nvml_module)
    try:
        devices = meter.nvml_devices
        gpus = list(devices.describe_all().values()) if devices is not None else []
        persistence = devices.persistence_modes() if devices is not None else None
        will_reuse = session.can_reuse(experiment) and not force_cold_start
        if will_reuse:
            baseline, baseline_reason = None, "model already loaded in this worker; idle baseline not re-measured"
            cached = session.cached_baseline()
            if cached is not None:
                baseline, baseline_reason = cached, None
        else:
            session.release()
            baseline, baseline_reason = _baseline(experiment, meter, sleep)
        backend, load_info, reused = session.acquire(experiment, force_cold_start=force_cold_start)
        if not reused:
            session.remember_baseline(baseline)
        prompts = load_prompts(
            experiment.dataset,
            backend.tokenizer,
            n=experiment.num_input_prompts,
            max_input_tokens=experiment.max_input_tokens,
            seed=experiment.random_seed,
        )
        worker_warmup = _campaign_warmup(backend, experiment, prompts, campaign_warmup)
        warmup_info = _warmup(backend, experiment, prompts)
        if worker_warmup is not None:
            warmup_info["campaign_worker"] = worker_warmup
        window = _measure(backend, experiment, prompts, meter)
    finally:
        meter.close()

    seqs = window.output.sequences
    input_tokens = sum(s.input_tokens for s in seqs)
    output_tokens = sum(s.output_tokens for s in seqs)
    arch = _architecture(load_info)
    flops_total = total_flops(arch, [(s.input_tokens, s.output_tokens) for s in seqs]) if arch else None
    memory = backend.memory_stats()
    sampler = window.sampler
    timeseries = None
    if sampler.rows:
        sampler.to_parquet(output_dir / TIMESERIES_FILENAME)
        timeseries = TIMESERIES_FILENAME
    warnings = quality_warnings(
        window.energy,
        tolerance_pct=experiment.energy.cross_check_tolerance_pct,
        samples=window.samples if devices is not None else None,
        throttled=window.throttled,
        persistence_mode=persistence,
    )
    if experiment.force_output_length and output_tokens != experiment.max_output_tokens * len(seqs):
        warnings.append(
            f"forced output length not honoured: {output_tokens} tokens instead of "
            f"{experiment.max_output_tokens * len(seqs)}"
        )
    result = ExperimentResult(
        experiment_name=experiment.experiment_name,
        config_hash=config_hash(experiment),
        backend=experiment.backend.name,
        model=experiment.model.name,
        fp_precision=experiment.fp_precision,
        config=experiment.model_dump(mode="json"),
        num_prompts=len(seqs),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        duration_s=window.duration_s,
        throughput_tokens_per_s=output_tokens / window.duration_s if window.duration_s > 0 else None,
        requests_per_s=len(seqs) / window.duration_s if window.duration_s > 0 else None,
        latency=Latency(
            ttft_ms=latency.distribution(latency.ttft_ms(seqs)),
            itl_ms=latency.distribution(latency.itl_ms(seqs)),
            e2e_ms=latency.distribution(latency.e2e_ms(seqs)),
            method=LATENCY_METHOD,
        ),
        energy=_energy_section(window, baseline, baseline_reason, output_tokens),
        flops=Flops(
            total=flops_total,
            per_output_token=flops_total / output_tokens if flops_total is not None and output_tokens else None,
            method=FLOPS_METHOD if arch else "unavailable: the backend did not report the model architecture",
        ),
        memory=Memory(
            peak_bytes=memory.get("peak_bytes"),
            reserved_peak_bytes=memory.get("reserved_peak_bytes"),
            model_bytes=load_info.model_bytes,
            method=memory.get("method"),
            unavailable_reason=memory.get("unavailable_reason"),
        ),
        model_load_s=None if reused else load_info.load_s,
        model_reused=reused,
        warmup=warmup_info,
        engine_settings=backend.effective_settings(),
        environment=snapshot(gpus=gpus, libraries=backend.versions()),
        timeseries_file=timeseries,
        started_at=started_at,
        completed_at=_now(),
        warnings=warnings,
    )
    write_result(result, output_dir)
    return result

