"""Throughput of llem's measured window vs a bare `model.generate` loop doing identical work.

Both sides use the same loaded model, the same prompt token ids, the same batches and
forced output length; they alternate (A, B, A, B, ...) so drift hits both alike, and the
median of each side is compared. Goal: overhead <= 3 %.

    python benchmarks/measurement_overhead.py                 # built-in tiny model
    python benchmarks/measurement_overhead.py --size small    # 8-layer, 512-wide random Llama
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from llem.config import ExperimentConfig
from llem.energy import open_monitor
from llem.measure.harness import measure_main_window
from llem.measure.session import BackendSession
from llem.models.tiny import ensure_tiny_model
from llem.prompts.load import load_prompts


def _small_model(workdir: Path) -> Path:
    """A larger random Llama (head_dim 64) sharing the tiny model's tokenizer."""
    tiny = ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig.from_pretrained(tiny)
    config.hidden_size, config.intermediate_size = 512, 1376
    config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads = 8, 8, 8
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out = workdir / "small"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _bare_loop(model: torch.nn.Module, tokenizer: object, batches: list[tuple[torch.Tensor, torch.Tensor]], new: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
                eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
            )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-input-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_name = "builtin:tiny" if args.size == "tiny" else str(_small_model(Path(tmp)))
        experiment = ExperimentConfig.model_validate(
            {
                "model": {"name": model_name},
                "backend": {"name": "pytorch", "batch_size": args.batch_size},
                "num_input_prompts": args.prompts,
                "max_input_tokens": args.max_input_tokens,
                "max_output_tokens": args.max_new_tokens,
                "energy": {"source": "auto"},
            }
        )
        session = BackendSession()
        backend, _, _ = session.acquire(experiment)
        prompts = load_prompts(
            experiment.dataset, backend.tokenizer, n=args.prompts, max_input_tokens=args.max_input_tokens, seed=0
        )
        batches = [
            backend._batch_tensors(prompts[i : i + args.batch_size])  # same padding as the harness
            for i in range(0, len(prompts), args.batch_size)
        ]
        model = backend._model  # type: ignore[attr-defined]
        tokens = args.prompts * args.max_new_tokens
        backend.generate(prompts[: args.batch_size], experiment)  # warm both paths
        bare, harness = [], []
        for _ in range(args.repeats):
            bare.append(tokens / _bare_loop(model, backend.tokenizer, batches, args.max_new_tokens))
            monitor = open_monitor("auto", [], interval_s=experiment.energy.sample_interval_ms / 1000.0)
            try:
                window, _ = measure_main_window(backend, experiment, prompts, monitor, 0.0)  # one pass
            finally:
                monitor.close()
            measured = sum(s.output_tokens for s in window.sequences)
            assert measured == tokens, (measured, tokens)
            harness.append(measured / window.duration_s)
        session.release()

    b, h = statistics.median(bare), statistics.median(harness)
    overhead = (b - h) / b * 100.0
    print(f"model={args.size} prompts={args.prompts} batch={args.batch_size} new_tokens={args.max_new_tokens} "
          f"repeats={args.repeats} threads={torch.get_num_threads()}")
    print(f"bare model.generate loop : {b:10.1f} tok/s (median; runs {', '.join(f'{x:.0f}' for x in bare)})")
    print(f"llem measured window     : {h:10.1f} tok/s (median; runs {', '.join(f'{x:.0f}' for x in harness)})")
    print(f"harness/bare ratio       : {h / b:10.4f}   overhead {overhead:+.2f} % (goal <= 3 %)")


if __name__ == "__main__":
    main()
