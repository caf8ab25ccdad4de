"""`run_campaign` in a caller's own process (a notebook, a service): it leaves the garbage collector as it found it,
and it runs on a worker thread without touching signal handlers."""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llem.campaign import run_campaign
from llem.campaign.state import read_state
from tests.campaign import helpers as h

DRY = [*h.FAST, "backend.batch_size=1,2", "hydra.sweeper.dry_run=true"]


def _handlers() -> tuple[Any, Any]:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def _on_a_thread(call: Callable[[], Any]) -> Any:
    answer: dict[str, Any] = {}

    def work() -> None:
        try:
            answer["value"] = call()
        except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread below
            answer["error"] = error

    thread = threading.Thread(target=work, name="service-worker")
    thread.start()
    thread.join(600)
    assert not thread.is_alive(), "the campaign did not end"
    if "error" in answer:
        raise answer["error"]
    return answer["value"]


def test_repeated_dry_runs_leave_nothing_frozen(tmp_path: Path) -> None:
    assert gc.get_freeze_count() == 0, "another test left objects frozen"
    for n in range(3):
        outcome = run_campaign(DRY, sweep_dir=tmp_path / f"sweep{n}")
        assert outcome.dry_run and outcome.counts == {"pending": 2}
        assert gc.get_freeze_count() == 0, f"run {n} left {gc.get_freeze_count()} object(s) frozen"


def _collectable(obj: object) -> bool:
    """Whether the collector scans `obj` (frozen objects sit in the permanent generation, outside its scans)."""
    return any(o is obj for o in gc.get_objects())


def test_a_callers_own_frozen_objects_stay_frozen(tmp_path: Path) -> None:
    mine = {"the caller's": ["long-lived state"]}
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0 and not _collectable(mine)
        run_campaign(DRY, sweep_dir=tmp_path / "sweep")
        assert gc.get_freeze_count() <= frozen  # the campaign froze nothing of its own (frozen objects may die)
        assert not _collectable(mine)  # and did not thaw the caller's
    finally:
        gc.unfreeze()


def test_a_dry_run_from_a_worker_thread(tmp_path: Path) -> None:
    before = _handlers()
    outcome = _on_a_thread(lambda: run_campaign(DRY, sweep_dir=tmp_path / "sweep"))
    assert outcome.dry_run and outcome.counts == {"pending": 2}
    assert _handlers() == before
    stored = read_state(outcome.manifest_path)
    assert stored is not None and len(stored.jobs) == 2


@pytest.mark.slow
def test_a_campaign_runs_from_a_worker_thread(tmp_path: Path) -> None:
    before = _handlers()
    overrides = [*h.FAST, "backend.batch_size=1,2", "campaign.execution.config_gap_seconds=0"]
    outcome = _on_a_thread(lambda: run_campaign(overrides, sweep_dir=tmp_path / "sweep"))
    assert outcome.ok and outcome.counts == {"completed": 2}, outcome.failure_summary()
    assert _handlers() == before
    assert gc.get_freeze_count() == 0
    stored = read_state(outcome.manifest_path)
    assert stored is not None and all(Path(j.result_path or "").is_file() for j in stored.jobs)


def test_hydra_global_state_is_as_the_caller_left_it(tmp_path: Path) -> None:
    """After a campaign, Hydra's own entry points (compose, @hydra.main) in the same process see no leftover."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    assert HydraConfig.instance().cfg is None, "another test left Hydra's config set"
    run_campaign(DRY, sweep_dir=tmp_path / "sweep")
    assert HydraConfig.instance().cfg is None
    assert not GlobalHydra.instance().is_initialized()
