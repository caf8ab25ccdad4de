"""`gpu`: power limit and locked clocks set on the job's GPUs, so they can be swept like any other axis.

Unset (the default) means llem leaves the GPUs exactly as it finds them. The values are checked
against the device (limits, supported clocks) once the GPUs are known, not here.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator

from llem.config._base import StrictModel

ClockSetting = Union[int, list[int]]
KNOBS = ("power_limit_w", "sm_clock_mhz", "mem_clock_mhz")


def _clock(key: str, value: Any) -> Any:
    """A positive MHz value, or a [min, max] pair with min <= max."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected MHz as an integer or [min, max], got {value!r}")
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise ValueError(f"{key}: expected a single MHz value or a [min, max] pair of integers, got {list(value)}")
        low, high = int(value[0]), int(value[1])
        if low <= 0 or high < low:
            raise ValueError(f"{key}: expected 0 < min <= max, got [{low}, {high}]")
        return [low, high]
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key}: expected a positive MHz value or [min, max], got {value!r}")
    return int(value)


class GpuSettingsConfig(StrictModel):
    """Power limit and locked clocks of the job's GPUs, restored after it; unset: untouched (docs/gpu-settings.md)."""

    power_limit_w: int | None = Field(
        None,
        ge=1,
        description="Power limit in watts on each of the job's GPUs (within the device's limits, which the "
        "preflight checks). null: not changed.",
    )
    sm_clock_mhz: ClockSetting | None = Field(
        None,
        description="Lock the SM (graphics) clock: one MHz value, or a `[min, max]` range. null: not changed.",
    )
    mem_clock_mhz: ClockSetting | None = Field(
        None,
        description="Lock the memory clock (where the GPU supports it): one MHz value or `[min, max]`. "
        "null: not changed.",
    )
    clock_rounding: Literal["exact", "nearest"] = Field(
        "exact",
        description="`exact`: a clock the GPU does not support is refused (with the nearest supported values); "
        "`nearest`: it is rounded to the nearest supported clock (recorded in the result).",
    )

    @field_validator("sm_clock_mhz", "mem_clock_mhz", mode="before")
    @classmethod
    def _check_clock(cls, value: Any, info: Any) -> Any:
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes, list, tuple, dict)):
            value = list(value)  # an OmegaConf ListConfig
        return _clock(f"gpu.{info.field_name}", value)

    @property
    def is_set(self) -> bool:
        """Whether llem changes anything on the GPUs for this job."""
        return any(getattr(self, k) is not None for k in KNOBS)

    def set_keys(self) -> list[str]:
        """The `gpu.*` keys this job sets, for messages that must name them."""
        return [f"gpu.{k}" for k in KNOBS if getattr(self, k) is not None]
