"""Campaigns through the container launcher on a real engine (podman) with the offline test image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llem.measure.result import read_result
from llem.campaign.state import read_state
from llem.plan.manifest import read_manifest
from llem.launch.pool import CAMPAIGN_LABEL
from llem.launch.pool import campaign_label as campaign_id
from tests.containers import image

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(image.BUILD_TIMEOUT_S + 900)]
REPO = Path(__file__).resolve().parents[2]
FAST = ["num_input_prompts=2", "max_output_tokens=3", "max_input_tokens=16", "warmup.num_prompts=0",
        "baseline.enabled=false", "campaign.execution.config_gap_seconds=0", "campaign.execution.cycle_gap_seconds=0",
        "campaign.execution.warmup_prompts=0", "campaign.execution.cycles=1"]


@pytest.fixture(scope="module")
def ref() -> str:
    image.skip_unless_engine()
    return image.test_image()


def _launcher(ref: str, *extra: str) -> list[str]:
    return ["hydra/launcher=llem_container", f"hydra.launcher.engine={image.ENGINE}",
            f"hydra.launcher.images.pytorch={ref}", "hydra.launcher.gpus=null", "hydra.launcher.network=none",
            *extra]


def _cmd(tmp_path: Path, ref: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *FAST, *_launcher(ref),
            *args]


def _manifest(tmp_path: Path) -> Any:
    return read_manifest(tmp_path / "sweep" / ".state" / "campaign_manifest.json")


def _llem_containers(sweep: Path | None = None) -> list[str]:
    """llem worker containers (of one campaign, when `sweep` is given)."""
    cmd = [image.ENGINE, "ps", "-a", "--format", "{{.Names}}"]
    if sweep is not None:
        cmd += ["--filter", f"label={CAMPAIGN_LABEL}={campaign_id(str(sweep))}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    return [n for n in out.stdout.split() if n.startswith("llem-")]


def test_campaign_in_one_warm_container(ref: str, tmp_path: Path) -> None:
    proc = subprocess.run(_cmd(tmp_path, ref, "backend.batch_size=1,2,3"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _manifest(tmp_path)
    assert [j.status for j in m.jobs] == ["completed"] * 3
    results = [read_result(Path(j.result_path or "")) for j in m.jobs]
    assert [r.model_reused for r in results] == [False, True, True]  # one container, model kept loaded
    assert [r.config["backend"]["batch_size"] for r in results] == [1, 2, 3]
    assert _llem_containers(tmp_path / "sweep") == []  # removed at the end


def test_container_killed_mid_job(ref: str, tmp_path: Path) -> None:
    long = ["max_output_tokens=256", "max_input_tokens=256", "num_input_prompts=64,2", "hydra.sweeper.max_attempts=1"]
    proc = subprocess.Popen(_cmd(tmp_path, ref, *long), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    path = tmp_path / "sweep" / ".state" / "campaign_manifest.json"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            if (m := read_state(path)) is not None and m.job(0).status == "running":
                break
            time.sleep(0.3)
        time.sleep(3)
        (name,) = [n for n in _llem_containers(tmp_path / "sweep") if n.startswith("llem-pytorch-")]
        subprocess.run([image.ENGINE, "kill", "--signal", "KILL", name], check=True, capture_output=True)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=120)
    assert proc.returncode != 0 and "1 job(s) failed" in err
    m = _manifest(tmp_path)
    first, second = m.jobs
    assert first.status == "failed" and "container exited with code 137" in (first.error or "")
    assert "last lines of its log" in (first.error or "") and "listening" in (first.error or "")
    assert second.status == "completed"
    assert [e["kind"] for e in m.events if e["kind"].startswith("worker_")] == ["worker_restart"]


def test_health_check_restart_and_cold_start_in_containers(ref: str, tmp_path: Path) -> None:
    mounts = f"hydra.launcher.mounts=[{REPO / 'tests'}:/llemtests/tests:ro]"
    env = ["+hydra.launcher.env.PYTHONPATH=/llemtests",
           "+hydra.launcher.env.LLEM_NVML_FACTORY='tests.launcher.fake_nvml_env:nvml'",
           "+hydra.launcher.env.LLEM_FAKE_GPU_MEM_PCT='95'"]
    proc = subprocess.run(_cmd(tmp_path, ref, "backend.batch_size=1,2,3", mounts, *env,
                               "campaign.health_check.interval_experiments=1", "campaign.health_check.max_restarts=1",
                               "campaign.cold_start.restart_container=true",
                               "measure.min_window_seconds=0"),  # one pass, though a (scripted) GPU is visible
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    m = _manifest(tmp_path)
    checks = [e for e in m.events if e["kind"] == "health_check"]
    assert checks and not checks[0]["healthy"] and checks[0]["devices"]["gpu0"] == pytest.approx(95, abs=0.1)
    kinds = [e["kind"] for e in m.events]
    assert "worker_restart" in kinds and "worker_disabled" in kinds
    assert m.jobs[-1].status == "failed" and "max_restarts (1) reached" in (m.jobs[-1].error or "")
    assert proc.returncode != 0


def test_secrets_pass_by_name_and_are_never_written(ref: str, tmp_path: Path) -> None:
    secret = "hf_llemtest_" + os.urandom(6).hex()
    app = REPO / "tests" / "launcher" / "apps" / "env_app.py"
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(app), "-m", f"hydra.sweep.dir={sweep}", "+x=1,2", "hydra/launcher=llem_container",
           f"hydra.launcher.engine={image.ENGINE}", f"+hydra.launcher.images.default={ref}", "hydra.launcher.gpus=null",
           "hydra.launcher.network=none", f"hydra.launcher.mounts=[{REPO}:{REPO}:ro]", f"+hydra.launcher.env.PYTHONPATH={REPO}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_TOKEN": secret})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(sweep / str(i) / "token_seen.txt").read_text() for i in (0, 1)] == ["yes", "yes"]
    for path in sweep.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
    assert secret not in proc.stdout + proc.stderr


def test_default_gpus_on_a_machine_without_gpus_and_a_failed_start_leaves_nothing(ref: str, tmp_path: Path) -> None:
    """`gpus` defaults to `auto`: no GPU is requested where there is none. Asking for one anyway fails the jobs
    with the engine's reason, and no container is left behind in the Created state."""
    launcher = ["hydra/launcher=llem_container", f"hydra.launcher.engine={image.ENGINE}",
                f"hydra.launcher.images.pytorch={ref}", "hydra.launcher.network=none"]  # fmt: skip
    ok = tmp_path / "auto"
    proc = subprocess.run([sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={ok}", *FAST, *launcher],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [j.status for j in read_manifest(ok / ".state" / "campaign_manifest.json").jobs] == ["completed"]
    bad = tmp_path / "all"
    proc = subprocess.run(
        [sys.executable, "-m", "llem", "-m", f"hydra.sweep.dir={bad}", *FAST, *launcher, "hydra.launcher.gpus=all",
         "hydra.sweeper.max_attempts=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode != 0
    jobs = read_manifest(bad / ".state" / "campaign_manifest.json").jobs
    assert [j.status for j in jobs] == ["failed"] and "could not start" in (jobs[0].error or "")
    leftovers = subprocess.run([image.ENGINE, "ps", "-a", "--format", "{{.Names}} {{.Status}}"],
                               capture_output=True, text=True).stdout  # fmt: skip
    assert "llem-pytorch-" not in leftovers, leftovers
