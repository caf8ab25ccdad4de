"""The dry run's memory estimate: close to what CPU runs of the tiny model measure, and checked against known GPUs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llem.config import CampaignSettings, ExperimentConfig
from llem.plan.compose import FastComposer
from llem.plan.expand import Axis
from llem.plan.memory import MemoryEstimate, estimate, gpu_memory, plan_memory, read_model_config, will_not_fit
from llem.plan.planner import make_plan
from llem.plan.table import print_memory, print_plan
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml

MiB = 2**20


def _experiment(**overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": "builtin:tiny"}, "num_input_prompts": 4, "max_input_tokens": 16, "max_output_tokens": 4,
        "baseline": {"enabled": False}, "warmup": {"num_prompts": 0},
        "measure": {"min_window_seconds": 0.0, "phase_split": False}, "backend": {"name": "pytorch", "batch_size": 2},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    from llem.measure.session import BackendSession

    s = BackendSession()
    yield s
    s.release()


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {},
    {"fp_precision": "bfloat16", "backend": {"name": "pytorch", "batch_size": 4}, "max_output_tokens": 8},
])
def test_the_estimate_matches_a_cpu_run_within_ten_percent(tmp_path: Path, session: Any,
                                                           overrides: dict[str, Any]) -> None:
    from llem.measure.harness import run_experiment

    experiment = _experiment(**overrides)
    data = experiment.model_dump(mode="json")
    predicted = estimate(data, read_model_config(data["model"]))
    measured = run_experiment(experiment, tmp_path, session).memory
    assert measured.weights_kv_peak_bytes is not None and predicted.total_bytes is not None
    assert predicted.total_bytes == pytest.approx(measured.weights_kv_peak_bytes, rel=0.10)
    assert predicted.weights_bytes == pytest.approx(measured.weights_bytes, rel=0.01)


def test_the_kv_cache_grows_with_batch_and_length() -> None:
    hf = read_model_config({"name": "builtin:tiny"})
    base = _experiment().model_dump(mode="json")
    small = estimate(base, hf)
    # keys and values x layers x KV heads x head size x float32 bytes x batch x (prompt + output)
    assert small.kv_cache_bytes == 2 * 2 * 2 * 64 * 4 * 2 * (16 + 4)
    bigger = estimate({**base, "max_output_tokens": 44}, hf)
    assert bigger.kv_cache_bytes == 3 * small.kv_cache_bytes  # type: ignore[operator]
    assert estimate(base, None).reason and estimate(base, None).total_bytes is None


def test_jobs_that_will_not_fit_are_flagged() -> None:
    fake = FakeNvml([FakeGpu(name="Small GPU", memory_total=3 * MiB), FakeGpu(name="Big GPU", memory_total=80 * MiB)])
    gpus = gpu_memory(fake)
    assert gpus == [("Small GPU", 3 * MiB), ("Big GPU", 80 * MiB)]
    vllm = {"backend": {"name": "vllm", "gpu_memory_utilization": 0.5}}
    assert will_not_fit(MemoryEstimate(2 * MiB, 0), {}, gpus) is None
    why = will_not_fit(MemoryEstimate(2 * MiB, 0), vllm, gpus)  # vLLM may take only half of the small GPU
    assert why is not None and "Small GPU" in why and "1.5 MiB usable" in why
    assert "needs 4 GPUs" in str(will_not_fit(MemoryEstimate(MiB, 0, gpus=4), {}, gpus))


@pytest.fixture
def loader() -> Iterator[Any]:
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def test_the_dry_run_table_shows_estimates_and_misfits(loader: Any) -> None:
    settings = CampaignSettings(execution={"cycles": 1})
    axes = [Axis("model", ["model=tiny"]),
            Axis("fp_precision", ["fp_precision=float32", "fp_precision=bfloat16"])]
    plan = make_plan(axes, settings, FastComposer(loader, "config").compose, default_backend="pytorch",
                     model_options={"tiny"})
    assert not plan.invalid
    memory = plan_memory(plan.resolved, FakeNvml([FakeGpu(name="Tiny GPU", memory_total=3 * MiB)]))
    out = io.StringIO()
    print_plan(plan, out, memory=memory)
    print_memory(plan, memory, out)
    text = out.getvalue()
    assert "est. GPU memory" in text and "(will not fit)" in text
    assert "warning: 1 job(s) will not fit on this machine's GPUs" in text
    assert "job 0 [model=tiny fp_precision=float32]: needs about" in text and "Tiny GPU" in text
    assert "GPUs here: Tiny GPU (3.0 MiB)" in text
