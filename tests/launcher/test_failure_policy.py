"""Which failures are worth a retry, and how a failure reads on the console."""

from __future__ import annotations

import io
import re

from llem.backends.errors import HardwareUnsupported
from llem.launch.outcome import failure_type, first_line, retryable
from llem.launch.worker import _safe_exception
from llem.progress import CampaignProgress


def test_failures_no_retry_can_change_are_not_retried() -> None:
    missing = _safe_exception(HardwareUnsupported("TensorRT-LLM needs an NVIDIA GPU"))  # as it leaves a worker
    assert failure_type(missing) == "HardwareUnsupported" and not retryable(missing)
    assert retryable(RuntimeError("worker died: killed by signal 9"))  # a crash may not happen again
    assert retryable(TimeoutError("job ran past 600 s"))
    assert not retryable(ValueError.__new__(type("ConfigError", (ValueError,), {})))


def test_a_failure_line_shows_the_original_error_once() -> None:
    packed = "RuntimeError: HardwareUnsupported: no GPU here\nTraceback (most recent call last):\n  ..."
    assert first_line(packed) == "HardwareUnsupported: no GPU here"
    assert first_line("JobFailure: worker died") == "JobFailure: worker died"
    assert first_line("x" * 500, limit=50).endswith("…") and len(first_line("x" * 500, limit=50)) == 50


def test_progress_counts_each_job_once_across_retries() -> None:
    out = io.StringIO()
    with CampaignProgress(2, stream=out) as progress:
        progress.job_started(0, "pytorch", "a")
        progress.job_finished(0, "failed", reason="RuntimeError: boom")
        progress.job_started(0, "pytorch", "a")
        progress.job_finished(0, "failed", reason="RuntimeError: boom")
        assert (progress.done, progress.failed) == (0, 1)
        progress.job_started(0, "pytorch", "a")
        progress.job_finished(0, "completed")
        progress.job_started(1, "vllm", "b")
        progress.job_finished(1, "failed", reason="HardwareUnsupported: vLLM is not installed")
        assert (progress.done, progress.failed) == (1, 1)
    text = out.getvalue()
    assert re.search(r"job 1 failed in \d+\.\d s: HardwareUnsupported: vLLM is not installed — 1/2 done, 1 failed", text)
    assert re.search(r"job 0 failed in \d+\.\d s: RuntimeError: boom", text)
    assert "campaign finished: 1 done, 1 failed of 2" in text
