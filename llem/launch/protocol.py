"""The host <-> worker protocol: request/reply dictionaries over a Unix socket.

A Unix socket in a directory both sides can see works for a local process and for a
container whose sweep dir is bind-mounted at the same path. `multiprocessing.connection`
frames the messages and authenticates the peer with a per-worker key; payloads that hold
functions or Hydra state are cloudpickled so test apps and `__main__` tasks travel too.
"""

from __future__ import annotations

import os
from typing import Any

import cloudpickle

AUTHKEY_ENV = "LLEM_WORKER_AUTHKEY"
PARENT_ENV = "LLEM_WORKER_PARENT"  # the launcher's PID, for a local worker to check it is still its parent
NVML_FACTORY_ENV = "LLEM_NVML_FACTORY"

OP_PING = "ping"
OP_INIT = "init"
OP_RUN = "run"
OP_HEALTH = "health"
OP_UNLOAD = "unload"
OP_SHUTDOWN = "shutdown"


def nvml_from_env() -> Any:
    """A scripted NVML named by LLEM_NVML_FACTORY (`module:function`), or None for the real `pynvml`.

    Lets tests drive workers and the doctor, which run in other processes, against a fake GPU.
    """
    factory = os.environ.get(NVML_FACTORY_ENV)
    if not factory:
        return None
    import pkgutil

    return pkgutil.resolve_name(factory if ":" in factory else factory + ":nvml")()


def pack(obj: Any) -> bytes:
    return cloudpickle.dumps(obj)


def unpack(data: bytes) -> Any:
    return cloudpickle.loads(data)


def new_authkey() -> bytes:
    return os.urandom(32)


def pack_singleton_state(state: dict[str, Any]) -> dict[str, Any]:
    """Hydra's global state, one pickle per singleton, so a worker that lacks a host-only plugin
    (e.g. inside a container) still receives the rest (job runtime, config store, resolvers)."""
    return {
        "instances": [pack((cls, instance)) for cls, instance in state["instances"].items()],
        "resolvers": pack(state["omegaconf_resolvers"]),
    }


def apply_singleton_state(payload: dict[str, Any]) -> list[str]:
    """Install what can be unpickled here; return what could not (and why)."""
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton
    from omegaconf.basecontainer import BaseContainer

    skipped: list[str] = []
    for blob in payload["instances"]:
        try:
            cls, instance = unpack(blob)
        except Exception as error:  # noqa: BLE001 - a class this environment does not have
            skipped.append(f"{type(error).__name__}: {error}")
            continue
        Singleton._instances[cls] = instance
    try:
        BaseContainer._resolvers = unpack(payload["resolvers"])
    except Exception as error:  # noqa: BLE001
        skipped.append(f"resolvers: {error}")
    Plugins.instance()
    return skipped
