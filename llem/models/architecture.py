"""A model's shapes, read from its transformers config: what its matmul FLOPs are counted from.

Backends record these (`engine_settings["architecture"]`) when they load a model; the FLOP count
(llem.measure.flops.Architecture) is made from that record, so it needs no engine and no config object.
"""

from __future__ import annotations

from typing import Any

FULL = "full_attention"
SLIDING = "sliding_attention"
CHUNKED = "chunked_attention"

# Model types whose MLP is up + down (no gate); every other model is counted gate + up + down.
_UNGATED_MODEL_TYPES = frozenset(
    {"gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2",
     "codegen", "nemotron", "biogpt", "xglm"}
)


def architecture_dict(hf_config: Any) -> dict[str, Any] | None:
    """Shapes from a transformers config (a multimodal one is read through its text config), as recorded in
    `engine_settings["architecture"]`.

    None when there is no config, an essential size is missing or a layer kind cannot be counted
    (for example linear-attention or state-space layers).
    """
    if hf_config is None:
        return None
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
    return {
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads or heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "gated_mlp": gated,
        "experts": experts,
        "moe_layers": list(moe_layers),
        "sliding_window": window if sliding else None,
        "sliding_layers": list(sliding),
        "attention_chunk_size": chunk if chunked else None,
        "chunked_layers": list(chunked),
        "latent_attention": _latent_attention(config),
    }


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


def _experts(config: Any, model_type: str, layers: int) -> tuple[dict[str, Any] | None, tuple[int, ...]]:
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
    experts = {
        "count": count,
        "per_token": per_token,
        "intermediate_size": size,
        "shared_intermediate_size": shared or 0,
        "shared_gate": bool(shared) and _size(config, "shared_expert_intermediate_size") is not None,
    }
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


def _latent_attention(config: Any) -> dict[str, Any] | None:
    kv_rank = _size(config, "kv_lora_rank")
    nope = _size(config, "qk_nope_head_dim")
    rope = _size(config, "qk_rope_head_dim")
    v_dim = _size(config, "v_head_dim")
    if kv_rank is None or nope is None or rope is None or v_dim is None:
        return None
    return {
        "q_lora_rank": _size(config, "q_lora_rank"),
        "kv_lora_rank": kv_rank,
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": v_dim,
    }
