"""Fixtures of the server tests."""

from __future__ import annotations

import pytest

from imapproxy.net import io_wait


@pytest.fixture(params=["io-wait", "task"])
def hub_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test in both of the readiness hub's modes: served in trio's I/O wait
    (``net.io_wait``) and as a task (its fallback). The hub is made per trio run, so the
    mode holds for the whole test."""
    if request.param == "task":
        monkeypatch.setenv(io_wait.FORCE_TASK_ENV, "1")
    else:
        monkeypatch.delenv(io_wait.FORCE_TASK_ENV, raising=False)
    return str(request.param)
