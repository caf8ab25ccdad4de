"""Defaults the docs state for the sweeper and the container launcher are the ones the code has."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from hydra_plugins.llem_sweeper.config import LlemSweeperConf
from llem.launch.options import ContainerOptions

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def _as_documented(text: str) -> Any:
    """A documented default (`null`, `false`, `[a, b]`, `3600`) as the value it means."""
    return yaml.safe_load(text)


def _table_rows(text: str, heading: str) -> dict[str, str]:
    """`| `a`, `b` | `x`, `y` | ...` rows of the first table under `heading`, as option -> documented default."""
    section = text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        values = re.findall(r"`([^`]+)`", cells[1])
        if len(values) == len(names):  # "engine default" and the like state no value
            rows.update(zip(names, values))
    return rows


def test_sweeper_options_table_lists_every_option_with_its_default() -> None:
    rows = _table_rows((DOCS / "campaigns.md").read_text(), "## Sweeper options")
    documented = {k.removeprefix("hydra.sweeper."): v for k, v in rows.items()}
    defaults = _defaults(LlemSweeperConf)
    assert set(documented) == set(defaults), "docs/campaigns.md's sweeper options table and LlemSweeperConf differ"
    for name, value in defaults.items():
        assert _as_documented(documented[name]) == value, f"hydra.sweeper.{name}: documented {documented[name]}"


def test_container_launcher_defaults_in_the_docs_are_the_code_s() -> None:
    defaults = _defaults(ContainerOptions)
    rows = _table_rows((DOCS / "launchers.md").read_text(), "## Containers")
    assert {"gpus", "engine", "mount_caches", "env_passthrough", "parallel"} <= set(rows)
    for name, text in rows.items():
        assert _as_documented(text) == defaults[name], f"docs/launchers.md: {name} documented as {text}"
    stated = re.findall(r"`hydra\.launcher\.(\w+)`: `([^`]+)` \(default", (DOCS / "containers.md").read_text())
    assert {name for name, _ in stated} >= {"gpus", "engine"}
    for name, text in stated:
        assert _as_documented(text) == defaults[name], f"docs/containers.md: {name} documented as {text}"
