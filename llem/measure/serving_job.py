"""Measure one serving load point: server up -> idle baseline -> warm-up -> load with steady energy windows.

The engine runs as its own OpenAI-compatible server (started here from the experiment's engine
settings, or already running at `serving.url`). Idle power is read with the server loaded and
idle, as an offline job reads it with the model loaded. The built-in client then sends the
warm-up requests and the measured load; the steady-window rule opens and closes the energy
monitor's windows at the instants it names, so the energy and the tokens counted inside the
window cover the same span.

The server llem starts is held by the worker's session, the way a loaded model is: the next job whose
server settings are equal (model, engine arguments) reuses it, so a load sweep starts it once. Its prefix
cache is reset between each job's warm-up and measured requests, so no earlier load point shortens the
measured prefills. A server that died, or any failure of the job using it, stops it with its whole
process group, and the next job gets a fresh one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llem.backends.base import GenerationOutput
from llem.backends.sampling import engine_sampling_kwargs
from llem.config import ExperimentConfig
from llem.energy import (
    DeviceUnavailable,
    EnergyMonitor,
    TelemetrySampler,
    adjust_window,
    open_monitor,
    quality_failures,
    quality_status,
    quality_warnings,
    visible_gpu_count,
)
from llem.measure import latency
from llem.measure.environment import snapshot
from llem.measure.gpu_settings import GpuSettingsError
from llem.measure.gpu_settings import apply_for_job as apply_gpu_settings
from llem.measure.result import (
    TIMESERIES_FILENAME,
    experiment_fields,
    judge_and_write,
    Energy,
    ExperimentResult,
    Flops,
    Latency,
    Memory,
    Quality,
)
from llem.measure.session import BackendSession
from llem.measure.verdict import Telemetry
from llem.measure.window import Window
from llem.backends.registry import server_key
from llem.models.resolve import resolve_model_path
from llem.prompts.load import Prompt, load_prompts
from llem.serving.client import LENGTH_BY_GENERATION_CONFIG
from llem.serving import LoadRun, ServingClient, SteadyTracker, build_schedule, request_body, serving_section
from llem.serving.energy import MonitorWindows, WindowEnergy, window_energy
from llem.serving.records import RequestRecord, write_records
from llem.serving.schedule import Arrival
from llem.serving.server import ServerError, ServerProcess, bind_host, server_port, vllm_server_argv
from llem.serving.steady import RUN, STEADY, steady_rule

SERVER_LOG = "server.log"
SERVER_FACTORY_ENV = "LLEM_SERVER_FACTORY"
REQUESTS_FILE = "requests.jsonl"
LATENCY_METHOD = (
    "scenario=serving: client timestamps of the streamed chunks, from each request's send time (see the "
    "`serving` section for TPOT, percentiles p90 and goodput)"
)
NO_QUEUE = "scenario=serving: the server does not report when it scheduled each request"
NO_FLOPS = "unavailable: scenario=serving counts no FLOPs (the engine runs in its own server process)"
NO_MEMORY = "scenario=serving: the engine runs in its own server process, whose memory llem does not read"
URL_NO_GPUS = (
    "serving.url names a server llem did not start and serving.gpus does not say which GPUs it runs on, so its "
    "energy is not measured"
)

# An engine's server, not yet started: `start()` waits for readiness, `stop()` ends its process group.
ServerFactory = Callable[[ExperimentConfig, Path], ServerProcess]


class ServingError(RuntimeError):
    """A serving load point that cannot be measured as configured; wrapped by the harness as MeasurementError."""


def vllm_server(experiment: ExperimentConfig, log_path: Path) -> ServerProcess:
    """vLLM's OpenAI API server on a free loopback port, with the experiment's engine settings."""
    from llem.backends.vllm.serve import server_engine_args

    path, args = server_engine_args(experiment)
    port = server_port()
    argv = vllm_server_argv(path, port, host=bind_host(), served_name=experiment.model.name, engine_args=args)
    assert experiment.serving is not None
    # dev mode serves /reset_prefix_cache (on loopback only, like the server itself)
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    return ServerProcess(argv, port=port, log_path=log_path, env=env,
                         ready_timeout_s=experiment.serving.ready_timeout_seconds)


def trtllm_server(experiment: ExperimentConfig, log_path: Path) -> ServerProcess:
    """TensorRT-LLM's `trtllm-serve` on a free loopback port; its option file goes beside the job's log."""
    from llem.backends.tensorrt.serve import trtllm_server_argv

    port = server_port()
    argv = trtllm_server_argv(experiment, port, host=bind_host(), options_dir=log_path.parent,
                              served_name=experiment.model.name)
    assert experiment.serving is not None
    return ServerProcess(argv, port=port, log_path=log_path, ready_timeout_s=experiment.serving.ready_timeout_seconds)


def transformers_server(experiment: ExperimentConfig, log_path: Path) -> ServerProcess:
    """transformers' own server (`transformers serve --continuous-batching`) for backend=pytorch."""
    from llem.backends.pytorch.serve import TransformersServeUnavailable, transformers_server_argv

    port = server_port()
    try:
        argv, served = transformers_server_argv(experiment, port, host=bind_host())
    except TransformersServeUnavailable as error:
        raise ServingError(str(error)) from None
    assert experiment.serving is not None
    server = ServerProcess(argv, port=port, log_path=log_path, ready_timeout_s=experiment.serving.ready_timeout_seconds)
    server.served_model = served  # it serves the model under the path it loaded it from
    return server


