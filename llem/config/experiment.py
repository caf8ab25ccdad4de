"""`ExperimentConfig`: everything that defines one measurement point."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from llem.config._base import StrictModel
from llem.config.backends import BackendConfig, PyTorchConfig
from llem.config.gpu import GpuSettingsConfig
from llem.config.serving import LoadConfig, ServingConfig, SloConfig, check_scenario, fill_serving_defaults

Precision = Literal["float32", "float16", "bfloat16"]

BUILTIN_MODEL_PREFIX = "builtin:"


class ModelConfig(StrictModel):
    """Which weights to load."""

    name: str = Field(
        ...,
        min_length=1,
        description="Hugging Face id, local path, or `builtin:tiny` (a small random Llama generated offline).",
    )
    revision: str | None = Field(None, description="Branch, tag or commit of a Hugging Face model.")
    trust_remote_code: bool = Field(False, description="Allow model code shipped with the checkpoint to run.")

    @property
    def is_builtin(self) -> bool:
        return self.name.startswith(BUILTIN_MODEL_PREFIX)


class BuiltinPrompts(StrictModel):
    """The prompt set that ships with llem."""

    source: Literal["builtin"] = Field("builtin", description="Prompt source discriminator.")
    name: Literal["mixed", "short", "long"] = Field(
        "mixed", description="Which built-in set: short, long, or a mix of lengths."
    )


class SyntheticPrompts(StrictModel):
    """Seeded random prompts of a fixed token length, for controlled workloads."""

    source: Literal["synthetic"] = Field("synthetic", description="Prompt source discriminator.")
    input_tokens: int = Field(128, ge=1, description="Length of each prompt in tokens.")
    seed: int | None = Field(None, description="Seed for the prompt text (null: the experiment's `random_seed`).")


class FilePrompts(StrictModel):
    """Prompts from a local text file (one per line) or JSON Lines file."""

    source: Literal["file"] = Field("file", description="Prompt source discriminator.")
    path: str = Field(..., min_length=1, description="Path to a `.txt` (one prompt per line) or `.jsonl` file.")
    field: str = Field("prompt", description="Key holding the prompt in each JSON Lines record.")


class HFDatasetPrompts(StrictModel):
    """Prompts from a Hugging Face dataset (needs the `datasets` package)."""

    source: Literal["huggingface"] = Field("huggingface", description="Prompt source discriminator.")
    path: str = Field(..., min_length=1, description="Dataset id or local dataset directory.")
    subset: str | None = Field(None, description="Dataset configuration name.")
    split: str = Field("train", description="Split to read.")
    column: str = Field("text", description="Column holding the prompt text.")


DatasetConfig = Annotated[
    Union[BuiltinPrompts, SyntheticPrompts, FilePrompts, HFDatasetPrompts], Field(discriminator="source")
]


class DecoderConfig(StrictModel):
    """Sampling settings, applied identically by every backend."""

    do_sample: bool = Field(False, description="Sample (true) or decode greedily (false).")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Sampling temperature (used when sampling).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (used when sampling).")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 disables it (used when sampling).")
    repetition_penalty: float = Field(1.0, gt=0.0, description="Repetition penalty; 1.0 disables it.")


class WarmupConfig(StrictModel):
    """Work done before the measured window so it sees a warm device.

    By default warmup runs one full pass of the measured workload, with the measured batching,
    so every batch shape the window uses has been compiled, autotuned and cached before it starts.
    """

    num_prompts: int | None = Field(
        None,
        ge=0,
        description="null: one full pass of the measured prompts with the measured batching (every batch shape "
        "the window uses); a number: that many full-length prompts in one call instead (0: no warmup).",
    )
    thermal_floor_seconds: float = Field(
        0.0, ge=0.0, description="Wait after warmup so the device settles to a steady temperature."
    )
    mode: Literal["fixed", "converged"] = Field(
        "fixed",
        description="fixed: as num_prompts says; converged: repeat warm-up batches until the latency of the last "
        "`window` batches varies less than cv_threshold (num_prompts is then not used).",
    )
    cv_threshold: float = Field(
        0.05, gt=0.0, lt=1.0, description="converged: largest coefficient of variation of the last `window` latencies."
    )
    window: int = Field(3, ge=2, description="converged: how many of the latest batch latencies are compared.")
    min_batches: int = Field(3, ge=1, description="converged: fewest warm-up batches.")
    max_batches: int = Field(20, ge=1, description="converged: most warm-up batches; stopping here is warned about.")

    @model_validator(mode="after")
    def _batch_bounds(self) -> "WarmupConfig":
        if self.max_batches < max(self.min_batches, self.window):
            raise ValueError(
                f"max_batches ({self.max_batches}) must be at least min_batches ({self.min_batches}) and window "
                f"({self.window})"
            )
        return self


class BaselineConfig(StrictModel):
    """Idle power measured before the model loads, subtracted from the window's energy."""

    enabled: bool = Field(True, description="Measure idle power before loading the model.")
    duration_seconds: float = Field(10.0, gt=0.0, le=600.0, description="How long idle power is measured.")
    settle_seconds: float = Field(
        5.0,
        ge=0.0,
        le=600.0,
        description="Wait after the previous model is released and before idle power is measured, so the "
        "devices are back at idle.",
    )
    strategy: Literal["fresh", "cached", "validated"] = Field(
        "validated",
        description="fresh: measured before every job; cached: reused for the same devices and model state within "
        "cache_ttl_seconds; validated: cached, re-checked every validation_interval jobs and measured afresh when "
        "it drifts more than drift_threshold.",
    )
    cache_ttl_seconds: float = Field(3600.0, gt=0.0, description="cached/validated: longest reuse of one baseline.")
    max_age_seconds: float = Field(
        3600.0,
        gt=0.0,
        description="A job whose baseline was measured longer ago than this gets a `baseline_stale` warning "
        "(docs/validity.md). The default matches cache_ttl_seconds, so only a longer reuse is flagged: idle "
        "power follows room and device temperature, which drift over hours.",
    )
    validation_interval: int = Field(5, ge=1, description="validated: re-check the cached baseline every N jobs.")
    validation_duration_seconds: float = Field(
        3.0, gt=0.0, le=600.0, description="validated: length of the short re-check measurement."
    )
    drift_threshold: float = Field(
        0.10, gt=0.0, le=1.0, description="validated: relative change of idle power that triggers a new baseline."
    )


