"""The campaign settings of a multirun, with a campaign file named by `campaign.file` merged in.

A campaign file may sit anywhere and be written in llem's format or LLenergyMeasure's.
Its keys sit above the `campaign` config group's (the shipped defaults, or
`campaign=<name>`) and below the command line's `campaign.*` overrides, which are applied
again on top with Hydra's semantics. Relative paths in the file (`configs`,
`experiments[].config`, a `dataset` file) are resolved from the file's own directory.

A file that is not valid YAML, or whose values the schemas reject, is reported with the
file, the line and the key, one line per problem. So is a value the file passes into jobs
(a grid axis, a variant, an experiment's inline override) that the experiment's schema rejects
when the jobs are planned: `CampaignOrigin` maps it back to the file's line.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from llem.config import CampaignConfig, CampaignSettings, ConfigError, validate_or_raise
from llem.config.errors import shape_name
from llem.config.yaml_source import (
    KeyPath,
    YamlSource,
    YamlSyntaxError,
    dotted,
    load_yaml,
)
from llem.plan.compose import ComposeError, apply_value_override
from llem.plan.expand import CampaignKey
from llem.plan.study_file import StudyFileError, is_study, study_to_campaign

CAMPAIGN_PREFIX = "campaign."
# Sections replaced as a whole by a campaign file; the others merge key by key.
REPLACED = ("grid", "configs", "experiments", "group_by", "dataset")
# Hydra's defaults list of a llem campaign group file: settings the schemas supply anyway.
IGNORED_DEFAULTS = ("default", "_self_")


class CampaignFileError(ValueError):
    """The campaign file cannot be read or used; the message names the file."""


def _resolve(entry: str, base: Path) -> str:
    """A relative path from the file's directory, or from the working directory if only that exists."""
    path = Path(entry).expanduser()
    if path.is_absolute():
        return str(path)
    beside = base / path
    return str(path) if not beside.exists() and path.exists() else str(beside)


def _at(path: Path, source: YamlSource, key: KeyPath = (), shown: str | None = None) -> str:
    """`llem: campaign file <path>, line N[, key 'k']` for the key path `key` of the file."""
    line = source.line_of(key)
    where = f"llem: campaign file {path}" + (f", line {line}" if line is not None else "")
    shown = dotted(key) if shown is None else shown
    return where + (f", key '{shown}'" if shown else "")


def read_campaign_source(path: Path) -> tuple[dict[str, Any], YamlSource]:
    """The file's campaign keys (relative paths resolved from its directory) and where each sits in it."""
    try:
        source = load_yaml(Path(path))
    except OSError as error:
        raise CampaignFileError(f"campaign.file: cannot read {path}: {error.strerror or error}") from None
    except YamlSyntaxError as error:
        where = f", line {error.line}" if error.line is not None else ""
        raise CampaignFileError(f"llem: campaign file {path}{where}: not valid YAML: {error.problem}") from None
    data = source.data
    if isinstance(data, dict) and set(data) == {"campaign"} and isinstance(data["campaign"], dict):
        source = source.within("campaign")  # an experiment-style file holding only a campaign section
        data = source.data
    if not isinstance(data, dict):
        raise CampaignFileError(f"{_at(path, source)}: must hold a mapping of campaign keys, got {shape_name(data)}")
    data = dict(data)
    if is_study(data):
        data = _from_study(Path(path), source, data)
    defaults = data.pop("defaults", None)
    extra = [d for d in (defaults if isinstance(defaults, list) else [defaults]) if d not in IGNORED_DEFAULTS]
    if defaults is not None and extra:
        raise CampaignFileError(
            f"{_at(path, source, ('defaults',))}: a defaults list {defaults}: select composed campaign files with "
            "campaign=<name> instead"
        )
    if "file" in data:
        raise CampaignFileError(f"{_at(path, source, ('file',))}: names another campaign file; give one file")
    base = Path(path).resolve().parent
    if isinstance(data.get("configs"), list):
        data["configs"] = [_resolve(str(p), base) if isinstance(p, str) else p for p in data["configs"]]
    if isinstance(data.get("experiments"), list):
        data["experiments"] = [dict(e) if isinstance(e, dict) else e for e in data["experiments"]]
        for experiment in data["experiments"]:
            if isinstance(experiment, dict) and isinstance(experiment.get("config"), str):
                experiment["config"] = _resolve(experiment["config"], base)
    dataset = data.get("dataset")
    if isinstance(dataset, str) and (base / dataset).exists() and not Path(dataset).is_absolute():
        data["dataset"] = str(base / dataset)
    return data, source


