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
NVML_FACTORY_ENV = "LLEM_NVML_FACTORY"

OP_PING = "ping"
OP_INIT = "init"
OP_RUN = "run"
OP_HEALTH = "health"
OP_UNLOAD = "unload"
OP_SHUTDOWN = "shutdown"


def pack(obj: Any) -> bytes:
    return cloudpickle.dumps(obj)


def unpack(data: bytes) -> Any:
    return cloudpickle.loads(data)


def new_authkey() -> bytes:
    return os.urandom(32)