class EnergyConfig(StrictModel):
    """How energy is measured."""

    source: Literal["auto", "nvml", "nvml_polling", "rapl", "none"] = Field(
        "auto",
        description="`nvml`: GPU energy counter; `nvml_polling`: integrated GPU power; `rapl`: CPU package and "
        "DRAM only; `none`: no energy; `auto`: the GPU counter (else integrated power) for a job that uses GPUs, "
        "RAPL for a CPU job (recorded in the result).",
    )
    include_host: bool = Field(
        True,
        description="Also measure CPU package and DRAM energy (RAPL) in the same window as the GPUs, where "
        "readable; what was left out and why is recorded in `energy.scope`.",
    )
    sample_interval_ms: int = Field(
        100, ge=10, le=10_000, description="Interval of the background power/temperature/clock sampler."
    )
    cross_check_tolerance_pct: float = Field(
        10.0, gt=0.0, le=100.0, description="Warn when counter and polled energy differ by more than this."
    )
    devices: list[int] | None = Field(
        None, description="CUDA indices of the GPUs to measure (null: the GPUs the job's engine uses)."
    )


class MeasureConfig(StrictModel):
    """How long the measured window lasts and how it is split."""

    min_window_seconds: float | None = Field(
        None,
        ge=0.0,
        le=3600.0,
        description="The measured workload repeats (whole passes, at least one) until the window has lasted this "
        "long. null: 10 s when GPU energy is measured (the NVML counter moves in ~100 ms steps), else one pass.",
    )
    phase_split: bool = Field(
        True,
        description="After the main window, measure a prefill-only pass (one output token per prompt) in its own "
        "window, so prefill and decode get separate time, energy and per-token figures.",
    )


