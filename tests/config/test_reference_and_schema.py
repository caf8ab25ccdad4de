"""The generated configuration reference and the JSON Schema export stay in step with the schemas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from llem.config.reference import SECTIONS, render
from llem.config.schema import json_schema, main

REPO = Path(__file__).resolve().parents[2]


def test_committed_reference_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: python -m llem.config.reference > docs/configuration.md"


def test_reference_lists_every_field_of_every_section() -> None:
    text = render()
    for title, _, model in SECTIONS:
        section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        for name in model.model_fields:
            assert f"| `{name}` |" in section, f"{title}: {name}"


def test_schema_export_writes_both_files(tmp_path: Path) -> None:
    assert main(["--out-dir", str(tmp_path)]) == 0
    experiment = json.loads((tmp_path / "experiment.schema.json").read_text())
    campaign = json.loads((tmp_path / "campaign.schema.json").read_text())
    assert experiment["additionalProperties"] is False and "backend" in experiment["properties"]
    assert campaign["required"] == ["campaign_name"]


def test_schema_cli_prints_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llem.config.schema", "campaign"], capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout)["title"] == "CampaignConfig"


def test_shipped_conf_files_validate_against_json_schema() -> None:
    jsonschema = __import__("pytest").importorskip("jsonschema")
    schema = json_schema("campaign")
    checked = 0
    for path in (REPO / "conf" / "campaign").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if data.get("grid") or data.get("experiments") or data.get("configs"):
            jsonschema.validate(data, schema)
            checked += 1
    assert checked >= 1
    experiment = json_schema("experiment")
    data = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    data.pop("defaults")
    data.pop("hydra")
    data["model"] = yaml.safe_load((REPO / "conf" / "model" / "tiny.yaml").read_text())
    jsonschema.validate(data, experiment)
    bad = dict(data, fp_precision="float64")
    try:
        jsonschema.validate(bad, experiment)
    except jsonschema.ValidationError as error:
        assert "float64" in str(error.message)
    else:
        raise AssertionError("float64 accepted by the JSON Schema")
