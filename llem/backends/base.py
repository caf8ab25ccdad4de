"""The backend interface every engine implements, and the timing records it returns.

Backends report raw per-token timestamps (time.perf_counter, after the token is on
the host); the harness turns them into TTFT/ITL, so every engine is measured alike.

One clock for every engine: in offline mode all prompts of a `generate` call arrive at
once, when the call starts (`arrival_s`). `scheduled_s` is when the engine began working
on the prompt (PyTorch: the start of its batch; vLLM: its scheduler's first run of the
request), so waiting and the engine's own speed can be told apart.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from llem.backends.resources import MEMORY_FIELDS, MemoryReport
from llem.config import ExperimentConfig
from llem.prompts.load import Prompt


@dataclass
class SequenceTiming:
    """One prompt's generation: when it arrived, when the engine took it up, when each new token arrived."""

    prompt_index: int
    input_tokens: int
    arrival_s: float
    token_times_s: list[float] = field(default_factory=list)
    scheduled_s: float | None = None
    scheduled_unavailable_reason: str | None = None
    cached_prompt_tokens: int = 0

    @property
    def output_tokens(self) -> int:
        return len(self.token_times_s)


@dataclass
class GenerationOutput:
    """All sequences of one `generate` call, in prompt order."""

    sequences: list[SequenceTiming]
    texts: list[str] = field(default_factory=list)


@dataclass
class LoadInfo:
    """What loading the model cost and what it produced."""

    load_s: float
    model_bytes: int | None
    parameters: int | None
    device: str
    settings: dict[str, Any]


class Backend(abc.ABC):
    """One inference engine. A worker keeps an instance loaded across compatible experiments."""

    name: str = ""

    @staticmethod
    @abc.abstractmethod
    def load_key(experiment: ExperimentConfig) -> str:
        """The settings that require a reload when they change (model, precision, load-time options)."""

    @abc.abstractmethod
    def load(self, experiment: ExperimentConfig) -> LoadInfo:
        """Load the model for `experiment`; raise a clear error if the hardware cannot run it."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer that defines token counts for prompts and outputs."""

    @abc.abstractmethod
    def generate(self, prompts: list[Prompt], experiment: ExperimentConfig) -> GenerationOutput:
        """Generate for all prompts with the experiment's batching and decoder settings."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Free the model and its device memory for real (gc, allocator caches)."""

    def synchronize(self) -> None:
        """Wait for queued device work, so window edges are real."""

    def reset_peak_memory(self) -> None:
        """Start a fresh peak-memory measurement."""

    def memory_stats(self) -> dict[str, Any]:
        """Memory over the window since `reset_peak_memory`, in the shape `llem.backends.resources.MemoryReport`
        builds: weights, peak allocated, reserved and host peak RSS bytes, each with its method or a reason."""
        report = MemoryReport()
        for name in MEMORY_FIELDS:
            report.unavailable(name, f"the {self.name or type(self).__name__} backend does not report memory")
        return report.as_dict()

    def effective_settings(self) -> dict[str, Any]:
        """The engine settings actually in force (after engine defaults), for the result."""
        return {}

    def versions(self) -> dict[str, str]:
        """Versions of the libraries this engine runs on."""
        return {}

    def devices(self) -> list[int] | None:
        """CUDA device indices in use (None on CPU)."""
        return None
