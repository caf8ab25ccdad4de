"""Model resolution, including the offline built-in tiny model."""

from __future__ import annotations

from llem.models.resolve import BUILTIN_MODELS, builtin_model_names, resolve_model_path
from llem.models.tiny import default_cache_dir, ensure_tiny_model, train_tiny_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "builtin_model_names",
    "default_cache_dir",
    "ensure_tiny_model",
    "resolve_model_path",
    "train_tiny_tokenizer",
]

