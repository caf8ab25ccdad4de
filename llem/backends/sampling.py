"""The experiment's decoder as engine `SamplingParams` keywords, shared by the engine backends.

vLLM and TensorRT-LLM take the same names; they differ only in how greedy decoding is said.
Unless the output length is forced, the engine is handed the model's stop set
(`llem.backends.stop_tokens`) explicitly, so every engine ends sequences on the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llem.config import ExperimentConfig


def engine_sampling_kwargs(
    experiment: ExperimentConfig, greedy: dict[str, Any], stop_token_ids: Sequence[int] | None = None
) -> dict[str, Any]:
    """Length, forced length, stop ids, repetition penalty and sampling settings; `greedy` when not sampling.

    `stop_token_ids` None leaves stopping to the engine's own defaults; with a forced output length
    the ids are not passed (the engine ignores end-of-sequence tokens then).
    """
    d = experiment.decoder
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": experiment.max_output_tokens,
        "repetition_penalty": d.repetition_penalty,
    }
    if experiment.force_output_length:
        kwargs.update(min_tokens=experiment.max_output_tokens, ignore_eos=True)
    elif stop_token_ids is not None:
        kwargs["stop_token_ids"] = list(stop_token_ids)
    if d.do_sample:
        kwargs.update(temperature=d.temperature, top_p=d.top_p, top_k=d.top_k, seed=experiment.random_seed)
    else:
        kwargs.update(greedy)
    return kwargs
