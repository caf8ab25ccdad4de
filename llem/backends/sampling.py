"""The experiment's decoder as engine `SamplingParams` keywords, shared by the engine backends.

vLLM and TensorRT-LLM take the same names; they differ only in how greedy decoding is said.
"""

from __future__ import annotations

from typing import Any

from llem.config import ExperimentConfig


def engine_sampling_kwargs(experiment: ExperimentConfig, greedy: dict[str, Any]) -> dict[str, Any]:
    """Length, forced length, repetition penalty and sampling settings; `greedy` when not sampling."""
    d = experiment.decoder
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": experiment.max_output_tokens,
        "repetition_penalty": d.repetition_penalty,
    }
    if experiment.force_output_length:
        kwargs.update(min_tokens=experiment.max_output_tokens, ignore_eos=True)
    if d.do_sample:
        kwargs.update(temperature=d.temperature, top_p=d.top_p, top_k=d.top_k, seed=experiment.random_seed)
    else:
        kwargs.update(greedy)
    return kwargs
