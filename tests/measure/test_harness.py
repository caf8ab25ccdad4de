"""The harness end to end on CPU with the real tiny model: result.json, reuse, and energy wiring."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llem.config import ExperimentConfig
from llem.measure.harness import MeasurementError, run_experiment
from llem.measure.result import ExperimentResult, read_result
from llem.measure.session import BackendSession
from llem.report.collect import metric_values
from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml

pytestmark = pytest.mark.slow


def _experiment(**overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": "builtin:tiny"},
        "num_input_prompts": 4,
        "max_input_tokens": 32,
        "max_output_tokens": 6,
        "baseline": {"duration_seconds": 0.3},
        "backend": {"name": "pytorch", "batch_size": 2},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


@pytest.fixture(scope="module")
def session() -> BackendSession:
    s = BackendSession()
    yield s
    s.release()


def test_cpu_run_writes_a_valid_result(tmp_path: Path, session: BackendSession) -> None:
    result = run_experiment(_experiment(), tmp_path, session)
    on_disk = read_result(tmp_path / "result.json")
    assert on_disk == result
    assert result.output_tokens == 4 * 6 and result.num_prompts == 4
    assert 0 < result.input_tokens <= 4 * 32
    assert result.duration_s > 0 and result.throughput_tokens_per_s and result.throughput_tokens_per_s > 0
    for dist in (result.latency.ttft_ms, result.latency.itl_ms, result.latency.e2e_ms):
        assert dist.count > 0 and dist.p50 is not None and dist.p50 > 0
    assert result.latency.itl_ms.count == 4 * 5
    assert result.latency.e2e_ms.p50 >= result.latency.ttft_ms.p50  # type: ignore[operator]
    # this machine has no GPU and no RAPL: every energy figure is null, with a reason
    e = result.energy
    assert e.source == "none" and e.total_j is None and e.adjusted_j is None and e.per_output_token_j is None
    assert e.unavailable_reason and "RAPL not available" in e.unavailable_reason
    assert e.baseline_power_w is None and e.baseline_unavailable_reason
    assert e.scope["excluded"]["gpu"] == "job uses no GPU"  # a CPU job measures CPU sources
    assert e.scope["measured"] == [] and e.scope["included"] == ["cpu"]  # in scope, nothing read
    assert metric_values(result)["energy_scope"] == "none"  # summary.csv says nothing was measured
    assert result.quality is not None and result.quality.status != "fail" and result.quality.failures == []
    assert result.flops.total and result.flops.total > 0 and result.flops.per_output_token
    assert result.flops.method.startswith("llem-flops/2")
    m = result.memory
    assert m.weights_bytes and m.host_peak_rss_bytes and m.comparable == "weights_kv_peak_bytes"
    assert m.kv_cache_peak_bytes and m.weights_kv_peak_bytes == m.weights_bytes + m.kv_cache_peak_bytes
    assert m.peak_allocated_bytes is None and m.unavailable["peak_allocated_bytes"]  # CPU: null with a reason
    # one pass (CPU default), a full-pass warmup, and prefill apart from decode
    assert result.passes == 1 and result.warmup["mode"] == "full_pass" and result.warmup["prompts"] == 4
    assert result.prefill is not None and result.decode is not None
    assert result.prefill.tokens == result.input_tokens and result.decode.tokens == 4 * 5
    assert result.prefill.duration_s and result.decode.duration_s
    assert result.prefill.duration_s + result.decode.duration_s == pytest.approx(result.duration_s)
    assert result.prefill.energy_j is None and result.decode.energy_j is None and result.decode.unavailable_reason
    assert result.latency.queue_ms.count == result.latency.prefill_ms.count == 4
    assert result.engine_settings["device"] == "cpu" and result.engine_settings["batch_size"] == 2
    assert result.environment["versions"]["torch"] and result.environment["gpus"] == []
    assert result.config["backend"]["batch_size"] == 2 and len(result.config_hash) == 16


def test_warm_session_reuses_the_model_only_for_same_loading_settings(tmp_path: Path, session: BackendSession) -> None:
    session.release()
    loads = session.loads
    first = run_experiment(_experiment(), tmp_path / "a", session)
    second = run_experiment(_experiment(backend={"name": "pytorch", "batch_size": 4}), tmp_path / "b", session)
    assert not first.model_reused and first.model_load_s is not None
    assert second.model_reused and second.model_load_s is None
    assert session.loads == loads + 1
    third = run_experiment(_experiment(fp_precision="bfloat16"), tmp_path / "c", session)
    assert not third.model_reused and session.loads == loads + 2
    cold = run_experiment(_experiment(fp_precision="bfloat16"), tmp_path / "d", session, force_cold_start=True)
    assert not cold.model_reused and session.loads == loads + 3


def test_unforced_length_counts_real_tokens(tmp_path: Path, session: BackendSession) -> None:
    result = run_experiment(_experiment(force_output_length=False), tmp_path, session)
    assert 4 <= result.output_tokens <= 24
    assert not any("forced output length" in w for w in result.warnings)


def test_explicit_unavailable_energy_source_fails_clearly(tmp_path: Path, session: BackendSession) -> None:
    with pytest.raises(MeasurementError, match="energy.source=nvml is not available here: .*uses no GPU"):
        run_experiment(_experiment(energy={"source": "nvml"}), tmp_path, session)
    assert not (tmp_path / "result.json").exists()


class _PhasedPower:
    """A GPU drawing 50 W while idle and 200 W otherwise; energy is integrated exactly."""

    def __init__(self) -> None:
        self.idle = False
        self._lock = threading.Lock()
        self._t: float | None = None
        self._mj = 1_000_000.0

    def power_mw(self) -> float:
        return 50_000.0 if self.idle else 200_000.0

    def energy(self, t: float) -> int:
        with self._lock:
            if self._t is not None:
                self._mj += self.power_mw() * (t - self._t)
            self._t = t
            return int(self._mj)


def test_energy_with_scripted_nvml_subtracts_baseline(tmp_path: Path, session: BackendSession) -> None:
    power = _PhasedPower()
    gpu_spec = FakeGpu(energy_mj=power.energy, power_mw=lambda t: power.power_mw())
    fake = FakeNvml([gpu_spec], clock=time.monotonic)
    idle_sleep = _idle_sleep(power)
    session.release()
    exp = _experiment(
        energy={"source": "auto", "sample_interval_ms": 20},
        # long enough that a few ms of thread scheduling between a counter read and the scripted switch between
        # idle and load (each ms costs 0.15 J) stays inside the tolerances on a loaded machine
        baseline={"duration_seconds": 1.0, "settle_seconds": 0.0},
        measure={"min_window_seconds": 0.5},
    )
    result = run_experiment(exp, tmp_path, session, sleep=idle_sleep, nvml_module=fake)
    e = result.energy
    assert e.source == "nvml" and e.unavailable_reason is None
    assert e.baseline_power_w == pytest.approx(50.0, rel=0.03)
    assert e.total_j == pytest.approx(200.0 * result.duration_s, rel=0.05)
    assert e.adjusted_j == pytest.approx(e.total_j - 50.0 * result.duration_s, rel=0.05)  # type: ignore[operator]
    assert e.per_output_token_j == pytest.approx(e.adjusted_j / result.output_tokens)  # type: ignore[operator]
    gpu = e.components["gpu"]
    assert gpu is not None and gpu.devices == ["gpu0"] and set(gpu.per_device) == {"gpu0"}
    assert gpu.baseline_power_w == pytest.approx(50.0, rel=0.03)
    assert e.polled_total_j == pytest.approx(e.total_j, rel=0.25)
    assert e.baseline and e.baseline["reused"] is False and e.baseline["device_state"]["model"] == "none loaded"
    assert result.environment["gpus"][0]["name"] == gpu_spec.name
    assert result.timeseries_file == "timeseries.parquet"
    frame = pd.read_parquet(tmp_path / "timeseries.parquet")
    assert len(frame) >= 1 and set(frame["device"]) == {"gpu0"} and (frame["power_w"] > 0).all()
    assert isinstance(read_result(tmp_path / "result.json"), ExperimentResult)
    # prefill and decode split the energy above idle as they split the time
    assert result.prefill and result.decode and result.prefill.energy_j and result.decode.energy_j
    assert result.prefill.energy_j + result.decode.energy_j == pytest.approx(e.adjusted_j)


def _scripted_node(gpus: int, power: _PhasedPower) -> FakeNvml:
    return FakeNvml(
        [FakeGpu(energy_mj=power.energy, power_mw=lambda t: power.power_mw()) for _ in range(gpus)],
        clock=time.monotonic,
    )


def _idle_sleep(power: _PhasedPower) -> Any:
    """A baseline sleep during which the scripted GPUs draw idle power."""

    def sleep(seconds: float) -> None:
        power.energy(time.monotonic())
        power.idle = True
        time.sleep(seconds)
        power.energy(time.monotonic())
        power.idle = False

    return sleep


def test_one_gpu_job_on_a_four_gpu_node_measures_its_own_gpu(tmp_path: Path, session: BackendSession) -> None:
    power = _PhasedPower()
    fake = _scripted_node(4, power)
    session.release()
    fast = {"baseline": {"duration_seconds": 0.6, "settle_seconds": 0.0}, "measure": {"min_window_seconds": 0.0}}
    sleep = _idle_sleep(power)
    one = run_experiment(_experiment(**fast), tmp_path / "one", session, nvml_module=fake, sleep=sleep)
    assert one.energy.scope["devices"]["gpu"] == ["gpu0"] and one.energy.scope["cuda_indices"] == [0]
    assert one.energy.components["gpu"].per_device.keys() == {"gpu0"}  # type: ignore[union-attr]
    assert [g["label"] for g in one.environment["gpus"]] == ["gpu0"]
    # pinned to two GPUs on the same warm model: a baseline for this device set is taken, never the old one
    pinned = _experiment(**fast, energy={"devices": [0, 1]})
    two = run_experiment(pinned, tmp_path / "two", session, nvml_module=fake, sleep=sleep)
    assert two.model_reused and two.energy.scope["devices"]["gpu"] == ["gpu0", "gpu1"]
    assert two.energy.baseline and two.energy.baseline["reused"] is False
    assert two.energy.baseline["device_state"]["model"].startswith("loaded and idle")
    assert two.energy.components["gpu"].baseline_power_w == pytest.approx(100.0, rel=0.05)  # type: ignore[union-attr]
    assert two.energy.adjusted_j is not None and two.energy.adjusted_j > 0
    # back to GPU 0 alone: its own baseline is reused
    again = run_experiment(_experiment(**fast), tmp_path / "again", session, nvml_module=fake, sleep=sleep)
    assert again.energy.baseline and again.energy.baseline["reused"] is True
    assert again.energy.baseline_power_w == pytest.approx(50.0, rel=0.05)


def test_energy_below_idle_is_null_with_a_warning_not_zero(tmp_path: Path, session: BackendSession) -> None:
    power = _PhasedPower()
    power.power_mw = lambda: 200_000.0 if power.idle else 50_000.0  # type: ignore[method-assign]
    fake = _scripted_node(1, power)
    session.release()
    exp = _experiment(baseline={"duration_seconds": 0.3, "settle_seconds": 0.0}, measure={"min_window_seconds": 0.0})
    result = run_experiment(exp, tmp_path, session, sleep=_idle_sleep(power), nvml_module=fake)
    e = result.energy
    assert e.total_j and e.total_j > 0 and e.baseline_power_w == pytest.approx(200.0, rel=0.05)
    assert e.adjusted_j is None and e.per_output_token_j is None and e.unavailable_reason
    assert any("idle" in w for w in result.warnings)


def test_min_window_repeats_whole_passes(tmp_path: Path, session: BackendSession) -> None:
    exp = _experiment(measure={"min_window_seconds": 3.0, "phase_split": False})
    result = run_experiment(exp, tmp_path, session)
    assert result.duration_s >= 3.0 and result.passes >= 2
    assert result.num_prompts == 4 * result.passes and result.output_tokens == 4 * 6 * result.passes
    assert result.latency.ttft_ms.count == 4 * result.passes
    assert result.flops.per_pass and result.flops.total == pytest.approx(result.flops.per_pass * result.passes)
    assert result.prefill is None and result.phase_split == {"enabled": False}


class _Sleeps:
    """A baseline sleep that records what it was asked to wait, and waits nothing."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


