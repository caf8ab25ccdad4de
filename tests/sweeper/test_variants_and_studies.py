"""Variant groups in a grid, and LLenergyMeasure study files read through `campaign.file`."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from llem.config import CampaignConfig, CampaignSettings
from llem.plan.campaign_file import CampaignFileError, load_settings
from llem.plan.compose import FastComposer
from llem.plan.expand import PlanError, expand
from llem.plan.planner import make_plan

REPO = Path(__file__).resolve().parents[2]


def _grid(**grid: Any) -> CampaignSettings:
    return CampaignConfig.model_validate({"campaign_name": "v", "grid": grid})


def _keyed(settings: CampaignSettings) -> set[tuple[str, ...]]:
    configs = expand([], settings, default_backend="pytorch", model_options=set())
    return {tuple(sorted(c.overrides)) for c in configs}


def test_variants_cross_the_shared_axes_and_are_scoped_to_backends() -> None:
    settings = _grid(
        backends=["pytorch", "vllm"],
        shared={"fp_precision": ["float16", "bfloat16"]},
        variants=[{}, {"backend.load_in_4bit": True, "backend.bnb_4bit_quant_type": ["nf4", "fp4"]}],
    )
    jobs = _keyed(settings)
    pytorch = {j for j in jobs if "backend=pytorch" in j}
    vllm = {j for j in jobs if "backend=vllm" in j}
    assert len(pytorch) == 2 * (1 + 2) and len(vllm) == 2  # vLLM has no load_in_4bit: only the plain variant
    assert ("backend.bnb_4bit_quant_type=fp4", "backend.load_in_4bit=true", "backend=pytorch",
            "fp_precision=float16") in pytorch
    # a quant type never appears without the 4-bit load it belongs to
    assert all("backend.load_in_4bit=true" in j for j in jobs if any("bnb_4bit_quant_type" in o for o in j))


def test_a_variant_can_name_its_backend_and_overrides_a_shared_axis() -> None:
    settings = _grid(
        backends=["pytorch", "vllm"],
        shared={"fp_precision": ["float16"]},
        variants=[{}, {"backend": "vllm", "fp_precision": "bfloat16", "backend.enforce_eager": True}],
    )
    jobs = _keyed(settings)
    assert jobs == {
        ("backend=pytorch", "fp_precision=float16"),
        ("backend=vllm", "fp_precision=float16"),
        ("backend.enforce_eager=true", "backend=vllm", "fp_precision=bfloat16"),
    }


def test_a_variant_no_backend_can_take_is_an_error() -> None:
    settings = _grid(backends=["vllm"], variants=[{}, {"backend.load_in_4bit": True}])
    with pytest.raises(PlanError, match=r"grid.variants\[1\] applies to none of the backends \['vllm'\]"):
        expand([], settings, default_backend="vllm", model_options=set())


def test_variant_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"variants\[1\]: \['backend.batch_size'\] have no values"):
        _grid(backends=["pytorch"], variants=[{}, {"backend.batch_size": []}])
    with pytest.raises(ValueError, match=r"variants\[1\] repeats variants\[0\]"):
        _grid(backends=["pytorch"], variants=[{}, {}])


def test_the_example_campaign_plans_valid_jobs(loader: Any) -> None:
    import yaml

    data = yaml.safe_load((REPO / "conf" / "campaign" / "quantization.yaml").read_text())
    data.pop("defaults")
    settings = CampaignConfig.model_validate(data)
    plan = make_plan([], settings, FastComposer(loader, "config").compose, default_backend="pytorch",
                     model_options={"tiny"})
    assert not plan.invalid
    per_backend = {b: sum(c.values()) for b, c in plan.counts_by_backend().items()}
    assert per_backend == {"pytorch": 8 * 3, "vllm": 2 * 3}


# ------------------------------------------------------------------------------------------- study files
BASE = """\
model: gpt2
max_input_tokens: 256
decoder:
  preset: null
"""

STUDY = """\
name: quantisation-study
base: base-experiment.yaml
model: Qwen/Qwen2.5-0.5B-Instruct
backend: pytorch
n: 50
precision: bf16
max_output_tokens: 32
decoder:
  do_sample: false
pytorch:
  attn_implementation: sdpa
vllm:
  engine:
    enforce_eager: true

sweep:
  backend: [pytorch, vllm]
  precision: [fp16, bf16]
  pytorch.batch_size: [1, 4]
  vllm.engine.max_num_seqs: [8, 16]
  quantisation:
    - {}
    - pytorch.load_in_8bit: true
    - pytorch:
        load_in_4bit: true
        bnb_4bit_quant_type: [nf4, fp4]

experiments:
  - backend: vllm
    vllm:
      engine:
        block_size: 32
    n: 20

execution:
  n_cycles: 2
  cycle_order: sequential
  experiment_gap_seconds: 5
