"""Schema errors name the full key path (into mappings and lists), and, for a campaign or experiment file,
the file and the line: also a campaign file selected from a config group (`campaign=<name>`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llem.config import CampaignConfig, ConfigError, validate_or_raise
from llem.plan.campaign_file import campaign_group_file, load_settings

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SECTION = yaml.safe_load((REPO / "llem" / "conf" / "campaign" / "default.yaml").read_text())


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"grid": {"backends": ["pytorch"], "shared": {"fp_precision": "float16"}}}, "grid.shared.fp_precision"),
        ({"grid": {"backends": ["pytorch", 3]}}, "grid.backends[1]"),
        ({"configs": ["a.yaml", 3]}, "configs[1]"),
        ({"grid": {"backends": ["pytorch"]}, "experiments": [{"config": 3}]}, "experiments[0].config"),
        ({"grid": {"backends": ["pytorch"]}, "group_by": ["backend", 4]}, "group_by[1]"),
        ({"grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": 3}}}, "grid.backend_overrides.pytorch"),
    ],
)
def test_problems_inside_mappings_and_lists_name_the_whole_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_or_raise(CampaignConfig, {"campaign_name": "x", **data}, context="campaign")
    assert [p.key for p in info.value.details] == [key]


def _group_file(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "campaign" / "nightly.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        "defaults:\n  - default\n  - _self_\n\ncampaign_name: nightly\ngrid:\n  backends: [pytorch]\n  shared:\n"
        "    fp_precision: float16\nexecution:\n  cycles: 1\n  cycle_gap_seconds: -3\n"
    )
    return path


def test_a_config_group_campaign_file_s_problems_name_its_lines(tmp_path: Path) -> None:
    path = _group_file(tmp_path)
    section = {**DEFAULT_SECTION, **{k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"}}
    section["execution"] = {**DEFAULT_SECTION["execution"], "cycles": 1, "cycle_gap_seconds": -3}
    with pytest.raises(ConfigError) as info:
        load_settings(section, [], cwd=tmp_path, group_file=path)
    assert str(info.value).splitlines() == [
        f"llem: campaign file {path}, line 9, key 'grid.shared.fp_precision': expected a list, got a string ('float16')",
        f"llem: campaign file {path}, line 12, key 'execution.cycle_gap_seconds': Input should be greater than or "
        "equal to 0 (got -3)",
    ]
    # a value the command line set is the command line's, not the file's
    section["execution"]["cycle_gap_seconds"] = -1
    with pytest.raises(ConfigError) as info:
        load_settings(section, ["campaign.execution.cycle_gap_seconds=-1"], cwd=tmp_path, group_file=path)
    assert "llem: command line: campaign.execution.cycle_gap_seconds: Input should be greater" in str(info.value)


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_the_group_file_is_found_on_the_search_path_and_named_on_the_command_line(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        config = compose("config", overrides=["campaign=example"], return_hydra_config=True)
    assert campaign_group_file(config) == REPO / "llem" / "conf" / "campaign" / "example.yaml"

    path = _group_file(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "llem", "-m", "--config-dir", str(path.parent.parent), "campaign=nightly",
         "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"llem: campaign file {path}, line 9, key 'grid.shared.fp_precision': expected a list" in proc.stderr
    assert not (tmp_path / "sweep" / ".state").exists()  # nothing planned, nothing written


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_an_item_of_a_list_in_an_experiment_file_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "exp.yaml").write_text("model:\n  name: builtin:tiny\nenergy:\n  devices: [0, x]\n")
    (tmp_path / "c.yaml").write_text("campaign_name: demo\nconfigs: [exp.yaml]\nexecution: {cycles: 1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "llem", "-m", f"campaign.file={tmp_path / 'c.yaml'}", "hydra.sweeper.dry_run=true",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"experiment file {tmp_path / 'exp.yaml'}, line 4, key 'energy.devices[1]': Input should be a valid" in (
        proc.stdout + proc.stderr
    )


CAMPAIGN_WITH_BAD_JOB_VALUES = """\
campaign_name: demo
execution: {cycles: 1}
grid:
  backends: [pytorch]
  shared:
    fp_precision:
      - float32
      - float17
  backend_overrides:
    pytorch:
      batch_size: -2
  variants:
    - {max_output_tokens: 4}
    - decoder: {temperature: -5}
