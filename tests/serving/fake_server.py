"""A scripted OpenAI-compatible streaming server on loopback, for tests of the serving client.

Each `/v1/completions` request is answered with `max_tokens` tokens, `tokens_per_chunk` to a chunk
(with `token_ids` when asked for `return_token_ids`): the first chunk `ttft_s`
after the request arrived, the next ones `itl_s` apart, each stamped with the server's
monotonic time (`t`), then a usage chunk and `[DONE]`. `/metrics` reports the requests in
flight as `vllm:num_requests_running`, `/health` answers 200, `/v1/models` lists `fake`, `POST /reset_prefix_cache` is counted. `die_at_s` makes the server
drop every connection and stop listening that long after it started, as a crashed server would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Served:
    """What the server did for one request, on its own clock."""

    prompt: str
    max_tokens: int
    body: dict[str, Any]
    received_s: float
    chunk_s: list[float] = field(default_factory=list)


class FakeServer:
    def __init__(self, *, ttft_s: float = 0.05, itl_s: float = 0.02, usage_offset: int = 0,
                 die_at_s: float | None = None, send_usage: bool = True, tokens_per_chunk: int = 1,
                 port: int = 0, host: str = "127.0.0.1", transformers_style: bool = False) -> None:
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.usage_offset = usage_offset
        self.die_at_s = die_at_s
        self.send_usage = send_usage
        self.tokens_per_chunk = tokens_per_chunk  # >1: tokens merged into chunks, as a busy vLLM server does
        self.served: list[Served] = []
        self.resets: list[float] = []  # when /reset_prefix_cache was POSTed
        self.log_requests = False  # print a line per completion and reset (a server's log)
        self.running = 0
        self.port = port
        self.host = host
        # as transformers serve streams: no finish_reason on token chunks, then an empty closing chunk with the
        # finish_reason and the usage, and no [DONE]
        self.transformers_style = transformers_style
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        if self.die_at_s is not None:
            loop.call_later(self.die_at_s, self._die)
        self._ready.set()
        loop.run_forever()
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def _die(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                received = time.monotonic()
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if path == "/health":
                    await self._plain(writer, b"OK")
                elif path == "/metrics":
                    text = f'vllm:num_requests_running{{model_name="fake"}} {self.running}.0\n'
                    await self._plain(writer, text.encode())
                elif path == "/v1/models":
                    data = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode()
                    await self._plain(writer, data)
                elif method == "POST" and path == "/v1/completions":
                    await self._complete(writer, json.loads(body), received)
                elif method == "POST" and path == "/reset_prefix_cache":
                    self.resets.append(received)
                    if self.log_requests:
                        print(f"reset_prefix_cache at {received:.6f}", flush=True)
                    await self._plain(writer, b'{"success": true}')
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _plain(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data))
        await writer.drain()

    async def _complete(self, writer: asyncio.StreamWriter, body: dict[str, Any], received: float) -> None:
        n = int(body["max_tokens"])
        served = Served(body["prompt"], n, body, received)
        self.served.append(served)
        if self.log_requests:
            print(f"completion {len(self.served)} at {received:.6f}", flush=True)
        self.running += 1
        try:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            sizes = [min(self.tokens_per_chunk, n - i) for i in range(0, n, self.tokens_per_chunk)]
            for k, size in enumerate(sizes):
                delay = received + self.ttft_s + k * self.itl_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = time.monotonic()
                served.chunk_s.append(t)
                last = k == len(sizes) - 1 and not self.transformers_style
                choice: dict[str, Any] = {"index": 0, "text": " w" * size, "finish_reason": "length" if last else None}
                if body.get("return_token_ids"):
                    choice["token_ids"] = list(range(size))
                self._event(writer, {"choices": [choice], "t": t})
                await writer.drain()
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n + self.usage_offset}
            if self.transformers_style:
                closing = {"index": 0, "text": "", "finish_reason": "length"}
                self._event(writer, {"choices": [closing], **({"usage": usage} if self.send_usage else {})})
                writer.write(b"0\r\n\r\n")
            else:
                if self.send_usage:
                    self._event(writer, {"choices": [], "usage": usage})
                writer.write(self._chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.running -= 1

    @staticmethod
    def _chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    def _event(self, writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
        writer.write(self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n"))


def main(argv: list[str] | None = None) -> None:
    """Run as a server process (`python -m tests.serving.fake_server --port P`), as an engine's server runs."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ttft-s", type=float, default=0.05)
    parser.add_argument("--itl-s", type=float, default=0.02)
    args = parser.parse_args(argv)
    with FakeServer(ttft_s=args.ttft_s, itl_s=args.itl_s, port=args.port, host=args.host) as server:
        server.log_requests = True
        print(f"fake server listening on {server.url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
