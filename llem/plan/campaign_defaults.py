"""Campaign-wide `model`, `dataset` and `num_samples` as ordinary job overrides.

LLenergyMeasure campaign files name one model and one prompt source for the whole
campaign. Here they become overrides on every job, so each job stays a plain command
line: the model is a default (a job that picks its own model keeps it), the prompt
source and count replace what experiment files say (the command line and grid axes
still win).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llem.plan.values import render_override

# Dataset names LLenergyMeasure campaign files use, as Hugging Face datasets with a text column.
DATASET_ALIASES: dict[str, dict[str, str]] = {
    "ai_energy_score": {"path": "AIEnergyScore/text_generation", "column": "text", "split": "train"},
    "ai-energy-score": {"path": "AIEnergyScore/text_generation", "column": "text", "split": "train"},
    "alpaca": {"path": "tatsu-lab/alpaca", "column": "instruction", "split": "train"},
    "gsm8k": {"path": "gsm8k", "subset": "main", "column": "question", "split": "train"},
    "mmlu": {"path": "cais/mmlu", "subset": "all", "column": "question", "split": "test"},
}
# Aliases whose prompts are not plain text, so llem cannot use them as they are.
UNSUPPORTED_ALIASES: dict[str, str] = {
    "sharegpt": "its prompts are conversations (lists of turns), not text; give a dataset with a text column",
}
PROMPT_FILE_SUFFIXES = (".txt", ".jsonl")


class DefaultsError(ValueError):
    """A campaign-wide model or dataset that cannot be expressed as overrides; the message says why."""


def model_overrides(model: str, model_options: set[str]) -> list[str]:
    """`model=<option>` for a `model` config-group option, else `model.name=<id or path>`."""
    return [f"model={model}"] if model in model_options else [render_override("model.name", model)]


def dataset_overrides(dataset: str | dict[str, Any], dataset_options: set[str]) -> list[str]:
    """The overrides that select `dataset` as every job's prompt source."""
    if isinstance(dataset, dict):
        source = dataset["source"]
        return [f"dataset={source}"] + [render_override(f"dataset.{k}", v) for k, v in dataset.items() if k != "source"]
    if dataset in UNSUPPORTED_ALIASES:
        raise DefaultsError(f"dataset: '{dataset}' cannot be used: {UNSUPPORTED_ALIASES[dataset]}")
    if dataset in DATASET_ALIASES:
        return ["dataset=huggingface"] + [render_override(f"dataset.{k}", v) for k, v in DATASET_ALIASES[dataset].items()]
    if dataset in dataset_options and dataset not in ("file", "huggingface"):
        return [f"dataset={dataset}"]
    path = Path(dataset)
    if path.suffix in PROMPT_FILE_SUFFIXES:
        if not path.is_file():
            raise DefaultsError(f"dataset: prompt file {dataset} not found")
        return ["dataset=file", render_override("dataset.path", str(path.resolve()))]
    if path.is_dir():  # a dataset saved with `save_to_disk`
        return ["dataset=huggingface", render_override("dataset.path", str(path.resolve()))]
    return ["dataset=huggingface", render_override("dataset.path", dataset)]


def prompt_overrides(
    dataset: str | dict[str, Any] | None, num_samples: int | None, dataset_options: set[str]
) -> list[str]:
    """Overrides for the campaign's prompt source and prompt count (empty when neither is set)."""
    out = dataset_overrides(dataset, dataset_options) if dataset is not None else []
    if num_samples is not None:
        out.append(render_override("num_input_prompts", num_samples))
    return out
