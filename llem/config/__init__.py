"""Pydantic schemas for experiments and campaigns; the single source of truth for validation."""

from llem.config.backends import BACKEND_NAMES, BackendConfig, PyTorchConfig, TensorRTConfig, VLLMConfig
from llem.config.campaign import (
    CampaignColdStartConfig,
    CampaignConfig,
    CampaignDaemonConfig,
    CampaignExecutionConfig,
    CampaignExplicitExperiment,
    CampaignGridConfig,
    CampaignHealthCheckConfig,
    CampaignIOConfig,
    CampaignScheduleConfig,
    CampaignSettings,
)
from llem.config.errors import ConfigError, validate_or_raise
from llem.config.experiment import (
    BaselineConfig,
    BuiltinPrompts,
    DecoderConfig,
    EnergyConfig,
    ExperimentConfig,
    FilePrompts,
    HFDatasetPrompts,
    ModelConfig,
    SyntheticPrompts,
    WarmupConfig,
)

__all__ = [
    "BACKEND_NAMES",
    "BackendConfig",
    "BaselineConfig",
    "BuiltinPrompts",
    "CampaignColdStartConfig",
    "CampaignConfig",
    "CampaignDaemonConfig",
    "CampaignExecutionConfig",
    "CampaignExplicitExperiment",
    "CampaignGridConfig",
    "CampaignHealthCheckConfig",
    "CampaignIOConfig",
    "CampaignScheduleConfig",
    "CampaignSettings",
    "ConfigError",
    "DecoderConfig",
    "EnergyConfig",
    "ExperimentConfig",
    "FilePrompts",
    "HFDatasetPrompts",
    "ModelConfig",
    "PyTorchConfig",
    "SyntheticPrompts",
    "TensorRTConfig",
    "VLLMConfig",
    "WarmupConfig",
    "validate_or_raise",
]