SERVERS: dict[str, ServerFactory] = {"vllm": vllm_server, "tensorrt": trtllm_server, "pytorch": transformers_server}
# What each engine's server is POSTed between a job's warm-up and its measured requests.
PREFIX_CACHE_RESET: dict[str, str] = {"vllm": "/reset_prefix_cache"}
EXTERNAL_NO_RESET = "a server llem did not start keeps its prefix cache (llem resets only its own servers')"


def _factory_from_env() -> ServerFactory | None:
    """A scripted server named by LLEM_SERVER_FACTORY (`module:function`) in place of the engine's (tests: a whole
    campaign against a fake server, in worker processes no test can reach)."""
    spec = os.environ.get(SERVER_FACTORY_ENV)
    if not spec:
        return None
    import pkgutil

    return pkgutil.resolve_name(spec)  # type: ignore[no-any-return]


def _served_model(url: str, timeout_s: float = 10.0) -> str:
    """The first model a running server lists at `/v1/models` (what requests to it must name)."""
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=timeout_s) as response:  # noqa: S310 - the user's URL
            data = json.loads(response.read())
        return str(data["data"][0]["id"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ServingError(f"serving.url={url}: GET /v1/models gave no model to send requests to ({exc})") from None


def _resolve_gpus(gpus: Sequence[int | str], nvml_module: Any) -> list[int]:
    """`serving.gpus` as NVML indices: indices as given, UUIDs looked up among the visible GPUs."""
    if all(isinstance(g, int) for g in gpus):
        return [int(g) for g in gpus]
    from llem.energy.devices.nvml import NvmlDevices

    count = visible_gpu_count(nvml_module=nvml_module)
    try:
        devices = NvmlDevices.open(list(range(count)), nvml=nvml_module)
    except DeviceUnavailable as error:
        raise ServingError(f"serving.gpus: the GPUs cannot be read ({error.reason})") from None
    try:
        by_uuid = {devices.uuid(i): i for i in devices.indices}
    finally:
        devices.close()
    out = []
    for g in gpus:
        if isinstance(g, int):
            out.append(g)
        elif g in by_uuid:
            out.append(by_uuid[g])
        else:
            raise ServingError(f"serving.gpus: no visible GPU has UUID {g!r} (visible: {', '.join(by_uuid) or 'none'})")
    return out


def _open_monitor(experiment: ExperimentConfig, gpus: list[int], nvml_module: Any) -> EnergyMonitor:
    e = experiment.energy
    try:
        return open_monitor(e.source, gpus, include_host=e.include_host, interval_s=e.sample_interval_ms / 1000.0,
                            nvml_module=nvml_module)
    except DeviceUnavailable as error:
        raise ServingError(f"energy.source={e.source} is not available here: {error}") from None


# Request fields transformers' server takes; the rest of the decoder goes into each request's generation_config.
TRANSFORMERS_FIELDS = frozenset({"temperature", "top_p", "seed", "stop"})


def _sampling(experiment: ExperimentConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The experiment's decoder as completion request fields, and (transformers' server) as generation-config
    fields; lengths are set per request by the client."""
    kwargs = engine_sampling_kwargs(experiment, greedy={"temperature": 0.0})
    for key in ("n", "max_tokens", "min_tokens", "ignore_eos", "stop_token_ids"):
        kwargs.pop(key, None)
    if experiment.backend.name not in LENGTH_BY_GENERATION_CONFIG:
        return kwargs, {}
    return ({k: v for k, v in kwargs.items() if k in TRANSFORMERS_FIELDS},
            {k: v for k, v in kwargs.items() if k not in TRANSFORMERS_FIELDS})


def _prompt_texts(arrivals: Sequence[Arrival], prompts: Sequence[Prompt], tokenizer: Any
                  ) -> tuple[list[str], list[int]]:
    """The prompt of each arrival and its token count: the prompt source in turn, or a trace's own input length
    (the sources' tokens, cycled, cut to that length)."""
    pool = [t for p in prompts for t in p.token_ids] or [0]
    texts, counts = [], []
    for k, a in enumerate(arrivals):
        if a.input_tokens is None:
            p = prompts[k % len(prompts)]
            texts.append(p.text)
            counts.append(len(p.token_ids))
        else:
            ids = [pool[i % len(pool)] for i in range(a.input_tokens)]
            texts.append(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
            counts.append(a.input_tokens)
    return texts, counts


def _window_energy(hooks: MonitorWindows | None, name: str, monitor: EnergyMonitor | None, baseline: Any,
                   reason: str | None) -> WindowEnergy:
    if hooks is None or monitor is None:
        return WindowEnergy(None, None, None, reason)
    window = hooks.windows.get(name)
    adjusted = None if window is None else adjust_window(window, baseline, monitor.baseline_key)
    return window_energy(window, adjusted, hooks.reasons.get(name))


def _latency(records: Sequence[RequestRecord]) -> Latency:
    done = [r for r in records if r.ok and not r.warmup]
    ttft = [r.ttft_s * 1000.0 for r in done if r.ttft_s is not None]
    itl = [g * 1000.0 for r in done for g in r.itl_s]
    e2e = [r.e2e_s * 1000.0 for r in done if r.e2e_s is not None]
    return Latency(
        ttft_ms=latency.distribution(ttft),
        itl_ms=latency.distribution(itl),
        e2e_ms=latency.distribution(e2e),
        queue_ms=latency.distribution([]),
        prefill_ms=latency.distribution([]),
        method=LATENCY_METHOD,
        unavailable={"queue_ms": NO_QUEUE, "prefill_ms": NO_QUEUE},
    )


def _unmeasured_energy(reason: str, baseline_reason: str) -> Energy:
    return Energy(source="none", total_j=None, baseline_power_w=None, adjusted_j=None, per_output_token_j=None,
                  scope={"included": [], "measured": [], "excluded": {"gpu": reason, "cpu": reason, "dram": reason}},
                  baseline_unavailable_reason=baseline_reason, unavailable_reason=reason)


def run_serving(
    experiment: ExperimentConfig,
    output_dir: Path,
    session: BackendSession,
    *,
    force_cold_start: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    nvml_module: Any = None,
    placement: dict[str, Any] | None = None,
    server_factory: ServerFactory | None = None,
    cuda_gpus: Callable[[ExperimentConfig, Any], list[int]],
    baseline_fn: Callable[..., Any],
    energy_section: Callable[..., Energy],
    now: Callable[[], str],
) -> ExperimentResult:
    """Measure one serving load point and write result.json (with its `serving` section) into `output_dir`.

    `server_factory` builds the engine's server (tests give a scripted one); the harness passes its own
    device, baseline and energy-section helpers, so both scenarios measure and report energy alike.
    The server is taken from `session` when one with equal settings runs there (not with
    `force_cold_start`), and left running there for the next job unless it died or this job failed.
    """
    load, serving, slo = experiment.load, experiment.serving, experiment.slo
    assert load is not None and serving is not None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started_at = now()
    external = serving.url is not None
    if external and experiment.gpu.is_set:
        raise ServingError(f"{', '.join(experiment.gpu.set_keys())}: GPU settings apply only to a server llem "
                           "starts, not to one at serving.url")
    factory = server_factory
    if not external and factory is None:
        factory = _factory_from_env() or SERVERS.get(experiment.backend.name)
        if factory is None:
            raise ServingError(f"scenario=serving: llem cannot start backend '{experiment.backend.name}''s server "
                               f"yet (it starts {', '.join(SERVERS)}); point serving.url at a running server")
    gpu_job = None
    if not external:
        try:
            gpu_job = apply_gpu_settings(experiment, nvml_module)
        except GpuSettingsError as error:
            raise ServingError(str(error)) from None

    # Energy is read on the server's devices: the job's own (llem started it) or serving.gpus.
    if external:
        gpus = None if serving.gpus is None else _resolve_gpus(serving.gpus, nvml_module)
    else:
        gpus = cuda_gpus(experiment, nvml_module)
    monitor = None if gpus is None else _open_monitor(experiment, gpus, nvml_module)
    no_energy = None if monitor is not None else URL_NO_GPUS
    devices = monitor.nvml_devices if monitor is not None else None
    server: ServerProcess | None = None
    reused = False
    sampler: TelemetrySampler | None = None
    ok = False
    try:
        gpus_info = list(devices.describe_all().values()) if devices is not None else []
        if external:
            assert serving.url is not None
            url, model_name = serving.url, _served_model(serving.url)
            state = "a running server llem did not start, idle"
        else:
            assert factory is not None
            key = server_key(experiment)
            assert key is not None

            def make() -> ServerProcess:
                built = factory(experiment, output_dir / SERVER_LOG)
                built.server_id, built.started_at = uuid.uuid4().hex[:12], now()
                return built

            try:  # a warm worker's offline model, or a server with other settings, is released first
                server, reused = session.acquire_server(key, make, force_cold_start=force_cold_start)
            except ServerError as error:
                raise ServingError(f"scenario=serving: {error}") from None
            if reused:
                server.log_to(output_dir / SERVER_LOG)
            url, model_name = server.url, server.served_model or experiment.model.name
            state = f"server loaded and idle: {key}"
        baseline, baseline_reason, baseline_info = None, no_energy or "baseline not taken", None
        if monitor is not None:
            baseline, baseline_reason, baseline_info = baseline_fn(experiment, monitor, sleep, state, gpu_job)

        path = resolve_model_path(experiment.model)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, revision=experiment.model.revision,
                                                  trust_remote_code=experiment.model.trust_remote_code)
        prompts = load_prompts(experiment.dataset, tokenizer, n=experiment.num_input_prompts,
                               max_input_tokens=experiment.max_input_tokens, seed=experiment.random_seed)
        arrivals = build_schedule(load, experiment.max_output_tokens, experiment.random_seed)
        texts, prompt_tokens = _prompt_texts(arrivals, prompts, tokenizer)
        measured_n = sum(1 for a in arrivals if not a.warmup)
        server_batch = getattr(experiment.backend, "max_num_seqs", None) if not external else None
        rule = steady_rule(rate=load.effective_rate, max_concurrency=load.max_concurrency,
                           trace=load.trace is not None, num_requests=measured_n, server_batch=server_batch)
        hooks = MonitorWindows(monitor) if monitor is not None else None
        tracker = SteadyTracker(rule, hooks)
        fields, generation = _sampling(experiment)
        by_config = not external and experiment.backend.name in LENGTH_BY_GENERATION_CONFIG
        client = ServingClient(url, model_name, body=request_body(experiment.backend.name, sampling=fields),
                               request_timeout_s=serving.request_timeout_seconds,
                               generation_config=generation if by_config else None, text_chunks=by_config)
        if monitor is not None:
            sampler = TelemetrySampler(monitor.nvml_devices, experiment.energy.sample_interval_ms / 1000.0)
            sampler.start()
        reset = None if external else PREFIX_CACHE_RESET.get(experiment.backend.name)
        try:
            run: LoadRun = client.run(arrivals, texts, max_concurrency=load.max_concurrency, tracker=tracker,
                                      metrics_interval_s=serving.metrics_interval_seconds, post_after_warmup=reset)
        finally:
            if sampler is not None:
                sampler.stop()
        server_died = server is not None and not server.alive()
        ok = not server_died
    finally:
        if monitor is not None:
            monitor.close()
        if server is not None and not ok:  # the next job gets a fresh server
            session.stop_server()

    write_records(output_dir / REQUESTS_FILE, run.records)
    steady_e = _window_energy(hooks, STEADY, monitor, baseline, no_energy)
    run_e = _window_energy(hooks, RUN, monitor, baseline, no_energy)
    section = serving_section(run, rule, load=load, slo=slo, min_steady_seconds=serving.min_steady_seconds,
                              saturation_fraction=serving.saturation_fraction, steady_energy=steady_e,
                              run_energy=run_e)
    section["server"] = {
        "started_by_llem": not external,
        "id": None if server is None else server.server_id,
        "reused": reused,
        "started_at": None if server is None else server.started_at,
        "pid": None if server is None else server.pid,
        "url": url,
        "model": model_name,
        "argv": None if server is None else list(server.argv),
        "ready_s": None if server is None else server.ready_s,
        "log": None if server is None else SERVER_LOG,
        "requests_file": REQUESTS_FILE,
        "prefix_cache_reset": run.between_phases if run.between_phases is not None else {
            "passed": None, "detail": EXTERNAL_NO_RESET if external else
            f"llem does not know how to reset {experiment.backend.name}'s prefix cache"},
    }
    measured = run.measured
    warnings: list[str] = []
    if server_died:
        warnings.append(f"the server exited during the load; see {SERVER_LOG}")
    merged = sum(r.merged_tokens for r in measured)
    section["merged_tokens"] = merged
    if merged:
        warnings.append(f"{merged} output tokens arrived merged into other chunks (the server streams text pieces); "
                        "their count is the server's and their time that of the request's last chunk")
    if run.between_phases is not None and not run.between_phases["passed"]:
        warnings.append(f"the server's prefix cache could not be reset after the warm-up "
                        f"({run.between_phases['detail']}): measured prompts may hit prefixes cached before")
    timeseries = None
    if sampler is not None and sampler.rows:
        sampler.to_parquet(output_dir / TIMESERIES_FILENAME)
        timeseries = TIMESERIES_FILENAME
    failures: list[str] = []
    run_window = None if hooks is None else hooks.windows.get(RUN)
    if monitor is not None and run_window is not None:
        adjusted = adjust_window(run_window, baseline, monitor.baseline_key)
        failures = quality_failures(run_window)
        warnings.extend(quality_warnings(
            run_window, update_periods_s=monitor.update_periods_s,
            tolerance_pct=experiment.energy.cross_check_tolerance_pct,
            samples=sampler.samples if devices is not None and sampler is not None else None,
            throttled=bool(sampler is not None and sampler.throttled),
        ))
        warnings.extend(adjusted.warnings)
        one_pass = Window(RUN, run.duration_s, [GenerationOutput(sequences=[])], run_window)
        energy = energy_section(one_pass, adjusted, baseline, baseline_reason, baseline_info, monitor,
                                section["output_tokens"], dict(monitor.scope))
    else:
        energy = _unmeasured_energy(no_energy or "no energy window was measured", baseline_reason)
    gpu_settings = None
    if gpu_job is not None:
        gpu_settings, gpu_warnings = gpu_job.section(sampler.rows if devices is not None and sampler else None)
        warnings.extend(gpu_warnings)
    warnings.extend(failures)
    if not section["valid"]:
        checks = section["checks"]
        warnings.extend(f"serving check {name} failed: {checks[name]['reason']}" for name in section["failed"]
                        if checks[name]["passed"] is False)
    duration = run.duration_s
    result = ExperimentResult(
        placement=placement,
        **experiment_fields(experiment),
        passes=1,
        num_prompts=len(measured),
        input_tokens=sum(r.server_prompt_tokens if r.server_prompt_tokens is not None else prompt_tokens[i]
                         for i, r in enumerate(run.records) if not r.warmup),
        output_tokens=section["output_tokens"],
        duration_s=duration,
        throughput_tokens_per_s=section["output_tokens_per_s"],
        requests_per_s=section["requests_per_s"],
        latency=_latency(run.records),
        energy=energy,
        flops=Flops(total=None, per_output_token=None, method=NO_FLOPS),
        memory=Memory(weights_bytes=None, peak_allocated_bytes=None, reserved_bytes=None,
                      unavailable={k: NO_MEMORY for k in ("weights_bytes", "kv_cache_peak_bytes",
                                                          "peak_allocated_bytes", "reserved_bytes")}),
        phase_split={"enabled": False},
        model_load_s=None if server is None or reused else server.ready_s,
        model_reused=reused,
        warmup={"mode": "requests", "requests": load.warmup_requests,
                "duration_s": run.warmup_end_s - run.records[0].send_s
                if run.records and run.records[0].warmup and run.records[0].send_s is not None else None},
        engine_settings={"server": section["server"]},
        environment=snapshot(gpus=gpus_info),
        timeseries_file=timeseries,
        gpu_settings=gpu_settings,
        started_at=started_at,
        completed_at=now(),
        warnings=warnings,
        quality=Quality(status=quality_status(failures, warnings), failures=failures),
        serving=section,
    )
    telemetry = None if devices is None or sampler is None else Telemetry.from_rows(sampler.rows, sampler.interval_s)
    return judge_and_write(result, output_dir, telemetry)
