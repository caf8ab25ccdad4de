"""Several workers at once on a node's GPUs: packing, GPU locks, and real campaigns on 4 scripted GPUs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llem.launch.gpus import Gpu, GpuBusy, GpuLocks
from llem.launch.placement import GpuPacker
from llem.plan.manifest import read_manifest

GPUS = [Gpu(i, f"GPU-{i:08d}-fake-0000-0000-000000000000") for i in range(4)]


# ------------------------------------------------------------------------------------------- packing
def test_one_gpu_jobs_fill_the_node_then_wait() -> None:
    packer = GpuPacker(list(GPUS))
    slots = []
    for _ in range(4):
        slot = packer.place("pytorch", 1)
        assert slot is not None
        packer.start(slot)
        slots.append(slot)
    assert [s.gpus for s in slots if s] == [(g,) for g in GPUS]  # four different GPUs
    assert packer.place("pytorch", 1) is None  # the fifth waits
    packer.finish(slots[2].worker)  # type: ignore[union-attr]
    again = packer.place("pytorch", 1)
    assert again is not None and again.worker == slots[2].worker and not again.evict  # the warm worker, reused


def test_a_two_gpu_job_waits_for_two_free_gpus() -> None:
    packer = GpuPacker(list(GPUS))
    ones = []
    for _ in range(3):
        slot = packer.place("pytorch", 1)
        assert slot is not None
        packer.start(slot)
        ones.append(slot)
    assert packer.place("vllm", 2) is None  # one GPU free: not enough
    packer.finish(ones[0].worker)
    two = packer.place("vllm", 2)
    assert two is not None and len(two.gpus) == 2
    assert two.evict == (ones[0].worker,)  # the idle one-GPU worker gives up its GPU
    assert set(two.gpus) == {ones[0].gpus[0], GPUS[3]}
    packer.start(two)
    assert ones[0].worker not in packer.workers
    assert not set(two.gpus) & {g for s in ones[1:] for g in s.gpus}  # never shared with a running job


def test_idle_workers_of_other_backends_are_evicted_before_our_own() -> None:
    packer = GpuPacker(list(GPUS[:2]))
    a, b = packer.place("vllm", 1), None
    assert a is not None
    packer.start(a)
    b = packer.place("pytorch", 1)
    assert b is not None
    packer.start(b)
    packer.finish(a.worker)
    packer.finish(b.worker)
    c = packer.place("pytorch", 2)
    assert c is not None and set(c.evict) == {a.worker, b.worker}
    d_packer = GpuPacker(list(GPUS[:3]))
    for route in ("vllm", "pytorch"):
        slot = d_packer.place(route, 1)
        assert slot is not None
        d_packer.start(slot)
        d_packer.finish(slot.worker)
    e = d_packer.place("pytorch", 2)  # one GPU free, one to take: the other backend's
    assert e is not None and len(e.evict) == 1 and e.evict[0].startswith("vllm@")


def test_cpu_jobs_run_one_at_a_time_beside_gpu_jobs() -> None:
    packer = GpuPacker(list(GPUS))
    gpu = packer.place("pytorch", 1)
    cpu = packer.place("pytorch", 0)
    assert gpu is not None and cpu is not None and cpu.gpus == ()
    packer.start(gpu)
    packer.start(cpu)
    assert packer.place("pytorch", 0) is None
    assert packer.place("pytorch", 1) is not None


# ------------------------------------------------------------------------------------------- locks
def test_a_gpu_held_by_another_campaign_is_reported_and_waited_for(tmp_path: Path) -> None:
    first, second = GpuLocks("campaign A", tmp_path), GpuLocks("campaign B", tmp_path)
    assert first.try_acquire(GPUS[:2]) is None
    assert second.try_acquire([GPUS[3], GPUS[1]]) == GPUS[1]
    assert second.try_acquire([GPUS[3]]) is None  # all or nothing: GPU 3 was released again above, now taken
    assert f"PID {os.getpid()}" in second.holder(GPUS[0]) and "campaign A" in second.holder(GPUS[0])
    with pytest.raises(GpuBusy, match=r"GPU 1 \(GPU-00000001.*\) is in use by PID .*campaign A.*gave up after 0.3 s. "
                                     r"Give the campaigns disjoint hydra.launcher.gpus"):
        second.acquire([GPUS[1]], timeout_s=0.3)
    told: list[str] = []
    threading.Timer(0.5, lambda: first.release(GPUS[:2])).start()
    start = time.monotonic()
    second.acquire([GPUS[1]], timeout_s=10, on_wait=lambda gpu, holder: told.append(f"{gpu.label} {holder}"))
    assert 0.4 < time.monotonic() - start < 5
    assert len(told) == 1 and "campaign A" in told[0]
    second.release_all()
    assert not list(tmp_path.glob("*.owner.json"))


def test_two_campaigns_each_holding_one_gpu_of_a_pair_both_get_the_pair(tmp_path: Path) -> None:
    """A holds GPU 0 and B holds GPU 1 (GPUs of workers they evicted), and each now wants both: all or none, in UUID
    order, so one takes the pair, runs, and frees it for the other, instead of each waiting for the other forever."""
    holding = threading.Barrier(2)
    got: list[str] = []
    errors: list[str] = []

    def campaign(name: str, held: Gpu, wanted: list[Gpu]) -> None:
        locks = GpuLocks(name, tmp_path)
        assert locks.try_acquire([held]) is None
        holding.wait(10)
        try:
            locks.acquire(wanted, timeout_s=5)
        except GpuBusy as busy:
            errors.append(str(busy))
            return
        got.append(name)
        time.sleep(0.3)  # a job runs on the pair
        locks.release_all()

    threads = [threading.Thread(target=campaign, args=("A", GPUS[0], [GPUS[0], GPUS[1]])),
               threading.Thread(target=campaign, args=("B", GPUS[1], [GPUS[1], GPUS[0]]))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and sorted(got) == ["A", "B"]


def test_the_wait_for_another_campaigns_gpu_has_a_limit_by_default() -> None:
    from llem.launch.options import ContainerOptions, LocalOptions

    assert LocalOptions().gpu_lock_timeout_s == ContainerOptions().gpu_lock_timeout_s == 3600.0
    assert LocalOptions.from_config({"gpu_lock_timeout_s": None}).gpu_lock_timeout_s is None  # no limit, if asked


# ------------------------------------------------------------------------------------------- campaigns
REPO = Path(__file__).resolve().parents[2]
FAST = ["num_input_prompts=2", "max_output_tokens=3", "max_input_tokens=16", "warmup.num_prompts=0",
        "baseline.enabled=false", "measure.min_window_seconds=0", "measure.phase_split=false",
        "campaign.execution.cycles=1", "campaign.execution.config_gap_seconds=0", "campaign.execution.warmup_prompts=0",
        "campaign.health_check.enabled=false", "hydra.launcher.parallel=true"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LLEM_NVML_FACTORY": "tests.launcher.fake_nvml_env:nvml", "LLEM_FAKE_GPUS": "4",
            "LLEM_GPU_LOCK_DIR": str(tmp_path / "gpu-locks"), "PYTHONPATH": str(REPO)}


def _cmd(sweep: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={sweep}", *FAST, *args]


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


@pytest.mark.slow
def test_eight_one_gpu_jobs_run_four_at_a_time_on_their_own_gpus(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # each job lasts at least 6 s: longer than the stagger of four workers starting cold on two loaded cores, so
    # some moment has all four busy
    proc = subprocess.run(_cmd(sweep, "warmup.thermal_floor_seconds=6", "random_seed=range(0,8)"), cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(sweep / ".state" / "campaign_manifest.json")
    assert [j.status for j in manifest.jobs] == ["completed"] * 8
    spans: list[tuple[float, float, str]] = []
    for job in manifest.jobs:
        result = json.loads(Path(job.result_path or "").read_text())
        placement = result["placement"]
        assert len(placement["gpus"]) == 1 and placement["parallel"] is True
        # the job measured exactly the GPU it was pinned to, and the manifest says the same
        assert list(result["energy"]["scope"]["gpu_uuids"].values()) == placement["gpus"] == job.gpus
        spans.append((_ts(result["started_at"]), _ts(result["completed_at"]), placement["gpus"][0]))
    # never two jobs on one GPU at a time
    for i, (s1, e1, g1) in enumerate(spans):
        for s2, e2, g2 in spans[i + 1:]:
            if g1 == g2:
                assert e1 <= s2 or e2 <= s1, f"two jobs overlapped on {g1}"
    # and jobs did run side by side: at some moment 4 ran at once
    most = max(sum(1 for s, e, _ in spans if s <= t < e) for t, _, _ in spans)
    assert most == 4
    assert len({g for _, _, g in spans}) == 4
    assert max(json.loads(Path(j.result_path or "").read_text())["placement"]["concurrent_jobs"]
               for j in manifest.jobs) == 4


@pytest.mark.slow
def test_a_two_gpu_job_waits_for_two_free_gpus_in_a_real_launch(tmp_path: Path) -> None:
    """Three 1-GPU jobs leave one GPU free; the 2-GPU jobs behind them wait until a second one frees up. A fast
    task (gpu_app: it sleeps and records its CUDA_VISIBLE_DEVICES) on the real launcher, packer and locks."""
    sweep = tmp_path / "sweep"
    app = REPO / "tests" / "launcher" / "apps" / "gpu_app.py"
    cmd = [sys.executable, str(app), "-m", f"hydra.sweep.dir={sweep}", "hydra/sweeper=basic",
           "hydra/launcher=llem_local", "hydra.launcher.parallel=true", "backend=vllm",
           "backend.tensor_parallel_size=1,2", "random_seed=0,1,2",  # in this order: the three 1-GPU jobs first
           "campaign.execution.config_gap_seconds=0", "campaign.health_check.enabled=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**_env(tmp_path), "GPU_APP_SECONDS": "1.5"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads((sweep / str(n) / "gpus.json").read_text()) for n in range(6)]
    uuids = {g.uuid for g in GPUS}
    assert [len(j["gpus"]) for j in jobs] == [1, 1, 1, 2, 2, 2] and all(set(j["gpus"]) <= uuids for j in jobs)
    for i, a in enumerate(jobs):  # never a GPU under two jobs at a time
        for b in jobs[i + 1:]:
            if set(a["gpus"]) & set(b["gpus"]):
                assert a["ended"] <= b["began"] or b["ended"] <= a["began"], (a, b)
    first_pair = min(jobs[3:], key=lambda j: j["began"])
    # the 1-GPU jobs ran side by side, and no 2-GPU job began while they held three of the four GPUs
    assert max(j["began"] for j in jobs[:3]) < min(j["ended"] for j in jobs[:3])
    assert first_pair["began"] >= min(j["ended"] for j in jobs[:3])
    # with Hydra's basic sweeper nothing calls the launcher's `finish`: the locks and their notes go at exit
    assert list((tmp_path / "gpu-locks").glob("*.lock")) and not list((tmp_path / "gpu-locks").glob("*.owner.json"))
    assert GpuLocks("check", tmp_path / "gpu-locks").try_acquire(GPUS) is None


@pytest.mark.slow
def test_a_second_campaign_on_the_same_gpus_is_refused_clearly(tmp_path: Path) -> None:
    first = subprocess.Popen(_cmd(tmp_path / "a", "warmup.thermal_floor_seconds=20", "random_seed=range(0,4)"),
                             cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "gpu-locks").glob("*.owner.json"))) < 4:  # every GPU taken by the first
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.2)
        second = subprocess.run(
            _cmd(tmp_path / "b", "random_seed=9", "hydra.launcher.gpu_lock_timeout_s=1", "hydra.sweeper.max_attempts=1"),
            cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
        )
    finally:
        first.kill()
        first.communicate()
    assert second.returncode == 1
    assert f"is in use by PID {first.pid}" in second.stderr and str(tmp_path / "a") in second.stderr
    assert "gave up after 1 s" in second.stderr and "Traceback" not in second.stderr
    assert not list((tmp_path / "b").glob("*/result.json"))


def test_a_pinned_container_gets_only_its_gpus(tmp_path: Path) -> None:
    from llem.launch.container import gpu_args
    from llem.launch.pool import WorkerPool, container_spec
    from llem.launch.options import ContainerOptions, LocalOptions

    options = ContainerOptions(engine="podman", images={"vllm": "img:1"}, mount_caches=False, mount_cwd=False)
    spec = container_spec(options, "vllm", str(tmp_path), tmp_path, (GPUS[1], GPUS[2]))
    assert spec.gpus == [1, 2] and gpu_args("podman", spec.gpus) == ["--device", "nvidia.com/gpu=1",
                                                                        "--device", "nvidia.com/gpu=2"]
    assert gpu_args("docker", spec.gpus) == ["--gpus", "device=1,2"]
    assert container_spec(options, "vllm", str(tmp_path), tmp_path, ()).gpus is None  # a CPU worker: no device
    pool = WorkerPool("local", LocalOptions(parallel=True), tmp_path)
    try:
        pool.pin("pytorch@gpu3", "pytorch", (GPUS[3],))
        worker = pool._make_worker("pytorch@gpu3")
        assert worker.extra_env["CUDA_VISIBLE_DEVICES"] == GPUS[3].uuid  # type: ignore[attr-defined]
        assert pool.options.gaps_per_worker
    finally:
        pool.close()


@pytest.mark.slow
def test_a_killed_parallel_campaign_resumes_with_each_result_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ("warmup.thermal_floor_seconds=4", "random_seed=range(0,6)")
    proc = subprocess.Popen(_cmd(sweep, *args), cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(sweep.glob("*/result.json"))) < 2:  # some done, others running on their GPUs
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        done = {p: p.stat().st_mtime_ns for p in sweep.glob("*/result.json")}
    finally:
        proc.kill()  # SIGKILL: no chance to record anything more
        proc.communicate()
    again = subprocess.run(_cmd(sweep, *args), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = read_manifest(sweep / ".state" / "campaign_manifest.json")
    assert [j.status for j in manifest.jobs] == ["completed"] * 6
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished results were not produced again
    hashes = [json.loads(Path(j.result_path or "").read_text())["config_hash"] for j in manifest.jobs]
    assert len(set(hashes)) == 6 and all(h == j.config_hash for h, j in zip(hashes, manifest.jobs, strict=True))
    assert GpuLocks("check", tmp_path / "gpu-locks").try_acquire(GPUS) is None  # no lock outlived its campaign


def test_the_gpu_pool_is_chosen_by_index_or_uuid_and_a_missing_gpu_is_named() -> None:
    from llem.launch.gpus import GpuSelectionError, node_gpus
    from tests.fakes.fake_pynvml import FakeGpu, FakeNvml

    def fake() -> FakeNvml:
        return FakeNvml([FakeGpu() for _ in range(4)])

    assert node_gpus("all", nvml=fake()) == GPUS
    assert node_gpus([3, GPUS[1].uuid], nvml=fake()) == [GPUS[1], GPUS[3]]
    assert node_gpus(None, nvml=fake()) == []
    with pytest.raises(GpuSelectionError, match=r"hydra.launcher.gpus: no GPU 7 on this node \(GPUs: 0 \(GPU-0"):
        node_gpus([7], nvml=fake())


@pytest.mark.slow
def test_a_gpu_the_node_lacks_is_a_clear_error_and_nothing_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(_cmd(sweep, "random_seed=0,1", "hydra.launcher.gpus=[0,7]"), cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "hydra.launcher.gpus: no GPU 7 on this node" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(sweep.glob("*/result.json"))
    assert {j.status for j in read_manifest(sweep / ".state" / "campaign_manifest.json").jobs} == {"pending"}