experiments:
  - overrides:
      backend.batch_size: 0
"""


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_a_value_the_campaign_file_passes_into_jobs_is_named_by_its_line(tmp_path: Path) -> None:
    """Values the file passes into jobs are checked by the experiment's schema only when the jobs are planned;
    that error still names the file, the line and the key of the value, and nothing is launched."""
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN_WITH_BAD_JOB_VALUES)
    proc = subprocess.run(
        [sys.executable, "-m", "llem", "-m", f"campaign.file={path}", "hydra.sweeper.dry_run=true",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    lines = {line.strip() for line in out.splitlines()}
    at = f"- campaign file {path}, line"
    assert f"{at} 8, key 'grid.shared.fp_precision[1]': Input should be 'float32', 'float16' or 'bfloat16' (got " \
           "'float17')" in lines
    assert f"{at} 11, key 'grid.backend_overrides.pytorch.batch_size' (backend.batch_size): Input should be greater " \
           "than or equal to 1 (got -2)" in lines
    assert f"{at} 14, key 'grid.variants[1].decoder.temperature': Input should be greater than 0 (got -5)" in lines
    assert f"{at} 17, key 'experiments[0].overrides.backend.batch_size': Input should be greater " \
           "than or equal to 1 (got 0)" in lines
    assert not (tmp_path / "sweep").exists()  # nothing planned into state, nothing launched


@pytest.fixture
def loader() -> Any:
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module="llem.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def _problems(loader: Any, path: Path, overrides: list[str], group_file: Path | None = None) -> list[str]:
    from llem.plan.campaign_file import load_campaign
    from llem.plan.compose import FastComposer
    from llem.plan.planner import make_plan

    section = {**DEFAULT_SECTION, "file": str(path)} if group_file is None else {
        **DEFAULT_SECTION, **{k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"}}
    settings, origin = load_campaign(section, overrides, cwd=path.parent, group_file=group_file)
    plan = make_plan([], settings, FastComposer(loader, "config").compose, default_backend="pytorch",
                     model_options=set(), campaign_origin=origin)
    return [line.strip() for job in plan.invalid for line in (job.error or "").splitlines()[1:]]


def test_a_job_value_the_command_line_set_is_not_blamed_on_the_file(loader: Any, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("campaign_name: x\ngrid:\n  backends: [pytorch]\n  shared:\n    fp_precision: [float17]\n"
                    "execution: {cycles: 1}\n")
    assert _problems(loader, path, []) == [
        f"- campaign file {path}, line 5, key 'grid.shared.fp_precision[0]': Input should be 'float32', 'float16' "
        "or 'bfloat16' (got 'float17')"
    ]
    # the same bad value, but from the command line: the file's line would point at the wrong place
    assert _problems(loader, path, ["campaign.grid.shared.fp_precision=[float17]"]) == [
        "- fp_precision: Input should be 'float32', 'float16' or 'bfloat16' (got 'float17')"
    ]


def test_a_config_group_campaign_file_s_job_values_name_its_lines(loader: Any, tmp_path: Path) -> None:
    path = tmp_path / "conf" / "campaign" / "nightly.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("defaults:\n  - default\n  - _self_\ncampaign_name: nightly\nexecution: {cycles: 1}\n"
                    "experiments:\n  - overrides: {max_output_tokens: 8}\n  - overrides:\n      max_output_tokens: -8\n")
    assert _problems(loader, path, [], group_file=path) == [
        f"- campaign file {path}, line 9, key 'experiments[1].overrides.max_output_tokens': Input should be greater "
        "than or equal to 1 (got -8)"
    ]
