"""`make test` runs the whole suite with durations, `make test-fast` leaves out every marked kind of test,
and docs/contributing.md describes every marker the tests use."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# pytest's own markers and pytest-timeout's
BUILTIN_MARKS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings", "timeout"}


def _registered() -> dict[str, str]:
    block = (REPO / "pyproject.toml").read_text().split("markers = [", 1)[1].split("]", 1)[0]
    return dict(m.split(": ", 1) for m in re.findall(r'"([^"]+)"', block))


def _pytest_line(target: str) -> list[str]:
    """The pytest command `make <target>` runs (make -n prints it; setup steps are not run)."""
    out = subprocess.run(["make", "-n", "-C", str(REPO), target, "PYTEST_ARGS="], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    lines = [ln for ln in out.splitlines() if " -m pytest " in ln]
    assert len(lines) == 1, out
    return shlex.split(lines[0])


def _marker_expression(args: list[str]) -> str:
    return args[args.index("-m", args.index("pytest")) + 1]


def test_make_test_is_the_whole_suite_and_lists_the_slowest() -> None:
    args = _pytest_line("test")
    assert _marker_expression(args) == "not gpu" and "--durations=25" in args
    assert not any(a.startswith("tests/") for a in args)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_make_test_fast_leaves_out_every_marked_kind() -> None:
    expression = _marker_expression(_pytest_line("test-fast"))
    excluded = set(re.findall(r"not (\w+)", expression))
    assert excluded == set(_registered()), expression
    assert "or" not in expression.split()


def test_every_marker_the_tests_use_is_registered_and_documented() -> None:
    used = set()
    for path in (REPO / "tests").rglob("*.py"):
        if path == Path(__file__) or path.name == "conftest.py" and path.parent == REPO / "tests":
            continue  # these two name markers in their text without using them
        used |= set(re.findall(r"pytest\.mark\.(\w+)", path.read_text(encoding="utf-8")))
    registered = _registered()
    assert used - BUILTIN_MARKS <= set(registered), used - BUILTIN_MARKS - set(registered)
    guide = (REPO / "docs" / "contributing.md").read_text()
    for name in registered:
        assert f"| `{name}` |" in guide, f"docs/contributing.md does not say what the {name} marker covers"
    assert "make test-fast" in guide and "make test-fast" in (REPO / "README.md").read_text()


def test_a_fast_selection_does_not_import_modules_it_leaves_out_whole() -> None:
    """Importing the container conformance suite builds the test image; `make test-fast` must not."""
    from types import SimpleNamespace

    from tests.conftest import _module_marks, pytest_ignore_collect

    suite = REPO / "tests" / "launcher" / "test_container_conformance.py"
    assert {"container", "slow"} <= _module_marks(suite)
    fast = SimpleNamespace(option=SimpleNamespace(markexpr="not slow and not container and not slurm and not vllm"))
    assert pytest_ignore_collect(suite, fast) is True  # type: ignore[arg-type]
    assert pytest_ignore_collect(REPO / "tests" / "config" / "test_campaign.py", fast) is None  # type: ignore[arg-type]
    whole = SimpleNamespace(option=SimpleNamespace(markexpr="not gpu"))
    assert pytest_ignore_collect(suite, whole) is None  # type: ignore[arg-type]
    positive = SimpleNamespace(option=SimpleNamespace(markexpr="container"))
    assert pytest_ignore_collect(suite, positive) is None  # type: ignore[arg-type]


def test_tests_that_read_the_real_report_campaign_are_slow() -> None:
    """They measure six real experiments first, so `make test-fast` leaves them out."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         "tests/report/test_fixed_settings.py", "tests/report/test_group_by_hint.py"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert collected and all("test_group_by_hint.py" in line for line in collected), proc.stdout
