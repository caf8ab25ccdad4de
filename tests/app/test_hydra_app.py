"""The `python -m llem` Hydra app: composition of conf/, printing configs, clear user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from llem.composed import validate_composed
from llem.config import CampaignConfig, ConfigError

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def _llem(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llem", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_cfg_job_prints_composed_config(tmp_path: Path) -> None:
    proc = _llem("--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["backend"]["name"] == "pytorch" and cfg["model"]["name"] == "builtin:tiny"
    assert cfg["fp_precision"] == "float32" and cfg["campaign"]["campaign_name"] is None
    assert cfg["campaign"]["execution"]["cycles"] == 3


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_cfg_job_shows_vllm_section(tmp_path: Path) -> None:
    proc = _llem("backend=vllm", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    backend = yaml.safe_load(proc.stdout)["backend"]
    assert backend["name"] == "vllm" and backend["max_num_seqs"] == 256 and "batch_size" not in backend


@pytest.mark.slow  # runs `python -m llem` in a subprocess
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fp_precision=float64"], "fp_precision: Input should be 'float32', 'float16' or 'bfloat16' (got 'float64')"),
        (["backend=vllm", "backend.max_num_seqs=0"], "backend.max_num_seqs: Input should be greater than or equal to 1"),
        (["+backend.batchsize=4"], "backend.batchsize: unknown key for backend 'pytorch'; did you mean 'batch_size'?"),
        (["+warmpu.num_prompts=1"], "warmpu: unknown key"),
        (["dataset=file"], "dataset.path: required value is not set"),
        (["backend=tensorrt"], "TensorRT-LLM does not run float32"),
    ],
)
def test_user_mistakes_exit_nonzero_without_traceback(tmp_path: Path, args: list[str], expected: str) -> None:
    proc = _llem(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_hydra_override_errors_are_reported_by_hydra(tmp_path: Path) -> None:
    proc = _llem("backend=onnx", cwd=tmp_path)
    assert proc.returncode != 0
    assert "backend" in proc.stderr and "onnx" in proc.stderr and "Traceback" not in proc.stderr


def _conf_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("backend", _conf_choices("backend"))
@pytest.mark.parametrize("dataset", _conf_choices("dataset"))
def test_every_shipped_group_option_composes_and_validates(backend: str, dataset: str) -> None:
    overrides = [f"backend={backend}", f"dataset={dataset}"]
    if backend == "tensorrt":
        overrides.append("fp_precision=float16")
    if dataset in ("file", "huggingface"):
        overrides.append("dataset.path=prompts.txt")
    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    composed = validate_composed(cfg)
    assert composed.experiment.backend.name == backend
    assert composed.experiment.dataset.source == dataset
    assert not composed.campaign.defines_jobs and not isinstance(composed.campaign, CampaignConfig)


@pytest.mark.parametrize("model", _conf_choices("model"))
def test_every_shipped_model_validates(model: str) -> None:
    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    assert validate_composed(cfg).experiment.model.name


@pytest.mark.parametrize("campaign", [c for c in _conf_choices("campaign") if c != "default"])
def test_every_shipped_campaign_validates(campaign: str) -> None:
    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"campaign={campaign}"])
    composed = validate_composed(cfg)
    assert isinstance(composed.campaign, CampaignConfig)


def test_example_campaign_is_the_documented_grid() -> None:
    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["campaign=example"])
    grid = validate_composed(cfg).campaign.grid  # type: ignore[union-attr]
    assert grid is not None and grid.backends == ["pytorch", "vllm"]
    assert grid.shared == {"fp_precision": ["float16", "bfloat16"]}
    assert grid.backend_overrides == {"pytorch": {"batch_size": [1, 4, 8]}, "vllm": {"max_num_seqs": [1, 4, 8]}}


def test_invalid_campaign_is_reported_as_campaign() -> None:
    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["campaign=example", "campaign.execution.cycles=0"])
    with pytest.raises(ConfigError) as info:
        validate_composed(cfg)
    assert str(info.value).startswith("Invalid campaign (1 problem):")
    assert info.value.problems == ["execution.cycles: Input should be greater than or equal to 1 (got 0)"]


def test_campaign_settings_settable_without_a_campaign_file() -> None:
    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["campaign.execution.cycles=1"])
    settings = validate_composed(cfg).campaign
    assert settings.execution.cycles == 1 and settings.campaign_name is None


def test_default_campaign_yaml_matches_schema_defaults() -> None:
    from llem.config import CampaignSettings

    shipped = yaml.safe_load((CONF / "campaign" / "default.yaml").read_text())
    assert shipped == CampaignSettings().model_dump()


def test_conf_yaml_keys_match_schema_defaults() -> None:
    """The shipped backend YAMLs list every schema field with the schema's default, so --cfg job is complete."""
    from llem.config.backends import BACKEND_CLASSES

    for name, cls in BACKEND_CLASSES.items():
        shipped = yaml.safe_load((CONF / "backend" / f"{name}.yaml").read_text())
        assert shipped == cls().model_dump(), name
