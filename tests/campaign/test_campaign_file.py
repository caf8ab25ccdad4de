"""Campaign files named by `campaign.file`, in LLenergyMeasure's format: every key, precedence, errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llem.config import ConfigError
from llem.measure.result import read_result
from llem.plan.campaign_file import CampaignFileError, load_settings, merge_campaign, read_campaign_file
from llem.plan.manifest import read_manifest
from tests.campaign import helpers as h

DEFAULT_SECTION = yaml.safe_load((h.REPO / "conf" / "campaign" / "default.yaml").read_text())


def _write_experiments(root: Path) -> None:
    (root / "experiments").mkdir()
    (root / "experiments" / "pytorch_base.yaml").write_text(
        yaml.safe_dump({"backend": {"name": "pytorch", "batch_size": 2}, "max_output_tokens": 3})
    )
    (root / "experiments" / "vllm_base.yaml").write_text(
        yaml.safe_dump({"backend": {"name": "vllm", "max_num_seqs": 4},
                        "dataset": {"source": "synthetic", "input_tokens": 8}})
    )
    (root / "prompts.txt").write_text("Name three rivers.\nWhat is a joule?\nCount to five.\n")


def legacy_file(root: Path, **changes: object) -> Path:
    """A campaign in LLenergyMeasure's format that uses every key it has."""
    _write_experiments(root)
    data = {
        "campaign_name": "pytorch-vs-vllm-comparison",
        "model": "tiny",
        "dataset": "prompts.txt",
        "num_samples": 3,
        "configs": ["experiments/pytorch_base.yaml"],
        "grid": {
            "backends": ["pytorch"],
            "shared": {"fp_precision": ["float32"]},
            "backend_overrides": {"pytorch": {"batch_size": [1, 3]}},
        },
        "experiments": [{"config": "experiments/vllm_base.yaml", "overrides": {"backend.max_num_seqs": 8}}],
        "execution": {
            "cycles": 5, "structure": "shuffled", "warmup_prompts": 0, "warmup_timeout_seconds": 30,
            "config_gap_seconds": 0, "cycle_gap_seconds": 0,
        },
        "schedule": {"at": None, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]},
        "health_check": {"enabled": False, "interval_experiments": 0, "gpu_memory_threshold_pct": 90,
                         "restart_on_failure": True, "max_restarts": 1},
        "cold_start": {"force_cold_start": False, "restart_container": False},
        "daemon": {"enabled": False, "at": None, "interval": None, "total_duration": None, "quiet": True},
        "io": {"results_dir": "collected", "configs_dir": "configs", "state_dir": ".state",
               "manifest_filename": "campaign_manifest.json"},
        "group_by": ["backend"],
    }
    data.update(changes)
    path = root / "campaign.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_relative_paths_resolve_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "campaigns").mkdir()
    path = legacy_file(tmp_path / "campaigns")
    data = read_campaign_file(path)
    base = path.parent
    assert data["configs"] == [str(base / "experiments" / "pytorch_base.yaml")]
    assert data["experiments"][0]["config"] == str(base / "experiments" / "vllm_base.yaml")
    assert data["dataset"] == str(base / "prompts.txt")


def test_every_key_loads_and_the_command_line_wins(tmp_path: Path) -> None:
    path = legacy_file(tmp_path)
    section = {**DEFAULT_SECTION, "file": "campaign.yaml"}
    settings = load_settings(section, ["campaign.execution.cycles=2", "campaign.file=campaign.yaml"], cwd=tmp_path)
    assert settings.campaign_name == "pytorch-vs-vllm-comparison" and settings.file == str(path)
    assert settings.execution.cycles == 2 and settings.execution.structure == "shuffled"  # cycles from the CLI
    assert (settings.model, settings.num_samples, settings.group_by) == ("tiny", 3, ["backend"])
    assert settings.dataset == str(tmp_path / "prompts.txt") and settings.io.results_dir == "collected"
    assert settings.schedule.days is not None and len(settings.schedule.days) == 7
    assert not settings.health_check.enabled and settings.health_check.max_restarts == 1
    assert settings.daemon is not None and not settings.daemon.enabled
    # settings the file leaves out keep the campaign group's values
    assert settings.notifications.timeout_seconds == DEFAULT_SECTION["notifications"]["timeout_seconds"]


