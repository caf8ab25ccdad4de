"""Prompts from a local file: `.txt` (one prompt per non-empty line) or `.jsonl` (one record per line).

Errors name the file and, for JSON Lines, the line, because a workload file is usually edited by hand.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)


class PromptFileError(ValueError):
    """A prompt file exists but cannot be used; the message says where and why."""


def read_prompt_file(path: str | Path, field: str = "prompt") -> list[tuple[int, str]]:
    """The prompts in `path` as (1-based line number, text), in file order.

    Leading/trailing whitespace is stripped and blank lines (or empty JSON strings) are skipped.
    For `.jsonl`, `field` names the key that holds the prompt in each record.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "prompt file not found", str(p))
    if not p.is_file():
        raise PromptFileError(f"{p}: not a file")
    suffix = p.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        prompts = _read_text(p)
    elif suffix in JSONL_SUFFIXES:
        prompts = _read_jsonl(p, field)
    else:
        raise PromptFileError(f"{p}: unsupported prompt file type {p.suffix!r}; use .txt or .jsonl")
    if not prompts:
        raise PromptFileError(f"{p}: no prompts found")
    return prompts


def _lines(p: Path) -> list[str]:
    try:
        return p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_text(p: Path) -> list[tuple[int, str]]:
    return [(lineno, line.strip()) for lineno, line in enumerate(_lines(p), 1) if line.strip()]


def _read_jsonl(p: Path, field: str) -> list[tuple[int, str]]:
    prompts: list[tuple[int, str]] = []
    for lineno, line in enumerate(_lines(p), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise PromptFileError(f"{p}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if field not in record:
            keys = ", ".join(sorted(map(str, record))) or "none"
            raise PromptFileError(f"{p}:{lineno}: record has no field {field!r} (keys: {keys})")
        value = record[field]
        if not isinstance(value, str):
            raise PromptFileError(f"{p}:{lineno}: field {field!r} is {type(value).__name__}, expected a string")
        if value.strip():
            prompts.append((lineno, value.strip()))
    return prompts
