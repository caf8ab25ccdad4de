"""The end-of-sequence token ids every engine stops on, decided once for a model.

Engines disagree on where they look: transformers' `generate` stops on whatever `eos_token_id`
it is handed, vLLM adds the model's `generation_config.json` ids to the tokenizer's, TensorRT-LLM
uses the tokenizer's `end_id`. Instruction models often list several ids (end of turn, end of
text), so without one shared set the same prompt yields different output lengths per engine.

The rule: the `eos_token_id` of the model's generation config (an int or a list; where the model
ships no `generation_config.json`, the one transformers derives from `config.json`), in its order,
followed by the tokenizer's `eos_token_id` when it is not already listed. No ids at all means no
early stop: every sequence runs to its length limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def merge_stop_ids(configured: int | Iterable[int] | None, tokenizer_eos: int | None) -> list[int]:
    """The stop set from a generation config's `eos_token_id` (int, list or None) and the tokenizer's eos id."""
    if configured is None:
        ids: list[int] = []
    elif isinstance(configured, int):
        ids = [configured]
    else:
        ids = [int(i) for i in configured]
    if tokenizer_eos is not None:
        ids.append(int(tokenizer_eos))
    return list(dict.fromkeys(ids))  # first occurrence wins, order kept


def configured_eos_ids(model_path: str, revision: str | None, trust_remote_code: bool) -> int | list[int] | None:
    """`eos_token_id` of the generation config transformers (and vLLM) would use for this model."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_path, revision=revision)
    except OSError:  # no generation_config.json: derived from the model config, as transformers does
        config = AutoConfig.from_pretrained(model_path, revision=revision, trust_remote_code=trust_remote_code)
        generation = GenerationConfig.from_model_config(config)
    return generation.eos_token_id


def stop_token_ids(model_path: str, revision: str | None, trust_remote_code: bool, tokenizer: Any) -> list[int]:
    """The ids every backend stops on for this model (see the module docstring for the rule)."""
    configured = configured_eos_ids(model_path, revision, trust_remote_code)
    return merge_stop_ids(configured, getattr(tokenizer, "eos_token_id", None))
