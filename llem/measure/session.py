"""A warm worker's loaded engine, kept across experiments that share its settings: an offline backend with its
model loaded, or (scenario=serving) the engine's running server."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llem.backends.base import Backend, LoadInfo
from llem.backends.registry import backend_class
from llem.config import ExperimentConfig

if TYPE_CHECKING:
    from llem.energy import BaselineResult
    from llem.serving.server import ServerProcess


class BackendSession:
    """Holds at most one loaded model; reloads only when the loading settings change.

    Reuse is keyed by the backend's `load_key` (model, precision and load-time options),
    so run-time settings such as batch size never force a reload. A server is kept the same way,
    keyed by its settings (model and engine arguments, never the load sent to it); the worker holds
    either a loaded model or a server, never both, since each would hold the devices the other needs.
    """

    def __init__(self) -> None:
        self._backend: Backend | None = None
        self._key: str | None = None
        self._info: LoadInfo | None = None
        self._baselines: dict[str, BaselineResult] = {}
        self._server: ServerProcess | None = None
        self._server_key: str | None = None
        self.loads = 0
        self.server_starts = 0

    @staticmethod
    def key_for(experiment: ExperimentConfig) -> str:
        return backend_class(experiment.backend.name).load_key(experiment)

    def can_reuse(self, experiment: ExperimentConfig) -> bool:
        return self._backend is not None and self._key == self.key_for(experiment)

    def acquire(self, experiment: ExperimentConfig, *, force_cold_start: bool = False) -> tuple[Backend, LoadInfo, bool]:
        """The loaded backend for `experiment`, its load info, and whether it was reused."""
        if not force_cold_start and self.can_reuse(experiment):
            assert self._backend is not None and self._info is not None
            return self._backend, self._info, True
        self.release()
        backend = backend_class(experiment.backend.name)()
        info = backend.load(experiment)
        self._backend, self._key, self._info = backend, self.key_for(experiment), info
        self.loads += 1
        return backend, info, False

    def loaded_backend(self) -> Backend | None:
        """The backend holding a loaded model, if any."""
        return self._backend

    def remember_baseline(self, key: str, baseline: BaselineResult | None) -> None:
        """Idle power for one meter source and device set, reused while this model stays loaded."""
        if baseline is None:
            self._baselines.pop(key, None)
        else:
            self._baselines[key] = baseline

    def cached_baseline(self, key: str) -> BaselineResult | None:
        """The baseline taken with the same sources on the same devices, or None (never another set's)."""
        return self._baselines.get(key)

    def acquire_server(self, key: str, make: Callable[[], ServerProcess], *,
                       force_cold_start: bool = False) -> tuple[ServerProcess, bool]:
        """The running server for settings `key` and whether it was reused; otherwise whatever this worker holds
        is released and `make()`'s server started (its `ServerError` propagates, and nothing is held then, so the
        next job starts a fresh one). A server that has exited is never reused."""
        held = self._server
        if not force_cold_start and held is not None and self._server_key == key and held.alive():
            return held, True
        self.release()
        server = make()
        server.start()
        self._server, self._server_key = server, key
        self.server_starts += 1
        return server, False

    def running_server(self) -> ServerProcess | None:
        return self._server

    def stop_server(self) -> None:
        """Stop the server (with its whole process group): it died, or a job using it failed."""
        server, self._server, self._server_key = self._server, None, None
        if server is not None:
            server.stop()
            self._baselines.clear()

    def release(self) -> None:
        """Unload the model or stop the server, freeing the devices (cold start)."""
        self.stop_server()
        if self._backend is not None:
            self._backend.unload()
        self._backend, self._key, self._info = None, None, None
        self._baselines.clear()
