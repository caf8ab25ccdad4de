"""Generate the configuration reference (docs/configuration.md) from the schemas.

The reference is generated, and a test fails when the committed file differs, so the
docs cannot drift from what the validator accepts:

    python -m llem.config.reference > docs/configuration.md
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from llem.config.backends import PyTorchConfig, TensorRTConfig, VLLMConfig
from llem.config.campaign import (
    CampaignColdStartConfig,
    CampaignConfig,
    CampaignDaemonConfig,
    CampaignExecutionConfig,
    CampaignExplicitExperiment,
    CampaignGridConfig,
    CampaignHealthCheckConfig,
    CampaignIOConfig,
    CampaignNotificationsConfig,
    CampaignReportConfig,
    CampaignScheduleConfig,
)
from llem.config.experiment import (
    BaselineConfig,
    BuiltinPrompts,
    DecoderConfig,
    EnergyConfig,
    ExperimentConfig,
    FilePrompts,
    HFDatasetPrompts,
    MeasureConfig,
    ModelConfig,
    SyntheticPrompts,
    WarmupConfig,
)
from llem.config.gpu import GpuSettingsConfig
from llem.config.serving import LoadConfig, ServingConfig, SloConfig

SECTIONS: list[tuple[str, str, type[BaseModel]]] = [
    ("Experiment", "(top level)", ExperimentConfig),
    ("Model", "model", ModelConfig),
    ("Backend: pytorch", "backend (backend=pytorch)", PyTorchConfig),
    ("Backend: vllm", "backend (backend=vllm)", VLLMConfig),
    ("Backend: tensorrt", "backend (backend=tensorrt)", TensorRTConfig),
    ("Dataset: builtin", "dataset (dataset=builtin)", BuiltinPrompts),
    ("Dataset: synthetic", "dataset (dataset=synthetic)", SyntheticPrompts),
    ("Dataset: file", "dataset (dataset=file)", FilePrompts),
    ("Dataset: huggingface", "dataset (dataset=huggingface)", HFDatasetPrompts),
    ("Decoder", "decoder", DecoderConfig),
    ("Warmup", "warmup", WarmupConfig),
    ("Baseline", "baseline", BaselineConfig),
    ("Energy", "energy", EnergyConfig),
    ("GPU settings", "gpu", GpuSettingsConfig),
    ("Measure", "measure", MeasureConfig),
    ("Load (scenario=serving)", "load", LoadConfig),
    ("Serving (scenario=serving)", "serving", ServingConfig),
    ("SLO (scenario=serving)", "slo", SloConfig),
    ("Campaign", "campaign (campaign=<name>)", CampaignConfig),
    ("Campaign grid", "campaign.grid", CampaignGridConfig),
    ("Campaign explicit experiment", "campaign.experiments[]", CampaignExplicitExperiment),
    ("Campaign execution", "campaign.execution", CampaignExecutionConfig),
    ("Campaign schedule", "campaign.schedule", CampaignScheduleConfig),
    ("Campaign health check", "campaign.health_check", CampaignHealthCheckConfig),
    ("Campaign cold start", "campaign.cold_start", CampaignColdStartConfig),
    ("Campaign daemon", "campaign.daemon", CampaignDaemonConfig),
    ("Campaign IO", "campaign.io", CampaignIOConfig),
    ("Campaign notifications", "campaign.notifications", CampaignNotificationsConfig),
    ("Campaign report", "campaign.report", CampaignReportConfig),
]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return f"`{type(value).__name__}()`" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return ""
    return "`null`" if field.default is None else f"`{field.default!r}`"


def _constraints(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}")
    return ", ".join(parts)


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `llem.config` by `python -m llem.config.reference`; do not edit by hand.",
        "Every section forbids unknown keys: a misspelt key is an error that names it.",
        "",
    ]
    for title, where, model in SECTIONS:
        out += [f"## {title}", "", f"Key: `{where}`. {(model.__doc__ or '').strip()}", ""]
        out += ["| key | type | default | constraints | description |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|")
            out.append(
                f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {_constraints(field)} | {desc} |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
