"""Every verdict rule tripped on scripted data, silence on a clean result, and the generated docs."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llem.measure.verdict import RULES, Telemetry, judge, judge_file, reasons_text, validity_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "validity.md"


def _clean() -> dict[str, Any]:
    """A GPU result that breaks no rule: 30 s window, counter and polled agree, baseline in the job's state."""
    return {
        "config": {"max_output_tokens": 10, "force_output_length": True, "baseline": {}, "energy": {}},
        "num_prompts": 8,
        "output_tokens": 80,
        "duration_s": 30.0,
        "model_reused": False,
        "started_at": "2026-01-01T00:10:00+00:00",
        "warnings": [],
        "quality": {"status": "ok", "failures": []},
        "energy": {
            "total_j": 6000.0,
            "baseline_power_w": 50.0,
            "update_periods_s": {"gpu0": 0.1},
            "components": {
                "gpu": {"total_j": 6000.0, "polled_j": 5900.0, "polled_source": "instant", "baseline_power_w": 50.0},
                "cpu": None,
            },
            "baseline": {"device_state": {"model": "none loaded"}, "measured_at": "2026-01-01T00:09:00+00:00"},
        },
    }


def _telemetry(**over: Any) -> Telemetry:
    data = {"samples": 300, "span_s": 29.9, "max_gap_s": 0.12, "interval_s": 0.1,
            "throttle_thermal": False, "throttle_power": False}  # fmt: skip
    data.update(over)
    return Telemetry(**data)


def _rules(result: dict[str, Any], telemetry: Telemetry | None = None) -> dict[str, Any]:
    verdict = judge(result, telemetry if telemetry is not None else _telemetry())
    return {r.rule: r for r in verdict.reasons}


def test_clean_result_passes() -> None:
    verdict = judge(_clean(), _telemetry())
    assert verdict.status == "pass" and verdict.reasons == []


def test_unreadable_gpu_energy_fails() -> None:
    r = _clean()
    r["energy"]["total_j"] = None
    r["energy"]["components"]["gpu"] = {"total_j": None, "unavailable_reason": "NVML_ERROR_NOT_SUPPORTED"}
    r["quality"] = {"status": "fail", "failures": ["GPU energy could not be read on gpu0"]}
    verdict = judge(r, _telemetry())
    assert verdict.status == "fail"
    assert [x.rule for x in verdict.reasons] == ["energy_unreadable"]
    assert "gpu0" in verdict.reasons[0].detail


def test_short_window_uses_the_measured_update_period() -> None:
    r = _clean()
    r["duration_s"], r["energy"]["update_periods_s"] = 4.0, {"gpu0": 0.02}  # 100 x 20 ms = 2 s: the 5 s floor rules
    got = _rules(r, _telemetry(span_s=3.95))["window_short"]
    assert got.status == "warn" and got.value == 4.0 and got.limit == 5.0
    r["duration_s"], r["energy"]["update_periods_s"] = 15.0, {"gpu0": 0.2}  # 100 x 200 ms = 20 s
    got = _rules(r, _telemetry(span_s=14.9))["window_short"]
    assert got.limit == pytest.approx(20.0) and "200.0 ms on gpu0" in got.detail
    r["duration_s"] = 25.0
    assert "window_short" not in _rules(r, _telemetry(span_s=24.9))


def test_counter_and_polled_must_agree_within_5_percent() -> None:
    r = _clean()
    r["energy"]["components"]["gpu"]["polled_j"] = 5640.0  # 6 % below
    got = _rules(r)["counter_polled_disagree"]
    assert got.value == pytest.approx(6.0) and got.limit == 5.0 and got.status == "warn"
    r["energy"]["components"]["gpu"]["polled_j"] = 5720.0  # 4.7 %
    assert "counter_polled_disagree" not in _rules(r)


