"""Turn a dataset config into the exact prompts a measurement feeds to the model.

Rules every backend relies on:

* Tokenization uses the tokenizer's defaults (`add_special_tokens=True`): whatever framing it adds
  to any text (a Llama BOS, say) is part of `token_ids` and counts towards `max_input_tokens`.
  Nothing else is added; no chat template is applied.
* `token_ids` is authoritative. A prompt longer than `max_input_tokens` keeps its first
  `max_input_tokens` ids and its `text` is re-decoded from them (special tokens skipped), so
  text-only consumers see the same truncated prompt. Re-tokenizing that text can differ from
  `token_ids` by a token at the cut, so backends should feed `token_ids` where they can.
* Prompts come in a seeded order: successive seeded shuffles of the source, concatenated, so a
  source with fewer than `n` prompts is cycled with each prompt used equally often, and a larger
  `n` extends the list without changing its start.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from llem.config.experiment import BuiltinPrompts, FilePrompts, HFDatasetPrompts, SyntheticPrompts
from llem.prompts.builtin import builtin_prompts
from llem.prompts.files import read_prompt_file
from llem.prompts.hf import load_hf_prompts
from llem.prompts.synthetic import synthetic_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

AnyDatasetConfig = Union[BuiltinPrompts, SyntheticPrompts, FilePrompts, HFDatasetPrompts]


@dataclass(frozen=True)
class Prompt:
    """One prompt as fed to the model; `source_id` says where it came from (for results and debugging)."""

    text: str
    token_ids: list[int]
    source_id: str


def source_texts(dataset_cfg: AnyDatasetConfig) -> list[tuple[str, str]]:
    """(source id, text) for every prompt of a text source, in source order."""
    if isinstance(dataset_cfg, BuiltinPrompts):
        return [(f"builtin:{r.id}", r.prompt) for r in builtin_prompts(dataset_cfg.name)]
    if isinstance(dataset_cfg, FilePrompts):
        name = Path(dataset_cfg.path).name
        return [(f"file:{name}:{line}", text) for line, text in read_prompt_file(dataset_cfg.path, dataset_cfg.field)]
    if isinstance(dataset_cfg, HFDatasetPrompts):
        tag = f"hf:{dataset_cfg.path}:{dataset_cfg.split}"
        return [(f"{tag}:{row}", text) for row, text in load_hf_prompts(dataset_cfg)]
    raise TypeError(f"not a text prompt source: {type(dataset_cfg).__name__}")


def seeded_order(count: int, n: int, seed: int) -> list[int]:
    """`n` indices into a source of `count` items: seeded shuffles of range(count), concatenated."""
    if count < 1:
        raise ValueError("the prompt source is empty")
    digest = hashlib.sha256(f"llem.prompt-order:{seed}".encode("ascii")).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    order: list[int] = []
    while len(order) < n:
        perm = list(range(count))
        rng.shuffle(perm)
        order.extend(perm)
    return order[:n]


def load_prompts(
    dataset_cfg: AnyDatasetConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    n: int,
    max_input_tokens: int,
    seed: int,
) -> list[Prompt]:
    """`n` tokenized prompts of at most `max_input_tokens` ids each (see the module docstring)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if max_input_tokens < 1:
        raise ValueError(f"max_input_tokens must be at least 1, got {max_input_tokens}")
    if n == 0:
        return []
    if isinstance(dataset_cfg, SyntheticPrompts):
        syn_seed = dataset_cfg.seed if dataset_cfg.seed is not None else seed
        made = synthetic_prompts(tokenizer, n=n, input_tokens=dataset_cfg.input_tokens, seed=syn_seed)
        return [
            _truncated(tokenizer, text, ids, f"synthetic:{syn_seed}:{i}", max_input_tokens)
            for i, (ids, text) in enumerate(made)
        ]
    items = source_texts(dataset_cfg)
    picked = [items[i] for i in seeded_order(len(items), n, seed)]
    unique = sorted({text for _, text in picked})
    encoded = tokenizer(unique, add_special_tokens=True)["input_ids"]
    ids_by_text = dict(zip(unique, encoded))
    return [
        _truncated(tokenizer, text, list(ids_by_text[text]), source_id, max_input_tokens)
        for source_id, text in picked
    ]


def _truncated(
    tokenizer: PreTrainedTokenizerBase, text: str, ids: list[int], source_id: str, max_input_tokens: int
) -> Prompt:
    if len(ids) <= max_input_tokens:
        return Prompt(text=text, token_ids=list(ids), source_id=source_id)
    kept = list(ids[:max_input_tokens])
    decoded = tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return Prompt(text=decoded, token_ids=kept, source_id=source_id)
