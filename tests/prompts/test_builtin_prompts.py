"""The shipped prompt set: present as package data, well-formed, and split by length as documented."""

from __future__ import annotations

import pytest

from llem.prompts.builtin import BUILTIN_SETS, builtin_prompts, builtin_records

WORD_BOUNDS = {"short": (1, 19), "medium": (40, 120), "long": (200, 500)}


def test_records_are_well_formed() -> None:
    records = builtin_records()
    assert 40 <= len(records) <= 60
    assert len({r.id for r in records}) == len(records)
    for r in records:
        lo, hi = WORD_BOUNDS[r.length]
        assert lo <= len(r.prompt.split()) <= hi, (r.id, len(r.prompt.split()))
        assert r.prompt == r.prompt.strip()


def test_lengths_are_roughly_a_third_each() -> None:
    records = builtin_records()
    for length in WORD_BOUNDS:
        share = sum(r.length == length for r in records) / len(records)
        assert 0.25 <= share <= 0.42, length


def test_named_sets() -> None:
    assert set(BUILTIN_SETS) == {"mixed", "short", "long"}
    assert builtin_prompts("mixed") == builtin_records()
    assert builtin_prompts() == builtin_records()
    assert builtin_prompts("short") and {r.length for r in builtin_prompts("short")} == {"short"}
    assert builtin_prompts("long") and {r.length for r in builtin_prompts("long")} == {"long"}


def test_unknown_set_is_rejected() -> None:
    with pytest.raises(ValueError, match="mixed, short, long"):
        builtin_prompts("medium-ish")
