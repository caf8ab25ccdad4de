"""Every campaign-model validator, including error messages and derived properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import llem.config.campaign as campaign_module
from llem.config import ConfigError, validate_or_raise
from llem.config.campaign import (
    CampaignColdStartConfig,
    CampaignConfig,
    CampaignDaemonConfig,
    CampaignExecutionConfig,
    CampaignExplicitExperiment,
    CampaignGridConfig,
    CampaignHealthCheckConfig,
    CampaignIOConfig,
    CampaignNotificationsConfig,
    CampaignScheduleConfig,
    CampaignSettings,
    campaign_id,
    parse_duration,
)


def _problems(model: Any, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_or_raise(model, data, context="campaign")
    return info.value.problems


def test_everything_exported_and_described() -> None:
    for name in campaign_module.__all__:
        obj = getattr(campaign_module, name)
        if isinstance(obj, type):
            for field_name, field in obj.model_fields.items():
                assert field.description, f"{name}.{field_name} lacks a description"


def test_execution_defaults_and_bounds() -> None:
    e = CampaignExecutionConfig()
    assert (e.cycles, e.structure, e.config_gap_seconds, e.cycle_gap_seconds) == (3, "interleaved", 60, 300)
    assert _problems(CampaignExecutionConfig, {"cycles": 0})[0].startswith("cycles: Input should be greater")
    assert _problems(CampaignExecutionConfig, {"cycles": 21})[0].startswith("cycles: Input should be less")
    (p,) = _problems(CampaignExecutionConfig, {"structure": "random"})
    assert "'interleaved', 'shuffled', 'grouped', 'reverse' or 'latin_square'" in p


@pytest.mark.parametrize("value", ["03:30", "00:00", "23:59"])
def test_hhmm_accepts(value: str) -> None:
    assert CampaignScheduleConfig(at=value).at == value
    assert CampaignDaemonConfig(at=value).at == value


@pytest.mark.parametrize("value", ["3:30", "24:00", "12:60", "noon", "12:30:00"])
def test_hhmm_rejects(value: str) -> None:
    for model in (CampaignScheduleConfig, CampaignDaemonConfig):
        (p,) = _problems(model, {"at": value})
        assert p.startswith("at: expected a time as HH:MM") and repr(value) in p


def test_grid_backends_validated() -> None:
    assert CampaignGridConfig(backends=["pytorch", "vllm"]).shared == {}
    (p,) = _problems(CampaignGridConfig, {"backends": ["pytorch", "onnx"]})
    assert p == "backends: unknown backend(s) ['onnx']; expected any of ['pytorch', 'vllm', 'tensorrt']"
    (p,) = _problems(CampaignGridConfig, {"backends": []})
    assert p.startswith("backends:")
    (p,) = _problems(CampaignGridConfig, {"backends": ["vllm", "vllm"]})
    assert "twice" in p


def test_grid_overrides_keyed_by_listed_backends() -> None:
    ok = CampaignGridConfig(backends=["pytorch"], backend_overrides={"pytorch": {"batch_size": [1, 2]}})
    assert ok.backend_overrides["pytorch"]["batch_size"] == [1, 2]
    (p,) = _problems(CampaignGridConfig, {"backends": ["pytorch"], "backend_overrides": {"vllm": {"max_num_seqs": [1]}}})
    assert p == "backend_overrides has key(s) ['vllm'] that are not in backends ['pytorch']"


def test_grid_shared_axes_need_values() -> None:
    (p,) = _problems(CampaignGridConfig, {"backends": ["pytorch"], "shared": {"fp_precision": []}})
    assert "shared axes ['fp_precision'] have no values" in p


def test_explicit_experiment() -> None:
    e = CampaignExplicitExperiment(config="a.yaml")
    assert e.overrides == {}
    assert "give config (an experiment YAML), overrides, or both" in _problems(CampaignExplicitExperiment, {})[0]
    assert CampaignExplicitExperiment(overrides={"backend": "vllm"}).config is None


def test_health_check_defaults_and_bounds() -> None:
    h = CampaignHealthCheckConfig()
    assert (h.enabled, h.interval_experiments, h.gpu_memory_threshold_pct, h.restart_on_failure, h.max_restarts) == (
        True, 0, 90.0, True, 3,
    )
    assert _problems(CampaignHealthCheckConfig, {"gpu_memory_threshold_pct": 40})[0].startswith(
        "gpu_memory_threshold_pct: Input should be greater than or equal to 50"
    )
    assert _problems(CampaignHealthCheckConfig, {"gpu_memory_threshold_pct": 101})
    assert _problems(CampaignHealthCheckConfig, {"interval_experiments": -1})
    assert _problems(CampaignHealthCheckConfig, {"max_restarts": -1})


def test_cold_start_defaults() -> None:
    c = CampaignColdStartConfig()
    assert not c.force_cold_start and not c.restart_container


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("30m", 1800), ("2s", 2), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    d = CampaignDaemonConfig(enabled=True, interval=text, total_duration=text)
    assert d.interval_seconds == seconds and d.total_duration_seconds == seconds


@pytest.mark.parametrize("text", ["2", "2d", "h", "-1h", "0s", "two hours", "2 h"])
def test_bad_durations(text: str) -> None:
    (p,) = _problems(CampaignDaemonConfig, {"interval": text})
    assert p.startswith("interval:") and "'2h', '30m' or '45s'" in p or "positive" in p


def test_daemon_defaults() -> None:
    d = CampaignDaemonConfig()
    assert (d.enabled, d.quiet, d.interval_seconds, d.total_duration_seconds) == (False, True, None, None)


def test_io_defaults_and_manifest_path() -> None:
    io = CampaignIOConfig()
    assert (io.results_dir, io.configs_dir, io.state_dir) == ("results", "configs", ".state")
    assert io.manifest_path == Path(".state") / "campaign_manifest.json"
    assert CampaignIOConfig(state_dir="/abs/s", manifest_filename="m.json").manifest_path == Path("/abs/s/m.json")


def test_campaign_needs_something_to_run(tmp_path: Path) -> None:
    CampaignConfig(campaign_name="t", grid=CampaignGridConfig(backends=["pytorch"]))
    exp = tmp_path / "e.yaml"
    exp.write_text("model: {name: gpt2}\n")
    CampaignConfig(campaign_name="t", configs=[str(exp)])
    CampaignConfig(campaign_name="t", experiments=[CampaignExplicitExperiment(config=str(exp))])
    with pytest.raises(ValidationError, match="at least one of: configs, grid, experiments"):
        CampaignConfig(campaign_name="t")


def test_campaign_name_required() -> None:
    (p,) = _problems(CampaignConfig, {"grid": {"backends": ["pytorch"]}})
    assert p == "campaign_name: required field is missing"


def test_configs_must_exist_only_when_listed(tmp_path: Path) -> None:
    (p,) = _problems(CampaignConfig, {"campaign_name": "t", "configs": [str(tmp_path / "nope.yaml")]})
    assert p.startswith("configs: experiment config file(s) not found") and "nope.yaml" in p


def test_campaign_defaults_via_factories() -> None:
    c = CampaignConfig(campaign_name="t", grid=CampaignGridConfig(backends=["vllm"]))
    assert c.execution == CampaignExecutionConfig() and c.io == CampaignIOConfig()
    assert c.health_check == CampaignHealthCheckConfig() and c.cold_start == CampaignColdStartConfig()
    assert c.daemon == CampaignDaemonConfig() and not c.daemon.enabled and c.schedule.at is None and c.experiments == [] and c.configs == []
    other = CampaignConfig(campaign_name="u", grid=CampaignGridConfig(backends=["vllm"]))
    assert other.execution is not c.execution


def test_nested_errors_carry_full_path() -> None:
    (p,) = _problems(CampaignConfig, {"campaign_name": "t", "grid": {"backends": ["pytorch"]}, "execution": {"cycle": 2}})
    assert p == "execution.cycle: unknown key; did you mean 'cycles'?"
    (p,) = _problems(
        CampaignConfig, {"campaign_name": "t", "grid": {"backends": ["pytorch"]}, "daemon": {"interval": "5x"}}
    )
    assert p.startswith("daemon.interval: expected a duration")
    (p,) = _problems(CampaignConfig, {"campaign_name": "t", "experiments": [{"config": "a.yaml", "overide": {}}]})
    assert p.startswith("experiments[0].overide: unknown key")


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (["wed", "mon"], ["mon", "wed"]),
        ("weekdays", ["mon", "tue", "wed", "thu", "fri"]),
        (["weekends"], ["sat", "sun"]),
        (["Monday", "sat", "weekends"], ["mon", "sat", "sun"]),
        ("daily", ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
        (None, None),
    ],
)
def test_schedule_days(days: Any, expected: list[str] | None) -> None:
    assert CampaignScheduleConfig(days=days).days == expected


def test_schedule_days_and_timezone_errors() -> None:
    (p,) = _problems(CampaignScheduleConfig, {"days": ["mon", "wednsday"]})
    assert p.startswith("days: unknown day 'wednsday'") and "did you mean 'wednesday'" in p
    (p,) = _problems(CampaignScheduleConfig, {"days": []})
    assert "would never start" in p
    (p,) = _problems(CampaignScheduleConfig, {"timezone": "Europe/Londn"})
    assert p.startswith("timezone: unknown time zone 'Europe/Londn'") and "did you mean 'Europe/London'" in p
    assert CampaignScheduleConfig(timezone="America/New_York").timezone == "America/New_York"
    assert not CampaignScheduleConfig().restricts_start and CampaignScheduleConfig(days="weekends").restricts_start


def test_notifications_config() -> None:
    n = CampaignNotificationsConfig()
    assert not n.enabled and (n.on_complete, n.on_failure, n.on_campaign_end, n.timeout_seconds) == (True, True, True, 10)
    assert CampaignNotificationsConfig(webhook_url_env="LLEM_WEBHOOK_URL").enabled
    assert CampaignNotificationsConfig(webhook_url="https://hooks.example.org/x").enabled
    (p,) = _problems(CampaignNotificationsConfig, {"webhook_url": "hooks.example.org/x"})
    assert p == "webhook_url: expected an http:// or https:// URL"
    (p,) = _problems(CampaignNotificationsConfig, {"webhook_url": "http://a/b", "webhook_url_env": "URL"})
    assert "not both" in p
    (p,) = _problems(CampaignNotificationsConfig, {"webhook_url_env": "https://a/b"})
    assert p.startswith("webhook_url_env: expected the name of an environment variable")
    assert _problems(CampaignNotificationsConfig, {"timeout_seconds": 0})
    (p,) = _problems(CampaignConfig, {"campaign_name": "t", "grid": {"backends": ["pytorch"]},
                                      "notifications": {"on_failures": True}})
    assert p == "notifications.on_failures: unknown key; did you mean 'on_failure'?"


def test_llenergymeasure_keys(tmp_path: Path) -> None:
    import hashlib

    c = CampaignConfig.model_validate({
        "campaign_name": "pytorch-vs-vllm", "model": "org/m", "dataset": "ai_energy_score", "num_samples": 100,
        "grid": {"backends": ["pytorch"]}, "schedule": {"at": "03:00", "days": ["mon", "wed", "fri"]},
        "daemon": None, "group_by": "backend",
    })
    assert (c.model, c.dataset, c.num_samples, c.group_by) == ("org/m", "ai_energy_score", 100, ["backend"])
    assert c.schedule.days == ["mon", "wed", "fri"] and c.daemon is None
    assert c.campaign_id == hashlib.md5(b"pytorch-vs-vllm").hexdigest()[:8] == campaign_id("pytorch-vs-vllm")
    assert CampaignSettings(schedule=None, notifications=None).schedule == CampaignScheduleConfig()
    section = CampaignSettings(dataset={"source": "synthetic", "input_tokens": 16})
    assert section.dataset == {"source": "synthetic", "input_tokens": 16, "seed": None}
    (p,) = _problems(CampaignSettings, {"dataset": {"source": "synthetic", "input_token": 16}})
    assert p == "dataset: input_token: unknown key; did you mean 'input_tokens'?"
    (p,) = _problems(CampaignSettings, {"num_samples": 0})
    assert p.startswith("num_samples: Input should be greater than or equal to 1")
    (p,) = _problems(CampaignSettings, {"group_by": ["backend", "backend"]})
    assert "twice" in p
    (p,) = _problems(CampaignSettings, {"num_sample": 5})
    assert p == "num_sample: unknown key; did you mean 'num_samples'?"