def test_nothing_to_read_skips_the_baseline_at_once(tmp_path: Path, session: BackendSession) -> None:
    session.release()
    sleeps = _Sleeps()
    exp = _experiment(baseline={"duration_seconds": 10.0, "settle_seconds": 5.0})
    result = run_experiment(exp, tmp_path, session, sleep=sleeps)
    assert sleeps.asked == []  # neither the settle time nor the measuring
    e = result.energy
    assert e.baseline is None and e.baseline_power_w is None
    assert e.baseline_unavailable_reason and e.baseline_unavailable_reason.startswith("baseline skipped: no energy")
    assert "RAPL not available" in e.baseline_unavailable_reason and "job uses no GPU" in e.baseline_unavailable_reason


def _no_nvml() -> FakeNvml:
    return FakeNvml([], init_error=fk.NVMLError_LibraryNotFound)


def test_gpu_job_whose_nvml_is_unusable_fails_instead_of_passing_for_a_cpu_job(
    tmp_path: Path, session: BackendSession
) -> None:
    # NVML cannot be loaded, CUDA counts one device: the job runs on a GPU whose energy nobody reads
    session.release()
    result = run_experiment(_experiment(), tmp_path, session, nvml_module=_no_nvml(), cuda_count=lambda: 1)
    e = result.energy
    gpu = e.components["gpu"]
    assert gpu is not None and gpu.total_j is None and gpu.devices == ["gpu0"]
    assert gpu.unavailable_reason == "NVML library not found (no NVIDIA driver)"
    assert e.total_j is None and e.adjusted_j is None and e.per_output_token_j is None
    assert e.unavailable_reason and e.unavailable_reason.startswith("gpu: NVML library not found")
    assert e.scope["included"][0] == "gpu" and "gpu" not in e.scope["excluded"] and "gpu" not in e.scope["measured"]
    assert result.quality is not None and result.quality.status == "fail"
    [failure] = result.quality.failures
    assert "gpu0" in failure and "NVML library not found" in failure and failure in result.warnings
    on_disk = read_result(tmp_path / "result.json")
    assert on_disk.quality == result.quality
    # the same machine without a CUDA device: a CPU job, which does not fail
    cpu = run_experiment(_experiment(), tmp_path / "cpu", session, nvml_module=_no_nvml(), cuda_count=lambda: 0)
    assert cpu.energy.scope["excluded"]["gpu"] == "job uses no GPU"
    assert cpu.quality is not None and cpu.quality.status != "fail"


