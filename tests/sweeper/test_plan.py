"""Expansion rules, precedence, duplicates, validation and the manifest, without launching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llem.config import CampaignConfig, CampaignSettings
from llem.plan.compose import FastComposer
from llem.plan.expand import Axis, PlanError, expand
from llem.plan.planner import build_manifest, make_plan

EXAMPLE_GRID = {
    "backends": ["pytorch", "vllm"],
    "shared": {"fp_precision": ["float16", "bfloat16"]},
    "backend_overrides": {"pytorch": {"batch_size": [1, 4, 8]}, "vllm": {"max_num_seqs": [1, 4, 8]}},
}


def _campaign(cycles: int = 1, structure: str = "interleaved", **kw: Any) -> CampaignSettings:
    return CampaignConfig.model_validate(
        {"campaign_name": "t", "execution": {"cycles": cycles, "structure": structure}, **kw}
    )


def _axis(key: str, *values: str) -> Axis:
    return Axis(key=key, choices=[f"{key}={v}" for v in values])


def _plan(loader: Any, axes: list[Axis], settings: CampaignSettings, default_backend: str = "pytorch") -> Any:
    composer = FastComposer(loader, "config")
    return make_plan(axes, settings, composer.compose, default_backend=default_backend, model_options={"tiny"})


def test_worked_example_gives_12_scoped_jobs() -> None:
    configs = expand([], _campaign(grid=EXAMPLE_GRID), default_backend="pytorch", model_options=set())
    assert len(configs) == 12
    for c in configs:
        keys = {o.split("=")[0] for o in c.overrides}
        if c.backend == "pytorch":
            assert "backend.batch_size" in keys and "backend.max_num_seqs" not in keys
        else:
            assert "backend.max_num_seqs" in keys and "backend.batch_size" not in keys
        assert f"backend={c.backend}" in c.overrides


def test_cli_scoped_axes_apply_only_where_the_schema_has_them() -> None:
    axes = [_axis("backend", "pytorch", "vllm"), _axis("backend.batch_size", "1", "4"),
            _axis("backend.max_num_seqs", "8", "16")]
    configs = expand(axes, CampaignSettings(), default_backend="pytorch", model_options=set())
    assert sorted(c.overrides for c in configs) == sorted([
        ("backend=pytorch", "backend.batch_size=1"), ("backend=pytorch", "backend.batch_size=4"),
        ("backend=vllm", "backend.max_num_seqs=8"), ("backend=vllm", "backend.max_num_seqs=16"),
    ])


def test_scoped_key_no_backend_has_is_an_error() -> None:
    with pytest.raises(PlanError, match=r"backend.max_num_seqs: no selected backend \(pytorch\) has the parameter "
                                        r"'max_num_seqs'; it is a parameter of vllm"):
        expand([_axis("backend.max_num_seqs", "8")], CampaignSettings(), default_backend="pytorch", model_options=set())


def test_cli_beats_campaign_for_the_same_key() -> None:
    axes = [_axis("fp_precision", "float32"), _axis("backend.batch_size", "2")]
    configs = expand(axes, _campaign(grid=EXAMPLE_GRID), default_backend="pytorch", model_options=set())
    assert len(configs) == 4  # pytorch: 1 precision x 1 batch size; vllm: 1 precision x 3 max_num_seqs
    assert all("fp_precision=float32" in c.overrides for c in configs)
    assert all("backend.batch_size=2" in c.overrides for c in configs if c.backend == "pytorch")
    cli_backends = expand([_axis("backend", "vllm")], _campaign(grid=EXAMPLE_GRID), default_backend="pytorch",
                          model_options=set())
    assert {c.backend for c in cli_backends} == {"vllm"} and len(cli_backends) == 6


def test_models_axis_uses_groups_or_names() -> None:
    grid = {"backends": ["pytorch"], "models": ["tiny", "org/model-x"]}
    configs = expand([], _campaign(grid=grid), default_backend="pytorch", model_options={"tiny"})
    assert [c.overrides[1] for c in configs] == ["model=tiny", "model.name=org/model-x"]


def test_backend_on_the_command_line_is_refused_for_explicit_experiments(tmp_path: Path) -> None:
    """It would be silently ignored: each experiment file names its own backend."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"backend": {"name": "pytorch", "batch_size": 2}}))
    for settings in (_campaign(configs=[str(exp)]), _campaign(grid=EXAMPLE_GRID, experiments=[{"config": str(exp)}])):
        with pytest.raises(PlanError, match=r"backend=vllm on the command line: .*grid\.backends"):
            expand([_axis("backend", "vllm")], settings, default_backend="pytorch", model_options=set())
    grid_only = expand([_axis("backend", "vllm")], _campaign(grid=EXAMPLE_GRID), default_backend="pytorch",
                       model_options=set())  # fmt: skip
    assert {c.backend for c in grid_only} == {"vllm"}  # a grid takes it: it picks the grid's backends


