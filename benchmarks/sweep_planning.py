"""Plan and validate a 10,000-job campaign (dry run, whole process) vs per-job Hydra composition.

The llem sweeper composes once per config-group selection and applies value overrides
to plain data; the baseline composes every job with Hydra's config loader, as Hydra's
basic sweeper does to validate a batch. The baseline is timed on a sample of jobs and
extrapolated. Goal: 10,000 jobs planned and validated in <= 5 s on a 2-core machine.

    python benchmarks/sweep_planning.py [--sample 200]
"""

from __future__ import annotations

import argparse
import json
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from hydra import compose, initialize_config_module

FLOATS = ["float16", "bfloat16"]
OUTPUT_TOKENS = [16 * (i + 1) for i in range(10)]
SEEDS = list(range(25))
SIZES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 128]


def campaign() -> dict[str, object]:
    """2 backends x 2 precisions x 10 output lengths x 25 seeds x 10 batch settings = 10,000 jobs."""
    return {
        "defaults": ["default", "_self_"],
        "campaign_name": "bench10k",
        "grid": {
            "backends": ["pytorch", "vllm"],
            "shared": {"fp_precision": FLOATS, "max_output_tokens": OUTPUT_TOKENS, "random_seed": SEEDS},
            "backend_overrides": {"pytorch": {"batch_size": SIZES}, "vllm": {"max_num_seqs": SIZES}},
        },
        "execution": {"cycles": 1},
    }


def sample_jobs(n: int) -> list[list[str]]:
    jobs = []
    for backend, key in (("pytorch", "batch_size"), ("vllm", "max_num_seqs")):
        for fp, out, seed, size in itertools.product(FLOATS, OUTPUT_TOKENS, SEEDS, SIZES):
            jobs.append([f"backend={backend}", f"fp_precision={fp}", f"max_output_tokens={out}",
                         f"random_seed={seed}", f"backend.{key}={size}"])
    step = max(1, len(jobs) // n)
    return jobs[::step][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=200, help="jobs composed one by one for the baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "conf" / "campaign"
        conf.mkdir(parents=True)
        (conf / "bench10k.yaml").write_text(yaml.safe_dump(campaign(), sort_keys=False))
        sweep_dir = Path(tmp) / "sweep"
        cmd = [sys.executable, "-m", "llem", "-m", f"--config-dir={conf.parent}", "campaign=bench10k",
               "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={sweep_dir}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        llem_s = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"dry run failed:\n{proc.stderr}")
        manifest = json.loads((sweep_dir / ".state" / "campaign_manifest.json").read_text())
        planned = sum(1 for j in manifest["jobs"] if j["status"] == "pending")
        startup = time.perf_counter()
        with initialize_config_module(config_module="llem.conf", version_base="1.3"):
            startup = time.perf_counter() - startup
            jobs = sample_jobs(args.sample)
            t0 = time.perf_counter()
            for job in jobs:
                compose(config_name="config", overrides=job)
            per_job = (time.perf_counter() - t0) / len(jobs)
    baseline_s = startup + per_job * planned
    print(f"jobs planned and validated: {planned}")
    print(f"llem dry run (whole process, incl. interpreter start and manifest): {llem_s:8.2f} s")
    print(f"per-job Hydra composition: {per_job * 1000:6.1f} ms/job on {len(jobs)} sampled jobs "
          f"-> {baseline_s:8.1f} s for {planned} jobs (composition only, no validation)")
    print(f"speed-up: {baseline_s / llem_s:6.1f}x   goal: 10,000 jobs <= 5 s -> {'met' if llem_s <= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
