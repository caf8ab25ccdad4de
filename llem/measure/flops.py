"""Analytic matmul FLOPs of the work an inference engine executes, from the model's shapes.

The count is taken from the configuration (hidden size, heads, head dimension, MLP and
expert sizes, vocabulary, attention windows), not from parameter counts: parameter
counts charge tied embeddings wrongly, see packed 4-bit tensors at a fraction of their
logical size, and count every expert of a mixture-of-experts model.

Per sequence with a KV cache, prompt positions not served from a prefix cache are
forwarded once in prefill and every generated token but the last once in decoding.
Each forwarded position costs, per layer:

- its projections, 2 FLOPs per weight: q, k, v, o with the real head dimension and
  key/value heads, and the MLP (gate+up+down, or up+down) or, in an expert layer, the
  router plus the experts it is routed to plus any shared experts;
- attention over its context c: 2*c*heads*head_dim for QK^T and as much for AV, where
  c is its 1-based position (causal), capped by the layer's sliding window or chunk.

The LM head (vocab x hidden) runs once per generated token: after prefill for the last
prompt position, then once per decode step; tied or untied weights compute the same.

Without a KV cache (PyTorch's `use_cache=false`) nothing is kept between steps: each
step forwards the whole sequence so far again, the prompt and every token generated
before it, so the step that produces token j (1-based) forwards n + j - 1 positions.
Embedding lookups, norms, activations, softmax, rotary embeddings and biases are not
counted: the figure is the matmul work, which dominates it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from llem.models.architecture import CHUNKED, FULL, SLIDING, architecture_dict

METHOD = (
    "llem-flops/2: matmul FLOPs from the model configuration; per processed position 2 x "
    "(q,k,v,o projection + MLP or router + active and shared expert weights), attention "
    "QK^T + AV = 4 x context x heads x head_dim per layer (causal, capped by sliding "
    "windows), LM head once per generated token; prefix-cached prompt positions, "
    "embeddings, norms, activations and softmax not counted"
)
NO_KV_CACHE_METHOD = (
    "; without a KV cache every decoding step forwards the whole sequence so far (prompt + generated tokens)"
)

@dataclass(frozen=True)
class Experts:
    """A mixture-of-experts MLP: each token goes through the router, `per_token` experts and the shared ones."""

    count: int
    per_token: int
    intermediate_size: int
    shared_intermediate_size: int = 0  # all shared experts together, 0 for none
    shared_gate: bool = False  # a hidden -> 1 gate scaling the shared experts (Qwen-MoE)

    def __post_init__(self) -> None:
        if not 0 < self.per_token <= self.count or self.intermediate_size <= 0 or self.shared_intermediate_size < 0:
            raise ValueError(f"inconsistent experts: {self}")


@dataclass(frozen=True)
class LatentAttention:
    """Multi-head latent attention (DeepSeek-V2/V3), counted in its decompressed form."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class Architecture:
    """The shapes that decide a decoder-only transformer's matmul FLOPs."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP layers
    vocab_size: int
    gated_mlp: bool = True
    experts: Experts | None = None
    moe_layers: tuple[int, ...] = ()  # indices of the layers whose MLP is `experts`
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = ()  # indices of the layers that attend within `sliding_window`
    attention_chunk_size: int | None = None
    chunked_layers: tuple[int, ...] = ()  # indices of the layers that attend within their chunk
    latent_attention: LatentAttention | None = None

    def __post_init__(self) -> None:
        sizes = (self.hidden_size, self.num_layers, self.num_heads, self.num_kv_heads, self.head_dim,
                 self.intermediate_size, self.vocab_size)
        if any(int(s) != s or s <= 0 for s in sizes):
            raise ValueError(f"architecture sizes must be positive integers: {sizes}")
        layers = range(self.num_layers)
        for name in ("moe_layers", "sliding_layers", "chunked_layers"):
            indices = getattr(self, name)
            if any(i not in layers for i in indices) or len(set(indices)) != len(indices):
                raise ValueError(f"{name} must be distinct layer indices below {self.num_layers}: {indices}")
        if self.moe_layers and self.experts is None:
            raise ValueError("moe_layers given without experts")
        if self.sliding_layers and not (self.sliding_window and self.sliding_window > 0):
            raise ValueError("sliding_layers given without a positive sliding_window")
        if self.chunked_layers and not (self.attention_chunk_size and self.attention_chunk_size > 0):
            raise ValueError("chunked_layers given without a positive attention_chunk_size")
        if set(self.sliding_layers) & set(self.chunked_layers):
            raise ValueError("a layer cannot be both sliding and chunked")

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> Architecture | None:
        """Shapes from a transformers config (llem.models.architecture); None when they cannot be counted."""
        data = architecture_dict(hf_config)
        return None if data is None else cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (lists for tuples, nested dicts for experts and latent attention)."""
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "gated_mlp": self.gated_mlp,
            "experts": None if self.experts is None else asdict(self.experts),
            "moe_layers": list(self.moe_layers),
            "sliding_window": self.sliding_window,
            "sliding_layers": list(self.sliding_layers),
            "attention_chunk_size": self.attention_chunk_size,
            "chunked_layers": list(self.chunked_layers),
            "latent_attention": None if self.latent_attention is None else asdict(self.latent_attention),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Inverse of `to_dict`; ValueError on missing or unknown fields."""
        try:
            fields = dict(data)
            experts = fields.pop("experts", None)
            latent = fields.pop("latent_attention", None)
            for name in ("moe_layers", "sliding_layers", "chunked_layers"):
                fields[name] = tuple(fields.get(name) or ())
            return cls(
                **fields,
                experts=None if experts is None else Experts(**experts),
                latent_attention=None if latent is None else LatentAttention(**latent),
            )
        except TypeError as exc:
            raise ValueError(f"not an llem-flops/2 architecture: {exc}") from exc

    # -- per-position costs ---------------------------------------------------------

    def layer_kind(self, layer: int) -> str:
        """`full_attention`, `sliding_attention` or `chunked_attention`."""
        if layer in self.sliding_layers:
            return SLIDING
        return CHUNKED if layer in self.chunked_layers else FULL

    def projection_flops(self) -> int:
        """FLOPs of all layers' weight matmuls (attention projections, MLP or experts) for one position."""
        h = self.hidden_size
        total = 0
        moe = set(self.moe_layers)
        for layer in range(self.num_layers):
            total += self._attention_projection_flops()
            if layer in moe:
                assert self.experts is not None
                e = self.experts
                total += 2 * h * e.count + e.per_token * self._mlp_flops(e.intermediate_size)
                total += self._mlp_flops(e.shared_intermediate_size) + (2 * h if e.shared_gate else 0)
            else:
                total += self._mlp_flops(self.intermediate_size)
        return total

    def lm_head_flops(self) -> int:
        """FLOPs of one position's logits."""
        return 2 * self.hidden_size * self.vocab_size

    def attention_flops_per_key(self) -> int:
        """QK^T + AV FLOPs of one layer for one query position and one key position."""
        if self.latent_attention is not None:
            la = self.latent_attention
            return 2 * self.num_heads * (la.qk_nope_head_dim + la.qk_rope_head_dim + la.v_head_dim)
        return 4 * self.num_heads * self.head_dim

    def attended_positions(self, layer: int, start: int, stop: int) -> int:
        """Sum of the context lengths of positions start+1 .. stop (1-based) in `layer`."""
        kind = self.layer_kind(layer)
        if kind == SLIDING:
            assert self.sliding_window is not None
            return _windowed(stop, self.sliding_window) - _windowed(start, self.sliding_window)
        if kind == CHUNKED:
            assert self.attention_chunk_size is not None
            return _chunked(stop, self.attention_chunk_size) - _chunked(start, self.attention_chunk_size)
        return _triangle(stop) - _triangle(start)

    def attended_prefixes(self, layer: int, first: int, last: int) -> int:
        """Sum over s = first..last of the attended context of a forward of positions 1..s in `layer`."""
        if last < first:
            return 0
        kind = self.layer_kind(layer)
        if kind == SLIDING:
            assert self.sliding_window is not None
            return _windowed_prefixes(first, last, self.sliding_window)
        if kind == CHUNKED:
            assert self.attention_chunk_size is not None
            return sum(_chunked(s, self.attention_chunk_size) for s in range(first, last + 1))
        return _tetrahedral(last) - _tetrahedral(first - 1)

    def _attention_projection_flops(self) -> int:
        h, heads = self.hidden_size, self.num_heads
        la = self.latent_attention
        if la is None:
            q_out, kv_out = heads * self.head_dim, self.num_kv_heads * self.head_dim
            return 2 * h * (q_out + 2 * kv_out) + 2 * q_out * h
        qk_dim = la.qk_nope_head_dim + la.qk_rope_head_dim
        q = 2 * h * heads * qk_dim if la.q_lora_rank is None else 2 * la.q_lora_rank * (h + heads * qk_dim)
        kv = 2 * h * (la.kv_lora_rank + la.qk_rope_head_dim) + 2 * la.kv_lora_rank * heads * (
            la.qk_nope_head_dim + la.v_head_dim
        )
        return q + kv + 2 * heads * la.v_head_dim * h

    def _mlp_flops(self, intermediate: int) -> int:
        return (3 if self.gated_mlp else 2) * 2 * self.hidden_size * intermediate


