"""A real HTTP webhook receiver on 127.0.0.1 for notification tests: answers, fails or hangs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["ok", "error", "hang"]
SECRET = "s3cr3t-hook-token-4821"  # the part of the URL that must never be written anywhere
HANG_S = 120.0


@dataclass
class Receiver:
    mode: Mode
    port: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    requests: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{SECRET}?token={SECRET}"

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@contextmanager
def receiver(mode: Mode = "ok") -> Iterator[Receiver]:
    """Serve until the block ends; `hang` holds every request until then (or HANG_S)."""
    state = Receiver(mode)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests += 1
                state.paths.append(self.path)
                state.events.append(json.loads(body))
            if state.mode == "hang":
                state.release.wait(HANG_S)
                return
            self.send_response(500 if state.mode == "error" else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no" if state.mode == "error" else b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
