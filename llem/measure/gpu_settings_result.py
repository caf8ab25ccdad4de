"""The `gpu_settings` section of result.json: per GPU, what was asked, what was set, what the GPU did."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GpuKnob(BaseModel):
    """One setting on one GPU."""

    model_config = ConfigDict(extra="forbid")

    requested: int | list[int] = Field(description="The configured value (a clock: MHz or [min, max]).")
    applied: int | list[int] = Field(description="What llem set: the request, or its nearest supported clock.")
    effective: float | None = Field(
        description="Read back from the GPU: the enforced power limit (W) after setting it; the median clock "
        "(MHz) over the measured window (or read after setting it, without telemetry). null: unreadable."
    )
    effective_source: str = Field(description="Where `effective` comes from.")
    default: float | None = Field(
        description="The GPU's default: its default power limit (W); for clocks null, as the default is unlocked."
    )


class GpuSettingsEntry(BaseModel):
    """The settings of one of the job's GPUs during its measurement."""

    model_config = ConfigDict(extra="forbid")

    uuid: str
    power_limit_w: GpuKnob | None = None
    sm_clock_mhz: GpuKnob | None = None
    mem_clock_mhz: GpuKnob | None = None
    throttle_reasons: list[str] | None = Field(
        description="Clock throttle reasons seen during the measured window (`power_cap`, `thermal`); null "
        "without telemetry."
    )
    changed_for_job: bool = Field(
        description="Whether llem changed the settings before this job (false: kept from the previous job of a "
        "warm worker, which had the same values)."
    )