class ExperimentConfig(StrictModel):
    """One measurement point: model x backend x workload x measurement settings."""

    experiment_name: str | None = Field(None, description="Free label copied into the result.")
    model: ModelConfig = Field(..., description="Which model to load.")
    backend: BackendConfig = Field(default_factory=PyTorchConfig, description="Inference engine and its settings.")
    fp_precision: Precision = Field("float32", description="Weight and activation precision.")
    dataset: DatasetConfig = Field(default_factory=BuiltinPrompts, description="Where prompts come from.")
    num_input_prompts: int = Field(16, ge=1, description="Prompts in the measured window.")
    max_input_tokens: int = Field(512, ge=1, description="Prompts are truncated to this many tokens.")
    max_output_tokens: int = Field(64, ge=1, description="Most new tokens per prompt.")
    force_output_length: bool = Field(
        True,
        description="Generate exactly `max_output_tokens` per prompt (EOS ignored) so runs do equal work.",
    )
    decoder: DecoderConfig = Field(default_factory=DecoderConfig, description="Sampling settings.")
    warmup: WarmupConfig = Field(default_factory=WarmupConfig, description="Warmup before measuring.")
    baseline: BaselineConfig = Field(default_factory=BaselineConfig, description="Idle power baseline.")
    energy: EnergyConfig = Field(default_factory=EnergyConfig, description="Energy measurement.")
    measure: MeasureConfig = Field(default_factory=MeasureConfig, description="Window length and phase split.")
    gpu: GpuSettingsConfig = Field(
        default_factory=GpuSettingsConfig, description="GPU power limit and locked clocks (unset: left as they are)."
    )
    random_seed: int = Field(42, description="Seed for prompts, sampling and engines.")
    scenario: Literal["offline", "serving"] = Field(
        "offline",
        description="offline: batches handed to the engine; serving: requests over time to the engine's "
        "OpenAI-compatible server (docs/serving.md).",
    )
    load: LoadConfig | None = Field(None, description="scenario=serving: the requests sent to the server.")
    serving: ServingConfig | None = Field(None, description="scenario=serving: the server and validity checks.")
    slo: SloConfig | None = Field(None, description="scenario=serving: latency targets for goodput.")

    @model_validator(mode="before")
    @classmethod
    def _serving_defaults(cls, data: object) -> object:
        return fill_serving_defaults(data)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "ExperimentConfig":
        b = self.backend
        check_scenario(self.scenario, b.name, self.load, self.serving, self.slo)
        if b.name == "tensorrt" and self.fp_precision == "float32":
            raise ValueError("fp_precision: TensorRT-LLM does not run float32; use float16 or bfloat16")
        if b.name == "vllm" and b.max_model_len is not None:
            need = self.max_input_tokens + self.max_output_tokens
            if need > b.max_model_len:
                raise ValueError(
                    f"backend.max_model_len ({b.max_model_len}) is shorter than max_input_tokens + "
                    f"max_output_tokens ({need})"
                )
        if b.name == "tensorrt":
            if b.max_seq_len is not None and self.max_input_tokens + self.max_output_tokens > b.max_seq_len:
                raise ValueError(
                    f"backend.max_seq_len ({b.max_seq_len}) is shorter than max_input_tokens + max_output_tokens "
                    f"({self.max_input_tokens + self.max_output_tokens})"
                )
            if b.max_input_len is not None and self.max_input_tokens > b.max_input_len:
                raise ValueError(
                    f"backend.max_input_len ({b.max_input_len}) is shorter than max_input_tokens "
                    f"({self.max_input_tokens})"
                )
        if b.name == "pytorch" and (b.load_in_4bit or b.load_in_8bit) and self.fp_precision == "float32":
            raise ValueError("fp_precision: 4/8-bit loading computes in float16 or bfloat16, not float32")
        return self
