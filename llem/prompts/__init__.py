"""Prompt sources (built-in, synthetic, file, Hugging Face dataset) and the loader that tokenizes them."""

from __future__ import annotations

from llem.prompts.builtin import BUILTIN_SETS, BuiltinPrompt, builtin_prompts, builtin_records
from llem.prompts.files import PromptFileError, read_prompt_file
from llem.prompts.hf import import_datasets, load_hf_prompts, select_column
from llem.prompts.load import Prompt, load_prompts, seeded_order, source_texts
from llem.prompts.synthetic import regular_token_ids, synthetic_prompts, synthetic_token_ids

__all__ = [
    "BUILTIN_SETS",
    "BuiltinPrompt",
    "Prompt",
    "PromptFileError",
    "builtin_prompts",
    "builtin_records",
    "import_datasets",
    "load_hf_prompts",
    "load_prompts",
    "read_prompt_file",
    "regular_token_ids",
    "seeded_order",
    "select_column",
    "source_texts",
    "synthetic_prompts",
    "synthetic_token_ids",
]
