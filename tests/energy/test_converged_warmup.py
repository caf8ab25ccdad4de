"""Converged warm-up: batches until their latency settles, recorded in result.json, warned about when it does not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llem.config import ExperimentConfig
from llem.config.hashing import config_hash
from llem.measure.warmup import coefficient_of_variation, run_until_converged, warmup_warnings


class ScriptedClock:
    """A clock whose every batch takes the next scripted latency."""

    def __init__(self, latencies: list[float]) -> None:
        self.latencies = list(latencies)
        self.now = 0.0
        self.batches = 0
        self._started = False

    def __call__(self) -> float:
        if self._started:
            self.now += self.latencies[self.batches - 1]
        self._started = not self._started
        return self.now

    def run_batch(self) -> None:
        self.batches += 1


def _run(latencies: list[float], **kw: Any) -> Any:
    clock = ScriptedClock(latencies)
    settings = {"cv_threshold": 0.05, "window": 3, "min_batches": 3, "max_batches": 8, **kw}
    return run_until_converged(clock.run_batch, clock=clock, **settings), clock


def test_stops_once_the_last_window_agrees() -> None:
    outcome, clock = _run([5.0, 3.0, 1.2, 1.0, 1.02, 0.99, 1.0, 1.0])
    # [1.2, 1.0, 1.02] still varies by 8 %; [1.0, 1.02, 0.99] by about 1 %
    assert outcome.converged and outcome.batches == clock.batches == 6
    assert outcome.latencies_s == pytest.approx([5.0, 3.0, 1.2, 1.0, 1.02, 0.99])
    assert outcome.final_cv == pytest.approx(coefficient_of_variation([1.0, 1.02, 0.99]))
    assert outcome.final_cv < 0.05
    assert warmup_warnings({"mode": "converged", **outcome.as_dict()}) == []


def test_runs_at_least_min_batches() -> None:
    outcome, _ = _run([1.0] * 8, min_batches=5)
    assert outcome.converged and outcome.batches == 5


def test_a_warmup_that_never_settles_stops_at_the_maximum_with_a_warning() -> None:
    outcome, clock = _run([1.0, 2.0] * 4)
    assert not outcome.converged and outcome.batches == clock.batches == 8
    info = {"mode": "converged", **outcome.as_dict()}
    assert info["stopped_by"] == "max_batches"
    [warning] = warmup_warnings(info)
    assert "did not converge" in warning and "after 8 batches" in warning and "0.05" in warning


def test_bounds_are_checked() -> None:
    with pytest.raises(ValidationError, match="max_batches"):
        ExperimentConfig.model_validate({"model": {"name": "builtin:tiny"},
                                         "warmup": {"mode": "converged", "window": 5, "max_batches": 4}})


def test_the_default_mode_keeps_a_configs_hash() -> None:
    plain = ExperimentConfig.model_validate({"model": {"name": "builtin:tiny"}})
    spelled = ExperimentConfig.model_validate({"model": {"name": "builtin:tiny"}, "warmup": {"mode": "fixed"}})
    converged = ExperimentConfig.model_validate({"model": {"name": "builtin:tiny"}, "warmup": {"mode": "converged"}})
    assert config_hash(plain) == config_hash(spelled) != config_hash(converged)


# ------------------------------------------------------------------------------------------- a real CPU run
@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    from llem.measure.session import BackendSession

    s = BackendSession()
    yield s
    s.release()


@pytest.mark.slow
def test_a_cpu_run_records_the_converged_warmup(tmp_path: Path, session: Any) -> None:
    from llem.measure.harness import run_experiment

    experiment = ExperimentConfig.model_validate({
        "model": {"name": "builtin:tiny"}, "num_input_prompts": 4, "max_input_tokens": 16, "max_output_tokens": 4,
        "baseline": {"enabled": False}, "backend": {"name": "pytorch", "batch_size": 2},
        "measure": {"phase_split": False},
        # a threshold no real latency meets: the warm-up runs to its maximum and says so
        "warmup": {"mode": "converged", "cv_threshold": 1e-9, "window": 2, "min_batches": 2, "max_batches": 3},
    })
    result = run_experiment(experiment, tmp_path, session)
    warmup = result.warmup
    assert warmup["mode"] == "converged" and warmup["batches"] == 3 and warmup["converged"] is False
    assert warmup["prompts_per_batch"] == 2 and len(warmup["latencies_s"]) == 3
    assert any("warm-up did not converge" in w for w in result.warnings)
