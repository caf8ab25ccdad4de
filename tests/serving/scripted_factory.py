"""Server factories for LLEM_SERVER_FACTORY: the scripted server as the engine's server of a whole campaign."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llem.config import ExperimentConfig
from llem.serving.server import ServerProcess, bind_host, server_port

REPO = Path(__file__).resolve().parents[2]


def fake(experiment: ExperimentConfig, log_path: Path) -> ServerProcess:
    """The scripted server, paced by LLEM_FAKE_ITL_S (seconds between tokens; default 0.02)."""
    port = server_port()
    argv = [sys.executable, "-m", "tests.serving.fake_server", "--port", str(port), "--host", bind_host(),
            "--ttft-s", "0.02",
            "--itl-s", os.environ.get("LLEM_FAKE_ITL_S", "0.02")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert experiment.serving is not None
    return ServerProcess(argv, port=port, log_path=log_path, env=env, ready_timeout_s=30, stop_timeout_s=5)
