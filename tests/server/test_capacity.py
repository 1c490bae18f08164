"""imapproxy.server.capacity: the file limit at start-up, the rate-limited log."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys

import pytest

from imapproxy.server import capacity
from imapproxy.server.capacity import RateLimitedLog, raise_fd_limit, resource_error
from imapproxy.telemetry import logs


def test_resource_errors_are_named_and_others_are_not() -> None:
    assert resource_error(OSError(errno.EMFILE, "Too many open files")) == "emfile"
    assert resource_error(OSError(errno.ENFILE, "File table overflow")) == "enfile"
    assert resource_error(OSError(errno.ECONNREFUSED, "refused")) is None
    assert resource_error(ValueError("x")) is None


def test_rate_limited_log_says_once_then_counts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(capacity.time, "monotonic", lambda: now[0])
    rl = RateLimitedLog(interval=60)
    caplog.set_level(logging.INFO, logger="imapproxy")
    assert rl.event("accept_failed", reason="emfile") is True
    for _ in range(500):
        assert rl.event("accept_failed", reason="emfile") is False
    assert rl.event("proxy_at_capacity", reason="emfile") is True  # its own budget
    now[0] += 61
    assert rl.event("accept_failed", reason="emfile") is True
    records = [r for r in caplog.records if r.getMessage() == "accept_failed"]
    assert len(records) == 2
    fields = [getattr(r, logs._FIELDS) for r in records]
    assert [f["suppressed_since_last"] for f in fields] == [0, 500]
    assert fields[0]["reason"] == "emfile"


def test_raise_fd_limit_lifts_soft_to_hard() -> None:
    """In a child: lower the soft limit, call it, read the limit back."""
    code = (
        "import resource, json\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "from imapproxy.server.capacity import raise_fd_limit\n"
        "print(json.dumps([raise_fd_limit(10), *resource.getrlimit(resource.RLIMIT_NOFILE)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    returned, soft, hard = json.loads(out.stdout)
    assert returned == soft == hard


def test_raise_fd_limit_warns_once_when_short(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(capacity.resource, "getrlimit", lambda _which: (1024, 1024))
    caplog.set_level(logging.INFO, logger="imapproxy")
    assert raise_fd_limit(10_000) == 1024
    assert [r.getMessage() for r in caplog.records] == ["fd_limit"]
    caplog.clear()
    assert raise_fd_limit(100) == 1024  # 1024 holds 100 sessions: nothing to say
    assert caplog.records == []


def test_raise_fd_limit_reports_a_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(_which: int, _limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(capacity.resource, "getrlimit", lambda _which: (1024, 65536))
    monkeypatch.setattr(capacity.resource, "setrlimit", refuse)
    caplog.set_level(logging.INFO, logger="imapproxy")
    assert raise_fd_limit(100) == 1024
    assert [r.getMessage() for r in caplog.records] == ["fd_limit"]
    assert "cannot raise" in getattr(caplog.records[0], logs._FIELDS)["detail"]
