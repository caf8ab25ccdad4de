"""Read a YAML file and remember the line of every key, so errors about it can point into it.

`load_yaml` parses like `yaml.safe_load` and also records, for each mapping key and list
item, the 1-based line it starts on. `YamlSource.locate` maps a key path (a Pydantic
error's `loc`, which may hold union tags the file does not have) to the deepest key the
file really has, as a dotted key and its line. A file that is not valid YAML raises
`YamlSyntaxError` with the line of the problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


class YamlSyntaxError(ValueError):
    """The file is not valid YAML; `line` is where the parser gave up (None if unknown)."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f", line {line}" if line is not None else ""
        super().__init__(f"{path}{where}: not valid YAML: {problem}")


def syntax_error_parts(error: yaml.YAMLError) -> tuple[int | None, str]:
    """The 1-based line and the one-line problem of a PyYAML error."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = error.problem or error.context or "syntax error"
        if error.context and error.problem:
            context = error.context
            if error.context_mark is not None and error.context_mark.line + 1 != line:
                context += f" that starts on line {error.context_mark.line + 1}"
            problem = f"{problem} ({context})"
        return line, problem
    return None, str(error).splitlines()[0] if str(error) else "syntax error"


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "<complex key>"


def _record(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already walked (or a recursive structure)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, _key_text(key_node))
            lines.setdefault(key, key_node.start_mark.line + 1)
            _record(value_node, key, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*path, index)
            lines.setdefault(key, item.start_mark.line + 1)
            _record(item, key, lines, seen)


def dotted(path: Iterable[str | int]) -> str:
    """`('grid', 'shared', 'fp_precision')` as `grid.shared.fp_precision`; list items as `[i]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class YamlSource:
    """A parsed YAML file: its data and the line of every key path in it (`()`: the document)."""

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: Iterable[str | int]) -> int | None:
        return self.lines.get(tuple(path))

    def locate(self, loc: Iterable[str | int]) -> tuple[KeyPath, int] | None:
        """The deepest key path of `loc` the file has (parts it lacks, such as union tags, are
        skipped) and its line; None when not even the first part is in the file."""
        found: KeyPath = ()
        for part in loc:
            candidate = (*found, part if isinstance(part, int) else str(part))
            if candidate in self.lines:
                found = candidate
            elif not found:
                return None
        return (found, self.lines[found]) if found else None

    def find(self, loc: Iterable[str | int], key: str = "") -> tuple[KeyPath, str] | None:
        """Where a validation problem at `loc` (shown as `key`) sits: the deepest key path the file
        has, and the key to name (`key` when the file holds only a section above it, e.g. for a
        missing required key)."""
        found = self.locate(loc)
        if found is None:
            return None
        name = dotted(found[0])
        return found[0], name if len(name) >= len(key) else key

    def holds(self, path: Iterable[str | int], value: Any) -> bool:
        """Whether the file has `value` at key path `path` (a value read elsewhere, such as from a
        command-line override or another file, is not the file's even where the file has the key)."""
        current = self.data
        for part in path:
            if isinstance(current, dict) and not isinstance(part, int) and part in current:
                current = current[part]
            elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
                current = current[part]
            else:
                return False
        return bool(current == value)

    def within(self, key: str) -> YamlSource:
        """The source of the mapping under top-level `key`, with key paths relative to it."""
        lines = {p[1:]: n for p, n in self.lines.items() if p[:1] == (key,)}
        data = self.data.get(key) if isinstance(self.data, dict) else None
        return YamlSource(self.path, data, lines)


def parse_yaml(text: str, path: Path) -> YamlSource:
    """Parse `text` (the contents of `path`) like `yaml.safe_load`, keeping every key's line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        line, problem = syntax_error_parts(error)
        raise YamlSyntaxError(path, line, problem) from None
    finally:
        loader.dispose()
    lines: dict[KeyPath, int] = {}
    if node is not None:
        lines[()] = node.start_mark.line + 1  # where the document's value starts
        _record(node, (), lines, set())
    return YamlSource(path, data, lines)


def load_yaml(path: Path) -> YamlSource:
    """Read and parse a YAML file; OSError if it cannot be read, YamlSyntaxError if it is not YAML."""
    path = Path(path)
    return parse_yaml(path.read_text(encoding="utf-8"), path)