def test_explicit_experiments_and_configs_become_overrides(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "backend": {"name": "vllm", "max_num_seqs": 8, "engine_args": {"block_size": 16}},
        "fp_precision": "bfloat16", "decoder": {"temperature": 0.7}, "model": {"name": "org/m"},
    }))
    settings = _campaign(configs=[str(exp)], experiments=[{"config": str(exp), "overrides": {"backend.max_num_seqs": 2}}])
    configs = expand([_axis("max_output_tokens", "16")], settings, default_backend="pytorch", model_options=set())
    assert len(configs) == 2
    first, second = configs
    assert first.backend == second.backend == "vllm"
    assert first.overrides[0] == "backend=vllm"
    assert set(first.overrides) == {"backend=vllm", "backend.max_num_seqs=8", "backend.engine_args={block_size:16}",
                                    "fp_precision=bfloat16", "decoder.temperature=0.7", "model.name=org/m",
                                    "max_output_tokens=16"}
    assert "backend.max_num_seqs=2" in second.overrides and "backend.max_num_seqs=8" not in second.overrides


def test_plan_validates_every_job_and_reports_all_invalid(loader: Any) -> None:
    axes = [_axis("backend", "pytorch", "tensorrt"), _axis("fp_precision", "float32", "float16")]
    plan = _plan(loader, axes, CampaignSettings())
    assert len(plan.runnable) == 3 * 3  # default cycles 3
    (bad,) = plan.invalid
    assert bad.config.overrides == ("backend=tensorrt", "fp_precision=float32")
    assert "fp_precision: TensorRT-LLM does not run float32" in (bad.error or "")
    assert "configuration 3/4 [backend=tensorrt fp_precision=float32]" in (bad.error or "")


def test_unknown_and_misspelt_keys_are_reported_per_job(loader: Any) -> None:
    plan = _plan(loader, [Axis("x", ["+decoder.temprature=0.5"]), _axis("max_output_tokens", "0", "8")],
                 CampaignSettings(execution={"cycles": 1}))
    assert len(plan.invalid) == 2 and not plan.runnable
    assert all("decoder.temprature: unknown key; did you mean 'temperature'?" in (j.error or "") for j in plan.invalid)
    assert any("max_output_tokens: Input should be greater than or equal to 1" in (j.error or "") for j in plan.invalid)
    plan = _plan(loader, [_axis("decoder.temprature", "0.5")], CampaignSettings())
    assert "cannot compose" in (plan.invalid[0].error or "") and "+decoder.temprature" in (plan.invalid[0].error or "")


def test_duplicates_run_once_and_are_recorded(loader: Any) -> None:
    # fp_precision=float32 is the default, so these two resolve to the same config
    plan = _plan(loader, [Axis("fp_precision", ["fp_precision=float32", "++fp_precision=float32"])],
                 CampaignSettings(execution={"cycles": 1}))
    assert len(plan.runnable) == 1
    (dup,) = plan.duplicates
    assert dup.overrides == ["++fp_precision=float32"] and dup.same_as == ["fp_precision=float32"]


