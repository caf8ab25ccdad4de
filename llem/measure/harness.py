"""Measure one experiment: baseline -> load -> warmup -> measured window -> result.json.

The order matters: idle power is read before the model occupies the devices (after a settle
time), warmup runs one full pass of the measured batching so every shape is compiled and
cached, and the measured window repeats whole passes until it is long enough for the energy
counter, bracketed by device synchronisation so it holds exactly the work it reports. A
prefill-only window follows, so prefill and decode can be told apart.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, Callable

from llem.backends.base import Backend, LoadInfo
from llem.config import ExperimentConfig
from llem.energy import (
    BaselineResult,
    DeviceUnavailable,
    EnergyMonitor,
    TelemetrySampler,
    adjust_window,
    energy_per_token_j,
    measure_baseline,
    open_monitor,
    quality_failures,
    quality_status,
    quality_warnings,
    visible_gpu_count,
    with_unmeasured_component,
)
from llem.energy.baseline_strategy import acquire as acquire_baseline
from llem.energy.baseline_strategy import cache_for as baseline_cache_for
from llem.energy.monitor import NO_GPU_REASON
from llem.measure import latency
from llem.measure.environment import snapshot
from llem.measure.flops import METHOD as FLOPS_METHOD
from llem.measure.flops import NO_KV_CACHE_METHOD
from llem.measure.flops import Architecture, total_flops
from llem.measure.job_devices import job_gpus, torch_cuda_device_count
from llem.measure.gpu_settings import GpuSettingsError
from llem.measure.gpu_settings import apply_for_job as apply_gpu_settings
from llem.measure.phases import WindowFigures, split_phases
from llem.measure.result import (
    TIMESERIES_FILENAME,
    experiment_fields,
    judge_and_write,
    Energy,
    EnergyComponent,
    ExperimentResult,
    Flops,
    Latency,
    Memory,
    Quality,
)
from llem.measure.session import BackendSession
from llem.measure.verdict import Telemetry
from llem.measure.warmup import converged_warmup, warmup_warnings
from llem.measure.window import Window, run_window
from llem.prompts.load import Prompt, load_prompts

LATENCY_METHOD = (
    "per-token host timestamps; every prompt arrives at the start of its pass of the window (offline mode), "
    "scheduled = when the engine first took the prompt up"
)
GPU_MIN_WINDOW_S = 10.0


class MeasurementError(RuntimeError):
    """The experiment cannot be measured as configured on this machine; the message says why."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _open_monitor(experiment: ExperimentConfig, nvml_module: Any, cuda_count: Callable[[], int]) -> EnergyMonitor:
    e = experiment.energy
    gpus = job_gpus(experiment, visible_gpu_count(nvml_module=nvml_module), cuda_count)
    try:
        return open_monitor(
            e.source,
            gpus,
            include_host=e.include_host,
            interval_s=e.sample_interval_ms / 1000.0,
            nvml_module=nvml_module,
        )
    except DeviceUnavailable as error:
        raise MeasurementError(f"energy.source={e.source} is not available here: {error}") from None


def _min_window_s(experiment: ExperimentConfig, monitor: EnergyMonitor) -> float:
    configured = experiment.measure.min_window_seconds
    if configured is not None:
        return configured
    return GPU_MIN_WINDOW_S if "gpu" in monitor.measured else 0.0


def _baseline(
    experiment: ExperimentConfig, monitor: EnergyMonitor, sleep: Callable[[float], None], state: str
) -> tuple[BaselineResult | None, str | None]:
    if not experiment.baseline.enabled:
        return None, "baseline disabled (baseline.enabled=false)"
    if not monitor.measured:
        return None, f"baseline skipped: no energy source can be read here ({_unreadable(monitor)})"
    b = experiment.baseline
    baseline = measure_baseline(monitor, b.duration_seconds, settle_s=b.settle_seconds, sleep=sleep)
    baseline.device_state["model"] = state
    baseline.device_state["measured_at"] = _now()  # a reused baseline's age is judged from it (verdict)
    return baseline, baseline.unavailable_reason