def test_energy_below_idle_fails() -> None:
    r = _clean()
    r["energy"]["components"]["gpu"].update(total_j=1400.0, polled_j=1400.0)  # idle: 50 W x 30 s = 1500 J
    r["energy"]["total_j"] = 1400.0
    verdict = judge(r, _telemetry())
    assert verdict.status == "fail"
    got = {x.rule: x for x in verdict.reasons}["energy_below_idle"]
    assert got.value == 1400.0 and got.limit == 1500.0


@pytest.mark.parametrize("kind", ["throttle_thermal", "throttle_power"])
def test_throttling_in_the_window_warns(kind: str) -> None:
    got = _rules(_clean(), _telemetry(**{kind: True}))["throttled"]
    assert got.value == kind.split("_")[1]


def test_throttling_from_the_timeseries_rows() -> None:
    rows = [{"t_s": i * 0.1, "device": "gpu0", "power_w": 100.0, "throttle_thermal": False,
             "throttle_power": i == 5} for i in range(300)]  # fmt: skip
    telemetry = Telemetry.from_rows(rows, 0.1)
    assert telemetry.samples == 300 and telemetry.throttle_power and not telemetry.throttle_thermal
    assert _rules(_clean(), telemetry)["throttled"].value == "power"


def test_power_samples_must_cover_the_window() -> None:
    got = _rules(_clean(), _telemetry(span_s=12.0))["samples_cover_window"]
    assert got.value == pytest.approx(0.4) and got.limit == 0.9
    got = _rules(_clean(), _telemetry(max_gap_s=3.0))["samples_cover_window"]
    assert got.value == 3.0 and got.limit == pytest.approx(1.0)
    r = _clean()
    assert "no power samples" in judge(r, None).reasons[0].detail  # GPU energy, no telemetry at all


def test_baseline_from_a_cold_worker_against_a_warm_job() -> None:
    r = _clean()
    r["model_reused"] = True  # warm worker, model resident; baseline reused from a cold one
    got = _rules(r)["baseline_state_differs"]
    assert got.value == "none loaded" and "warm" in got.detail
    r["energy"]["baseline"]["device_state"]["model"] = "loaded and idle (warm worker)"
    assert "baseline_state_differs" not in _rules(r)
    r["model_reused"] = False
    assert "baseline_state_differs" in _rules(r)


def test_baseline_older_than_max_age() -> None:
    r = _clean()
    r["config"]["baseline"]["max_age_seconds"] = 30
    got = _rules(r)["baseline_stale"]
    assert got.value == 60.0 and got.limit == 30
    r["config"]["baseline"]["max_age_seconds"] = 120
    assert "baseline_stale" not in _rules(r)
    # a result that records a time beside the device state the baseline was taken in
    del r["energy"]["baseline"]["measured_at"]
    r["energy"]["baseline"]["device_state"]["measured_at"] = "2026-01-01T00:00:00+00:00"
    assert _rules(r)["baseline_stale"].value == 600.0


def test_a_cached_baseline_reused_past_max_age_trips_and_a_fresh_one_does_not() -> None:
    """What the harness records (the baseline strategy's `age_s`) against the experiment's `baseline.max_age_seconds`,
    on a scripted clock: the same cached baseline is fine at first and stale 2 h later."""
    from llem.config.experiment import BaselineConfig
    from llem.energy.baseline import BaselineResult
    from llem.energy.baseline_strategy import BaselineCache, acquire

    now = [0.0]
    cache = BaselineCache(clock=lambda: now[0])
    settings = BaselineConfig(strategy="cached", cache_ttl_seconds=86400.0)
    assert settings.max_age_seconds == 3600.0
    idle = BaselineResult("gpu:0", "nvml", 10.0, 0.0, 50.0, {"gpu": 50.0}, {"gpu0": 50.0},
                          {"model": "none loaded"})  # fmt: skip

    def result_with(info: dict[str, Any]) -> dict[str, Any]:
        r = _clean()
        r["config"]["baseline"] = settings.model_dump(mode="json")
        r["energy"]["baseline"] = {**info, "device_state": {"model": "none loaded"}}
        return r

    def take() -> dict[str, Any]:
        return acquire(settings, cache, "gpu:0", state="none loaded", measure=lambda: idle, check=lambda: idle)[1]

    first = take()
    assert first["reused"] is False and "baseline_stale" not in _rules(result_with(first))
    now[0] = 7200.0
    later = take()
    assert later["reused"] is True
    got = _rules(result_with(later))["baseline_stale"]
    assert got.value == 7200.0 and got.limit == 3600.0 and got.status == "warn"
    assert judge(result_with(later), _telemetry()).status == "warn"
    fresh = acquire(BaselineConfig(strategy="fresh"), cache, "gpu:0", state="none loaded", measure=lambda: idle,
                    check=lambda: idle)[1]  # fmt: skip
    assert "baseline_stale" not in _rules(result_with(fresh))