"""


def _study(tmp_path: Path, text: str, base: str | None = BASE) -> Path:
    if base is not None:
        (tmp_path / "base-experiment.yaml").write_text(base)
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_study_file_maps_to_llem_keys(tmp_path: Path) -> None:
    path = _study(tmp_path, STUDY, BASE.replace("decoder:\n  preset: null\n", ""))
    settings = load_settings({"file": str(path)}, [], cwd=tmp_path)
    assert settings.campaign_name == "quantisation-study"
    assert settings.model == "Qwen/Qwen2.5-0.5B-Instruct"  # the study's own field wins over its base
    assert settings.num_samples == 50
    assert (settings.execution.cycles, settings.execution.structure) == (2, "grouped")
    assert settings.execution.config_gap_seconds == 5
    grid = settings.grid
    assert grid is not None and grid.backends == ["pytorch", "vllm"]
    assert grid.shared["fp_precision"] == ["float16", "bfloat16"]
    assert grid.shared["max_input_tokens"] == [256] and grid.shared["decoder.do_sample"] == [False]
    assert grid.backend_overrides == {
        "pytorch": {"batch_size": [1, 4], "attn_implementation": ["sdpa"]},
        "vllm": {"max_num_seqs": [8, 16], "enforce_eager": [True]},
    }
    assert grid.variants == [
        {},
        {"backend.load_in_8bit": True, "backend": "pytorch"},
        {"backend.load_in_4bit": True, "backend.bnb_4bit_quant_type": ["nf4", "fp4"], "backend": "pytorch"},
    ]
    [explicit] = settings.experiments
    assert explicit.config is None
    assert explicit.overrides["backend"] == "vllm" and explicit.overrides["backend.block_size"] == 32
    assert explicit.overrides["num_input_prompts"] == 20 and explicit.overrides["backend.enforce_eager"] is True
    assert "backend.attn_implementation" not in explicit.overrides  # another engine's section does not apply


def test_a_study_plans_every_job_valid(loader: Any, tmp_path: Path) -> None:
    path = _study(tmp_path, STUDY, BASE.replace("decoder:\n  preset: null\n", ""))
    settings = load_settings({"file": str(path)}, [], cwd=tmp_path)
    plan = make_plan([], settings, FastComposer(loader, "config").compose, default_backend="pytorch",
                     model_options={"tiny"})
    assert not plan.invalid, [j.error for j in plan.invalid]
    configs = {tuple(sorted(j.config.overrides)) for j in plan.runnable}
    # pytorch: 2 precisions x 2 batch sizes x (plain + 8-bit + 4-bit x 2) = 16; vllm: 2 x 2 x plain = 4; 1 explicit
    assert len(configs) == 16 + 4 + 1
    assert len(plan.runnable) == 2 * len(configs)


@pytest.mark.parametrize(
    ("text", "base", "expected"),
    [
        (STUDY, BASE, r"study.yaml, line 2, key 'base' \(LLenergyMeasure study\): 'decoder.preset' has no counterpart"),
        ("name: s\nmodel: gpt2\nsweep:\n  pytorch.num_beams: [1, 2]\n", None,
         r"line 4, key 'sweep.pytorch.num_beams'.*'num_beams' is not one of its parameters: batch_size"),
        ("name: s\nmodel: gpt2\nlora:\n  adapter_id: x\n", None,
         r"line 4, key 'lora.adapter_id'.*'lora.adapter_id' has no counterpart"),
        ("name: s\nmodel: gpt2\nrunners:\n  vllm: docker\n", None, r"runners.vllm: 'docker'.*llem_container"),
        ("name: s\nmodel: gpt2\nexecution:\n  n_cycles: 2\n  foo: 1\n", None,
         r"line 5, key 'execution.foo'.*no counterpart"),
        ("name: s\nmodel: gpt2\nbackend: vllm\nsweep:\n  pytorch.batch_size: [1, 2]\n", None,
         r"pytorch.batch_size is a pytorch setting, but the study runs \['vllm'\]"),
    ],
)
def test_study_keys_without_a_counterpart_are_named(tmp_path: Path, text: str, base: str | None, expected: str) -> None:
    path = _study(tmp_path, text, base)
    with pytest.raises(CampaignFileError, match=expected):
        load_settings({"file": str(path)}, [], cwd=tmp_path)


def test_a_llem_campaign_file_is_not_taken_for_a_study(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("campaign_name: c\ngrid:\n  backends: [pytorch]\n  shared: {fp_precision: [float16]}\n"
                    "experiments:\n  - overrides: {backend: vllm}\n")
    settings = load_settings({"file": str(path)}, [], cwd=tmp_path)
    assert settings.grid is not None and settings.grid.shared == {"fp_precision": ["float16"]}
    assert settings.experiments[0].overrides == {"backend": "vllm"} and settings.experiments[0].config is None