def _unreadable(monitor: EnergyMonitor) -> str:
    """Why each component is unmeasured or left out, for a skipped baseline."""
    scope = monitor.scope
    reasons = {**scope.get("excluded", {}), **scope.get("unavailable", {})}
    return "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "nothing in scope"


def _engine_gpus_unmeasured(used: list[int] | None, monitor: EnergyMonitor) -> str | None:
    """Why the engine's GPUs are missing from the energy scope, when the engine ran on GPUs the monitor never saw.

    Only for scopes llem chose (`auto`): `energy.source=rapl` leaves GPUs out by the user's choice.
    """
    if not used or monitor.scope.get("excluded", {}).get("gpu") != NO_GPU_REASON:
        return None
    return (
        f"the engine ran on CUDA device(s) {', '.join(map(str, used))}, but NVML saw no GPU for this job, "
        "so their energy was not measured"
    )


def _gpus_in_scope(scope: dict[str, Any], labels: list[str], reason: str) -> dict[str, Any]:
    """`scope` with the engine's GPUs moved from excluded to included and unmeasured."""
    out = {**scope, "excluded": {k: v for k, v in scope.get("excluded", {}).items() if k != "gpu"}}
    out["included"] = ["gpu", *[k for k in scope.get("included", []) if k != "gpu"]]
    out["unavailable"] = {"gpu": reason, **scope.get("unavailable", {})}
    out["devices"] = {"gpu": list(labels), **scope.get("devices", {})}
    out["sources"] = {"gpu": "none", **scope.get("sources", {})}
    return out


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


def _prefill_only(experiment: ExperimentConfig) -> ExperimentConfig:
    return experiment.model_copy(update={"max_output_tokens": 1, "force_output_length": True})


def _warmup(backend: Backend, experiment: ExperimentConfig, prompts: list[Prompt]) -> dict[str, Any]:
    """One full pass of the measured workload (or a fixed prompt count), plus the prefill-only pass when split."""
    n = experiment.warmup.num_prompts
    info: dict[str, Any] = {"thermal_floor_seconds": experiment.warmup.thermal_floor_seconds}
    start = time.perf_counter()
    converged = experiment.warmup.mode == "converged"
    if converged:  # batches until their latency settles (llem.measure.warmup)
        info.update(converged_warmup(backend, experiment, prompts))
        if experiment.measure.phase_split:
            backend.generate(prompts, _prefill_only(experiment))
            info["prefill_pass"] = True
    elif n is None:
        info.update(mode="full_pass", prompts=len(prompts), batching="as measured")
        backend.generate(prompts, experiment)
        if experiment.measure.phase_split:
            backend.generate(prompts, _prefill_only(experiment))
            info["prefill_pass"] = True
    else:
        info.update(mode="prompts", prompts=n, batching="one call")
        if n > 0:
            full_length = experiment.model_copy(update={"force_output_length": True})
            backend.generate([prompts[i % len(prompts)] for i in range(n)], full_length)
            if experiment.measure.phase_split:  # the prefill-only shape must not compile inside its window
                backend.generate([prompts[i % len(prompts)] for i in range(n)], _prefill_only(experiment))
                info["prefill_pass"] = True
    backend.synchronize()
    info["duration_s"] = time.perf_counter() - start if (converged or n is None or n > 0) else None
    if experiment.warmup.thermal_floor_seconds > 0:
        time.sleep(experiment.warmup.thermal_floor_seconds)
    return info


def _architecture(info: LoadInfo) -> Architecture | None:
    arch = info.settings.get("architecture")
    if not arch:
        return None
    try:
        return Architecture.from_dict(arch)
    except (KeyError, TypeError, ValueError):
        return None


