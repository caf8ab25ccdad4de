"""Per-job overhead of a campaign: warm workers vs a fresh process per job, same jobs, same run.

N small jobs on one model (the built-in tiny model, CPU). Overhead is everything a job
costs outside its measured window and its model load: host composition, dispatch,
Hydra's job setup, prompt loading, result writing — and, for a fresh process per job,
interpreter start and imports. Model loads are counted from the results.

    python benchmarks/campaign_overhead.py --jobs 10
    python benchmarks/campaign_overhead.py --jobs 10 --container-image localhost/llem-test-cpu:TAG --engine podman

Goals: <= 100 ms per job for local warm workers, <= 300 ms for containers, one model load
per distinct loading setting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = ["num_input_prompts=2", "max_output_tokens=4", "max_input_tokens=32", "warmup.num_prompts=0",
       "baseline.enabled=false", "energy.source=none"]
CAMPAIGN = ["campaign.execution.cycles=1", "campaign.execution.config_gap_seconds=0",
            "campaign.execution.cycle_gap_seconds=0", "campaign.execution.warmup_prompts=0",
            "campaign.health_check.enabled=false"]


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def warm(workdir: Path, jobs: int, launcher: list[str]) -> dict[str, float]:
    sweep = workdir / "sweep"
    cmd = [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *JOB, *CAMPAIGN,
           f"random_seed=range(0,{jobs})", *launcher]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"campaign failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((sweep / ".state" / "campaign_manifest.json").read_text())
    rows = sorted(manifest["jobs"], key=lambda j: j["job_num"])
    results = [json.loads(Path(j["result_path"]).read_text()) for j in rows]
    loads = sum(1 for r in results if not r["model_reused"])
    # steady state: from the end of job 0 to the end of the last job, minus windows and loads
    busy = sum(r["duration_s"] + (r["model_load_s"] or 0.0) for r in results[1:])
    span = _ts(rows[-1]["completed_at"]) - _ts(rows[0]["completed_at"])
    first_job = _ts(rows[0]["completed_at"]) - _ts(rows[0]["started_at"])
    return {"wall_s": wall, "per_job_overhead_ms": (span - busy) / (len(rows) - 1) * 1000, "loads": loads,
            "first_job_s": first_job}


def fresh(workdir: Path, jobs: int) -> dict[str, float]:
    overheads, loads = [], 0
    start_all = time.perf_counter()
    for i in range(jobs):
        out = workdir / f"fresh-{i}"
        cmd = [sys.executable, "-m", "llem", f"hydra.run.dir={out}", *JOB, f"random_seed={i}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"job failed:\n{proc.stderr[-3000:]}")
        result = json.loads((out / "result.json").read_text())
        loads += 0 if result["model_reused"] else 1
        overheads.append(wall - result["duration_s"])
    return {"wall_s": time.perf_counter() - start_all, "per_job_overhead_ms": sum(overheads) / jobs * 1000,
            "loads": loads, "first_job_s": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--container-image", help="also run through llem_container with this image")
    parser.add_argument("--engine", default="podman")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rows = {}
        (base / "warm").mkdir()
        rows["warm local workers"] = warm(base / "warm", args.jobs, ["hydra/launcher=llem_local"])
        (base / "fresh").mkdir()
        rows["fresh process per job"] = fresh(base / "fresh", args.jobs)
        if args.container_image:
            (base / "ctr").mkdir()
            rows["warm container workers"] = warm(base / "ctr", args.jobs, [
                "hydra/launcher=llem_container", f"hydra.launcher.engine={args.engine}",
                f"hydra.launcher.images.pytorch={args.container_image}", "hydra.launcher.gpus=null",
                "hydra.launcher.network=none"])
    print(f"{args.jobs} jobs of the built-in tiny model on CPU (overhead = time outside windows and loads)")
    print(f"{'mode':28s} {'overhead/job':>14s} {'model loads':>12s} {'wall':>8s} {'first job':>10s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['per_job_overhead_ms']:11.0f} ms {r['loads']:12.0f} {r['wall_s']:7.1f}s "
              f"{r['first_job_s']:9.1f}s")
    base_ms = rows["fresh process per job"]["per_job_overhead_ms"]
    print(f"fresh/warm overhead ratio: {base_ms / rows['warm local workers']['per_job_overhead_ms']:.1f}x")


if __name__ == "__main__":
    main()
