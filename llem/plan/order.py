"""Run order across cycles: which configuration runs in which position of each cycle.

Drift over a campaign (a GPU warming up, a room heating, caches filling) favours whichever
configuration keeps running first; the orders below spread that bias differently:

- grouped: A×n, B×n (no balancing; fewest model reloads);
- interleaved: A,B,C, A,B,C;
- shuffled: a new seeded permutation each cycle;
- reverse: A,B,C, C,B,A, A,B,C (drift over the campaign hits every configuration alike);
- latin_square: a Williams design, in which each configuration takes each position once and
  follows every other equally often, so first-order carry-over (heat, caches) is balanced.

Every order is a function of the configuration count, the cycles and the seed, so a resumed
campaign plans the same order again.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

STRUCTURES: tuple[str, ...] = ("interleaved", "shuffled", "grouped", "reverse", "latin_square")


def williams_rows(count: int) -> list[list[int]]:
    """The rows of a Williams design for `count` configurations.

    The first row is 0, 1, n-1, 2, n-2, ...; row r adds r to every entry (mod n). For an even
    count these n rows balance precedence; for an odd count the n rows and their mirror images
    (2n rows) do.
    """
    if count < 1:
        return []
    first: list[int] = [0]
    low, high = 1, count - 1
    take_low = True
    while len(first) < count:
        if take_low:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
        take_low = not take_low
    rows = [[(x + r) % count for x in first] for r in range(count)]
    if count % 2:
        rows += [list(reversed(row)) for row in rows]
    return rows


def _cycle_orders(count: int, cycles: int, structure: str, seed: int | None) -> list[list[int]]:
    base = list(range(count))
    if structure == "interleaved":
        return [base for _ in range(cycles)]
    if structure == "reverse":
        return [base if c % 2 == 0 else base[::-1] for c in range(cycles)]
    if structure == "latin_square":
        rows = williams_rows(count)
        return [rows[c % len(rows)] for c in range(cycles)] if rows else [[] for _ in range(cycles)]
    if structure == "shuffled":
        if seed is None:
            raise ValueError("shuffled order needs a seed")
        out = []
        for c in range(cycles):
            order = list(base)
            random.Random(f"llem-shuffle:{seed}:{c}").shuffle(order)
            out.append(order)
        return out
    raise ValueError(f"unknown structure {structure!r}; expected one of {list(STRUCTURES)}")


def run_order(count: int, cycles: int, structure: str, seed: int | None) -> list[tuple[int, int]]:
    """(configuration index, cycle) pairs in execution order.

    Shuffled order draws a new permutation each cycle from `seed` and the cycle index,
    so the same seed always gives the same plan (the seed is recorded in the manifest).
    """
    if structure == "grouped":
        return [(i, c) for i in range(count) for c in range(cycles)]
    return [(i, c) for c, order in enumerate(_cycle_orders(count, cycles, structure, seed)) for i in order]


@dataclass(frozen=True)
class Balance:
    """How evenly an order spreads configurations over positions and over who-follows-whom."""

    position_spread: int  # max - min times a configuration sits in one position (0: every position equally)
    precedence_spread: int  # max - min times one configuration directly follows another (0: balanced)
    cycles_for_balance: int  # cycles a fully balanced latin square needs (a multiple of this)


def position_counts(order: list[tuple[int, int]], count: int) -> Counter[tuple[int, int]]:
    """(configuration, position within its cycle) -> how often."""
    out: Counter[tuple[int, int]] = Counter()
    position: Counter[int] = Counter()
    for config, cycle in order:
        out[(config, position[cycle])] += 1
        position[cycle] += 1
    for config in range(count):
        for pos in range(count):
            out.setdefault((config, pos), 0)
    return out


def precedence_counts(order: list[tuple[int, int]], count: int) -> Counter[tuple[int, int]]:
    """(configuration, the configuration right after it in the same cycle) -> how often."""
    out: Counter[tuple[int, int]] = Counter()
    previous: dict[int, int] = {}
    for config, cycle in order:
        if cycle in previous:
            out[(previous[cycle], config)] += 1
        previous[cycle] = config
    for a in range(count):
        for b in range(count):
            if a != b:
                out.setdefault((a, b), 0)
    return out


def balance(count: int, cycles: int, structure: str, seed: int | None = None) -> Balance:
    order = run_order(count, cycles, structure, seed)
    positions = position_counts(order, count).values()
    precedence = precedence_counts(order, count).values()
    return Balance(
        position_spread=max(positions, default=0) - min(positions, default=0),
        precedence_spread=max(precedence, default=0) - min(precedence, default=0),
        cycles_for_balance=len(williams_rows(count)) or 1,
    )


def order_note(count: int, cycles: int, structure: str) -> str | None:
    """For a latin square that the cycles cannot balance: how balanced it is and what would balance it."""
    if structure != "latin_square" or count < 2:
        return None
    b = balance(count, cycles, structure)
    if b.position_spread == 0 and b.precedence_spread == 0:
        return None
    needed = b.cycles_for_balance
    odd = " (an odd number of configurations needs twice as many cycles as configurations)" if count % 2 else ""
    return (
        f"latin_square over {count} configurations is fully balanced at a multiple of {needed} cycles{odd}; "
        f"with {cycles} cycle(s) a configuration's count in one position differs by up to {b.position_spread} "
        f"and how often one follows another differs by up to {b.precedence_spread}"
    )
