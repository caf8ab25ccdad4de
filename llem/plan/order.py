"""Run order across cycles: grouped (A×n, B×n), interleaved (A,B,C, A,B,C) or shuffled per cycle."""

from __future__ import annotations

import random


def run_order(count: int, cycles: int, structure: str, seed: int | None) -> list[tuple[int, int]]:
    """(configuration index, cycle) pairs in execution order.

    Shuffled order draws a new permutation each cycle from `seed` and the cycle index,
    so the same seed always gives the same plan (the seed is recorded in the manifest).
    """
    if structure == "grouped":
        return [(i, c) for i in range(count) for c in range(cycles)]
    if structure == "interleaved":
        return [(i, c) for c in range(cycles) for i in range(count)]
    if structure == "shuffled":
        if seed is None:
            raise ValueError("shuffled order needs a seed")
        out: list[tuple[int, int]] = []
        for c in range(cycles):
            order = list(range(count))
            random.Random(f"llem-shuffle:{seed}:{c}").shuffle(order)
            out.extend((i, c) for i in order)
        return out
    raise ValueError(f"unknown structure {structure!r}")
