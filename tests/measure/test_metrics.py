"""Latency statistics, analytic FLOPs, config hashing and atomic writes against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llem.atomic import atomic_write, atomic_write_json
from llem.backends.base import SequenceTiming
from llem.config import ExperimentConfig
from llem.config.hashing import config_hash
from llem.measure import latency
from llem.measure.flops import Architecture, sequence_flops, total_flops


def _seq(start: float, times: list[float], scheduled: float | None = None) -> SequenceTiming:
    return SequenceTiming(prompt_index=0, input_tokens=3, arrival_s=start, token_times_s=times, scheduled_s=scheduled)


def test_ttft_itl_e2e_from_timestamps() -> None:
    seqs = [_seq(10.0, [10.1, 10.15, 10.25]), _seq(10.0, [10.1, 10.15, 10.25]), _seq(20.0, [20.3, 20.4])]
    assert latency.ttft_ms(seqs) == pytest.approx([100, 100, 300])
    assert latency.itl_ms(seqs) == pytest.approx([50, 100, 50, 100, 100])
    assert latency.e2e_ms(seqs) == pytest.approx([250, 250, 400])


def test_queue_and_prefill_split_ttft() -> None:
    # two batches of one: both arrive at 10.0; the second is scheduled when the first ends
    seqs = [_seq(10.0, [10.1, 10.2], scheduled=10.0), _seq(10.0, [10.3, 10.4], scheduled=10.2)]
    assert latency.queue_ms(seqs) == pytest.approx([0, 200])
    assert latency.prefill_ms(seqs) == pytest.approx([100, 100])
    assert [q + p for q, p in zip(latency.queue_ms(seqs), latency.prefill_ms(seqs))] == pytest.approx(
        latency.ttft_ms(seqs)
    )
    assert latency.scheduled_unavailable(seqs) is None
    unknown = [_seq(0.0, [0.1])]
    unknown[0].scheduled_unavailable_reason = "engine X does not say"
    assert latency.queue_ms(unknown) == [] and latency.prefill_ms(unknown) == []
    assert "engine X does not say" in (latency.scheduled_unavailable(unknown) or "")


def test_distribution_percentiles_match_linear_interpolation() -> None:
    d = latency.distribution([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (d.count, d.mean, d.p50) == (5, 3.0, 3.0)
    assert d.p95 == pytest.approx(4.8)  # 1 + 0.95 * 4 = position 3.8 -> 4 + 0.8
    assert d.p99 == pytest.approx(4.96)
    single = latency.distribution([7.0])
    assert single.p50 == single.p99 == 7.0


def test_empty_distribution_is_null_not_zero() -> None:
    d = latency.distribution([])
    assert d.count == 0 and d.mean is None and d.p50 is None and d.p99 is None
    assert latency.ttft_ms([_seq(0.0, [])]) == []


def test_flops_hand_computed() -> None:
    # one layer, one head of dim 2 on hidden 2, ungated MLP of 3, vocab 5
    arch = Architecture(hidden_size=2, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2, intermediate_size=3,
                        vocab_size=5, gated_mlp=False)
    # per position: q, k, v, o 4 * 2*2*2 = 32, MLP 2 * 2*2*3 = 24; QK^T + AV 4*1*2 = 8 per key; LM head 2*2*5 = 20
    # 3 prompt + 2 generated tokens: positions 1..4 forwarded with contexts 1+2+3+4, 2 LM heads
    assert sequence_flops(arch, 3, 2) == 4 * 56 + 8 * 10 + 2 * 20
    # first prompt position from a prefix cache: positions 2..4 forwarded
    assert sequence_flops(arch, 3, 2, 1) == 3 * 56 + 8 * 9 + 2 * 20
    assert total_flops(arch, [(3, 2), (3, 2, 1)]) == sequence_flops(arch, 3, 2) + sequence_flops(arch, 3, 2, 1)


def test_config_hash_stable_and_sensitive() -> None:
    a = ExperimentConfig.model_validate({"model": {"name": "m"}, "fp_precision": "float16", "max_output_tokens": 8})
    b = ExperimentConfig.model_validate({"max_output_tokens": 8, "fp_precision": "float16", "model": {"name": "m"}})
    c = ExperimentConfig.model_validate({"model": {"name": "m"}, "fp_precision": "bfloat16", "max_output_tokens": 8})
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert len(config_hash(a)) == 16
    # defaults are part of the identity: an explicit default hashes like an omitted one
    d = ExperimentConfig.model_validate({"model": {"name": "m"}, "fp_precision": "float16", "max_output_tokens": 8,
                                         "random_seed": 42})
    assert config_hash(d) == config_hash(a)


def test_atomic_write_replaces_whole_file_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    def broken(tmp: Path) -> None:
        tmp.write_text('{"a": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
