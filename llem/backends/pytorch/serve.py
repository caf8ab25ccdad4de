"""transformers' own OpenAI-compatible server (`transformers serve`) for scenario=serving with backend=pytorch.

It streams `/v1/completions`, batches continuously (`--continuous-batching`, paged attention) and answers
`/health`, so a load point measures the same PyTorch model behind a server. It has no `ignore_eos`; the
client fixes each request's output length with a per-request `generation_config` instead
(`min_new_tokens` = `max_new_tokens`), which also leaves the end-of-sequence token unset, as `ignore_eos` does.
Requests must name the model by the path it was loaded from. Needs transformers 5 (`transformers.cli`).
"""

from __future__ import annotations

import importlib.util
import sys

from llem.config import ExperimentConfig
from llem.config.backends import PyTorchConfig
from llem.models.resolve import resolve_model_path

SERVE_MODULE = "transformers.cli.transformers"


class TransformersServeUnavailable(RuntimeError):
    """The installed transformers has no `serve` command that batches continuously."""


def _check_installed() -> None:
    if importlib.util.find_spec("transformers.cli.serve") is None:
        import transformers

        raise TransformersServeUnavailable(
            f"scenario=serving with backend=pytorch runs `transformers serve`, which transformers "
            f"{transformers.__version__} lacks (it needs transformers 5 with its serving extra: "
            "pip install 'transformers[serving]>=5')")


def transformers_server_argv(experiment: ExperimentConfig, port: int, *, host: str = "127.0.0.1",
                             python: str = sys.executable) -> tuple[list[str], str]:
    """The server's argv (an argv list, never a shell string) and the model name requests must send."""
    b = experiment.backend
    assert isinstance(b, PyTorchConfig), "backend=pytorch only"
    _check_installed()
    path = resolve_model_path(experiment.model)
    argv = [python, "-m", SERVE_MODULE, "serve", path, "--continuous-batching", "--host", host, "--port", str(port),
            "--device", b.device, "--dtype", experiment.fp_precision, "--attn-implementation",
            b.attn_implementation, "--log-level", "info", "--default-seed", str(experiment.random_seed)]
    if b.torch_compile:
        argv.append("--compile")
    if b.load_in_4bit or b.load_in_8bit:
        argv += ["--quantization", "bnb-4bit" if b.load_in_4bit else "bnb-8bit"]
    if experiment.model.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv, path
