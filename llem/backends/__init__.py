"""Inference engines behind one small interface (load, generate with per-token timestamps, unload)."""

from llem.backends.base import Backend, GenerationOutput, LoadInfo, SequenceTiming
from llem.backends.registry import create_backend

__all__ = ["Backend", "GenerationOutput", "LoadInfo", "SequenceTiming", "create_backend"]