def test_engine_on_a_gpu_the_monitor_never_saw_voids_the_energy(
    tmp_path: Path, session: BackendSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llem.backends.pytorch.backend import PyTorchBackend

    session.release()
    monkeypatch.setattr(PyTorchBackend, "devices", lambda self: [0])  # the engine reports CUDA device 0
    result = run_experiment(_experiment(), tmp_path, session, nvml_module=_no_nvml(), cuda_count=lambda: 0)
    e = result.energy
    gpu = e.components["gpu"]
    assert gpu is not None and gpu.total_j is None and gpu.devices == ["gpu0"]
    assert gpu.unavailable_reason and "engine ran on CUDA device(s) 0" in gpu.unavailable_reason
    assert e.total_j is None and e.unavailable_reason and e.unavailable_reason.startswith("gpu: the engine ran")
    assert "gpu" in e.scope["included"] and "gpu" not in e.scope["excluded"]
    assert e.scope["unavailable"]["gpu"] == gpu.unavailable_reason
    assert result.quality is not None and result.quality.status == "fail" and len(result.quality.failures) == 1
    assert result.decode is not None and result.decode.energy_j is None


def test_flops_without_a_kv_cache_count_every_step_and_engine_settings_follow(
    tmp_path: Path, session: BackendSession
) -> None:
    session.release()
    cached = run_experiment(_experiment(), tmp_path / "cached", session)
    uncached = run_experiment(_experiment(backend={"name": "pytorch", "batch_size": 2, "use_cache": False}),
                              tmp_path / "uncached", session)
    assert uncached.model_reused  # use_cache does not reload the model
    assert cached.engine_settings["use_cache"] is True and uncached.engine_settings["use_cache"] is False
    assert "without a KV cache" in uncached.flops.method and "without a KV cache" not in cached.flops.method
    assert cached.output_tokens == uncached.output_tokens and cached.input_tokens == uncached.input_tokens
    assert uncached.flops.total and cached.flops.total and uncached.flops.total > 2 * cached.flops.total
