"""Baseline strategies against an idle power that steps up mid-campaign: `validated` catches the step, `cached`
does not, `fresh` measures every time. First on the strategy alone, then through the harness with scripted NVML."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llem.config import ExperimentConfig
from llem.config.experiment import BaselineConfig
from llem.energy.baseline import BaselineResult
from llem.energy.baseline_strategy import BaselineCache, acquire
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml


class Trace:
    """Idle power by job: 50 W for the first five jobs, 80 W after; counts what was measured."""

    def __init__(self) -> None:
        self.job = 0
        self.full = 0
        self.checks = 0
        self.now = 0.0

    def idle_w(self) -> float:
        return 50.0 if self.job < 5 else 80.0

    def _result(self) -> BaselineResult:
        return BaselineResult(key="gpu=nvml[GPU-0]", source="nvml", duration_s=10.0, settle_s=0.0,
                              total_w=self.idle_w(), component_w={"gpu": self.idle_w()}, per_device_w={})

    def measure(self) -> BaselineResult:
        self.full += 1
        return self._result()

    def check(self) -> BaselineResult:
        self.checks += 1
        return self._result()


def _campaign(strategy: str, jobs: int = 10, **settings: Any) -> tuple[list[float], list[dict[str, Any]], Trace]:
    trace = Trace()
    cache = BaselineCache(clock=lambda: trace.now)
    config = BaselineConfig(strategy=strategy, validation_interval=2, **settings)
    used, infos = [], []
    for job in range(jobs):
        trace.job, trace.now = job, job * 60.0  # a job a minute
        baseline, info = acquire(config, cache, "gpu=nvml[GPU-0]", state="none loaded",
                                 measure=trace.measure, check=trace.check)
        assert baseline is not None and baseline.total_w is not None
        used.append(baseline.total_w)
        infos.append(info)
    return used, infos, trace


def test_validated_catches_the_step() -> None:
    used, infos, trace = _campaign("validated")
    # checks every second reuse: jobs 2, 4 see no drift; job 6 sees 60 % and measures afresh
    assert used == [50.0] * 6 + [80.0] * 4
    assert (trace.full, trace.checks) == (2, 4)
    assert infos[6]["remeasured"] == "drift" and infos[6]["last_drift"] == pytest.approx(0.6)
    assert infos[6]["reused"] is False and infos[6]["age_s"] == 0.0
    assert infos[4]["validated"] is True and infos[4]["last_drift"] == 0.0 and infos[4]["reused"] is True
    assert infos[5]["age_s"] == 300.0 and infos[5]["strategy"] == "validated"


def test_cached_does_not_see_the_step() -> None:
    used, infos, trace = _campaign("cached")
    assert used == [50.0] * 10 and (trace.full, trace.checks) == (1, 0)
    assert infos[9]["reused"] is True and infos[9]["age_s"] == 540.0


def test_cached_measures_again_when_its_baseline_expires() -> None:
    used, infos, trace = _campaign("cached", cache_ttl_seconds=200.0)
    assert trace.full == 3 and [i["remeasured"] for i in infos if not i["reused"]] == [
        "none cached", "expired", "expired"]
    assert used[8] == 80.0


def test_fresh_measures_before_every_job() -> None:
    used, infos, trace = _campaign("fresh")
    assert used == [50.0] * 5 + [80.0] * 5 and trace.full == 10
    assert all(i["reused"] is False for i in infos)


def test_a_baseline_from_another_state_or_meter_is_not_reused() -> None:
    trace = Trace()
    cache = BaselineCache(clock=lambda: 0.0)
    config = BaselineConfig(strategy="cached")
    acquire(config, cache, "k", state="loaded: a", measure=trace.measure, check=trace.check)
    _, info = acquire(config, cache, "k", state="loaded: b", measure=trace.measure, check=trace.check)
    assert info["reused"] is False and trace.full == 2
    _, info = acquire(config, cache, "k", state="loaded: c", fits=("loaded: b",), measure=trace.measure,
                      check=trace.check)
    assert info["reused"] is True
    meter = Trace()  # any object: the cached baseline was read by no meter of this test's
    _, info = acquire(config, cache, "k", state="loaded: b", measure=trace.measure, check=trace.check, meter=meter)
    assert info["reused"] is False


# ------------------------------------------------------------------------------- through the harness, on CPU
class SteppedPower:
    """A GPU drawing `idle_w` at idle and 200 W while working; energy integrated exactly."""

    def __init__(self) -> None:
        self.idle = False
        self.idle_w = 50.0
        self._lock = threading.Lock()
        self._t: float | None = None
        self._mj = 1_000_000.0

    def power_mw(self) -> float:
        return (self.idle_w if self.idle else 200.0) * 1000.0

    def energy(self, t: float) -> int:
        with self._lock:
            if self._t is not None:
                self._mj += self.power_mw() * (t - self._t)
            self._t = t
            return int(self._mj)

    def sleep(self, seconds: float) -> None:
        """The harness's baseline pacing: the GPU is idle meanwhile."""
        self.energy(time.monotonic())
        self.idle = True
        time.sleep(seconds)
        self.energy(time.monotonic())
        self.idle = False