def sequence_flops(
    arch: Architecture, input_tokens: int, output_tokens: int, cached_prompt_tokens: int = 0, *, kv_cache: bool = True
) -> float:
    """Matmul FLOPs to read a prompt and generate `output_tokens`, with a KV cache unless `kv_cache` is false.

    `cached_prompt_tokens` prompt positions come from a prefix cache and cost nothing;
    the remaining ones still attend to them. A prefill-only pass is (n, 1). Without a
    KV cache there is no prefix cache either, and every step re-reads the whole sequence.
    """
    if input_tokens < 0 or output_tokens < 0 or not 0 <= cached_prompt_tokens <= input_tokens:
        raise ValueError(
            f"need 0 <= cached ({cached_prompt_tokens}) <= input ({input_tokens}) and output ({output_tokens}) >= 0"
        )
    if not kv_cache:
        return _uncached_sequence_flops(arch, input_tokens, output_tokens)
    start = cached_prompt_tokens
    stop = input_tokens + max(output_tokens - 1, 0)
    positions = stop - start
    per_key = arch.attention_flops_per_key()
    attention = sum(per_key * arch.attended_positions(layer, start, stop) for layer in range(arch.num_layers))
    return float(positions * arch.projection_flops() + attention + output_tokens * arch.lm_head_flops())


