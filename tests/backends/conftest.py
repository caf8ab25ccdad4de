"""One warm vLLM session for the whole directory: an engine start costs ~20 s on this CPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llem.measure.session import BackendSession


@pytest.fixture(scope="session")
def vllm_session() -> Iterator[BackendSession]:
    """Shared by the vLLM tests; the consistency test's engine is reused by test_vllm_cpu when settings match."""
    session = BackendSession()
    yield session
    session.release()
