"""Synthetic prompts: exact length, regular vocabulary only, deterministic per (seed, index)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from llem.config.experiment import SyntheticPrompts  # noqa: E402
from llem.models.tiny import train_tiny_tokenizer  # noqa: E402
from llem.prompts.load import load_prompts  # noqa: E402
from llem.prompts.synthetic import (  # noqa: E402
    default_framing,
    regular_token_ids,
    synthetic_prompts,
    synthetic_token_ids,
)


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


def test_regular_vocabulary_excludes_special_tokens(tok) -> None:
    vocab = regular_token_ids(tok)
    assert not set(vocab) & set(tok.all_special_ids)
    assert len(vocab) == len(tok) - len(tok.all_special_ids)
    assert vocab == sorted(vocab)


def test_framing_is_the_default_bos(tok) -> None:
    assert default_framing(tok) == ([tok.bos_token_id], [])


@pytest.mark.parametrize("input_tokens", [1, 2, 16, 128, 700])
def test_exact_length_and_body_from_regular_vocab(tok, input_tokens: int) -> None:
    regular = set(regular_token_ids(tok))
    ids = synthetic_token_ids(tok, input_tokens, seed=3, index=0)
    assert len(ids) == input_tokens
    body = ids[1:] if input_tokens > 1 else ids
    if input_tokens > 1:
        assert ids[0] == tok.bos_token_id
    assert set(body) <= regular


def test_deterministic_per_seed_and_index(tok) -> None:
    a = synthetic_prompts(tok, n=5, input_tokens=32, seed=7)
    b = synthetic_prompts(tok, n=3, input_tokens=32, seed=7)
    assert a[:3] == b  # prompt i does not depend on n
    assert synthetic_prompts(tok, n=5, input_tokens=32, seed=7) == a
    assert synthetic_prompts(tok, n=5, input_tokens=32, seed=8) != a
    assert len({tuple(ids) for ids, _ in a}) == 5
    for ids, text in a:
        assert text == tok.decode(ids, skip_special_tokens=True)


def test_rejects_non_positive_length(tok) -> None:
    with pytest.raises(ValueError, match="input_tokens"):
        synthetic_token_ids(tok, 0, seed=0, index=0)


def test_load_prompts_uses_config_seed_or_fallback(tok) -> None:
    from_fallback = load_prompts(SyntheticPrompts(input_tokens=24), tok, n=4, max_input_tokens=64, seed=11)
    from_cfg = load_prompts(SyntheticPrompts(input_tokens=24, seed=11), tok, n=4, max_input_tokens=64, seed=99)
    other = load_prompts(SyntheticPrompts(input_tokens=24), tok, n=4, max_input_tokens=64, seed=12)
    assert from_fallback == from_cfg
    assert from_fallback != other
    assert [p.source_id for p in from_fallback] == [f"synthetic:11:{i}" for i in range(4)]
    assert all(len(p.token_ids) == 24 for p in from_fallback)


def test_load_prompts_truncates_synthetic(tok) -> None:
    full = load_prompts(SyntheticPrompts(input_tokens=64, seed=1), tok, n=2, max_input_tokens=512, seed=0)
    cut = load_prompts(SyntheticPrompts(input_tokens=64, seed=1), tok, n=2, max_input_tokens=16, seed=0)
    for f, c in zip(full, cut):
        assert c.token_ids == f.token_ids[:16]
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
