"""The offline CPU test image (docker/test-cpu), built at most once per test session.

Container tests share it:

    from tests.containers import image

    def test_something() -> None:
        image.skip_unless_engine()         # pytest.skip with the reason when the engine is unusable
        ref = image.test_image()           # e.g. "localhost/llem-test-cpu:3f2a..."; built on first use
        image.client().run(ref, [...])     # python-on-whales, driving podman (or $LLEM_CONTAINER_ENGINE)

Import the module, not the function: a `test_image` name inside a test module would be collected
by pytest as a test. The build takes minutes the first time on a machine (debootstrap, pip) and about
a second afterwards (the image tag is a hash of llem's sources, and an existing tag is reused); set
LLEM_TEST_IMAGE to use a prebuilt image instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "docker" / "test-cpu" / "build.sh"
ENGINE = os.environ.get("LLEM_CONTAINER_ENGINE", "podman")
BUILD_TIMEOUT_S = 1800

_image: str | None = None
_error: str | None = None
_engine_problem: str | None | bool = False  # False: not checked yet


class ImageUnavailable(RuntimeError):
    """The test image could not be built or found; the message says why."""


def engine_problem() -> str | None:
    """Why the container engine cannot be used here, or None when it can (checked once)."""
    global _engine_problem
    if _engine_problem is not False:
        return _engine_problem  # type: ignore[return-value]
    problem: str | None = None
    if shutil.which(ENGINE) is None:
        problem = f"{ENGINE} is not installed (as root: scripts/deps/podman.sh)"
    else:
        try:
            proc = subprocess.run([ENGINE, "info"], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            problem = f"'{ENGINE} info' did not answer within 60 s"
        else:
            if proc.returncode != 0:
                last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
                problem = f"'{ENGINE} info' fails: {last[0]}"
    if problem is None:
        try:
            import python_on_whales  # noqa: F401
        except ImportError:
            problem = "python-on-whales is not installed (pip install -e '.[dev]')"
    _engine_problem = problem
    return problem


def skip_unless_engine() -> None:
    """pytest.skip the calling test, with the reason, when the container engine is unusable."""
    import pytest

    problem = engine_problem()
    if problem:
        pytest.skip(f"container engine not usable: {problem}")


def client() -> Any:
    """A python-on-whales client for the engine the test image is built with."""
    from python_on_whales import DockerClient

    return DockerClient(client_call=[ENGINE])


def test_image() -> str:
    """The test image's reference; builds it with docker/test-cpu/build.sh on the first call.

    Raises ImageUnavailable (again on later calls, without retrying) when the build fails.
    """
    global _image, _error
    if _image is not None:
        return _image
    if _error is not None:
        raise ImageUnavailable(_error)
    prebuilt = os.environ.get("LLEM_TEST_IMAGE")
    if prebuilt:
        _image = prebuilt
        return _image
    problem = engine_problem()
    if problem:
        _error = f"container engine not usable: {problem}"
        raise ImageUnavailable(_error)
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--engine", ENGINE],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        _error = f"{BUILD_SCRIPT.relative_to(REPO)} took longer than {BUILD_TIMEOUT_S} s"
        raise ImageUnavailable(_error) from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        _error = f"{BUILD_SCRIPT.relative_to(REPO)} failed (exit {proc.returncode}):\n{tail}"
        raise ImageUnavailable(_error)
    _image = lines[-1].strip()
    return _image


test_image.__test__ = False  # type: ignore[attr-defined]  # not a test, whatever imports it