def _from_study(path: Path, source: YamlSource, data: dict[str, Any]) -> dict[str, Any]:
    """A LLenergyMeasure study as campaign data; a key llem cannot map is named with its line."""

    def read_base(base: Path) -> dict[str, Any]:
        try:
            loaded = load_yaml(base).data
        except OSError as error:
            raise StudyFileError(("base",), f"base: cannot read {base}: {error.strerror or error}") from None
        except YamlSyntaxError as error:
            raise StudyFileError(("base",), f"base: {base} is not valid YAML: {error.problem}") from None
        if not isinstance(loaded, dict):
            raise StudyFileError(("base",), f"base: {base} must hold a mapping of experiment settings")
        return loaded

    try:
        converted = study_to_campaign(data, Path(path).resolve().parent, read_base)
    except StudyFileError as error:
        raise CampaignFileError(f"{_at(path, source, error.key)} (LLenergyMeasure study): {error}") from None
    converted.setdefault("campaign_name", Path(path).stem)
    return converted


def read_campaign_file(path: Path) -> dict[str, Any]:
    """The file's campaign keys, with relative paths resolved from its directory."""
    return read_campaign_source(path)[0]


def _overridden(name: str, lines: Sequence[str]) -> bool:
    """Whether a command-line `campaign.*` override sets key `name`, a key inside it or a section holding it."""
    for line in lines:
        inner = _strip_prefix(line)
        if inner is None:
            continue
        target = inner.split("=", 1)[0].lstrip("+~")
        if name == target or name.startswith(f"{target}.") or target.startswith(f"{name}."):
            return True
    return False


def _locate_problems(error: ConfigError, path: Path, source: YamlSource, overrides: Sequence[str]) -> ConfigError:
    """`error` with one line per problem, naming the line and key of the file for those it holds."""
    if not error.details:
        return error
    lines = []
    for problem in error.details:
        found = source.find(problem.loc, problem.key)
        if found is not None and not _overridden(found[1], overrides):
            lines.append(f"{_at(path, source, *found)}: {problem.message}")
        elif problem.key and _overridden(problem.key, overrides):
            lines.append(f"llem: command line: campaign.{problem.key}: {problem.message}")
        else:
            lines.append(f"llem: campaign (file {path}): {problem}")
    return ConfigError("\n".join(lines), error.problems, error.details)


_REST = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def _key_parts(rest: str) -> KeyPath | None:
    """`.a.b[2]` as `('a', 'b', 2)`; None if it is not a key path."""
    parts: list[str | int] = []
    pos = 0
    for match in _REST.finditer(rest):
        if match.start() != pos:
            return None
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    return tuple(parts) if pos == len(rest) else None


@dataclass(frozen=True)
class CampaignOrigin:
    """The campaign file that set the campaign's values, and the command-line `campaign.*` overrides above it:
    what a job's problem names when the value at fault was written in the file."""

    path: Path
    source: YamlSource
    overrides: tuple[str, ...] = ()

    def locate(self, key: CampaignKey, rest: str = "", field: str = "") -> str | None:
        """`campaign file <path>, line N, key 'k'` for a job value read from `key` of the campaign (`rest`: the
        part of the job's key below the value, e.g. `.name` inside a mapping); None when the file does not hold
        that value there, e.g. because the command line or another file set it."""
        below = _key_parts(rest)
        if below is None or not self.source.holds(key.path, key.value):
            return None
        if _overridden(".".join(str(p) for p in key.path), self.overrides):
            return None
        found = self.source.locate((*key.path, *below))
        if found is None or len(found[0]) < len(key.path):
            return None
        shown = dotted(found[0])
        named = re.sub(r"\[\d+\]", "", shown)
        also = f" ({field})" if field and named != field and not named.endswith(f".{field}") else ""
        return f"campaign file {self.path}, line {found[1]}, key '{shown}'{also}"


def campaign_group_file(config: Any) -> Path | None:
    """The file behind the `campaign=<name>` selection of a composed Hydra config (with its `hydra` node):
    the first `campaign/<name>.yaml` on the config search path, as Hydra finds it; None if there is none."""
    try:
        choice = config.hydra.runtime.choices.get("campaign")
        sources = list(config.hydra.runtime.config_sources)
    except Exception:  # noqa: BLE001 - a config composed without Hydra's runtime node
        return None
    if not choice:
        return None
    for source in sources:
        schema, root = source.get("schema"), str(source.get("path") or "")
        try:
            if schema == "file":
                candidate = Path(root) / "campaign" / f"{choice}.yaml"
            elif schema == "pkg":
                candidate = Path(str(importlib.resources.files(root) / "campaign" / f"{choice}.yaml"))
            else:
                continue
        except (ModuleNotFoundError, TypeError, ValueError):
            continue
        if candidate.is_file():
            return candidate
    return None


