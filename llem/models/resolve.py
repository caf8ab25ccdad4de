"""Turn a `ModelConfig` into something `from_pretrained` (or an engine) can open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llem.config.experiment import BUILTIN_MODEL_PREFIX, ModelConfig
from llem.models.tiny import ensure_tiny_model

# name after the `builtin:` prefix -> builder returning the local model directory
BUILTIN_MODELS: dict[str, Callable[[], Path]] = {
    "tiny": ensure_tiny_model,
}


def builtin_model_names() -> list[str]:
    """Every accepted `builtin:` name, prefix included."""
    return [f"{BUILTIN_MODEL_PREFIX}{name}" for name in sorted(BUILTIN_MODELS)]


def resolve_model_path(model_cfg: ModelConfig) -> str:
    """Local directory for a built-in model (built on first use); Hub ids and paths pass through unchanged."""
    if not model_cfg.is_builtin:
        return model_cfg.name
    name = model_cfg.name[len(BUILTIN_MODEL_PREFIX) :]
    builder = BUILTIN_MODELS.get(name)
    if builder is None:
        raise ValueError(
            f"unknown built-in model {model_cfg.name!r}; built-in models: {', '.join(builtin_model_names())}"
        )
    return str(builder())
