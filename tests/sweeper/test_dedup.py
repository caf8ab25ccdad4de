"""Configurations whose effective engine settings are equal run once; dormant values are warned about."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from llem.config import CampaignSettings
from llem.plan.compose import FastComposer
from llem.plan.expand import Axis
from llem.plan.planner import build_manifest, make_plan
from llem.plan.table import print_plan


def _axis(key: str, *values: str) -> Axis:
    return Axis(key=key, choices=[f"{key}={v}" for v in values])


def _plan(loader: Any, axes: list[Axis], dedup: str = "resolved", backend: str = "pytorch") -> Any:
    settings = CampaignSettings(execution={"cycles": 2}, dedup=dedup)
    composer = FastComposer(loader, "config")
    return make_plan(axes, settings, composer.compose, default_backend=backend, model_options={"tiny"})


def _kept(plan: Any) -> list[tuple[str, ...]]:
    return list(dict.fromkeys(tuple(j.config.overrides) for j in plan.runnable))


def test_a_quant_type_without_the_4bit_load_runs_once(loader: Any, tmp_path: Path) -> None:
    plan = _plan(loader, [_axis("backend.bnb_4bit_quant_type", "nf4", "fp4")])
    assert _kept(plan) == [("backend.bnb_4bit_quant_type=nf4",)]
    [dup] = plan.duplicates
    assert dup.kind == "equivalent" and dup.overrides == ["backend.bnb_4bit_quant_type=fp4"]
    assert dup.same_as == ["backend.bnb_4bit_quant_type=nf4"] and dup.differs_in == ["backend.bnb_4bit_quant_type"]
    assert dup.same_as_jobs == [0, 1]  # the kept configuration's job in each cycle
    [note] = plan.notes
    assert "backend.bnb_4bit_quant_type (fp4) has no effect while backend.load_in_4bit=false" in note
    out = io.StringIO()
    print_plan(plan, out)
    assert "1 configuration(s) equivalent to another run once" in out.getvalue()
    assert "[backend.bnb_4bit_quant_type=fp4] = [backend.bnb_4bit_quant_type=nf4]" in out.getvalue()
    manifest = build_manifest(plan, campaign_name="c", sweep_dir=tmp_path)
    assert manifest.duplicates[0].kind == "equivalent" and len(manifest.jobs) == 2


def test_a_compile_mode_matters_only_when_compiling(loader: Any) -> None:
    modes = _axis("backend.torch_compile_mode", "default", "max-autotune")
    plan = _plan(loader, [_axis("backend.torch_compile", "false", "true"), modes])
    assert _kept(plan) == [
        ("backend.torch_compile=false", "backend.torch_compile_mode=default"),
        ("backend.torch_compile=true", "backend.torch_compile_mode=default"),
        ("backend.torch_compile=true", "backend.torch_compile_mode=max-autotune"),
    ]
    assert [d.differs_in for d in plan.duplicates] == [["backend.torch_compile_mode"]]
    assert any("backend.torch_compile_mode (max-autotune) has no effect while backend.torch_compile=false" in n
               for n in plan.notes)


def test_length_sorting_matters_only_above_batch_size_one(loader: Any) -> None:
    plan = _plan(loader, [_axis("backend.batch_size", "1", "4"), _axis("backend.sort_by_length", "false", "true")])
    assert _kept(plan) == [
        ("backend.batch_size=1", "backend.sort_by_length=false"),
        ("backend.batch_size=4", "backend.sort_by_length=false"),
        ("backend.batch_size=4", "backend.sort_by_length=true"),
    ]
    assert any("backend.sort_by_length (True) has no effect while backend.batch_size=1" in n for n in plan.notes)


def test_sampling_settings_under_greedy_decoding(loader: Any) -> None:
    plan = _plan(loader, [_axis("decoder.top_k", "0", "50")])
    assert len(_kept(plan)) == 1
    assert any("decoder.top_k (50) has no effect while decoder.do_sample=false" in n for n in plan.notes)
    sampled = _plan(loader, [_axis("decoder.do_sample", "true"), _axis("decoder.top_k", "0", "50")])
    assert len(_kept(sampled)) == 2 and not sampled.notes


def test_vllm_null_and_the_engine_default_are_the_same(loader: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from llem.plan import effective

    monkeypatch.setattr(effective, "_installed_vllm", lambda: "0.32.0")  # a release whose defaults llem checked
    plan = _plan(loader, [_axis("backend", "vllm"), _axis("backend.enable_prefix_caching", "null", "true", "false")],
                 backend="vllm")
    assert [o[-1] for o in _kept(plan)] == ["backend.enable_prefix_caching=null", "backend.enable_prefix_caching=false"]
    [dup] = plan.duplicates
    assert dup.overrides[-1] == "backend.enable_prefix_caching=true" and dup.kind == "equivalent"


def test_dedup_none_runs_everything(loader: Any) -> None:
    plan = _plan(loader, [_axis("backend.bnb_4bit_quant_type", "nf4", "fp4")], dedup="none")
    assert len(_kept(plan)) == 2 and not plan.duplicates
    assert plan.notes  # the dormant value is still worth a warning


@pytest.mark.parametrize("value", ["resolved", "none"])
def test_dedup_is_a_campaign_setting(value: str) -> None:
    assert CampaignSettings(dedup=value).dedup == value
    with pytest.raises(ValueError):
        CampaignSettings(dedup="all")


@pytest.mark.parametrize("version", [None, "0.6.3"])
def test_vllm_null_is_its_own_job_where_the_engine_default_is_not_known(loader: Any, monkeypatch: pytest.MonkeyPatch,
                                                                         version: str | None) -> None:  # fmt: skip
    """No vLLM on the planning host, or a release whose defaults differ: null and true may not be the same work."""
    from llem.plan import effective

    monkeypatch.setattr(effective, "_installed_vllm", lambda: version)
    plan = _plan(loader, [_axis("backend", "vllm"), _axis("backend.enable_prefix_caching", "null", "true")],
                 backend="vllm")
    assert len(_kept(plan)) == 2 and not plan.duplicates
