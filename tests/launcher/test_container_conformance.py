"""Hydra's launcher conformance suites against the container launcher (podman, offline test image)."""

from __future__ import annotations

import os

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from tests.containers import image

pytestmark = [
    pytest.mark.usefixtures("fresh_hydra_version_base"),
    pytest.mark.container,
    pytest.mark.slow,
    pytest.mark.timeout(image.BUILD_TIMEOUT_S + 600),
]


def _ref() -> str:
    if image.engine_problem() is not None:
        return "unavailable"
    return os.environ.get("LLEM_TEST_IMAGE") or image.test_image()


def _flags() -> list[str]:
    return [f"hydra.launcher.engine={image.ENGINE}", f"+hydra.launcher.images.default={_ref()}",
            "hydra.launcher.gpus=null", "hydra.launcher.network=none", "hydra.launcher.mount_caches=false"]


@pytest.fixture(autouse=True)
def _engine() -> None:
    image.skip_unless_engine()


@pytest.mark.parametrize(("launcher_name", "overrides"), [("llem_container", _flags())])
class TestLlemContainerLauncher(LauncherTestSuite):
    """Any Hydra app's task runs inside a warm container, with Hydra's usual outputs on the host."""


@pytest.mark.parametrize(("task_launcher_cfg", "extra_flags"), [({}, ["-m", "hydra/launcher=llem_container", *_flags()])])
class TestLlemContainerLauncherIntegration(IntegrationTestSuite):
    """Whole apps launched as subprocesses through the container launcher."""
