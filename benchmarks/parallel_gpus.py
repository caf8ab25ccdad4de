"""Campaign wall time with jobs side by side on a node's GPUs, against one job at a time, same run.

Four scripted GPUs (the test suite's fake NVML, `LLEM_FAKE_GPUS=4`) and sleep-bound jobs: each job
sleeps `--sleep` seconds in its warmup (`warmup.thermal_floor_seconds`) around a tiny measured
window, so the ratio shows what the launcher's packing gives, not what this machine's CPUs can do.

    python benchmarks/parallel_gpus.py --jobs 16 --sleep 6 --repeats 3

Goal: the parallel campaign (`hydra.launcher.parallel=true`) takes at least 3.5x less wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = ["num_input_prompts=1", "max_output_tokens=2", "max_input_tokens=16", "warmup.num_prompts=0",
       "baseline.enabled=false", "measure.min_window_seconds=0", "measure.phase_split=false",
       "campaign.execution.cycles=1", "campaign.execution.config_gap_seconds=0",
       "campaign.execution.warmup_prompts=0", "campaign.health_check.enabled=false"]


def campaign(workdir: Path, jobs: int, sleep: float, parallel: bool) -> float:
    env = {**os.environ, "LLEM_NVML_FACTORY": "tests.launcher.fake_nvml_env:nvml", "LLEM_FAKE_GPUS": "4",
           "LLEM_GPU_LOCK_DIR": str(workdir / "locks"), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={workdir / 'sweep'}", *JOB,
           f"warmup.thermal_floor_seconds={sleep}", f"hydra.launcher.parallel={str(parallel).lower()}",
           f"random_seed=range(0,{jobs})"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"campaign failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    serial, parallel, ratios = [], [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "s").mkdir()
            (Path(tmp) / "p").mkdir()
            serial.append(campaign(Path(tmp) / "s", args.jobs, args.sleep, parallel=False))
            parallel.append(campaign(Path(tmp) / "p", args.jobs, args.sleep, parallel=True))
        ratios.append(serial[-1] / parallel[-1])
        print(f"run {i + 1}: serial {serial[-1]:.1f} s, parallel {parallel[-1]:.1f} s, {ratios[-1]:.2f}x", flush=True)
    print(f"{args.jobs} jobs sleeping {args.sleep:g} s each, 4 scripted GPUs, {args.repeats} runs")
    for name, values in (("serial", serial), ("parallel", parallel)):
        print(f"{name:9s} median {statistics.median(values):6.1f} s (min {min(values):.1f}, max {max(values):.1f})")
    print(f"speed-up median {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}); goal >= 3.5x")


if __name__ == "__main__":
    main()