def test_cycles_and_numbering(loader: Any) -> None:
    settings = CampaignSettings(execution={"cycles": 2, "structure": "grouped"})
    plan = _plan(loader, [_axis("backend.batch_size", "1", "2")], settings)
    assert [(j.job_num, j.cycle, j.config.params["backend.batch_size"]) for j in plan.runnable] == [
        (0, 0, "1"), (1, 1, "1"), (2, 0, "2"), (3, 1, "2")
    ]
    shuffled = _plan(loader, [_axis("backend.batch_size", "1", "2", "3")],
                     CampaignSettings(execution={"cycles": 2, "structure": "shuffled"}))
    assert shuffled.shuffle_seed is not None
    assert plan.swept_keys == ["backend.batch_size"]


def test_manifest_content(loader: Any, tmp_path: Path) -> None:
    plan = _plan(loader, [_axis("backend", "pytorch", "tensorrt"), _axis("fp_precision", "float32", "float16")],
                 CampaignSettings(execution={"cycles": 2}))
    manifest = build_manifest(plan, campaign_name="c", sweep_dir=tmp_path)
    assert manifest.campaign_name == "c" and manifest.cycles == 2 and manifest.structure == "interleaved"
    assert len(manifest.jobs) == 7 and manifest.counts() == {"pending": 6, "invalid": 1}
    job = manifest.jobs[0]
    assert job.job_num == 0 and job.status == "pending" and job.attempts == 0 and job.config_hash
    assert job.result_path == str(tmp_path / "0" / "result.json")
    assert job.params == {"backend": "pytorch", "fp_precision": "float32"}
    assert set(manifest.swept_keys) == {"backend", "fp_precision"}
    invalid = manifest.jobs[-1]
    assert invalid.status == "invalid" and invalid.error and invalid.result_path is None
    again = _plan(loader, [_axis("backend", "pytorch", "tensorrt"), _axis("fp_precision", "float32", "float16")],
                  CampaignSettings(execution={"cycles": 2}))
    assert again.plan_hash() == plan.plan_hash()


def _overrides_of(configs: list[Any]) -> list[tuple[str, ...]]:
    return [c.overrides for c in configs]


def test_campaign_model_is_a_default_for_jobs_without_a_model(tmp_path: Path) -> None:
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"model": {"name": "org/own"}, "backend": {"name": "pytorch"}}))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"backend": {"name": "pytorch", "batch_size": 2}}))
    settings = _campaign(model="tiny", configs=[str(own), str(plain)], grid={"backends": ["pytorch"]})
    grid_job, own_job, plain_job = expand([], settings, default_backend="pytorch", model_options={"tiny"})
    assert grid_job.overrides == ("backend=pytorch", "model=tiny")
    assert "model.name=org/own" in own_job.overrides and "model=tiny" not in own_job.overrides
    assert plain_job.overrides[:2] == ("backend=pytorch", "model=tiny")
    # an id that is no config-group option becomes model.name; grid.models and the command line win
    named = expand([], _campaign(model="org/x", grid={"backends": ["pytorch"]}), default_backend="pytorch",
                   model_options={"tiny"})
    assert named[0].overrides == ("backend=pytorch", "model.name=org/x")
    by_grid = expand([], _campaign(model="org/x", grid={"backends": ["pytorch"], "models": ["tiny"]}),
                     default_backend="pytorch", model_options={"tiny"})
    assert [o for o in by_grid[0].overrides if o.startswith("model")] == ["model=tiny"]
    by_cli = expand([_axis("model", "qwen2.5-0.5b")], _campaign(model="org/x", grid={"backends": ["pytorch"]}),
                    default_backend="pytorch", model_options={"tiny", "qwen2.5-0.5b"})
    assert [o for o in by_cli[0].overrides if o.startswith("model")] == ["model=qwen2.5-0.5b"]


