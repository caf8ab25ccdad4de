"""CampaignProgress: plain timestamped lines off a terminal (or when quiet), a live bar on one."""

from __future__ import annotations

import io
import re

from rich.console import Console

from llem.progress import CampaignProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=160, color_system=None), buffer


def test_plain_lines_when_not_a_terminal() -> None:
    console, buffer = _console(terminal=False)
    clock = Clock()
    with CampaignProgress(4, stream=console, clock=clock) as progress:
        assert not progress.live
        progress.job_started(0, "pytorch", "batch_size=2")
        clock.now += 10
        progress.job_finished(0, "completed")
        progress.job_started(1, "vllm", "batch_size=4")
        clock.now += 10
        progress.job_finished(1, "failed")
        progress.log("health check ok")
    lines = buffer.getvalue().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d llem: ", line) for line in lines)
    text = [line.split(" llem: ", 1)[1] for line in lines]
    assert text[0] == "campaign started: 4 jobs (0 already done)"
    assert text[1] == "job 0 started (pytorch: batch_size=2) — 0/4 done, 0 failed, elapsed 0:00:00, ETA --:--:--"
    # 10 s per finished job, 3 left
    assert text[2] == "job 0 completed in 10.0 s — 1/4 done, 0 failed, elapsed 0:00:10, ETA 0:00:30"
    assert text[3].startswith("job 1 started (vllm: batch_size=4) — 1/4 done")
    assert text[4] == "job 1 failed in 10.0 s — 1/4 done, 1 failed, elapsed 0:00:20, ETA 0:00:20"
    assert text[5] == "health check ok"
    assert text[6] == "campaign finished: 1 done, 1 failed of 4 in 0:00:20"
    assert "\x1b[" not in buffer.getvalue()


def test_quiet_gives_plain_lines_even_on_a_terminal() -> None:
    console, buffer = _console(terminal=True)
    with CampaignProgress(1, quiet=True, stream=console) as progress:
        assert not progress.live
        progress.job_started(3, "pytorch", "")
        progress.job_finished(3, "completed")
    out = buffer.getvalue()
    assert "job 3 started (pytorch)" in out and "job 3 completed" in out and "ETA 0:00:00" in out
    assert "━" not in out  # no bar


def test_plain_stream_that_is_a_file_is_not_a_terminal() -> None:
    buffer = io.StringIO()
    with CampaignProgress(2, stream=buffer, already_done=1) as progress:
        assert not progress.live
        progress.job_started(5, "pytorch", "x=[1, 2]")  # brackets are not rich markup
        progress.job_finished(5, "completed")
    out = buffer.getvalue()
    assert "campaign started: 2 jobs (1 already done)" in out and "x=[1, 2]" in out
    assert "2/2 done" in out and "campaign finished: 2 done, 0 failed of 2" in out


def test_live_bar_on_a_terminal() -> None:
    console, buffer = _console(terminal=True)
    clock = Clock()
    with CampaignProgress(3, stream=console, clock=clock) as progress:
        assert progress.live
        progress.job_started(0, "pytorch", "fp_precision=[float16]")
        progress._progress.refresh()  # type: ignore[union-attr]
        during = buffer.getvalue()
        clock.now += 5
        progress.job_finished(0, "completed")
        progress.job_started(1, "pytorch", "fp_precision=bfloat16")
        progress.job_started(2, "vllm", "fp_precision=float16")
        clock.now += 5
        progress.job_finished(1, "failed")
        progress.log("worker restarted")
        progress._progress.refresh()  # type: ignore[union-attr]
        assert progress.done == 1 and progress.failed == 1 and progress.remaining == 1
    out = buffer.getvalue()
    assert "\x1b[" in out  # cursor control: a live display, not lines
    assert "job 0 pytorch fp_precision=[float16]" in during and "0/3" in during and "ETA --:--:--" in during
    assert "job 2 vllm fp_precision=float16" in out and "failed 1" in out
    assert "job 1 failed in 5.0 s" in out and "worker restarted" in out
    assert "2/3" in out and "campaign finished: 1 done, 1 failed of 3 in 0:00:10" in out
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d llem: job", out)  # no plain lines


def test_eta_counts_down_between_finishes_and_interruption_is_reported() -> None:
    console, buffer = _console(terminal=False)
    clock = Clock()
    try:
        with CampaignProgress(5, stream=console, clock=clock) as progress:
            assert progress.eta_s() is None
            clock.now += 4
            progress.job_finished(0, "completed")
            assert progress.eta_s() == 16.0  # 4 s per job, 4 left
            clock.now += 6
            assert progress.eta_s() == 10.0
            clock.now += 60
            assert progress.eta_s() == 0.0  # overdue, never negative
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert "campaign interrupted: 1 done, 0 failed of 5" in buffer.getvalue()


def test_the_eta_counts_the_gaps_still_to_come_apart_from_job_time() -> None:
    from llem.progress import GapPlan

    console, buffer = _console(terminal=False)
    clock = Clock()
    # 4 jobs, two cycles: 5 s config gaps, a 60 s cycle gap between job 1 and job 2
    gaps = GapPlan(config_gap_s=5, cycle_gap_s=60, order=[(0, 0), (1, 0), (2, 1), (3, 1)])
    with CampaignProgress(4, stream=console, clock=clock, gaps=gaps) as progress:
        progress.job_started(0, "pytorch", "")
        clock.now += 10
        progress.job_finished(0, "completed")
        # 10 s per job x 3 left, plus the gaps before jobs 1, 2 and 3: 5 + 60 + 5
        assert progress.eta_s() == 30 + 70
        progress.gap(5)
        clock.now += 5  # the gap before job 1, slept
        progress.job_started(1, "pytorch", "")
        clock.now += 10
        progress.job_finished(1, "completed")
        # job time excludes the gap: still 10 s per job; 2 left; gaps ahead: 60 + 5
        assert progress.eta_s() == 20 + 65
        clock.now += 30  # half-way through the cycle gap: the countdown runs from the last finish
        assert progress.eta_s() == 85 - 30


def test_gap_plan_without_a_job_started_has_no_gap_before_the_first() -> None:
    from llem.progress import GapPlan

    gaps = GapPlan(config_gap_s=2, cycle_gap_s=9, order=[(5, 0), (6, 0), (7, 1)])
    assert gaps.remaining_s(set(), started_any=False) == 2 + 9
    assert gaps.remaining_s({5}, started_any=True) == 2 + 9
    assert gaps.remaining_s({5, 6}, started_any=True) == 9
    assert gaps.remaining_s({5, 6, 7}, started_any=True) == 0