def _energy_section(
    window: Window,
    adjusted: Any,
    baseline: BaselineResult | None,
    baseline_reason: str | None,
    baseline_info: dict[str, Any] | None,
    monitor: EnergyMonitor,
    output_tokens: int,
    scope: dict[str, Any],
) -> Energy:
    e = window.energy
    components: dict[str, EnergyComponent | None] = {}
    for name in ("gpu", "cpu", "dram"):
        c = e.components.get(name)
        if c is None:
            components[name] = None
            continue
        base_w = None if baseline is None else baseline.component_w.get(name)
        components[name] = EnergyComponent(
            source=c.source,
            devices=list(c.devices),
            total_j=c.joules,
            baseline_power_w=base_w,
            adjusted_j=adjusted.components_j.get(name),
            per_device=dict(c.per_device),
            polled_j=c.polled_j,
            polled_source=c.polled_source,
            unavailable_reason=c.unavailable_reason,
        )
    polled = [c.polled_j for c in e.components.values() if c.polled_j is not None]
    reason = e.unavailable_reason if e.total_j is None else adjusted.unavailable_reason
    return Energy(
        source=monitor.source,
        total_j=e.total_j,
        baseline_power_w=None if baseline is None else baseline.total_w,
        adjusted_j=adjusted.total_j,
        per_output_token_j=energy_per_token_j(adjusted.total_j, output_tokens),
        per_pass_j=None if adjusted.total_j is None else adjusted.total_j / window.passes,
        components=components,
        scope=scope,
        update_periods_s=dict(monitor.update_periods_s),
        polled_total_j=sum(polled) if polled else None,
        polled_source=monitor.polled_source,
        baseline=baseline_info,
        baseline_unavailable_reason=baseline_reason,
        unavailable_reason=reason,
    )


def _memory_section(backend: Backend, load_info: LoadInfo) -> Memory:
    stats = backend.memory_stats()
    weights = stats.get("weights_bytes")
    methods = dict(stats.get("methods") or {})
    unavailable = dict(stats.get("unavailable") or {})
    if weights is None and load_info.model_bytes is not None:
        weights = load_info.model_bytes
        unavailable.pop("weights_bytes", None)
        methods.setdefault("weights_bytes", "size of the loaded weights")
    kv = stats.get("kv_cache_peak_bytes")
    state = None if weights is None or kv is None else weights + kv
    if state is None:
        unavailable["weights_kv_peak_bytes"] = "needs both weights_bytes and kv_cache_peak_bytes"
    else:
        methods["weights_kv_peak_bytes"] = "weights_bytes + kv_cache_peak_bytes"
    return Memory(
        weights_bytes=weights,
        kv_cache_peak_bytes=kv,
        weights_kv_peak_bytes=state,
        peak_allocated_bytes=stats.get("peak_allocated_bytes"),
        reserved_bytes=stats.get("reserved_bytes"),
        host_peak_rss_bytes=stats.get("host_peak_rss_bytes"),
        methods=methods,
        unavailable=unavailable,
    )


def _latency_section(window: Window) -> Latency:
    seqs = window.sequences
    unavailable: dict[str, str] = {}
    why = latency.scheduled_unavailable(seqs)
    if why is not None:
        unavailable["queue_ms"] = unavailable["prefill_ms"] = why
    return Latency(
        ttft_ms=latency.distribution(latency.ttft_ms(seqs)),
        itl_ms=latency.distribution(latency.itl_ms(seqs)),
        e2e_ms=latency.distribution(latency.e2e_ms(seqs)),
        queue_ms=latency.distribution(latency.queue_ms(seqs)),
        prefill_ms=latency.distribution(latency.prefill_ms(seqs)),
        method=LATENCY_METHOD,
        unavailable=unavailable,
    )


def measure_main_window(
    backend: Backend, experiment: ExperimentConfig, prompts: list[Prompt], monitor: EnergyMonitor, min_window_s: float
) -> tuple[Window, TelemetrySampler]:
    """The main window with device telemetry beside it and a fresh peak-memory measurement."""
    sampler = TelemetrySampler(monitor.nvml_devices, experiment.energy.sample_interval_ms / 1000.0)
    backend.reset_peak_memory()
    sampler.start()
    try:
        window = run_window("measure", backend, prompts, experiment, monitor, min_window_s)
    finally:
        sampler.stop()
    return window, sampler


def _settings_in_force(gpu_job: Any) -> str:
    """Which GPU settings idle power is taken under: the driver's own, or the job's values per GPU."""
    if gpu_job is None:
        return "driver settings"
    return json.dumps({uuid: r.as_dict() for uuid, r in sorted(gpu_job.resolved.items())}, sort_keys=True)


