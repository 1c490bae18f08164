"""imapproxy.sdnotify against real AF_UNIX datagram sockets, as systemd would provide them."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapproxy import sdnotify


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path may not be.
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
        address = str(Path(tmp) / "notify")
        with _receiver(address) as sock:
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            yield sock


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"imapproxy-test-{os.getpid()}-{time.monotonic_ns()}"
    with _receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_helpers_send_the_systemd_assignments(path_socket: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert _recv(path_socket) == "READY=1"
    assert sdnotify.stopping() is True
    assert _recv(path_socket) == "STOPPING=1"
    assert sdnotify.status("serving 3 sessions\non 2 listeners") is True
    assert _recv(path_socket) == "STATUS=serving 3 sessions on 2 listeners"
    assert sdnotify.notify("WATCHDOG=1") is True
    assert _recv(path_socket) == "WATCHDOG=1"


def test_reloading_carries_monotonic_usec(path_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = _recv(path_socket).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after
    assert len(lines) == 2


def test_abstract_socket(abstract_socket: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert _recv(abstract_socket) == "READY=1"


def test_each_notification_is_one_datagram(path_socket: socket.socket) -> None:
    sdnotify.reloading()
    sdnotify.ready()
    first, second = _recv(path_socket), _recv(path_socket)
    assert first.startswith("RELOADING=1\n")
    assert second == "READY=1"


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.stopping() is False


def test_unreachable_or_unsupported_socket_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
        monkeypatch.setenv("NOTIFY_SOCKET", str(Path(tmp) / "nobody-listens"))
        assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.ready() is False
