"""Hydra's launcher conformance suites, run against the llem local launcher (warm worker processes)."""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.llem_launcher.llem_container_launcher import LlemContainerLauncher
from hydra_plugins.llem_launcher.llem_local_launcher import LlemLocalLauncher


pytestmark = pytest.mark.usefixtures("fresh_hydra_version_base")


def test_discovered_by_hydra() -> None:
    names = [x.__name__ for x in Plugins.instance().discover(Launcher)]
    assert LlemLocalLauncher.__name__ in names and LlemContainerLauncher.__name__ in names


@pytest.mark.slow  # real Hydra multiruns on warm worker processes
@pytest.mark.parametrize(("launcher_name", "overrides"), [("llem_local", [])])
class TestLlemLocalLauncher(LauncherTestSuite):
    """Any Hydra app's task runs in a worker process, with Hydra's usual outputs."""


@pytest.mark.slow  # whole apps in subprocesses
@pytest.mark.parametrize(
    ("task_launcher_cfg", "extra_flags"),
    [({}, ["-m", "hydra/launcher=llem_local"])],
)
class TestLlemLocalLauncherIntegration(IntegrationTestSuite):
    """Whole apps launched as subprocesses through the llem local launcher."""
