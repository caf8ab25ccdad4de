"""`load_prompts`: seeded order, cycling, default tokenization and truncation, for every text source."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from llem.config.experiment import BuiltinPrompts, FilePrompts, HFDatasetPrompts  # noqa: E402
from llem.models.tiny import train_tiny_tokenizer  # noqa: E402
from llem.prompts.builtin import builtin_prompts  # noqa: E402
from llem.prompts.load import Prompt, load_prompts, seeded_order  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


def test_seeded_order_cycles_evenly() -> None:
    order = seeded_order(5, 12, seed=0)
    assert sorted(order[:5]) == list(range(5))
    assert sorted(order[5:10]) == list(range(5))
    assert seeded_order(5, 7, seed=0) == order[:7]
    assert seeded_order(5, 12, seed=1) != order
    with pytest.raises(ValueError, match="empty"):
        seeded_order(0, 3, seed=0)


def test_builtin_mixed_is_seeded_and_tokenized_with_defaults(tok) -> None:
    prompts = load_prompts(BuiltinPrompts(name="mixed"), tok, n=16, max_input_tokens=4096, seed=5)
    assert len(prompts) == 16 and all(isinstance(p, Prompt) for p in prompts)
    assert load_prompts(BuiltinPrompts(), tok, n=16, max_input_tokens=4096, seed=5) == prompts
    assert load_prompts(BuiltinPrompts(), tok, n=16, max_input_tokens=4096, seed=6) != prompts
    assert load_prompts(BuiltinPrompts(), tok, n=8, max_input_tokens=4096, seed=5) == prompts[:8]
    assert len({p.source_id for p in prompts}) == 16
    assert {p.source_id.split("-")[0] for p in prompts} >= {"builtin:short", "builtin:long"}
    by_id = {f"builtin:{r.id}": r.prompt for r in builtin_prompts("mixed")}
    for p in prompts:
        assert p.text == by_id[p.source_id]  # untruncated: the original text
        assert p.token_ids == tok(p.text)["input_ids"]  # the tokenizer's default framing, nothing more
        assert p.token_ids[0] == tok.bos_token_id


def test_cycles_when_source_is_smaller_than_n(tok) -> None:
    short = builtin_prompts("short")
    prompts = load_prompts(BuiltinPrompts(name="short"), tok, n=2 * len(short) + 3, max_input_tokens=512, seed=1)
    counts = Counter(p.source_id for p in prompts)
    assert len(counts) == len(short)
    assert set(counts.values()) <= {2, 3}
    assert len({p.source_id for p in prompts[: len(short)]}) == len(short)


def test_truncation_to_16_tokens(tok) -> None:
    prompts = load_prompts(BuiltinPrompts(name="long"), tok, n=4, max_input_tokens=16, seed=0)
    by_id = {f"builtin:{r.id}": r.prompt for r in builtin_prompts("long")}
    for p in prompts:
        assert len(p.token_ids) == 16
        assert p.token_ids == tok(by_id[p.source_id])["input_ids"][:16]
        assert p.text == tok.decode(p.token_ids, skip_special_tokens=True)
        assert by_id[p.source_id].startswith(p.text)


def test_file_source_ids_and_cycling(tok, tmp_path: Path) -> None:
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(json.dumps({"q": f"Question number {i}?"}) for i in range(3)) + "\n")
    prompts = load_prompts(FilePrompts(path=str(f), field="q"), tok, n=7, max_input_tokens=64, seed=0)
    assert len(prompts) == 7
    assert {p.source_id for p in prompts} == {"file:mine.jsonl:1", "file:mine.jsonl:2", "file:mine.jsonl:3"}
    for p in prompts:
        assert p.text == f"Question number {int(p.source_id[-1]) - 1}?"


def test_file_errors_surface(tok, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(FilePrompts(path=str(tmp_path / "missing.txt")), tok, n=1, max_input_tokens=8, seed=0)


def test_hf_source_ids(tok, monkeypatch: pytest.MonkeyPatch) -> None:
    class Stub:
        column_names = ["text"]

        def __getitem__(self, key: str) -> list[Any]:
            return ["alpha", "", "gamma"]

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda path, name=None, *, split: Stub()  # type: ignore[attr-defined]
    fake.DatasetDict = dict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    prompts = load_prompts(HFDatasetPrompts(path="org/ds"), tok, n=2, max_input_tokens=8, seed=0)
    assert {p.source_id for p in prompts} == {"hf:org/ds:train:0", "hf:org/ds:train:2"}


def test_argument_checks(tok) -> None:
    assert load_prompts(BuiltinPrompts(), tok, n=0, max_input_tokens=8, seed=0) == []
    with pytest.raises(ValueError, match="max_input_tokens"):
        load_prompts(BuiltinPrompts(), tok, n=1, max_input_tokens=0, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        load_prompts(BuiltinPrompts(), tok, n=-1, max_input_tokens=8, seed=0)
