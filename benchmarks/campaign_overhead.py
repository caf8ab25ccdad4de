"""Per-job overhead of a campaign: warm workers vs a fresh process per job, same jobs, same run.

N small jobs on one model (the built-in tiny model, CPU). Overhead is everything a job
costs outside its measured window and its model load: host composition, dispatch,
Hydra's job setup, prompt loading, result writing — and, for a fresh process per job,
interpreter start and imports. Model loads are counted from the results.

    python benchmarks/campaign_overhead.py --jobs 10
    python benchmarks/campaign_overhead.py --jobs 10 --container-image localhost/llem-test-cpu:TAG --engine podman
    python benchmarks/campaign_overhead.py --state 10000 --tail 200 --repeats 3

Goals: <= 100 ms per job for local warm workers, <= 300 ms for containers, one model load
per distinct loading setting.

`--state N --tail K`: does a job cost more when the campaign state is large? The last K jobs
of an N-job campaign whose first N-K are already completed (a resume), against the same K
jobs as a K-job campaign, in the same run. Goals: within 1.2x of each other, <= 50 ms per job.
The N-K completed results are copies of one real result with each job's config hash, written
before the resume: the resume checks every one of them, as it would real results.
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


def _campaign(workdir: Path, sweep: Path, seeds: str, launcher: list[str], *extra: str) -> float:
    cmd = [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *JOB, *CAMPAIGN,
           f"random_seed={seeds}", *launcher, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"campaign failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def _work_s(result: dict) -> float:
    """A job's own work: its measured windows (main, and prefill when split), warmup and model load."""
    split = (result.get("phase_split") or {}).get("prefill_window_s") or 0.0
    warmup = (result.get("warmup") or {}).get("duration_s") or 0.0
    return result["duration_s"] + split + warmup + (result["model_load_s"] or 0.0)


def _overhead(rows: list[dict], wall: float) -> dict[str, float]:
    """Per-job overhead in steady state: from the end of the first job to the end of the last, minus
    the work of the jobs in between (measured windows, warmup, model loads)."""
    rows = sorted(rows, key=lambda j: j["job_num"])
    results = [json.loads(Path(j["result_path"]).read_text()) for j in rows]
    loads = sum(1 for r in results if not r["model_reused"])
    # steady state: from the end of job 0 to the end of the last job, minus windows and loads
    busy = sum(_work_s(r) for r in results[1:])
    span = _ts(rows[-1]["completed_at"]) - _ts(rows[0]["completed_at"])
    first_job = _ts(rows[0]["completed_at"]) - _ts(rows[0]["started_at"])
    return {"wall_s": wall, "per_job_overhead_ms": (span - busy) / (len(rows) - 1) * 1000, "loads": loads,
            "first_job_s": first_job}


def _manifest(sweep: Path) -> dict:
    return json.loads((sweep / ".state" / "campaign_manifest.json").read_text())


def warm(workdir: Path, jobs: int, launcher: list[str]) -> dict[str, float]:
    sweep = workdir / "sweep"
    wall = _campaign(workdir, sweep, f"range(0,{jobs})", launcher)
    return _overhead(_manifest(sweep)["jobs"], wall)


def large_state(workdir: Path, total: int, tail: int) -> dict[str, dict[str, float]]:
    """The last `tail` jobs of a `total`-job campaign resumed with the rest completed, and the same jobs alone."""
    launcher = ["hydra/launcher=llem_local"]
    alone = workdir / "alone"
    seeds = f"range({total - tail},{total})"
    wall = _campaign(workdir, alone, seeds, launcher)
    small = _overhead(_manifest(alone)["jobs"], wall)
    big = workdir / "big"
    _campaign(workdir, big, f"range(0,{total})", launcher, "hydra.sweeper.dry_run=true")
    template = json.loads(Path(_manifest(alone)["jobs"][0]["result_path"]).read_text())
    for job in _manifest(big)["jobs"]:
        if int(job["params"]["random_seed"]) < total - tail:
            path = Path(job["result_path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**template, "config_hash": job["config_hash"]}))
    wall = _campaign(workdir, big, f"range(0,{total})", launcher)
    rows = [j for j in _manifest(big)["jobs"] if int(j["params"]["random_seed"]) >= total - tail]
    return {f"{tail} jobs alone": small, f"last {tail} of {total}": _overhead(rows, wall)}


def state_main(total: int, tail: int, repeats: int) -> None:
    import statistics

    runs: dict[str, list[float]] = {}
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            for name, row in large_state(Path(tmp), total, tail).items():
                runs.setdefault(name, []).append(row["per_job_overhead_ms"])
        print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms/job" for k, v in runs.items()), flush=True)
    small, big = runs[f"{tail} jobs alone"], runs[f"last {tail} of {total}"]
    ratios = [b / s for b, s in zip(big, small)]
    for name, values in runs.items():
        print(f"{name:24s} median {statistics.median(values):6.1f} ms/job (min {min(values):.1f}, "
              f"max {max(values):.1f})")
    print(f"ratio large/small state: median {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); goal <= 1.2, and <= 50 ms per job")


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
    parser.add_argument("--state", type=int, help="campaign size whose state the last --tail jobs run with")
    parser.add_argument("--tail", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.state:
        return state_main(args.state, args.tail, args.repeats)
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