def test_campaign_prompts_replace_experiment_files_but_not_grid_axes_or_the_command_line(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"dataset": {"source": "synthetic", "input_tokens": 8}, "num_input_prompts": 64}))
    settings = _campaign(dataset="alpaca", num_samples=5, configs=[str(exp)],
                         experiments=[{"config": str(exp), "overrides": {"dataset.split": "test"}}])
    from_file, with_inline = expand([], settings, default_backend="pytorch", model_options=set())
    alpaca = ("dataset=huggingface", "dataset.path=tatsu-lab/alpaca", "dataset.column=instruction",
              "dataset.split=train", "num_input_prompts=5")
    assert from_file.overrides == alpaca  # the file's synthetic source and 64 prompts are replaced
    assert "dataset.split=test" in with_inline.overrides and "dataset.split=train" not in with_inline.overrides
    grid = _campaign(dataset="alpaca", num_samples=5,
                     grid={"backends": ["pytorch"], "shared": {"num_input_prompts": [2, 4]}})
    counts = [c.params["num_input_prompts"] for c in expand([], grid, default_backend="pytorch", model_options=set())]
    assert counts == ["2", "4"]  # a swept grid axis beats the campaign-wide count
    cli = expand([_axis("dataset", "synthetic"), _axis("num_input_prompts", "3")], grid, default_backend="pytorch",
                 model_options=set())
    assert all(not any(o.startswith("dataset.") for o in c.overrides) for c in cli)  # a new source drops alpaca's keys
    assert {c.params["num_input_prompts"] for c in cli} == {"3"} and all("dataset=synthetic" in c.overrides for c in cli)


def test_campaign_dataset_forms(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')

    def only(dataset: Any) -> tuple[str, ...]:
        (config,) = expand([], _campaign(dataset=dataset, grid={"backends": ["pytorch"]}), default_backend="pytorch",
                           model_options=set(), dataset_options={"builtin", "synthetic", "file", "huggingface"})
        return config.overrides[1:]

    assert only("synthetic") == ("dataset=synthetic",)
    assert only(str(prompts)) == ("dataset=file", f"dataset.path={prompts}")
    assert only("org/prompts") == ("dataset=huggingface", "dataset.path=org/prompts")
    assert only("gsm8k") == ("dataset=huggingface", "dataset.path=gsm8k", "dataset.subset=main",
                             "dataset.column=question", "dataset.split=train")
    assert only({"source": "synthetic", "input_tokens": 32}) == (
        "dataset=synthetic", "dataset.input_tokens=32", "dataset.seed=null")
    with pytest.raises(PlanError, match="prompt file .*missing.txt not found"):
        only(str(tmp_path / "missing.txt"))
    with pytest.raises(PlanError, match="'sharegpt' cannot be used: its prompts are conversations"):
        only("sharegpt")


def test_campaign_prompts_compose_into_valid_jobs(loader: Any, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    plan = _plan(loader, [], CampaignSettings(model="tiny", dataset=str(prompts), num_samples=2,
                                              execution={"cycles": 1}))
    (job,) = plan.runnable
    resolved = plan.resolved[job.config_hash or ""]
    assert resolved["dataset"] == {"source": "file", "path": str(prompts), "field": "prompt"}
    assert resolved["num_input_prompts"] == 2 and resolved["model"]["name"] == "builtin:tiny"


def test_manifest_records_campaign_id_and_group_by(loader: Any, tmp_path: Path) -> None:
    import hashlib

    plan = _plan(loader, [_axis("backend.batch_size", "1", "2")],
                 CampaignSettings(execution={"cycles": 1}, group_by=["backend.batch_size"]))
    manifest = build_manifest(plan, campaign_name="night run", sweep_dir=tmp_path)
    assert manifest.campaign_id == hashlib.md5(b"night run").hexdigest()[:8]
    assert manifest.group_by == ["backend.batch_size"]
