"""Split a composed Hydra config into the validated experiment and campaign parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from llem.config import CampaignConfig, CampaignSettings, ConfigError, ExperimentConfig, validate_or_raise

NON_EXPERIMENT_KEYS = ("campaign", "hydra")


@dataclass(frozen=True)
class ComposedConfig:
    """What one Hydra job resolved to, after schema validation."""

    experiment: ExperimentConfig
    campaign: CampaignSettings


def validate_campaign(data: dict[str, Any] | None) -> CampaignSettings:
    """Settings only, or a full CampaignConfig when the section says what to run."""
    data = data or {}
    settings = validate_or_raise(CampaignSettings, data, context="campaign")
    if settings.defines_jobs:
        return validate_or_raise(CampaignConfig, data, context="campaign")
    return settings


def settings_of(config: DictConfig) -> CampaignSettings | None:
    """Campaign settings of a composed llem job (None for other apps, or when the section is invalid)."""
    if "campaign" not in config or OmegaConf.select(config, "backend.name") is None:
        return None
    return validate_campaign(OmegaConf.to_container(config.campaign, resolve=True))  # type: ignore[arg-type]


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolve interpolations into a plain dict; a `???` left unset is a user error naming the key."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"Invalid experiment (1 problem):\n  - {key}: required value is not set (give {key}=...)") from None
    assert isinstance(data, dict)
    return data


def split_experiment(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The experiment keys and the campaign section (if any) of a composed config."""
    experiment = {k: v for k, v in data.items() if k not in NON_EXPERIMENT_KEYS}
    return experiment, data.get("campaign")


def validate_composed(cfg: DictConfig, *, context: str = "experiment") -> ComposedConfig:
    """Validate a composed config; raise ConfigError naming every bad field."""
    experiment_data, campaign_data = split_experiment(to_plain(cfg))
    experiment = validate_or_raise(ExperimentConfig, experiment_data, context=context)
    return ComposedConfig(experiment=experiment, campaign=validate_campaign(campaign_data))
