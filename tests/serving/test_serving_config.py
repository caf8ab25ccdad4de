"""The scenario group and the load/serving/slo keys: defaults, and every bad input refused at validation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llem.config import ConfigError, ExperimentConfig, validate_or_raise
from llem.config.hashing import config_hash

ROOT = Path(__file__).resolve().parents[2]
BASE = {"model": {"name": "builtin:tiny"}}


def _validate(**kw: object) -> ExperimentConfig:
    return validate_or_raise(ExperimentConfig, {**BASE, **kw}, context="experiment")


def _problems(**kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        _validate(**kw)
    return str(info.value)


def test_serving_gets_defaults_and_offline_keeps_its_hash() -> None:
    exp = _validate(scenario="serving", backend={"name": "vllm"})
    assert exp.load is not None and exp.load.effective_rate == math.inf and exp.load.burstiness == 1.0
    assert exp.serving is not None and exp.serving.min_steady_seconds == 30.0
    offline = _validate()
    assert offline.scenario == "offline" and offline.load is None
    data = offline.model_dump(mode="json")
    before = {k: v for k, v in data.items() if k not in ("scenario", "load", "serving", "slo")}
    assert config_hash(offline) == config_hash(before)
    assert config_hash(exp) != config_hash(_validate(scenario="serving", backend={"name": "vllm"}, load={"rate": 2}))


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        ({"rate": 0}, "load.rate: must be > 0"),
        ({"rate": -1.5}, "load.rate: must be > 0"),
        ({"burstiness": 0}, "load.burstiness: must be > 0"),
        ({"burstiness": -2}, "load.burstiness: must be > 0"),
        ({"max_concurrency": 0}, "load.max_concurrency"),
    ],
)
def test_bad_load_values(load: dict, expected: str) -> None:
    assert expected in _problems(scenario="serving", backend={"name": "vllm"}, load=load)


def test_rate_and_trace_together(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"offset_s": 0, "input_tokens": 8, "output_tokens": 4}\n' * 12)
    text = _problems(scenario="serving", backend={"name": "vllm"}, load={"rate": 2, "trace": str(trace)})
    assert "load.rate (2.0) and load.trace" in text and "set one of them" in text
    ok = _validate(scenario="serving", backend={"name": "vllm"}, load={"trace": str(trace), "warmup_requests": 2})
    assert ok.load is not None and ok.load.trace == str(trace)


def test_missing_and_malformed_traces(tmp_path: Path) -> None:
    serving = {"scenario": "serving", "backend": {"name": "vllm"}}
    assert "does not exist" in _problems(**serving, load={"trace": str(tmp_path / "nope.jsonl")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"offset_s": 0, "input_tokens": 8, "output_tokens": 4}\n{"offset_s": 1, "input_tokens": 8}\n')
    text = _problems(**serving, load={"trace": str(bad)})
    assert "line 2: missing output_tokens" in text
    bad.write_text("{not json\n")
    assert "line 1: not JSON" in _problems(**serving, load={"trace": str(bad)})
    bad.write_text('{"offset_s": -1, "input_tokens": 8, "output_tokens": 4}\n')
    assert "offset_s must be a number of seconds >= 0" in _problems(**serving, load={"trace": str(bad)})
    bad.write_text('{"offset_s": 0, "input_tokens": 0, "output_tokens": 4}\n')
    assert "input_tokens must be a whole number >= 1" in _problems(**serving, load={"trace": str(bad)})


def test_an_engine_without_a_server_is_refused_unless_a_server_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backend has a server llem starts; one without (here: PyTorch's taken away) is refused at plan time."""
    import llem.config.serving as serving_config

    trt = _validate(scenario="serving", backend={"name": "tensorrt"}, fp_precision="float16")  # trtllm-serve
    pt = _validate(scenario="serving", backend={"name": "pytorch"})  # transformers serve
    assert trt.serving is not None and pt.serving is not None
    monkeypatch.setattr(serving_config, "SERVER_ENGINES", ("vllm", "tensorrt"))
    text = _problems(scenario="serving", backend={"name": "pytorch"})
    assert "backend 'pytorch' has no server llem can start" in text and "serving.url" in text
    ok = _validate(scenario="serving", backend={"name": "pytorch"}, serving={"url": "http://127.0.0.1:9"})
    assert ok.serving is not None and ok.serving.url == "http://127.0.0.1:9"


def test_serving_keys_need_the_serving_scenario() -> None:
    assert "only used with scenario=serving" in _problems(load={"rate": 1})
    assert "needs serving.url" in _problems(scenario="serving", backend={"name": "vllm"}, serving={"gpus": [0]})


def _llem(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "llem", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_refuses_a_bad_rate_without_a_traceback_and_starts_nothing(tmp_path: Path) -> None:
    out = _llem("scenario=serving", "backend=vllm", "load.rate=-1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2
    assert "load.rate" in out.stderr + out.stdout and "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "run" / "server.log").exists() and not (tmp_path / "run" / "result.json").exists()


@pytest.mark.slow
def test_cli_dry_run_plans_a_serving_sweep(tmp_path: Path) -> None:
    out = _llem("-m", "scenario=serving", "backend=vllm", "load.rate=1,4,inf", "load.max_concurrency=2",
                "serving.min_steady_seconds=5", "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={tmp_path}/sweep",
                cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    manifest = json.loads(next((tmp_path / "sweep").rglob("campaign_manifest.json")).read_text())
    text = json.dumps(manifest)
    assert "load.rate=inf" in text and "load.rate=4" in text
    bad = _llem("-m", "scenario=serving", "backend=vllm", "load.rate=2", "load.burstiness=0",
                "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={tmp_path}/bad", cwd=tmp_path)
    assert bad.returncode != 0 and "load.burstiness" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr + bad.stdout


def test_load_points_sharing_a_server_are_planned_next_to_each_other() -> None:
    """`load.rate=50,inf backend.max_num_seqs=2,3` in grid order alternates the server settings; the plan puts the
    load points of one server together (in the order given) and leaves offline configurations where they were."""
    from llem.plan.expand import PlannedConfig
    from llem.plan.planner import servers_adjacent

    grid = [("50", 2), ("50", 3), ("inf", 2), ("inf", 3)]
    experiments = {f"s{rate}-{seqs}": _validate(scenario="serving", backend={"name": "vllm", "max_num_seqs": seqs},
                                                load={"rate": float(rate)})
                   for rate, seqs in grid}
    experiments["offline"] = _validate(backend={"name": "vllm", "max_num_seqs": 3})
    valid = [(PlannedConfig(overrides=(d,), backend="vllm", origin="cli"), d)
             for d in ["s50-2", "offline", "s50-3", "sinf-2", "sinf-3"]]
    ordered = [d for _, d in servers_adjacent(valid, experiments)]
    assert ordered == ["s50-2", "sinf-2", "offline", "s50-3", "sinf-3"]
    offline_only = [(c, d) for c, d in valid if d == "offline"]
    assert servers_adjacent(offline_only, experiments) == offline_only
