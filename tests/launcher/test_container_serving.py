"""A serving campaign through the container launcher on a real engine (podman) with the offline test image.

The engine's server is the scripted one (LLEM_SERVER_FACTORY); neither it nor the `tests` package is in the
image, so the repository's tests dir is mounted read-only into the container and put on its PYTHONPATH.
The server must run inside the worker's container, be reused by the second load point, and be reachable from
the host on the port published on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from llem.launch.pool import CAMPAIGN_LABEL
from llem.launch.pool import campaign_label as campaign_id
from llem.plan.manifest import read_manifest
from tests.containers import image

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(image.BUILD_TIMEOUT_S + 900)]
REPO = Path(__file__).resolve().parents[2]
FAKE = "tests.serving.fake_server"


@pytest.fixture(scope="module")
def ref() -> str:
    image.skip_unless_engine()
    return image.test_image()


def _argv(sweep: Path, ref: str) -> list[str]:
    serving = ["scenario=serving", "backend=vllm", "model=tiny", "load.rate=4,inf", "load.num_requests=12",
               "load.warmup_requests=2", "max_output_tokens=8", "num_input_prompts=4", "max_input_tokens=32",
               "serving.min_steady_seconds=0.1", "baseline.enabled=false", "campaign.execution.config_gap_seconds=0",
               "campaign.execution.cycle_gap_seconds=0", "campaign.execution.cycles=1",
               "campaign.execution.warmup_prompts=0"]
    # the engine's default network (a bridge): the server's port is published
    launcher = ["hydra/launcher=llem_container", f"hydra.launcher.engine={image.ENGINE}",
                f"hydra.launcher.images.vllm={ref}", "hydra.launcher.gpus=null",
                f"hydra.launcher.mounts=[{REPO / 'tests'}:/llemtests/tests:ro]",
                "+hydra.launcher.env.PYTHONPATH=/llemtests",
                "+hydra.launcher.env.LLEM_SERVER_FACTORY='tests.serving.scripted_factory:fake'",
                "+hydra.launcher.env.LLEM_FAKE_ITL_S='0.1'"]
    return [sys.executable, "-m", "llem", "-m", *serving, *launcher, f"hydra.sweep.dir={sweep}"]


def _engine(*args: str) -> str:
    return subprocess.run([image.ENGINE, *args], capture_output=True, text=True, timeout=60).stdout


def _containers(sweep: Path) -> list[str]:
    """This campaign's worker containers, running or not."""
    out = _engine("ps", "-a", "--filter", f"label={CAMPAIGN_LABEL}={campaign_id(str(sweep))}", "--format",
                  "{{.Names}}")
    return out.split()


def _host_fakes(port: int) -> list[psutil.Process]:
    """Live scripted servers on `port`, as the host sees them (a rootful container's processes included)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if FAKE in cmd and str(port) in cmd and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _while_serving(sweep: Path, proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Once job 0's server is up: what the engine says of the container and its ports, and what the server
    answers on the host's loopback."""
    log = sweep / "0" / "server.log"
    deadline = time.monotonic() + 600
    while not (log.exists() and "fake server listening" in log.read_text()):
        assert proc.poll() is None, "the campaign ended before job 0's server was up"
        assert time.monotonic() < deadline, "job 0's server never came up"
        time.sleep(0.1)
    (name,) = _containers(sweep)
    seen: dict[str, Any] = {"name": name, "port": _engine("port", name).strip(),
                            "top": _engine("top", name, "pid", "args")}
    host_port = int(seen["port"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/v1/models", timeout=10) as reply:
        seen["models"] = json.loads(reply.read())
    seen["host_port"] = host_port
    seen["host_fake_ns"] = []
    for fake in _host_fakes(host_port):
        try:
            seen["host_fake_ns"].append(os.readlink(f"/proc/{fake.pid}/ns/pid"))
        except OSError:
            pass
    return seen


def test_a_serving_campaign_runs_its_server_in_the_container_published_on_loopback(ref: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(_argv(sweep, ref), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        seen = _while_serving(sweep, proc)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    port = seen["host_port"]

    # published on the host's loopback only, same number inside; said in the campaign's output
    assert seen["port"] == f"{port}/tcp -> 127.0.0.1:{port}"
    assert f"server port published on 127.0.0.1:{port}" in out
    assert [m["id"] for m in seen["models"]["data"]] == ["fake"]  # the host reached the server through it

    # two load points, one server start
    m = read_manifest(sweep / ".state" / "campaign_manifest.json")
    assert [j.status for j in m.jobs] == ["completed", "completed"]
    servers = [j.server or {} for j in m.jobs]
    assert [s.get("reused") for s in servers] == [False, True]
    assert servers[0]["id"] and servers[0]["id"] == servers[1]["id"]
    assert [s.get("url") for s in servers] == [f"http://127.0.0.1:{port}"] * 2  # the client, inside

    # the server ran inside the worker's container: its pid (in the container's namespace) is the scripted
    # server's in the container's process list, and it listened on every interface there
    result = json.loads((sweep / "0" / "result.json").read_text())
    server = result["serving"]["server"]
    argv = server["argv"]
    assert argv[argv.index("--port") + 1] == str(port) and argv[argv.index("--host") + 1] == "0.0.0.0"
    in_container = {int(line.split()[0]): line for line in seen["top"].splitlines()[1:] if line.strip()}
    assert FAKE in in_container.get(server["pid"], ""), seen["top"]
    assert any("llem.launch.worker" in line for line in in_container.values())
    # where the host sees the server's process at all (rootful podman), it is in another pid namespace
    assert os.readlink("/proc/self/ns/pid") not in seen["host_fake_ns"]

    # nothing is left: no container of the campaign, no scripted server
    assert _containers(sweep) == []
    deadline = time.monotonic() + 20
    while _host_fakes(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _host_fakes(port) == []
    assert re.search(rf"127\.0\.0\.1:{port}\b", _engine("ps", "-a", "--format", "{{.Ports}}")) is None