def _acquire_baseline(
    experiment: ExperimentConfig,
    monitor: EnergyMonitor,
    session: BackendSession,
    will_reuse: bool,
    sleep: Callable[[float], None],
    meter: Any = None,
    settings_in_force: str = "",
) -> tuple[BaselineResult | None, str | None, dict[str, Any] | None]:
    """The idle baseline for this monitor's sources and devices, measured or reused as `baseline.strategy` says.

    A baseline is only ever applied to windows over the same sources and devices (its key), the same GPU
    settings (`settings_in_force`: a power limit or locked clocks change idle power) and the same model state;
    with a warm model it is measured with the model loaded and idle, and the result says so.
    """
    state = "loaded and idle (warm worker)" if will_reuse else "none loaded"
    if not will_reuse:
        session.release()
    # idle power before any model loaded fits every job on these devices; a loaded model's idle draw only that model's
    loaded = f"{state}: {session.key_for(experiment)}"
    fits = ("none loaded", loaded) if will_reuse else ("none loaded",)
    return _strategy_baseline(experiment, monitor, session, sleep, state, loaded if will_reuse else state, fits,
                              meter=meter, settings_in_force=settings_in_force)


def _strategy_baseline(
    experiment: ExperimentConfig,
    monitor: EnergyMonitor,
    session: BackendSession,
    sleep: Callable[[float], None],
    state: str,
    cache_state: str,
    fits: tuple[str, ...],
    *,
    meter: Any = None,
    settings_in_force: str = "",
) -> tuple[BaselineResult | None, str | None, dict[str, Any] | None]:
    """Measure, reuse or check the baseline as `baseline.strategy` says; reused only where its state `fits`."""
    if not experiment.baseline.enabled or not monitor.measured:
        baseline, reason = _baseline(experiment, monitor, sleep, state)
        return baseline, reason, None if baseline is None else {**baseline.to_info(), "reused": False}
    b = experiment.baseline

    def measure() -> BaselineResult | None:
        return _baseline(experiment, monitor, sleep, state)[0]

    def check() -> BaselineResult | None:
        return measure_baseline(monitor, b.validation_duration_seconds, settle_s=b.settle_seconds, sleep=sleep,
                                window_name="baseline_check")

    key = f"{monitor.baseline_key} under {settings_in_force}" if settings_in_force else monitor.baseline_key
    baseline, strategy_info = acquire_baseline(b, baseline_cache_for(session), key, state=cache_state, fits=fits,
                                               measure=measure, check=check, meter=meter)
    if baseline is None:
        return None, "baseline unavailable", None
    return baseline, baseline.unavailable_reason, {**baseline.to_info(), **strategy_info}


def _run_serving(
    experiment: ExperimentConfig,
    output_dir: Path,
    session: BackendSession,
    *,
    force_cold_start: bool,
    sleep: Callable[[float], None],
    nvml_module: Any,
    placement: dict[str, Any] | None,
    cuda_count: Callable[[], int],
    server_factory: Any,
) -> ExperimentResult:
    """A serving load point, with this module's device, baseline and energy-section rules."""
    from llem.measure.serving_job import ServingError, run_serving

    def cuda_gpus(exp: ExperimentConfig, nvml: Any) -> list[int]:
        return job_gpus(exp, visible_gpu_count(nvml_module=nvml), cuda_count)

    def baseline(exp: ExperimentConfig, monitor: EnergyMonitor, pause: Callable[[float], None], state: str,
                 gpu_job: Any) -> tuple[BaselineResult | None, str | None, dict[str, Any] | None]:
        # idle power with this server loaded fits a later load point against the same (reused) server only
        return _strategy_baseline(exp, monitor, session, pause, state, state, (state,), meter=nvml_module,
                                  settings_in_force=_settings_in_force(gpu_job))

    try:
        return run_serving(experiment, output_dir, session, force_cold_start=force_cold_start, sleep=sleep,
                           nvml_module=nvml_module, placement=placement, server_factory=server_factory,
                           cuda_gpus=cuda_gpus, baseline_fn=baseline, energy_section=_energy_section, now=_now)
    except ServingError as error:
        raise MeasurementError(str(error)) from None