def test_max_age_at_its_default_keeps_the_config_hash_of_configs_written_before_it() -> None:
    """A campaign planned before `baseline.max_age_seconds` existed still resumes; a changed value is a new config."""
    from llem.config import ExperimentConfig
    from llem.config.hashing import config_hash

    config = ExperimentConfig.model_validate({"model": {"name": "builtin:tiny"}, "backend": {"name": "pytorch"}})
    before = config.model_dump(mode="json")
    del before["baseline"]["max_age_seconds"]
    assert config_hash(config) == config_hash(before)
    changed = config.model_copy(update={"baseline": config.baseline.model_copy(update={"max_age_seconds": 60.0})})
    assert config_hash(changed) != config_hash(config)


def test_output_tokens_differ_from_what_was_asked() -> None:
    r = _clean()
    r["output_tokens"] = 72
    got = _rules(r)["output_tokens_differ"]
    assert got.value == 72 and got.limit == 80
    r["config"]["force_output_length"] = False  # an engine may stop early when not forced
    assert "output_tokens_differ" not in _rules(r)


def test_gpu_setting_not_in_effect_warns() -> None:
    r = _clean()
    knob = {"requested": 250, "applied": 250, "effective": 300.0, "effective_source": "x", "default": 300.0}
    clock = {"requested": [1200, 1400], "applied": [1200, 1400], "effective": 1300.0, "effective_source": "x",
             "default": None}  # fmt: skip
    r["gpu_settings"] = {"gpu0": {"uuid": "GPU-1", "power_limit_w": knob, "sm_clock_mhz": clock}}
    verdict = judge(r, _telemetry())
    assert verdict.status == "warn" and [x.rule for x in verdict.reasons] == ["gpu_settings_differ"]
    assert verdict.reasons[0].value == 300.0 and "power_limit_w" in verdict.reasons[0].detail
    knob["effective"] = 250.4
    clock["effective"] = 1500.0
    got = judge(r, _telemetry()).reasons
    assert [x.value for x in got] == [1500.0] and "sm_clock_mhz" in got[0].detail


def test_failed_serving_check_fails_the_load_point() -> None:
    r = _clean()
    r["serving"] = {"valid": False, "failed": ["steady_window", "token_counts"], "checks": {
        "steady_window": {"passed": False, "value": 12.0, "required": 30.0, "reason": "steady window 12 s is short"},
        "all_answered": {"passed": True, "value": 100, "required": 100, "reason": None},
        "token_counts": {"passed": None, "value": 0, "required": 100, "reason": "no usage reported"},
    }}  # fmt: skip
    verdict = judge(r, _telemetry())
    assert verdict.status == "fail" and [x.rule for x in verdict.reasons] == ["serving_check_failed"]
    got = verdict.reasons[0]
    assert (got.value, got.limit) == (12.0, 30.0) and got.detail.startswith("steady_window: steady window 12 s")
    r["serving"]["checks"]["steady_window"]["passed"] = True
    assert judge(r, _telemetry()).status == "pass"  # an unknown check (no usage reported) is not a failure


def test_a_result_without_energy_passes_the_energy_rules() -> None:
    r = _clean()
    r["energy"] = {"total_j": None, "components": {"cpu": {"total_j": None}}, "baseline": None}
    assert judge(r, None).status == "pass"


