"""Seeded prompts of an exact token length, for workloads where only the shape matters.

Token ids are drawn straight from the tokenizer's regular vocabulary (special and added tokens
excluded) rather than tokenizing random text, so every prompt has exactly the requested length.
Prompt `i` for seed `s` depends on nothing but `(s, i)` and the tokenizer, so changing `n` never
changes the earlier prompts.

Framing: the special tokens the tokenizer puts around any text by default (a Llama BOS, say) are
kept around the random body and count towards the length, so the model sees what a tokenized text
prompt would look like. When `input_tokens` is too small to hold them, the framing is dropped.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_PROBE = "Hello world"


def regular_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Sorted ids of ordinary vocabulary entries: no special tokens, no added tokens."""
    excluded = set(tokenizer.all_special_ids)
    excluded.update(getattr(tokenizer, "added_tokens_decoder", None) or {})
    ids = sorted({i for i in tokenizer.get_vocab().values() if i not in excluded})
    if not ids:
        raise ValueError("the tokenizer has no regular (non-special) tokens to draw synthetic prompts from")
    return ids


def default_framing(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The (prefix, suffix) ids the tokenizer adds around a text by default, e.g. ([bos], [])."""
    framed = list(tokenizer(_PROBE)["input_ids"])
    bare = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    for start in range(len(framed) - len(bare) + 1):
        if framed[start : start + len(bare)] == bare:
            return framed[:start], framed[start + len(bare) :]
    return [], []  # the tokenizer rewrites the text itself; add no framing rather than guess


def _rng(seed: int, index: int) -> random.Random:
    """An independent stream per (seed, index), stable across processes and Python versions."""
    digest = hashlib.sha256(f"llem.synthetic:{seed}:{index}".encode("ascii")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def synthetic_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    input_tokens: int,
    seed: int,
    index: int,
    *,
    vocab: list[int] | None = None,
    framing: tuple[list[int], list[int]] | None = None,
) -> list[int]:
    """Exactly `input_tokens` ids for prompt number `index` (pass `vocab`/`framing` to reuse them)."""
    if input_tokens < 1:
        raise ValueError(f"input_tokens must be at least 1, got {input_tokens}")
    vocab = vocab if vocab is not None else regular_token_ids(tokenizer)
    prefix, suffix = framing if framing is not None else default_framing(tokenizer)
    body_len = input_tokens - len(prefix) - len(suffix)
    if body_len < 1:
        prefix, suffix, body_len = [], [], input_tokens
    rng = _rng(seed, index)
    body = [vocab[rng.randrange(len(vocab))] for _ in range(body_len)]
    return [*prefix, *body, *suffix]


def synthetic_prompts(
    tokenizer: PreTrainedTokenizerBase, *, n: int, input_tokens: int, seed: int
) -> list[tuple[list[int], str]]:
    """`n` prompts as (token ids, decoded text); the text is for display and text-only backends."""
    vocab = regular_token_ids(tokenizer)
    framing = default_framing(tokenizer)
    out: list[tuple[list[int], str]] = []
    for index in range(n):
        ids = synthetic_token_ids(tokenizer, input_tokens, seed, index, vocab=vocab, framing=framing)
        out.append((ids, tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)))
    return out
