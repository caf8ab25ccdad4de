"""Hand-made summary frames with known figures (energy included, which this machine cannot measure)."""

from __future__ import annotations

import pandas as pd

from llem.report.summary import ID_COLUMNS, METRIC_COLUMNS, TRAILING_COLUMNS


def hand_frame() -> pd.DataFrame:
    """A summary-shaped frame with energy figures, two backends and two swept values."""
    rows = []
    job = 0
    for backend, scale in (("pytorch", 1.0), ("vllm", 0.6)):
        for batch in (1, 4, 16):
            for cycle in range(3):
                energy = scale * 0.8 / batch * (1 + 0.03 * cycle)
                rows.append(
                    {
                        "job_num": job,
                        "cycle": cycle,
                        "repetition": 0,
                        "backend": backend,
                        "config_hash": f"{backend[:2]}{batch:014d}",
                        "batch_size": batch,
                        "fp_precision": "float16",
                        "model_name": "m",
                        "energy_source": "nvml",
                        "energy_total_j": energy * 200,
                        "energy_adjusted_j": energy * 100,
                        "energy_per_output_token_j": energy,
                        "energy_unavailable_reason": None,
                        "energy_scope": "gpu+cpu+dram",
                        "energy_gpu_j": energy * 180,
                        "energy_cpu_j": energy * 15,
                        "energy_dram_j": energy * 5,
                        "passes": 1,
                        "throughput_tokens_per_s": 100.0 * batch / scale * (1 - 0.02 * cycle),
                        "requests_per_s": 1.0,
                        "output_tokens": 100,
                        "duration_s": 1.0,
                        "ttft_ms_p50": 20.0 + cycle,
                        "ttft_ms_p95": 30.0 + cycle,
                        "ttft_ms_p99": 35.0 + cycle,
                        "itl_ms_p50": 5.0 * batch ** 0.5,
                        "itl_ms_p95": 7.0 * batch ** 0.5,
                        "itl_ms_p99": 9.0 * batch ** 0.5,
                        "queue_ms_p50": 2.0,
                        "prefill_ms_p50": 18.0 + cycle,
                        "prefill_energy_per_token_j": energy / 10,
                        "decode_energy_per_token_j": energy * 0.9,
                        "prefill_tokens_per_s": 5000.0,
                        "decode_tokens_per_s": 100.0 * batch / scale,
                        "flops_total": 1e12,
                        "flops_per_output_token": 1e10,
                        "memory_weights_bytes": 2**29,
                        "memory_weights_kv_peak_bytes": 2**29 + 2**27,
                        "memory_peak_allocated_bytes": 2**30,
                        "memory_reserved_bytes": 2**31,
                        "model_reused": cycle > 0,
                        "warnings_count": 0,
                        "verdict": "pass",
                        "verdict_reasons": None,
                        "e2e_ms_p50": 100.0 * batch ** 0.5 + cycle,
                        "e2e_ms_p99": 150.0 * batch ** 0.5 + cycle,
                        "result_path": f"{job}/result.json",
                    }
                )
                job += 1
    frame = pd.DataFrame(rows)
    for name, dtype in {**ID_COLUMNS, **METRIC_COLUMNS, **TRAILING_COLUMNS}.items():
        if name not in frame:  # figures an offline job does not have (the serving_* columns)
            frame[name] = None
        frame[name] = frame[name].astype(dtype)
    return frame[[*ID_COLUMNS, "batch_size", "fp_precision", *METRIC_COLUMNS, *TRAILING_COLUMNS]]
