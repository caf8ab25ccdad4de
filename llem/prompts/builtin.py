"""The prompt set that ships with llem, so a measurement needs no download.

The records live in `data/builtin.jsonl` (package data). Each record is
`{"id", "length": "short"|"medium"|"long", "prompt"}`: about a third are short (< 20 words),
a third medium (40-120 words) and a third long (200-500 words).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

Length = Literal["short", "medium", "long"]
SetName = Literal["mixed", "short", "long"]

BUILTIN_SETS: tuple[str, ...] = ("mixed", "short", "long")
_LENGTHS: frozenset[str] = frozenset({"short", "medium", "long"})
_DATA_FILE = "builtin.jsonl"


@dataclass(frozen=True)
class BuiltinPrompt:
    """One record of the shipped prompt set."""

    id: str
    length: Length
    prompt: str


def builtin_data_text() -> str:
    """The raw JSON Lines file; the tiny tokenizer also hashes and trains on it."""
    return resources.files("llem.prompts").joinpath("data", _DATA_FILE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _records() -> tuple[BuiltinPrompt, ...]:
    records: list[BuiltinPrompt] = []
    seen: set[str] = set()
    for lineno, line in enumerate(builtin_data_text().splitlines(), 1):
        if not line.strip():
            continue
        raw = json.loads(line)
        if raw.get("length") not in _LENGTHS or not isinstance(raw.get("prompt"), str) or raw.get("id") in seen:
            raise ValueError(f"llem/prompts/data/{_DATA_FILE} line {lineno}: malformed built-in prompt record")
        seen.add(raw["id"])
        records.append(BuiltinPrompt(id=str(raw["id"]), length=raw["length"], prompt=raw["prompt"]))
    return tuple(records)


def builtin_records() -> list[BuiltinPrompt]:
    """All shipped records, in file order."""
    return list(_records())


def builtin_prompts(name: str = "mixed") -> list[BuiltinPrompt]:
    """The records of one named set: `short`, `long`, or `mixed` (everything)."""
    if name not in BUILTIN_SETS:
        raise ValueError(f"unknown built-in prompt set {name!r}; choose one of {', '.join(BUILTIN_SETS)}")
    records = _records()
    if name == "mixed":
        return list(records)
    return [r for r in records if r.length == name]