def test_every_rule_has_a_test_here() -> None:
    source = Path(__file__).read_text()
    assert all(f'"{rule.name}"' in source for rule in RULES)


def test_reasons_text_names_value_and_limit() -> None:
    r = _clean()
    r["output_tokens"] = 72
    assert reasons_text(judge(r, _telemetry())) == "output_tokens_differ (72 vs 80)"


def test_docs_validity_is_generated_from_the_rules() -> None:
    assert DOCS.read_text() == validity_markdown(), "regenerate: python -m llem.measure.verdict > docs/validity.md"
    assert all(f"`{rule.name}`" in DOCS.read_text() for rule in RULES)


def test_judge_file_reads_the_timeseries_beside_the_result(tmp_path: Path) -> None:
    r = _clean()
    r["timeseries_file"] = "timeseries.parquet"
    r["config"]["energy"]["sample_interval_ms"] = 100
    (tmp_path / "result.json").write_text(json.dumps(r))
    rows = [{"t_s": i * 0.1, "device": "gpu0", "power_w": 100.0, "throttle_thermal": i == 7, "throttle_power": False}
            for i in range(300)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "timeseries.parquet")
    verdict = judge_file(tmp_path / "result.json")
    assert [x.rule for x in verdict.reasons] == ["throttled"] and verdict.reasons[0].value == "thermal"
    (tmp_path / "timeseries.parquet").unlink()
    assert [x.rule for x in judge_file(tmp_path / "result.json").reasons] == ["samples_cover_window"]
    assert copy.deepcopy(r) == json.loads((tmp_path / "result.json").read_text())


# --- the harness judges every result it writes --------------------------------------------------------------


@pytest.mark.slow
def test_harness_writes_a_fail_verdict_for_energy_below_idle(tmp_path: Path) -> None:
    from llem.config import ExperimentConfig
    from llem.measure.harness import run_experiment
    from llem.measure.result import read_result
    from llem.measure.session import BackendSession
    from tests.fakes.fake_pynvml import FakeGpu, FakeNvml

    state = {"idle": False, "mj": 1_000_000.0, "t": None}
    lock = threading.Lock()

    def power_mw() -> float:  # idle draws more than load: a baseline that was not idle power
        return 200_000.0 if state["idle"] else 50_000.0

    def energy(t: float) -> int:
        with lock:
            if state["t"] is not None:
                state["mj"] += power_mw() * (t - state["t"])
            state["t"] = t
            return int(state["mj"])

    def sleep(seconds: float) -> None:
        energy(time.monotonic())
        state["idle"] = True
        time.sleep(seconds)
        energy(time.monotonic())
        state["idle"] = False

    fake = FakeNvml([FakeGpu(energy_mj=energy, power_mw=lambda t: power_mw())], clock=time.monotonic)
    exp = ExperimentConfig.model_validate(
        {
            "model": {"name": "builtin:tiny"}, "num_input_prompts": 4, "max_input_tokens": 32,
            "max_output_tokens": 6, "backend": {"name": "pytorch", "batch_size": 2},
            "baseline": {"duration_seconds": 0.3, "settle_seconds": 0.0}, "measure": {"min_window_seconds": 0.0},
        }
    )  # fmt: skip
    session = BackendSession()
    try:
        result = run_experiment(exp, tmp_path, session, sleep=sleep, nvml_module=fake)
    finally:
        session.release()
    assert result.verdict is not None and result.verdict.status == "fail"
    rules = {r.rule for r in result.verdict.reasons}
    assert {"energy_below_idle", "window_short"} <= rules
    on_disk = read_result(tmp_path / "result.json")
    assert on_disk.verdict == result.verdict
    assert judge_file(tmp_path / "result.json").status == "fail"  # the report re-judges to the same end
    baseline = result.energy.baseline or {}
    # recorded, for its age: taken after the job started (a cold job measures its own)
    assert result.started_at <= baseline["device_state"]["measured_at"] <= result.completed_at
