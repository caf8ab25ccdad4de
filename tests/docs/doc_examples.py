"""The `python -m llem ...` commands README.md and docs/ show, and the job counts stated next to them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

_COMMAND = re.compile(r"^(?:nohup\s+|\S*/)?(?:python -m llem|llem)\s+(?P<args>.*)$")
_INLINE = re.compile(r"`((?:python -m llem|llem) [^`]+)`")
_JOBS = re.compile(r"\b(\d+) jobs\b")


@dataclass(frozen=True)
class Example:
    """One documented command: where it is, its arguments after `python -m llem`, and the job count stated
    with it (a `# ... N jobs` comment on or right after it, or a sentence ending `N jobs:` before its block)."""

    where: str
    args: tuple[str, ...]
    jobs: int | None

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args


def _parse(line: str) -> tuple[str, ...] | None:
    match = _COMMAND.match(line.strip())
    if match is None:
        return None
    args = match.group("args").split(" #", 1)[0]
    args = re.split(r"\s+(?:>|2>|&|\|)", args, maxsplit=1)[0]  # redirections and the rest of a shell line
    try:
        return tuple(shlex.split(args))
    except ValueError:
        return None


def _blocks(text: str) -> list[tuple[int, list[str], str]]:
    """Fenced shell blocks as (first line number, lines, the paragraph just before the fence)."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```") and lines[i].strip("`").strip() in ("bash", "sh", "shell", "console"):
            start, body = i + 1, []
            before = []
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            while j >= 0 and lines[j].strip():
                before.insert(0, lines[j])
                j -= 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((start + 1, body, " ".join(before)))
        i += 1
    return out


def _joined(body: list[str]) -> list[tuple[int, str]]:
    """Lines with `\\` continuations joined, each with its offset in the block."""
    out: list[tuple[int, str]] = []
    pending, first = "", 0
    for k, line in enumerate(body):
        if not pending:
            first = k
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    return out


def examples() -> list[Example]:
    found: list[Example] = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(REPO))
        for start, body, before in _blocks(text):
            lines = _joined(body)
            commands = [(k, line, _parse(line)) for k, line in lines if not line.lstrip().startswith("$")]
            commands = [(k, line, args) for k, line, args in commands if args is not None]
            for n, (k, line, args) in enumerate(commands):
                jobs = None
                counted = [line] if " #" in line else []
                nxt = [ln for kk, ln in lines if kk > k]
                while nxt and nxt[0].lstrip().startswith("#"):
                    counted.append(nxt.pop(0))
                for comment in counted:
                    match = _JOBS.search(comment.split("#", 1)[1] if "#" in comment else "")
                    jobs = int(match.group(1)) if match else jobs
                if jobs is None and len(commands) == 1 and before.rstrip().endswith("jobs:"):
                    match = _JOBS.findall(before)
                    jobs = int(match[-1]) if match else None
                found.append(Example(f"{name}:{start + k}", args, jobs))
        found += _inline_examples(text, name)
    return found


def _inline_examples(text: str, name: str) -> list[Example]:
    """`python -m llem ...` in running text; a count is "N jobs" after it in the same sentence."""
    out = []
    lines = text.splitlines()
    fenced = False
    paragraph: list[tuple[int, str]] = []
    for number, line in enumerate([*lines, ""], 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith(("    ", "\t")):
            continue
        if line.strip():
            paragraph.append((number, line.strip()))
            continue
        joined = " ".join(t for _, t in paragraph)
        for match in _INLINE.finditer(joined):
            args = _parse(match.group(1))
            if args is None:
                continue
            sentence = re.split(r"\.(?:\s|$)|`(?:python -m llem|llem) ", joined[match.end() :], maxsplit=1)[0]
            count = _JOBS.search(sentence)
            out.append(Example(f"{name}:{paragraph[0][0]}", args, int(count.group(1)) if count else None))
        paragraph = []
    return out
