"""A file behind the scripted NVML's settable state, so separate processes see one set of GPUs.

Each process (the orchestrator, every worker, the doctor) builds its own fake NVML; a real GPU's power
limit and locked clocks outlive the process that set them. `FileStore` keeps that state in a JSON file
and appends every set and reset call, with the calling PID, to a JSON Lines log that tests read back.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class FileStore:
    """GPU UUID -> settable state in `<dir>/state.json`; every change logged to `<dir>/calls.jsonl`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        self.log_path = self.dir / "calls.jsonl"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def load(self, uuid: str) -> dict[str, Any] | None:
        with self._locked():
            return self._read().get(uuid)

    def save(self, uuid: str, state: dict[str, Any]) -> None:
        with self._locked():
            data = self._read()
            data[uuid] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in state.items()}
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_path)

    def log(self, fn: str, uuid: str, args: tuple[int, ...]) -> None:
        with self._locked(), open(self.log_path, "a") as handle:
            handle.write(json.dumps({"fn": fn, "uuid": uuid, "args": list(args), "pid": os.getpid()}) + "\n")

    def calls(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def state(self) -> dict[str, Any]:
        return self._read()
