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
Embedding lookups, norms, activations, softmax, rotary embeddings and biases are not
counted: the figure is the matmul work, which dominates it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

METHOD = (
    "llem-flops/2: matmul FLOPs from the model configuration; per processed position 2 x "
    "(q,k,v,o projection + MLP or router + active and shared expert weights), attention "
    "QK^T + AV = 4 x context x heads x head_dim per layer (causal, capped by sliding "
    "windows), LM head once per generated token; prefix-cached prompt positions, "
    "embeddings, norms, activations and softmax not counted"
)

FULL = "full_attention"
SLIDING = "sliding_attention"
CHUNKED = "chunked_attention"

# Model types whose MLP is up + down (no gate); every other model is counted gate + up + down.
_UNGATED_MODEL_TYPES = frozenset(
    {"gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2",
     "codegen", "nemotron", "biogpt", "xglm"}
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
        """Shapes from a transformers config (a multimodal one is read through its text config).

        None when an essential size is missing or a layer kind cannot be counted
        (for example linear-attention or state-space layers).
        """
        config = _text_config(hf_config)
        model_type = str(getattr(config, "model_type", "") or "")
        hidden = _size(config, "hidden_size", "n_embd", "d_model")
        layers = _size(config, "num_hidden_layers", "n_layer", "num_layers")
        heads = _size(config, "num_attention_heads", "n_head", "num_heads")
        vocab = _size(config, "vocab_size")
        if hidden is None or layers is None or heads is None or vocab is None:
            return None
        kv_heads = _size(config, "num_key_value_heads", "num_kv_heads", "multi_query_group_num")
        if getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
            kv_heads = 1
        head_dim = _size(config, "head_dim") or hidden // heads
        gated = model_type not in _UNGATED_MODEL_TYPES
        intermediate = _size(config, "intermediate_size_mlp", "intermediate_size", "n_inner", "ffn_dim",
                             "ffn_hidden_size")
        if intermediate is None and not gated:
            intermediate = 4 * hidden  # GPT-style default when the config leaves it unset
        if intermediate is None or head_dim <= 0:
            return None

        experts, moe_layers = _experts(config, model_type, layers)
        kinds = _layer_kinds(config, layers)
        if kinds is None:
            return None
        window = _size(config, "sliding_window")
        chunk = _size(config, "attention_chunk_size")
        sliding = tuple(i for i, k in enumerate(kinds) if k == SLIDING) if window else ()
        chunked = tuple(i for i, k in enumerate(kinds) if k == CHUNKED) if chunk else ()
        return cls(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads or heads,
            head_dim=head_dim,
            intermediate_size=intermediate,
            vocab_size=vocab,
            gated_mlp=gated,
            experts=experts,
            moe_layers=moe_layers,
            sliding_window=window if sliding else None,
            sliding_layers=sliding,
            attention_chunk_size=chunk if chunked else None,
            chunked_layers=chunked,
            latent_attention=_latent_attention(config),
        )

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


def sequence_flops(arch: Architecture, input_tokens: int, output_tokens: int, cached_prompt_tokens: int = 0) -> float:
    """Matmul FLOPs to read a prompt and generate `output_tokens` with a KV cache.

    `cached_prompt_tokens` prompt positions come from a prefix cache and cost nothing;
    the remaining ones still attend to them. A prefill-only pass is (n, 1).
    """
    if input_tokens < 0 or output_tokens < 0 or not 0 <= cached_prompt_tokens <= input_tokens:
        raise ValueError(
            f"need 0 <= cached ({cached_prompt_tokens}) <= input ({input_tokens}) and output ({output_tokens}) >= 0"
        )
    start = cached_prompt_tokens
    stop = input_tokens + max(output_tokens - 1, 0)
    positions = stop - start
    per_key = arch.attention_flops_per_key()
    attention = sum(per_key * arch.attended_positions(layer, start, stop) for layer in range(arch.num_layers))
    return float(positions * arch.projection_flops() + attention + output_tokens * arch.lm_head_flops())


def total_flops(arch: Architecture, work: Iterable[tuple[int, int] | tuple[int, int, int]]) -> float:
    """Sum over sequences given as (input_tokens, output_tokens[, cached_prompt_tokens])."""
    return sum((sequence_flops(arch, *item) for item in work), 0.0)


def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def _windowed(n: int, window: int) -> int:
    """Sum over t = 1..n of min(t, window)."""
    return _triangle(n) if n <= window else _triangle(window) + (n - window) * window


def _chunked(n: int, chunk: int) -> int:
    """Sum over t = 1..n of the position of t within its chunk."""
    full, rest = divmod(n, chunk)
    return full * _triangle(chunk) + _triangle(rest)


def _text_config(hf_config: Any) -> Any:
    getter = getattr(hf_config, "get_text_config", None)
    if callable(getter):
        try:
            return getter(decoder=True)
        except TypeError:
            return getter()
    return hf_config


def _size(config: Any, *names: str) -> int | None:
    """The first of `names` the config sets to a positive integer."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value <= 0:
            continue
        return int(value)
    return None


def _experts(config: Any, model_type: str, layers: int) -> tuple[Experts | None, tuple[int, ...]]:
    count = _size(config, "num_local_experts", "num_experts", "n_routed_experts")
    per_token = _size(config, "num_experts_per_tok", "experts_per_token")
    if count is None or per_token is None:
        return None, ()
    size = _size(config, "moe_intermediate_size", "intermediate_size")
    if size is None:
        return None, ()
    shared = _size(config, "shared_expert_intermediate_size", "shared_intermediate_size")
    n_shared = _size(config, "n_shared_experts", "num_shared_experts")
    if shared is None and n_shared is not None:
        shared = n_shared * size
    if model_type == "llama4_text":
        shared = size  # one shared expert the size of a routed one
    experts = Experts(
        count=count,
        per_token=per_token,
        intermediate_size=size,
        shared_intermediate_size=shared or 0,
        shared_gate=bool(shared) and _size(config, "shared_expert_intermediate_size") is not None,
    )
    return experts, _moe_layers(config, layers)


def _moe_layers(config: Any, layers: int) -> tuple[int, ...]:
    """Which layers route to experts; the rest use the dense MLP."""
    listed = getattr(config, "moe_layers", None)
    if isinstance(listed, list | tuple):
        return tuple(sorted({int(i) for i in listed if 0 <= int(i) < layers}))
    if getattr(config, "decoder_sparse_step", None) is not None or getattr(config, "mlp_only_layers", None):
        step = _size(config, "decoder_sparse_step") or 1
        dense = set(getattr(config, "mlp_only_layers", None) or ())
        return tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0)
    first_dense = getattr(config, "first_k_dense_replace", None)
    if isinstance(first_dense, int):
        every = _size(config, "moe_layer_freq") or 1
        return tuple(i for i in range(layers) if i >= first_dense and i % every == 0)
    return tuple(range(layers))


def _layer_kinds(config: Any, layers: int) -> tuple[str, ...] | None:
    """Each layer's attention kind; None when one cannot be counted (linear attention, state space, ...)."""
    listed = getattr(config, "layer_types", None)
    if isinstance(listed, list | tuple) and len(listed) == layers:
        kinds = tuple(str(k) for k in listed)
        return kinds if set(kinds) <= {FULL, SLIDING, CHUNKED} else None
    # configs written before `layer_types`
    if not _size(config, "sliding_window") or getattr(config, "use_sliding_window", None) is False:
        return (FULL,) * layers
    pattern = _size(config, "sliding_window_pattern")
    if pattern is not None:  # Gemma 3, Cohere 2: every pattern-th layer is global
        return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(layers))
    if getattr(config, "model_type", None) == "gemma2":  # even layers slide
        return tuple(SLIDING if i % 2 == 0 else FULL for i in range(layers))
    if getattr(config, "use_sliding_window", None):  # Qwen2: layers from max_window_layers on slide
        first = _size(config, "max_window_layers") or 0
        return tuple(SLIDING if i >= first else FULL for i in range(layers))
    return (SLIDING,) * layers  # Mistral, Phi-3, Starcoder2: one window for every layer


def _latent_attention(config: Any) -> LatentAttention | None:
    kv_rank = _size(config, "kv_lora_rank")
    nope = _size(config, "qk_nope_head_dim")
    rope = _size(config, "qk_rope_head_dim")
    v_dim = _size(config, "v_head_dim")
    if kv_rank is None or nope is None or rope is None or v_dim is None:
        return None
    return LatentAttention(
        q_lora_rank=_size(config, "q_lora_rank"),
        kv_lora_rank=kv_rank,
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
        v_head_dim=v_dim,
    )


def architecture_dict(hf_config: Any) -> dict[str, Any] | None:
    """What a backend records in `engine_settings["architecture"]`: the countable shapes, or None."""
    if hf_config is None:
        return None
    arch = Architecture.from_hf_config(hf_config)
    return None if arch is None else arch.to_dict()
