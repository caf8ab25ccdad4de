"""Run orders `reverse` and `latin_square`: positions and precedence, the balance note, and resume."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from llem.config import CampaignSettings
from llem.plan.compose import FastComposer
from llem.plan.expand import Axis
from llem.plan.order import order_note, position_counts, precedence_counts, run_order, williams_rows
from llem.plan.planner import build_manifest, make_plan
from llem.plan.resume import reconcile
from llem.plan.table import print_plan


def _cycles(order: list[tuple[int, int]]) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for config, cycle in order:
        out.setdefault(cycle, []).append(config)
    return [out[c] for c in sorted(out)]


def test_reverse_alternates_direction() -> None:
    assert _cycles(run_order(3, 4, "reverse", None)) == [[0, 1, 2], [2, 1, 0], [0, 1, 2], [2, 1, 0]]


@pytest.mark.parametrize(("count", "cycles"), [(4, 4), (5, 10), (6, 6)])
def test_latin_square_balances_positions_and_precedence(count: int, cycles: int) -> None:
    order = run_order(count, cycles, "latin_square", None)
    assert all(sorted(c) == list(range(count)) for c in _cycles(order))  # every cycle runs every configuration once
    positions = position_counts(order, count)
    assert len(positions) == count * count
    assert set(positions.values()) == {cycles // count}  # each configuration in each position equally often
    precedence = precedence_counts(order, count)
    assert len(precedence) == count * (count - 1)
    # every ordered pair (a right before b) equally often: (count - 1) pairs per cycle over count*(count-1) pairs
    assert set(precedence.values()) == {cycles // count}
    assert order_note(count, cycles, "latin_square") is None


def test_odd_count_needs_twice_the_cycles() -> None:
    assert len(williams_rows(5)) == 10
    order = run_order(5, 5, "latin_square", None)
    assert set(position_counts(order, 5).values()) == {1}  # five cycles: positions balanced
    assert set(precedence_counts(order, 5).values()) == {0, 2}  # ... but not precedence
    note = order_note(5, 5, "latin_square")
    assert note is not None and "10 cycles" in note and "odd number" in note and "up to 2" in note


def test_too_few_cycles_are_reported_with_the_spread() -> None:
    note = order_note(4, 3, "latin_square")
    assert note is not None and "multiple of 4 cycles" in note and "with 3 cycle(s)" in note
    assert order_note(4, 3, "interleaved") is None


def _axis(key: str, *values: str) -> Axis:
    return Axis(key=key, choices=[f"{key}={v}" for v in values])


def _plan(loader: Any, structure: str, cycles: int) -> Any:
    composer = FastComposer(loader, "config")
    settings = CampaignSettings(execution={"cycles": cycles, "structure": structure})
    return make_plan([_axis("backend.batch_size", "1", "2", "3", "4")], settings, composer.compose,
                     default_backend="pytorch", model_options={"tiny"})


def test_a_plan_follows_the_latin_square_and_its_table_says_how_balanced(loader: Any) -> None:
    plan = _plan(loader, "latin_square", 3)
    by_cycle: dict[int, list[str]] = {}
    for job in plan.runnable:
        by_cycle.setdefault(job.cycle, []).append(job.config.params["backend.batch_size"])
    assert [by_cycle[c] for c in range(3)] == [["1", "2", "4", "3"], ["2", "3", "1", "4"], ["3", "4", "2", "1"]]
    out = io.StringIO()
    print_plan(plan, out)
    assert "note: latin_square over 4 configurations" in out.getvalue()


@pytest.mark.parametrize("structure", ["reverse", "latin_square"])
def test_resume_plans_the_same_order(loader: Any, tmp_path: Path, structure: str) -> None:
    first = _plan(loader, structure, 4)
    manifest = build_manifest(first, campaign_name="c", sweep_dir=tmp_path)
    again = _plan(loader, structure, 4)
    assert again.plan_hash() == first.plan_hash()
    assert again.plan_hash() != _plan(loader, "interleaved", 4).plan_hash()  # the order is part of the identity
    # a changed order would raise PlanChanged here
    reconcile(manifest, again, build_manifest(again, campaign_name="c", sweep_dir=tmp_path), allow_changes=False)
    assert [(j.job_num, j.cycle, j.overrides) for j in manifest.jobs] == [
        (j.job_num, j.cycle, list(j.config.overrides)) for j in again.jobs
    ]
