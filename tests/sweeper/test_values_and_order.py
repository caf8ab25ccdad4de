"""Override rendering round-trips through Hydra's parser; run order rules."""

from __future__ import annotations

from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from llem.plan.order import run_order
from llem.plan.values import render_override


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -3, 1.5, 1e-05, "float16", "Qwen/Qwen2.5-0.5B-Instruct", "builtin:tiny",
        "two words", "it's", "a\\\\'b", "end\\\\", "null", "true", "1.0", "42", "a,b", "x=y", "choice(a)", "", "back\\slash",
        [1, 2], ["a b", None], {"x": 1, "y": "two words"}, "/abs/path/prompts.txt",
    ],
)
def test_render_round_trips(value: Any) -> None:
    parsed = OverridesParser.create().parse_override(render_override("key", value))
    assert not parsed.is_sweep_override()
    assert parsed.value() == value


@pytest.mark.parametrize(
    ("structure", "expected"),
    [
        ("grouped", [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]),
        ("interleaved", [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]),
    ],
)
def test_grouped_and_interleaved(structure: str, expected: list[tuple[int, int]]) -> None:
    assert run_order(3, 2, structure, None) == expected


def test_shuffled_is_seeded_and_per_cycle() -> None:
    a = run_order(8, 3, "shuffled", 7)
    assert a == run_order(8, 3, "shuffled", 7)
    assert a != run_order(8, 3, "shuffled", 8)
    cycles = [[i for i, c in a if c == k] for k in range(3)]
    assert all(sorted(c) == list(range(8)) for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1
    with pytest.raises(ValueError):
        run_order(2, 1, "shuffled", None)