def _uncached_sequence_flops(arch: Architecture, input_tokens: int, output_tokens: int) -> float:
    """Each step forwards positions 1..s from scratch, s = n, n+1, ..., n+m-1; one LM head per step."""
    first = input_tokens
    last = input_tokens + max(output_tokens - 1, 0)
    positions = _sum_range(first, last)
    per_key = arch.attention_flops_per_key()
    attention = sum(per_key * arch.attended_prefixes(layer, first, last) for layer in range(arch.num_layers))
    return float(positions * arch.projection_flops() + attention + output_tokens * arch.lm_head_flops())


def total_flops(
    arch: Architecture, work: Iterable[tuple[int, int] | tuple[int, int, int]], *, kv_cache: bool = True
) -> float:
    """Sum over sequences given as (input_tokens, output_tokens[, cached_prompt_tokens])."""
    return sum((sequence_flops(arch, *item, kv_cache=kv_cache) for item in work), 0.0)


def _sum_range(first: int, last: int) -> int:
    """first + (first+1) + ... + last (0 when last < first)."""
    return 0 if last < first else _triangle(last) - _triangle(first - 1)


def _tetrahedral(n: int) -> int:
    """Sum over s = 1..n of s(s+1)/2."""
    return n * (n + 1) * (n + 2) // 6 if n > 0 else 0


def _windowed_prefixes(first: int, last: int, window: int) -> int:
    """Sum over s = first..last of _windowed(s, window)."""
    below = min(last, window)
    total = _tetrahedral(below) - _tetrahedral(first - 1) if first <= below else 0
    lo = max(first, window + 1)
    if lo <= last:
        count = last - lo + 1
        total += count * _triangle(window) + window * (_sum_range(lo, last) - count * window)
    return total


def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def _windowed(n: int, window: int) -> int:
    """Sum over t = 1..n of min(t, window)."""
    return _triangle(n) if n <= window else _triangle(window) + (n - window) * window


def _chunked(n: int, chunk: int) -> int:
    """Sum over t = 1..n of the position of t within its chunk."""
    full, rest = divmod(n, chunk)
    return full * _triangle(chunk) + _triangle(rest)
