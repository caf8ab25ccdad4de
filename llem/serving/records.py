"""What the client records about each request, and the JSON Lines file that keeps them.

Times are seconds on the client's monotonic clock (the clock the energy windows use), so a
request's chunks can be placed inside or outside an energy window without conversion.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, ERROR = "ok", "error"


@dataclass
class RequestRecord:
    """One request as the client saw it.

    `chunk_times` holds the arrival time of every streamed chunk that carried output, and
    `chunk_tokens` how many tokens each of them carried (the server's token ids where it
    sends them, else one per chunk: one token per chunk is how OpenAI-compatible servers
    stream). `output_tokens` is the client's own count; `server_output_tokens` the
    server's `usage.completion_tokens`, when it reports usage.
    """

    index: int
    warmup: bool
    scheduled_s: float | None = None
    send_s: float | None = None
    first_token_s: float | None = None
    end_s: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    output_tokens: int = 0
    server_output_tokens: int | None = None
    server_prompt_tokens: int | None = None
    expected_output_tokens: int | None = None
    status: str = ERROR
    http_status: int | None = None
    error: str | None = None
    finish_reason: str | None = None
    # tokens the server counted that no chunk carried on its own (a server streaming text pieces merges tokens that
    # do not decode to whole characters); put on the last chunk, so the count is the server's and the place a guess
    merged_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def ttft_s(self) -> float | None:
        if self.send_s is None or self.first_token_s is None:
            return None
        return self.first_token_s - self.send_s

    @property
    def e2e_s(self) -> float | None:
        """Send to the last chunk with output (as `vllm bench serve` times it)."""
        if self.send_s is None or not self.chunk_times:
            return None
        return self.chunk_times[-1] - self.send_s

    @property
    def itl_s(self) -> list[float]:
        """Every gap between consecutive chunks of this request."""
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> Path:
    """All records as JSON Lines, written atomically (a crash leaves the old file or the new one)."""
    from llem.atomic import atomic_write_text

    text = "".join(json.dumps(r.to_dict(), separators=(",", ":")) + "\n" for r in records)
    return atomic_write_text(Path(path), text)


def read_records(path: str | Path) -> list[RequestRecord]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [RequestRecord.from_dict(json.loads(line)) for line in lines if line.strip()]