def _group_source(path: Path) -> YamlSource | None:
    """Where each key of a config-group campaign file sits (None if it cannot be read again)."""
    try:
        source = load_yaml(path)
    except (OSError, YamlSyntaxError):
        return None
    data = source.data
    if isinstance(data, dict) and "campaign" in data and isinstance(data["campaign"], dict) and len(
        [k for k in data if k != "defaults"]
    ) == 1:
        source = source.within("campaign")  # a file packaged at the top level holding a campaign section
    return source if isinstance(source.data, dict) else None


def merge_campaign(section: dict[str, Any], file_data: dict[str, Any]) -> dict[str, Any]:
    """`file_data` over `section`: settings sections merge key by key; what to run is replaced whole."""
    merged = dict(section)
    for key, value in file_data.items():
        current = merged.get(key)
        if key not in REPLACED and isinstance(current, dict) and isinstance(value, dict):
            merged[key] = merge_campaign(current, value)
        else:
            merged[key] = value
    return merged


def _strip_prefix(line: str) -> str | None:
    """`campaign.x.y=v` as `x.y=v` (prefixes kept); None for a `campaign=<option>` selection."""
    signs = line[: len(line) - len(line.lstrip("+~"))]
    rest = line[len(signs) :]
    if not rest.startswith(CAMPAIGN_PREFIX):
        return None
    return signs + rest[len(CAMPAIGN_PREFIX) :]


def apply_overrides(data: dict[str, Any], lines: Sequence[str]) -> dict[str, Any]:
    """Apply command-line `campaign.*` overrides to plain campaign data, as Hydra would."""
    parser = OverridesParser.create()
    for line in lines:
        inner = _strip_prefix(line)
        if inner is None:
            continue
        try:
            apply_value_override(data, parser.parse_override(inner))
        except (ComposeError, HydraException) as error:
            raise CampaignFileError(f"{line}: {error}") from None
    return data


def validate_settings(data: dict[str, Any] | None, *, context: str = "campaign") -> CampaignSettings:
    """Settings only, or a full CampaignConfig when the data says what to run; ConfigError names every problem."""
    data = data or {}
    settings = validate_or_raise(CampaignSettings, data, context=context)
    if settings.defines_jobs:
        return validate_or_raise(CampaignConfig, data, context=context)
    return settings


def load_settings(
    section: dict[str, Any] | None, overrides: Sequence[str], *, cwd: Path, group_file: Path | None = None
) -> CampaignSettings:
    """The multirun's campaign settings: the composed `campaign` section, its `file`, then `overrides`.

    `group_file` is the config-group file the section was composed from (`campaign=<name>`), so that
    its problems name that file's lines. Raises CampaignFileError or ConfigError with a message for the user.
    """
    return load_campaign(section, overrides, cwd=cwd, group_file=group_file)[0]


def load_campaign(
    section: dict[str, Any] | None, overrides: Sequence[str], *, cwd: Path, group_file: Path | None = None
) -> tuple[CampaignSettings, CampaignOrigin | None]:
    """`load_settings`, and the file the settings came from (None without one, or for a LLenergyMeasure
    study, whose keys are not the campaign's), so that planning can name the line of a value at fault."""
    section = dict(section or {})
    name = section.get("file")
    if not name:
        source = _group_source(group_file) if group_file is not None else None
        try:
            settings = validate_settings(section)
        except ConfigError as error:
            if source is None or group_file is None:
                raise
            raise _locate_problems(error, group_file, source, overrides) from None
        origin = CampaignOrigin(group_file, source, tuple(overrides)) if source and group_file else None
        return settings, origin
    path = Path(str(name)).expanduser()
    path = path if path.is_absolute() else Path(cwd) / path
    data, source = read_campaign_source(path)
    merged = apply_overrides(merge_campaign(section, data), overrides)
    merged["file"] = str(path)
    try:
        settings = validate_settings(merged, context=f"campaign (file {path})")
    except ConfigError as error:
        raise _locate_problems(error, path, source, overrides) from None
    return settings, None if is_study(source.data) else CampaignOrigin(path, source, tuple(overrides))
