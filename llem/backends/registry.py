"""Backend lookup by name, importing each engine only when it is used."""

from __future__ import annotations

import importlib

from llem.backends.base import Backend

_BACKENDS = {
    "pytorch": "llem.backends.pytorch.backend:PyTorchBackend",
    "vllm": "llem.backends.vllm.backend:VLLMBackend",
    "tensorrt": "llem.backends.tensorrt.backend:TensorRTBackend",
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


def create_backend(name: str) -> Backend:
    return backend_class(name)()
