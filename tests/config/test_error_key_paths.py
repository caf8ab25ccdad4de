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
