"""Malformed campaign, experiment and config-group files: one short error naming the file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llem.app import config_file_syntax_error
from llem.config.yaml_source import YamlSyntaxError, dotted, load_yaml, parse_yaml
from llem.plan.campaign_file import CampaignFileError, load_settings
from llem.plan.expand import PlanError, read_experiment_file

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SECTION = yaml.safe_load((REPO / "llem" / "conf" / "campaign" / "default.yaml").read_text())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the line-keeping loader ---------------------------------------------------------------------


def test_every_key_and_list_item_keeps_its_line(tmp_path: Path) -> None:
    source = load_yaml(_write(tmp_path / "c.yaml", "a: 1\nb:\n  c: [x, y]\n  d:\n    - e: 2\n\n    - f: 3\n"))
    assert source.data == {"a": 1, "b": {"c": ["x", "y"], "d": [{"e": 2}, {"f": 3}]}}
    assert source.line_of(("a",)) == 1 and source.line_of(("b", "c")) == 3 and source.line_of(("b", "c", 1)) == 3
    assert source.line_of(("b", "d", 1)) == 7 and source.line_of(("b", "d", 1, "f")) == 7
    assert source.line_of(("nope",)) is None and source.line_of(()) == 1


def test_locate_skips_parts_the_file_lacks() -> None:
    source = parse_yaml("dataset:\n  source: file\n  path: p.txt\ngrid:\n  backends: [pytorch]\n", Path("c.yaml"))
    assert source.locate(("dataset", "dict[str,any]", "path")) == (("dataset", "path"), 3)  # a union tag
    assert source.locate(("execution", "cycles")) is None
    # a required key the file leaves out: the line of its section, named by the schema's key
    assert source.find(("grid", "models"), "grid.models") == (("grid",), "grid.models")
    assert dotted(("experiments", 0, "config")) == "experiments[0].config"


def test_aliases_and_a_campaign_section_keep_lines() -> None:
    source = parse_yaml("campaign:\n  base: &b {cycles: 2}\n  execution: *b\n", Path("c.yaml"))
    inner = source.within("campaign")
    assert inner.data == {"base": {"cycles": 2}, "execution": {"cycles": 2}}
    assert inner.line_of(("execution",)) == 3 and inner.line_of(("base", "cycles")) == 2


def test_a_syntax_error_has_a_line() -> None:
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml("a: 1\nb: c: d\n", Path("x.yaml"))
    assert info.value.line == 2 and info.value.problem == "mapping values are not allowed here"
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml("a: [1, 2\nb: 3\n", Path("x.yaml"))
    assert info.value.line == 2 and "flow sequence that starts on line 1" in info.value.problem


# --- campaign files ------------------------------------------------------------------------------


def _settings(path: Path, *overrides: str) -> object:
    return load_settings({**DEFAULT_SECTION, "file": str(path)}, list(overrides), cwd=path.parent)


def test_campaign_file_syntax_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "campaign_name: x\ngrid:\n  backends: pytorch\n  shared: {fp_precision: [a\n")
    with pytest.raises(CampaignFileError) as info:
        _settings(path)
    assert str(info.value).startswith(f"llem: campaign file {path}, line 5: not valid YAML: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "key", "problem"),
    [
        ("campaign_name: x\ngrid:\n  - pytorch\n", 2, "grid", "expected a mapping, got a list"),
        ("campaign_name: x\nexperiments:\n  a: b.yaml\n", 2, "experiments", "expected a list, got a mapping"),
        ("campaign_name: x\nconfigs: []\nexecution: 3\n", 3, "execution", "expected a mapping, got a number (3)"),
        ("campaign_name: x\ngrid:\n  backends: [pytorch]\n  shared:\n    fp_precision: {a: 1}\n", 5,
         "grid.shared.fp_precision", "expected a list, got a mapping"),
        ("campaign_name: x\ngrid: {backends: [pytorch]}\nexecution:\n  cycles: 0\n", 4, "execution.cycles",
         "Input should be greater than or equal to 1 (got 0)"),
        ("campaign_name: x\ngrid:\n  shared: {}\n", 2, "grid.backends", "required field is missing"),
        ("campaign:\n  campaign_name: x\n  grid: {backends: [pytorch]}\n  health_check: {enabld: true}\n", 4,
         "health_check.enabld", "unknown key; did you mean 'enabled'?"),
    ],
)
def test_campaign_file_shape_errors_name_line_and_key(tmp_path: Path, text: str, line: int, key: str,
                                                      problem: str) -> None:
    path = _write(tmp_path / "c.yaml", text)
    with pytest.raises(Exception) as info:
        _settings(path)
    assert str(info.value) == f"llem: campaign file {path}, line {line}, key '{key}': {problem}"


def test_a_value_the_command_line_replaces_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "campaign_name: x\ngrid: {backends: [pytorch]}\nexecution:\n  cycles: 5\n")
    with pytest.raises(Exception) as info:
        _settings(path, "campaign.execution.cycles=0")
    assert str(info.value).startswith("llem: command line: campaign.execution.cycles: ")


def test_campaign_file_structure_errors_have_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "- a\n- b\n")
    with pytest.raises(CampaignFileError, match=r"c.yaml, line 1: must hold a mapping of campaign keys, got a list"):
        _settings(path)
    path = _write(tmp_path / "d.yaml", "campaign_name: x\nfile: other.yaml\n")
    with pytest.raises(CampaignFileError, match=r"d.yaml, line 2, key 'file': names another campaign file"):
        _settings(path)


# --- experiment files ----------------------------------------------------------------------------


def test_experiment_file_errors(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.yaml", "backend:\n  name: pytorch\nfoo: bar: 1\n")
    with pytest.raises(PlanError, match=rf"^experiment file {bad}, line 3: not valid YAML: mapping values"):
        read_experiment_file(str(bad), "configs[0]")
    shape = _write(tmp_path / "shape.yaml", "backend:\n  name: pytorch\nwarmup: 3\n")
    with pytest.raises(PlanError, match=rf"^experiment file {shape}, line 3, key 'warmup': expected a mapping, got a"):
        read_experiment_file(str(shape), "configs[0]")
    listed = _write(tmp_path / "decoder.yaml", "backend:\n  name: pytorch\ndecoder:\n  - 1\n")
    with pytest.raises(PlanError, match=r"line 3, key 'decoder': expected a mapping, got a list"):
        read_experiment_file(str(listed), "configs[0]")
    listed = _write(tmp_path / "listed.yaml", "backend: [pytorch, vllm]\n")
    with pytest.raises(PlanError, match=r"line 1, key 'backend': expected a mapping or the name of an option"):
        read_experiment_file(str(listed), "configs[0]")
    scalar = _write(tmp_path / "scalar.yaml", "# an experiment\n\njust text\n")
    with pytest.raises(PlanError, match=r"line 3: must hold a mapping of config keys, got a string"):
        read_experiment_file(str(scalar), "configs[0]")
    fine = _write(tmp_path / "fine.yaml", "backend: pytorch\nmodel: tiny\nwarmup: {num_prompts: 0}\n")
    assert read_experiment_file(str(fine), "configs[0]").data["backend"] == "pytorch"


def test_only_yaml_syntax_errors_in_files_are_shortened(tmp_path: Path) -> None:
    path = _write(tmp_path / "foo.yaml", "a: [1\n")
    with pytest.raises(yaml.YAMLError) as info, path.open() as f:
        yaml.safe_load(f)
    assert config_file_syntax_error(info.value) == (
        f"llem: config file {path}, line 2: not valid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence that starts on line 1)"
    )
    with pytest.raises(yaml.YAMLError) as info:
        yaml.safe_load("a: [1\n")  # a string, not a file: not a config file's error
    assert config_file_syntax_error(info.value) is None
    assert config_file_syntax_error(ValueError("other")) is None


# --- the command line ----------------------------------------------------------------------------


def _multirun(root: Path, *args: str, config_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    options = ["--config-dir", str(config_dir)] if config_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", "llem", *options, "-m", f"hydra.sweep.dir={root / 'sweep'}",
         "hydra.sweeper.dry_run=true", *args],
        check=False, cwd=root, capture_output=True, text=True, timeout=300,
    )


def _assert_short_error(proc: subprocess.CompletedProcess[str], root: Path, *expected: str) -> None:
    assert proc.returncode != 0, proc.stdout
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 5, proc.stderr
    sweep = root / "sweep"
    assert not (sweep / ".state").exists() and not (sweep / "0").exists()
    assert not list(sweep.glob("*/result.json")) if sweep.exists() else True


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_cli_campaign_file_not_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "campaign_name: x\ngrid:\n  backends: [pytorch]\n  shared: fp_precision: [a]\n")
    proc = _multirun(tmp_path, "campaign.file=c.yaml")
    _assert_short_error(proc, tmp_path, f"llem: campaign file {path}, line 4: not valid YAML: "
                        "mapping values are not allowed here")


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_cli_campaign_file_wrong_shape_in_llenergymeasure_format(tmp_path: Path) -> None:
    _write(tmp_path / "experiments" / "base.yaml", "backend:\n  name: pytorch\n")
    path = _write(tmp_path / "c.yaml", (
        "campaign_name: legacy\nmodel: tiny\nnum_samples: 2\nconfigs:\n  - experiments/base.yaml\n"
        "grid:\n  backends: [pytorch]\n  shared:\n    fp_precision:\n      bad: shape\n"
        "execution:\n  cycles: 1\n  structur: shuffled\n"
    ))
    proc = _multirun(tmp_path, "campaign.file=c.yaml")
    _assert_short_error(
        proc, tmp_path,
        f"llem: campaign file {path}, line 9, key 'grid.shared.fp_precision': expected a list, got a mapping",
        f"llem: campaign file {path}, line 13, key 'execution.structur': unknown key; did you mean 'structure'?",
    )


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_cli_experiments_given_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "campaign_name: x\nexperiments:\n  config: e.yaml\n")
    proc = _multirun(tmp_path, "campaign.file=c.yaml")
    _assert_short_error(proc, tmp_path, f"llem: campaign file {path}, line 2, key 'experiments': "
                        "expected a list, got a mapping")


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_cli_experiment_file_not_yaml(tmp_path: Path) -> None:
    experiment = _write(tmp_path / "exp" / "a.yaml", "backend:\n  name: pytorch\n  batch_size: [1, 2\nmodel: tiny\n")
    _write(tmp_path / "c.yaml", "campaign_name: x\nconfigs:\n  - exp/a.yaml\n")
    proc = _multirun(tmp_path, "campaign.file=c.yaml")
    _assert_short_error(proc, tmp_path, f"llem: experiment file {experiment}, line 4: not valid YAML: ",
                        "flow sequence that starts on line 3")


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_cli_experiment_file_bad_value(tmp_path: Path) -> None:
    experiment = _write(tmp_path / "a.yaml", "backend:\n  name: pytorch\nfp_precision: float64\n")
    _write(tmp_path / "c.yaml", "campaign_name: x\nconfigs: [a.yaml]\n")
    proc = _multirun(tmp_path, "campaign.file=c.yaml")
    _assert_short_error(proc, tmp_path, "nothing was launched",
                        f"experiment file {experiment}, line 3, key 'fp_precision': Input should be")


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_cli_config_group_file_not_yaml(tmp_path: Path) -> None:
    group = _write(tmp_path / "conf" / "campaign" / "foo.yaml",
                   "defaults: [default, _self_]\ncampaign_name: foo\ngrid:\n  backends: [pytorch\n  shared: {}\n")
    proc = _multirun(tmp_path, "campaign=foo", config_dir=tmp_path / "conf")
    _assert_short_error(proc, tmp_path, f"llem: config file {group}, line 5: not valid YAML: ",
                        "flow sequence that starts on line 4")
    assert proc.returncode == 1
    assert not (tmp_path / "sweep").exists()