@pytest.fixture
def session() -> Iterator[Any]:
    from llem.measure.session import BackendSession

    s = BackendSession()
    yield s
    s.release()


def _experiment(strategy: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model": {"name": "builtin:tiny"}, "num_input_prompts": 2, "max_input_tokens": 16, "max_output_tokens": 3,
        "backend": {"name": "pytorch"}, "warmup": {"num_prompts": 0},
        "measure": {"min_window_seconds": 0.0, "phase_split": False},
        "baseline": {"duration_seconds": 0.4, "settle_seconds": 0.0, "strategy": strategy,
                     "validation_interval": 1, "validation_duration_seconds": 0.4},
    })


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "second_w", "reused"), [("validated", 80.0, False), ("cached", 50.0, True)])
def test_the_harness_records_the_strategy(tmp_path: Path, session: Any, strategy: str, second_w: float,
                                          reused: bool) -> None:
    from llem.measure.harness import run_experiment

    power = SteppedPower()
    fake = FakeNvml([FakeGpu(energy_mj=power.energy, power_mw=lambda t: power.power_mw())], clock=time.monotonic)
    first = run_experiment(_experiment(strategy), tmp_path / "0", session, nvml_module=fake, sleep=power.sleep)
    assert first.energy.baseline is not None and first.energy.baseline["strategy"] == strategy
    assert first.energy.components["gpu"].baseline_power_w == pytest.approx(50.0, rel=0.05)  # type: ignore[union-attr]
    power.idle_w = 80.0  # the room warms up
    second = run_experiment(_experiment(strategy), tmp_path / "1", session, nvml_module=fake, sleep=power.sleep)
    info = second.energy.baseline
    assert info is not None and info["strategy"] == strategy and info["reused"] is reused
    gpu = second.energy.components["gpu"]
    assert gpu.baseline_power_w == pytest.approx(second_w, rel=0.05)  # type: ignore[union-attr]
    if strategy == "validated":
        assert info["validated"] is True and info["last_drift"] == pytest.approx(0.6, rel=0.1)
        assert info["remeasured"] == "drift"
    else:
        assert info["age_s"] > 0 and info["last_drift"] is None


@pytest.mark.slow
def test_a_cached_baseline_is_not_used_under_other_gpu_settings(tmp_path: Path, session: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Locked clocks or a power cap change idle power: a baseline cached under one setting must not serve another.

    With `cached` (which never re-checks), a job under locked SM clocks gets a fresh baseline, and a later job
    back at the driver's settings reuses the one taken under them, not the locked one.
    """
    from llem.measure import gpu_settings
    from llem.measure.gpu_settings import GpuSettingsHolder
    from llem.measure.harness import run_experiment

    monkeypatch.setenv("LLEM_GPU_RESTORE_DIR", str(tmp_path / "restore"))
    holder = GpuSettingsHolder()
    monkeypatch.setattr(gpu_settings, "HOLDER", holder)
    power = SteppedPower()
    gpu = FakeGpu(energy_mj=power.energy)
    gpu.power_mw = lambda t: power.power_mw()
    fake = FakeNvml([gpu], clock=time.monotonic)

    def idle_w() -> float:  # locked clocks hold the GPU at a higher idle draw
        return 120.0 if gpu.sm_locked_mhz is not None else 50.0

    power.power_mw = lambda: (idle_w() if power.idle else 200.0) * 1000.0  # type: ignore[method-assign]

    def experiment(**gpu_keys: Any) -> ExperimentConfig:
        data = _experiment("cached").model_dump(mode="json")
        data["gpu"] = gpu_keys
        return ExperimentConfig.model_validate(data)

    try:
        plain = run_experiment(experiment(), tmp_path / "0", session, nvml_module=fake, sleep=power.sleep)
        locked = run_experiment(experiment(sm_clock_mhz=1410), tmp_path / "1", session, nvml_module=fake,
                                sleep=power.sleep)  # fmt: skip
        back = run_experiment(experiment(), tmp_path / "2", session, nvml_module=fake, sleep=power.sleep)
    finally:
        holder.restore_all()
    w = [r.energy.components["gpu"].baseline_power_w for r in (plain, locked, back)]  # type: ignore[union-attr]
    reused = [r.energy.baseline["reused"] for r in (plain, locked, back)]  # type: ignore[index]
    assert reused == [False, False, True]
    assert w == [pytest.approx(50.0, rel=0.05), pytest.approx(120.0, rel=0.05), pytest.approx(50.0, rel=0.05)]
