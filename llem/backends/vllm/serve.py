"""vLLM's OpenAI-compatible server for the serving scenario: its command line from the experiment's settings.

The server gets the same engine settings the offline engine would (`engine_kwargs`, checked against
vLLM's own `EngineArgs` names before anything starts), written as its command-line flags: booleans as
`--flag` / `--no-flag`, dicts as JSON, lists as repeated values. On CPU the engine needs eager mode.
"""

from __future__ import annotations

import json
from typing import Any

from llem.backends.vllm.backend import _import_vllm, engine_arg_names, engine_kwargs
from llem.config import ExperimentConfig
from llem.models.resolve import resolve_model_path

# Set by the server's own flags (or its defaults) rather than from engine_kwargs.
_SERVER_OWNED = frozenset({"model", "disable_log_stats"})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_args(kwargs: dict[str, Any]) -> list[str]:
    """`EngineArgs` keyword arguments as the server's command-line flags (None values left to the engine)."""
    argv: list[str] = []
    for name, value in kwargs.items():
        if name in _SERVER_OWNED or value is None:
            continue
        if isinstance(value, bool):
            argv.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, dict):
            argv += [_flag(name), json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            argv += [_flag(name), *(str(v) for v in value)]
        else:
            argv += [_flag(name), str(value)]
    return argv


def server_engine_args(experiment: ExperimentConfig) -> tuple[str, list[str]]:
    """The model path and the engine flags of vLLM's API server for `experiment`.

    Unknown or reserved engine settings fail here, before the server spends its start-up time.
    """
    vllm = _import_vllm()
    path = resolve_model_path(experiment.model)
    kwargs = engine_kwargs(experiment, path, engine_arg_names(), vllm.__version__)
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        kwargs["enforce_eager"] = True  # no CUDA graphs on CPU; compiling them there fails or takes minutes
    return path, cli_args(kwargs)
