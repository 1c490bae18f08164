"""Descriptors (issue 12, item 6): two per plain session, and a proxy out of descriptors backs
off, says it is at capacity (not that the mail server is down), logs once and serves again.

The proxy runs as a child process so /proc/PID/fd counts only its own descriptors.
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
import urllib.request
from collections.abc import Callable

from imapproxy.demo.dovecot import Dovecot
from tests.support.childproxy import ChildProxy

GREETING = b"* OK"
AT_CAPACITY = b"* BYE [UNAVAILABLE] Proxy at capacity\r\n"


def _connect(address: tuple[str, int], n: int) -> list[socket.socket]:
    return [socket.create_connection(address, timeout=5) for _ in range(n)]


def _first_lines(socks: list[socket.socket], wait: float) -> dict[socket.socket, bytes]:
    """The first line each socket received within ``wait`` seconds (b"" for none yet)."""
    got = {s: b"" for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + wait
    try:
        while any(not v.endswith(b"\n") for v in got.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                got[s] += chunk if chunk else b"<EOF>\n"
                if got[s].endswith(b"\n"):
                    sel.unregister(s)
    finally:
        sel.close()
        for s in socks:
            s.setblocking(True)
    return got


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_two_descriptors_per_plain_session(dovecot: Dovecot) -> None:
    proxy = ChildProxy(dovecot.address)
    n = 60
    try:
        # One session first: whatever the process opens once (lazily) is in the baseline.
        warm = _connect(proxy.address, 1)
        assert _first_lines(warm, 10)[warm[0]].startswith(GREETING)
        baseline = proxy.open_fds()
        socks = _connect(proxy.address, n)
        lines = _first_lines(socks, 20)
        # A greeting comes from Dovecot through the proxy: both legs of each are open.
        assert all(line.startswith(GREETING) for line in lines.values()), set(lines.values())
        with_sessions = proxy.open_fds()
        _close(socks + warm)
        assert proxy.wait_for(lambda: proxy.open_fds() <= baseline - 2)
    finally:
        log = proxy.stop()
    print(f"\ndescriptors: {baseline - 2} idle, {with_sessions} with {n + 1} sessions")
    assert with_sessions - baseline <= 2 * n + 2
    assert "Traceback" not in log


def _lower_fd_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return preexec


def test_out_of_descriptors_backs_off_logs_once_and_recovers(dovecot: Dovecot) -> None:
    limit = 48
    proxy = ChildProxy(dovecot.address, metrics=True, preexec_fn=_lower_fd_limit(limit))
    try:
        idle = proxy.open_fds()
        room = (limit - idle) // 2
        socks = _connect(proxy.address, room + 15)
        lines = _first_lines(socks, 5)
        served = [s for s, line in lines.items() if line.startswith(GREETING)]
        turned_away = [s for s, line in lines.items() if line == AT_CAPACITY]
        waiting = [s for s, line in lines.items() if not line]
        assert len(served) + len(turned_away) + len(waiting) == len(socks), set(lines.values())
        assert room - 3 <= len(served) <= room + 2  # the proxy uses all it has, no more
        assert turned_away or waiting
        assert proxy.open_fds() <= limit
        # The control socket cannot accept either: it waits, and the process lives on (its
        # accept loop ended the process once, which reset every client connection).
        admins = [socket.socket(socket.AF_UNIX) for _ in range(3)]
        for admin in admins:
            admin.settimeout(5)
            admin.connect(str(proxy.control_path))
        time.sleep(0.3)
        assert proxy.proc.poll() is None, proxy.log_text()[-3000:]

        # Sessions close: the proxy serves again, the connections that waited first.
        _close(served + turned_away)
        _close(admins)
        later = _first_lines(waiting, 10)
        assert all(line.startswith(GREETING) for line in later.values()), set(later.values())
        fresh = _connect(proxy.address, 3)
        assert all(line.startswith(GREETING) for line in _first_lines(fresh, 10).values())
        _close(waiting + fresh)
        assert proxy.wait_for(lambda: proxy.open_fds() <= idle + 2)
        url = f"http://127.0.0.1:{proxy.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            metrics = resp.read().decode()
    finally:
        log = proxy.stop()
    events = [e["event"] for e in ChildProxy.parse_events(log)]
    print(
        f"\nfd limit {limit}: {idle} idle, {len(served)} served, {len(turned_away)} told "
        f"at capacity, {len(waiting)} waited; events {sorted(set(events))}"
    )
    assert "Traceback" not in log
    assert "Mail server unavailable" not in log
    assert "upstream_unavailable" not in events
    # Rate-limited: one line per kind however many times it happened.
    assert events.count("accept_failed") <= 1
    assert events.count("proxy_at_capacity") <= 1
    assert "accept_failed" in events or "proxy_at_capacity" in events
    failures = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("imapproxy_accept_errors_total{")
    ]
    assert sum(failures) >= len(turned_away) + ("accept_failed" in events)