def test_unknown_keys_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = legacy_file(tmp_path, num_sample=3)
    with pytest.raises(ConfigError) as info:
        load_settings({**DEFAULT_SECTION, "file": str(path)}, [], cwd=tmp_path)
    line = path.read_text().splitlines().index("num_sample: 3") + 1
    assert str(info.value) == (
        f"llem: campaign file {path}, line {line}, key 'num_sample': unknown key; did you mean 'num_samples'?"
    )
    assert "num_sample: unknown key; did you mean 'num_samples'?" in info.value.problems
    (tmp_path / "sub").mkdir()
    path = legacy_file(tmp_path / "sub", schedule={"at": "03:00", "day": ["mon"]})
    with pytest.raises(ConfigError, match=r"line \d+, key 'schedule.day': unknown key; did you mean 'days'\?"):
        load_settings({**DEFAULT_SECTION, "file": str(path)}, [], cwd=tmp_path)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CampaignFileError, match="cannot read .*nope.yaml"):
        load_settings({**DEFAULT_SECTION, "file": "nope.yaml"}, [], cwd=tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(CampaignFileError, match="must hold a mapping"):
        read_campaign_file(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("campaign_name: x\nfile: other.yaml\n")
    with pytest.raises(CampaignFileError, match="names another campaign file"):
        read_campaign_file(nested)
    composed = tmp_path / "composed.yaml"
    composed.write_text("defaults: [example, _self_]\ncampaign_name: x\n")
    with pytest.raises(CampaignFileError, match="campaign=<name> instead"):
        read_campaign_file(composed)
    llem_style = tmp_path / "llem_style.yaml"
    llem_style.write_text("defaults: [default, _self_]\ncampaign_name: x\ngrid: {backends: [pytorch]}\n")
    assert read_campaign_file(llem_style) == {"campaign_name": "x", "grid": {"backends": ["pytorch"]}}
    with pytest.raises(CampaignFileError, match="campaign.execution.cycle"):
        load_settings({**DEFAULT_SECTION, "file": str(llem_style)}, ["campaign.execution.cycle=1"], cwd=tmp_path)


def test_merge_keeps_settings_and_replaces_what_to_run() -> None:
    section = {"grid": {"backends": ["vllm"], "shared": {"fp_precision": ["float16"]}}, "execution": {"cycles": 3,
               "structure": "grouped"}, "group_by": ["fp_precision"]}
    merged = merge_campaign(section, {"grid": {"backends": ["pytorch"]}, "execution": {"cycles": 5}, "group_by": []})
    assert merged == {"grid": {"backends": ["pytorch"]}, "execution": {"cycles": 5, "structure": "grouped"},
                      "group_by": []}


def _multirun(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={root / 'sweep'}", *args],
                          cwd=root, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a real run in a fresh process: seconds, not a unit test
def test_a_legacy_campaign_file_plans_from_the_command_line(tmp_path: Path) -> None:
    legacy_file(tmp_path)
    proc = _multirun(tmp_path, "campaign.file=campaign.yaml", "campaign.execution.cycles=2", "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(tmp_path / "sweep" / ".state" / "campaign_manifest.json")
    assert m.campaign_name == "pytorch-vs-vllm-comparison"
    assert m.campaign_id == hashlib.md5(b"pytorch-vs-vllm-comparison").hexdigest()[:8]
    assert m.group_by == ["backend"] and m.cycles == 2 and m.structure == "shuffled"
    assert len(m.jobs) == 4 * 2  # configs (1) + grid (2) + experiments (1), two cycles
    prompts = f"dataset.path={tmp_path / 'prompts.txt'}"
    for job in m.jobs:
        assert "model=tiny" in job.overrides and "num_input_prompts=3" in job.overrides
        assert "dataset=file" in job.overrides and prompts in job.overrides  # vllm_base.yaml's synthetic replaced
    vllm = [j for j in m.jobs if j.backend == "vllm"]
    assert vllm and all("backend.max_num_seqs=8" in j.overrides for j in vllm)


@pytest.mark.slow
def test_a_legacy_campaign_file_runs(tmp_path: Path) -> None:
    legacy_file(tmp_path, experiments=[], execution={"cycles": 2, "structure": "interleaved", "warmup_prompts": 0,
                                                      "config_gap_seconds": 0, "cycle_gap_seconds": 0})
    proc = _multirun(tmp_path, "campaign.file=campaign.yaml", "max_input_tokens=16", "warmup.num_prompts=0",
                     "baseline.enabled=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    m = read_manifest(sweep / ".state" / "campaign_manifest.json")
    assert m.counts() == {"completed": 6}
    for job in m.jobs:
        result = read_result(Path(job.result_path or ""))
        assert result.config["num_input_prompts"] == 3 and result.config["model"]["name"] == "builtin:tiny"
        assert result.config["dataset"] == {"source": "file", "path": str(tmp_path / "prompts.txt"), "field": "prompt"}
    assert sorted(p.name for p in (sweep / "collected").iterdir()) == [f"job-{n}.json" for n in range(6)]
    # statistics grouped by the file's group_by: one pytorch group pooling three configurations
    stats = pd.read_csv(sweep / "summary_stats.csv")
    assert list(stats["backend"]) == ["pytorch"] and list(stats["configs"]) == [3] and list(stats["cycles"]) == [6]
    assert stats["throughput_tokens_per_s_n"].iloc[0] == 6
