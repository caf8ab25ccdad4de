"""A warm worker's loaded backend, kept across experiments that share loading settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llem.backends.base import Backend, LoadInfo
from llem.backends.registry import backend_class
from llem.config import ExperimentConfig

if TYPE_CHECKING:
    from llem.energy import BaselineResult


class BackendSession:
    """Holds at most one loaded model; reloads only when the loading settings change.

    Reuse is keyed by the backend's `load_key` (model, precision and load-time options),
    so run-time settings such as batch size never force a reload.
    """

    def __init__(self) -> None:
        self._backend: Backend | None = None
        self._key: str | None = None
        self._info: LoadInfo | None = None
        self._baselines: dict[str, BaselineResult] = {}
        self.loads = 0

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

    def release(self) -> None:
        """Unload the model and free its memory (cold start)."""
        if self._backend is not None:
            self._backend.unload()
        self._backend, self._key, self._info = None, None, None
        self._baselines.clear()
