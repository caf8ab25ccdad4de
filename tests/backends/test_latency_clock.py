"""One latency clock on every engine: prompts arrive at the window start; queueing and prefill apart.

Real engines on CPU with the built-in tiny model: PyTorch with sequential batches, and vLLM's CPU
build scheduling the same number of sequences at once.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from llem.config import ExperimentConfig
from llem.measure import latency
from llem.measure.session import BackendSession
from llem.prompts.load import load_prompts
from tests.backends._vllm import VLLM_CPU_BACKEND, needs_vllm

pytestmark = pytest.mark.slow


def _experiment(backend: dict[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": "builtin:tiny"},
            "dataset": {"source": "synthetic", "input_tokens": 24},
            "num_input_prompts": 8,
            "max_input_tokens": 64,
            "max_output_tokens": 16,
            "force_output_length": True,
            "backend": backend,
        }
    )


def _timed_sequences(session: BackendSession, experiment: ExperimentConfig) -> list[Any]:
    """Warm the engine with one pass, then time a second pass exactly as the harness does."""
    backend, _, _ = session.acquire(experiment)
    prompts = load_prompts(
        experiment.dataset, backend.tokenizer, n=experiment.num_input_prompts,
        max_input_tokens=experiment.max_input_tokens, seed=experiment.random_seed,
    )  # fmt: skip
    backend.generate(prompts, experiment)
    return backend.generate(prompts, experiment).sequences


@pytest.fixture(scope="module")
def torch_session() -> Any:
    session = BackendSession()
    yield session
    session.release()


def test_sequential_batches_wait_in_ttft_but_not_in_prefill(torch_session: BackendSession) -> None:
    seqs = _timed_sequences(torch_session, _experiment({"name": "pytorch", "batch_size": 1}))
    ttft, prefill, queue = latency.ttft_ms(seqs), latency.prefill_ms(seqs), latency.queue_ms(seqs)
    assert len(ttft) == len(prefill) == len(queue) == 8
    assert len({s.arrival_s for s in seqs}) == 1  # every prompt arrives when the call starts
    assert all(b > a for a, b in zip(ttft, ttft[1:])), ttft  # each prompt waits for the ones before it
    e2e = latency.e2e_ms(seqs)
    assert all(queue[i] >= e2e[i - 1] for i in range(1, 8))  # ... scheduled only once the previous one ended
    # TTFT grows with the queue; the engine's own time to first token does not (medians: the machine is noisy)
    early, late = statistics.median(prefill[:4]), statistics.median(prefill[4:])
    assert late < 2 * early + 20.0, prefill
    assert statistics.median(ttft[4:]) > 3 * late, (ttft, prefill)
    for q, p, t in zip(queue, prefill, ttft):
        assert q + p == pytest.approx(t, rel=1e-9)


@pytest.mark.vllm
@needs_vllm
def test_pytorch_and_vllm_ttft_agree_with_the_same_concurrency(
    torch_session: BackendSession, vllm_session: BackendSession
) -> None:
    # alternate the engines, so a burst of load on this shared machine hits both alike; compare medians
    torch_p50, vllm_p50 = [], []
    for _ in range(3):
        torch_seqs = _timed_sequences(torch_session, _experiment({"name": "pytorch", "batch_size": 4}))
        vllm_seqs = _timed_sequences(vllm_session, _experiment(VLLM_CPU_BACKEND))  # max_num_seqs=4
        torch_p50.append(statistics.median(latency.ttft_ms(torch_seqs)))
        vllm_p50.append(statistics.median(latency.ttft_ms(vllm_seqs)))
    torch_ttft, vllm_ttft = statistics.median(torch_p50), statistics.median(vllm_p50)
    assert 0.5 < torch_ttft / vllm_ttft < 2.0, (torch_p50, vllm_p50)
    # vLLM says when its scheduler took each request up: the first four at once, the rest after a wait
    queue = sorted(latency.queue_ms(vllm_seqs))
    assert len(queue) == 8 and latency.scheduled_unavailable(vllm_seqs) is None
    assert max(queue[:4]) < min(queue[4:])
    assert all(p > 0 for p in latency.prefill_ms(vllm_seqs))
