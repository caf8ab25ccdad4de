"""Analytic FLOPs of the generation actually done (Kaplan et al. 2020 forward-pass count).

Per forwarded position with context c: 2 * N_matmul + 2 * n_layers * c * d_model, where
N_matmul is the parameter count without the input embedding (a lookup, not a matmul).
With a KV cache every position is forwarded once: the prompt's positions in prefill
and each new token but the last in decoding. Padding in batches is not counted: the
figure is the useful work, the same for every backend given the same token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

METHOD = "analytic: 2*N_matmul + 2*n_layers*context*d_model per forwarded position (Kaplan et al. 2020)"


@dataclass(frozen=True)
class Architecture:
    parameters: int
    embedding_parameters: int
    num_layers: int
    hidden_size: int


def sequence_flops(arch: Architecture, input_tokens: int, output_tokens: int) -> float:
    """Forward FLOPs to read `input_tokens` and generate `output_tokens` with a KV cache."""
    positions = input_tokens + max(output_tokens - 1, 0)
    n_matmul = arch.parameters - arch.embedding_parameters
    dense = 2.0 * n_matmul * positions
    # context at position t (1-based) is t: sum over t = positions * (positions + 1) / 2
    attention = 2.0 * arch.num_layers * arch.hidden_size * positions * (positions + 1) / 2.0
    return dense + attention


def total_flops(arch: Architecture, tokens: list[tuple[int, int]]) -> float:
    """Sum over (input_tokens, output_tokens) pairs."""
    return sum(sequence_flops(arch, i, o) for i, o in tokens)