def run_experiment(
    experiment: ExperimentConfig,
    output_dir: Path,
    session: BackendSession,
    *,
    force_cold_start: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    nvml_module: Any = None,
    campaign_warmup: dict[str, Any] | None = None,
    placement: dict[str, Any] | None = None,
    cuda_count: Callable[[], int] = torch_cuda_device_count,
    server_factory: Any = None,
) -> ExperimentResult:
    """Measure `experiment` and write result.json (and the telemetry Parquet) into `output_dir`.

    `scenario=serving` measures one load point under the engine's own server instead
    (llem.measure.serving_job); `server_factory` replaces the engine's server there (tests script one).

    `nvml_module` replaces `pynvml` (tests use a scripted fake); `cuda_count` tells how many CUDA
    devices the engine can use when NVML sees none (tests script it); `sleep` paces the baseline;
    `campaign_warmup` ({prompts, timeout_s}) is a campaign worker's once-per-worker warmup.
    """
    output_dir = Path(output_dir)
    if experiment.scenario == "serving":
        return _run_serving(experiment, output_dir, session, force_cold_start=force_cold_start, sleep=sleep,
                            nvml_module=nvml_module, placement=placement, cuda_count=cuda_count,
                            server_factory=server_factory)
    started_at = _now()
    try:  # before the baseline, so idle power is measured under the same settings
        gpu_job = apply_gpu_settings(experiment, nvml_module)
    except GpuSettingsError as error:
        raise MeasurementError(str(error)) from None
    monitor = _open_monitor(experiment, nvml_module, cuda_count)
    prefill_window: Window | None = None
    try:
        devices = monitor.nvml_devices
        gpus = list(devices.describe_all().values()) if devices is not None else []
        persistence = devices.persistence_modes() if devices is not None else None
        will_reuse = session.can_reuse(experiment) and not force_cold_start
        if gpu_job is not None and gpu_job.changed:  # idle power under the previous settings no longer applies
            session.remember_baseline(monitor.baseline_key, None)
        baseline, baseline_reason, baseline_info = _acquire_baseline(experiment, monitor, session, will_reuse, sleep,
                                                                     meter=nvml_module,
                                                                     settings_in_force=_settings_in_force(gpu_job))
        backend, load_info, reused = session.acquire(experiment, force_cold_start=force_cold_start)
        session.remember_baseline(monitor.baseline_key, baseline)
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
        min_window = _min_window_s(experiment, monitor)
        window, sampler = measure_main_window(backend, experiment, prompts, monitor, min_window)
        memory = _memory_section(backend, load_info)
        if experiment.measure.phase_split:
            prefill_window = run_window("prefill", backend, prompts, _prefill_only(experiment), monitor, min_window)
    finally:
        monitor.close()

    seqs = window.sequences
    input_tokens = sum(s.input_tokens for s in seqs)
    output_tokens = sum(s.output_tokens for s in seqs)
    arch = _architecture(load_info)
    work = [(s.input_tokens, s.output_tokens, s.cached_prompt_tokens) for s in seqs]
    kv_cache = bool(getattr(experiment.backend, "use_cache", True))
    flops_total = total_flops(arch, work, kv_cache=kv_cache) if arch else None
    timeseries = None
    if sampler.rows:
        sampler.to_parquet(output_dir / TIMESERIES_FILENAME)
        timeseries = TIMESERIES_FILENAME
    used = backend.devices()
    unmeasured = _engine_gpus_unmeasured(used, monitor)
    scope = dict(monitor.scope)
    if unmeasured is not None:
        labels = [f"gpu{i}" for i in used or []]
        scope = _gpus_in_scope(monitor.scope, labels, unmeasured)
        window.energy = with_unmeasured_component(window.energy, "gpu", labels, unmeasured)
        if prefill_window is not None:
            prefill_window.energy = with_unmeasured_component(prefill_window.energy, "gpu", labels, unmeasured)
    adjusted = adjust_window(window.energy, baseline, monitor.baseline_key)
    failures = quality_failures(window.energy)
    warnings = quality_warnings(
        window.energy,
        update_periods_s=monitor.update_periods_s,
        tolerance_pct=experiment.energy.cross_check_tolerance_pct,
        samples=sampler.samples if devices is not None else None,
        throttled=sampler.throttled,
        persistence_mode=persistence,
    )
    warnings.extend(adjusted.warnings)
    warnings.extend(warmup_warnings(warmup_info))
    gpu_settings = None
    if gpu_job is not None:
        gpu_settings, gpu_warnings = gpu_job.section(sampler.rows if devices is not None else None)
        warnings.extend(gpu_warnings)
    warnings.extend(failures)
    forced_expected = experiment.max_output_tokens * len(seqs)
    if experiment.force_output_length and output_tokens != forced_expected:
        warnings.append(f"forced output length not honoured: {output_tokens} tokens instead of {forced_expected}")
    measured = monitor.scope.get("cuda_indices")
    if used and measured is not None and not set(used) <= set(measured):
        warnings.append(f"the engine used CUDA devices {used} but energy was measured on {measured}")

    prefill = decode = None
    phase_split: dict[str, Any] = {"enabled": experiment.measure.phase_split}
    if prefill_window is not None:
        prefill_adjusted = adjust_window(prefill_window.energy, baseline, monitor.baseline_key)
        prefill_quality = quality_warnings(
            prefill_window.energy,
            update_periods_s=monitor.update_periods_s,
            tolerance_pct=experiment.energy.cross_check_tolerance_pct,
        )
        warnings.extend(f"prefill window: {w}" for w in [*prefill_quality, *prefill_adjusted.warnings])
        prefill_seqs = prefill_window.sequences
        prefill, decode, phase_warnings = split_phases(
            WindowFigures(window.passes, window.duration_s, adjusted.total_j, adjusted.unavailable_reason),
            WindowFigures(
                prefill_window.passes,
                prefill_window.duration_s,
                prefill_adjusted.total_j,
                prefill_adjusted.unavailable_reason,
            ),
            prompts_per_pass=len(prompts),
            prefill_tokens_per_pass=sum(s.input_tokens - s.cached_prompt_tokens for s in prefill_seqs)
            // prefill_window.passes,
            output_tokens=output_tokens,
        )
        warnings.extend(phase_warnings)
        phase_split.update(
            prefill_passes=prefill_window.passes,
            prefill_window_s=prefill_window.duration_s,
            prefill_energy_raw_j=prefill_window.energy.total_j,
        )
    result = ExperimentResult(
        placement=placement,
        **experiment_fields(experiment),
        passes=window.passes,
        num_prompts=len(seqs),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        duration_s=window.duration_s,
        throughput_tokens_per_s=output_tokens / window.duration_s if window.duration_s > 0 else None,
        requests_per_s=len(seqs) / window.duration_s if window.duration_s > 0 else None,
        latency=_latency_section(window),
        energy=_energy_section(
            window, adjusted, baseline, baseline_reason, baseline_info, monitor, output_tokens, scope
        ),
        flops=Flops(
            total=flops_total,
            per_output_token=flops_total / output_tokens if flops_total is not None and output_tokens else None,
            per_pass=flops_total / window.passes if flops_total is not None else None,
            method=(FLOPS_METHOD + ("" if kv_cache else NO_KV_CACHE_METHOD)) if arch else "unavailable: the model's "
            "architecture cannot be counted (missing sizes or uncountable layer types)",
        ),
        memory=memory,
        prefill=prefill,
        decode=decode,
        phase_split=phase_split,
        model_load_s=None if reused else load_info.load_s,
        model_reused=reused,
        warmup=warmup_info,
        engine_settings=backend.effective_settings(),
        environment=snapshot(gpus=gpus, libraries=backend.versions()),
        timeseries_file=timeseries,
        gpu_settings=gpu_settings,
        started_at=started_at,
        completed_at=_now(),
        warnings=warnings,
        quality=Quality(status=quality_status(failures, warnings), failures=failures),
    )
    telemetry = None if devices is None else Telemetry.from_rows(sampler.rows, sampler.interval_s)
    return judge_and_write(result, output_dir, telemetry)
