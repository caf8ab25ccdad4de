"""Hydra's own sweeper conformance suite, run against the llem sweeper with Hydra's basic launcher."""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite

from hydra_plugins.llem_sweeper.llem_sweeper import LlemSweeper


pytestmark = pytest.mark.usefixtures("fresh_hydra_version_base")


def test_discovered_by_hydra() -> None:
    assert LlemSweeper.__name__ in [x.__name__ for x in Plugins.instance().discover(Sweeper)]


@pytest.mark.parametrize(
    ("launcher_name", "overrides"),
    [("basic", ["hydra/sweeper=llem", "hydra.sweeper.max_batch_size=2"])],
)
class TestLlemSweeperBatched(BatchedSweeperTestSuite):
    """Batches of two through the basic launcher, on a non-llem app (plain cartesian product)."""
