"""How the live display ends (Ctrl-C, an error), how wide it is, and which settings a job's label shows."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from llem.progress import CampaignProgress, swept_label


def _screen(output: str) -> list[str]:
    """What a terminal shows after `output`: enough of a VT100 for rich's live display (CR, LF, erase line,
    cursor up; other control sequences ignored)."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|.|\n", output, flags=re.S):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            while len(rows) <= row:
                rows.append([])
        elif token == "\x1b[2K":
            rows[row] = []
        elif re.fullmatch(r"\x1b\[(\d*)A", token):
            row = max(0, row - int(token[2:-1] or 1))
        elif token.startswith("\x1b["):
            continue
        else:
            line = rows[row]
            line.extend(" " * (col - len(line)))
            line[col : col + 1] = [token]
            col += 1
    return ["".join(r).rstrip() for r in rows if "".join(r).strip()]


def _terminal(width: int = 150) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=width, color_system=None), buffer


def test_ctrl_c_on_a_terminal_leaves_only_the_interrupted_line_without_an_eta() -> None:
    console, buffer = _terminal()
    with pytest.raises(KeyboardInterrupt):
        with CampaignProgress(3, stream=console) as progress:
            progress.job_started(0, "pytorch", "backend.batch_size=1")
            progress.job_finished(0, "completed")
            progress.job_started(1, "pytorch", "backend.batch_size=4")
            progress._progress.refresh()  # type: ignore[union-attr]
            assert any("job 1 pytorch" in line for line in _screen(buffer.getvalue()))
            raise KeyboardInterrupt
    screen = _screen(buffer.getvalue())
    assert len(screen) == 1 and screen[0].startswith("campaign interrupted: 1 done, 0 failed of 3"), screen
    assert "ETA" not in screen[0] and "job 1" not in screen[0]


def test_an_error_is_not_reported_as_an_interrupt() -> None:
    for terminal in (True, False):
        buffer = io.StringIO()
        console = Console(file=buffer, force_terminal=terminal, width=150, color_system=None)
        with pytest.raises(ValueError):
            with CampaignProgress(2, stream=console):
                raise ValueError("hydra.launcher.gpus: this node has no GPU 3")
        out = buffer.getvalue()
        assert "interrupted" not in out and "campaign stopped by an error: 0 done, 0 failed of 2" in out


def test_a_finished_campaign_still_ends_with_its_bar_and_summary() -> None:
    console, buffer = _terminal()
    with CampaignProgress(1, stream=console) as progress:
        progress.job_started(0, "pytorch", "")
        progress.job_finished(0, "completed")
    screen = _screen(buffer.getvalue())
    assert screen[-1].startswith("campaign finished: 1 done") and "1/1" in screen[0]


@pytest.mark.parametrize("width", [150, 100, 80])
def test_the_bar_stays_on_one_line_however_long_the_job_label(width: int) -> None:
    console, _ = _terminal(width)
    label = " ".join(f"backend.engine_args.option_{i}=value_{i}" for i in range(12))
    with CampaignProgress(40, stream=console) as progress:
        for num in range(3):
            progress.job_started(num, "pytorch", label)
        lines = console.render_lines(progress._progress.get_renderable(), console.options)  # type: ignore[union-attr]
        assert len(lines) == 1
        text = "".join(segment.text for segment in lines[0])
        assert len(text.rstrip()) <= width and "ETA" in text and "0/40" in text


def test_labels_show_only_the_swept_settings() -> None:
    assert swept_label("num_input_prompts=4 backend=vllm backend.max_num_seqs=8 +x.y=1", {"backend.max_num_seqs"}) == (
        "backend.max_num_seqs=8"
    )
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200, color_system=None)
    with CampaignProgress(2, stream=console, swept_keys=["backend.batch_size"]) as progress:
        progress.job_started(0, "pytorch", "num_input_prompts=4 backend.batch_size=1")
        progress.job_finished(0, "completed")
    assert "job 0 started (pytorch: backend.batch_size=1)" in buffer.getvalue()
    assert "num_input_prompts" not in buffer.getvalue()
