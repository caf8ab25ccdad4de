"""Prefill and decode apart: a prefill-only window, and decode as the main window minus it.

Energy and time per token mix two very different phases: prefill is compute-bound and
processes every prompt token at once, decode is memory-bound and makes one token per step.
A prefill-only pass (one output token per prompt) is measured in its own window; scaled to
the main window's passes it is subtracted from the main window to give decode. A decode
figure that comes out negative (noise larger than the difference) is null with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from llem.measure.result import Phase


@dataclass(frozen=True)
class WindowFigures:
    """One window's totals: passes, duration, and energy above idle (None when not measured)."""

    passes: int
    duration_s: float
    energy_j: float | None
    energy_reason: str | None = None

    def per_pass(self) -> tuple[float, float | None]:
        return self.duration_s / self.passes, None if self.energy_j is None else self.energy_j / self.passes


def _phase(duration_s: float | None, tokens: int, energy_j: float | None, reason: str | None) -> Phase:
    per_token_j = energy_j / tokens if energy_j is not None and tokens > 0 else None
    ok_time = duration_s is not None and tokens > 0 and duration_s > 0
    return Phase(
        duration_s=duration_s,
        tokens=tokens,
        energy_j=energy_j,
        per_token_j=per_token_j,
        per_token_ms=duration_s * 1000.0 / tokens if ok_time else None,  # type: ignore[operator]
        tokens_per_s=tokens / duration_s if ok_time else None,  # type: ignore[operator]
        unavailable_reason=reason,
    )


def split_phases(
    main: WindowFigures,
    prefill: WindowFigures,
    *,
    prompts_per_pass: int,
    prefill_tokens_per_pass: int,
    output_tokens: int,
) -> tuple[Phase, Phase, list[str]]:
    """Prefill and decode figures for the main window, and warnings.

    Prefill's tokens are the prompt tokens it processed; decode's tokens are the output tokens
    after each prompt's first (the first comes out of prefill).
    """
    warnings: list[str] = []
    p_duration, p_energy = prefill.per_pass()
    prefill_duration = p_duration * main.passes
    prefill_energy = None if p_energy is None else p_energy * main.passes
    energy_reason = prefill.energy_reason if prefill_energy is None else None
    prefill_phase = _phase(prefill_duration, prefill_tokens_per_pass * main.passes, prefill_energy, energy_reason)

    decode_tokens = output_tokens - prompts_per_pass * main.passes
    decode_duration: float | None = main.duration_s - prefill_duration
    reasons: list[str] = []
    if decode_duration is not None and decode_duration <= 0:
        warnings.append(
            f"decode time came out negative or zero ({decode_duration:.4f} s = main window minus prefill); "
            "decode time is null"
        )
        reasons.append("decode time = main - prefill came out <= 0")
        decode_duration = None
    decode_energy: float | None = None
    if main.energy_j is None or prefill_energy is None:
        reasons.append(main.energy_reason or energy_reason or "energy not measured")
    else:
        decode_energy = main.energy_j - prefill_energy
        if decode_energy < 0:
            warnings.append(
                f"decode energy came out negative ({decode_energy:.3f} J = main window minus prefill); "
                "decode energy is null"
            )
            reasons.append("decode energy = main - prefill came out negative")
            decode_energy = None
    decode_phase = _phase(decode_duration, decode_tokens, decode_energy, "; ".join(reasons) or None)
    return prefill_phase, decode_phase, warnings
