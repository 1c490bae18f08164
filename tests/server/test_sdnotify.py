"""imapproxy.sdnotify against real AF_UNIX datagram sockets, as systemd would provide them."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapproxy.server import sdnotify


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


# --- the real process: what systemd sees from `Type=notify` ---------------------------------

ROOT = Path(__file__).resolve().parents[2]

needs_proxy = pytest.mark.skipif(
    importlib.util.find_spec("imapproxy.server.listener") is None, reason="proxy not written yet"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """`python -m imapproxy --config ...` with NOTIFY_SOCKET pointing at our receiver; killed
    by its own PID if a test leaves it running."""

    def __init__(self, tmp: Path) -> None:
        self.listen, self.metrics = _free_port(), _free_port()
        config = tmp / "config.yaml"
        config.write_text(
            f'listen: "127.0.0.1:{self.listen}"\n'
            'upstream: {address: "127.0.0.1:1", tls: none}\n'
            f'metrics: {{address: "127.0.0.1:{self.metrics}"}}\n'
            "rules: [{name: audit, action: log}]\n"
        )
        address = str(tmp / "notify")
        self.sock = _receiver(address)
        self.sock.settimeout(20)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imapproxy", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, "NOTIFY_SOCKET": address, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def recv(self) -> str:
        return _recv(self.sock)

    def close(self) -> str:
        """Stop (if still running) and return stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.sock.close()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")


@needs_proxy
def test_proxy_process_notifies_ready_reloading_stopping() -> None:
    """READY=1 only once the listener accepts; SIGHUP gives RELOADING=1 (+MONOTONIC_USEC) then
    READY=1; SIGTERM gives STOPPING=1 and a clean exit."""
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
        p = ProxyProcess(Path(tmp))
        try:
            assert p.recv() == "READY=1"
            with socket.create_connection(("127.0.0.1", p.listen), timeout=5):
                pass  # bound before READY=1
            p.proc.send_signal(signal.SIGHUP)
            reloading = p.recv().split("\n")
            assert reloading[0] == "RELOADING=1"
            assert reloading[1].startswith("MONOTONIC_USEC=")
            assert p.recv() == "READY=1"
            url = f"http://127.0.0.1:{p.metrics}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode()
            assert 'imapproxy_config_reloads_total{result="ok"} 1.0' in body

            p.proc.send_signal(signal.SIGTERM)
            assert p.recv() == "STOPPING=1"
            assert p.proc.wait(timeout=15) == 0
        finally:
            stderr = p.close()
        assert "Traceback" not in stderr, stderr


@needs_proxy
def test_signal_right_after_ready_is_handled() -> None:
    """systemd allows `reload` as soon as READY=1 arrives, so the handlers must exist by then."""
    for _ in range(5):  # the window is a few ms: retry to make a regression all but certain
        with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
            p = ProxyProcess(Path(tmp))
            try:
                assert p.recv() == "READY=1"
                p.sock.settimeout(5)  # a killed process sends nothing: fail fast
                p.proc.send_signal(signal.SIGHUP)
                assert p.recv().startswith("RELOADING=1\n")
                assert p.recv() == "READY=1"
                p.proc.send_signal(signal.SIGTERM)
                assert p.recv() == "STOPPING=1"
                assert p.proc.wait(timeout=15) == 0
            finally:
                p.close()
