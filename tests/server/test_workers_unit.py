"""Pieces of the worker supervisor that need no processes."""

from __future__ import annotations

import socket

import pytest

from imapproxy.config.loader import Address
from imapproxy.server.limits import Limiter, LimitValues
from imapproxy.server.reuseport import reserve
from imapproxy.server.workers import _Ledger, strip_workers


def test_strip_workers_drops_the_flags_the_parent_replaces() -> None:
    argv = ["--config", "c.yaml", "--workers", "2", "--listen=0.0.0.0:143", "--workers=auto"]
    assert strip_workers(argv) == ["--config", "c.yaml"]
    assert strip_workers(["--listen", "1.2.3.4:5", "--metrics", "off"]) == ["--metrics", "off"]


def test_a_dead_workers_holdings_are_released() -> None:
    limiter = Limiter(LimitValues(max_sessions_per_ip=2, max_sessions_per_user=1))
    dead, alive = _Ledger(limiter), _Ledger(limiter)
    assert dead.handle({"op": "open_session", "ip": "10.0.0.1"}) is None
    assert alive.handle({"op": "open_session", "ip": "10.0.0.1"}) is None
    assert alive.handle({"op": "open_session", "ip": "10.0.0.1"}) == "sessions_per_ip"
    assert dead.handle({"op": "check_login", "ip": "10.0.0.1", "user": "ann"}) == [None, 0.0]
    dead.handle({"op": "login_finished", "ip": "10.0.0.1", "user": "ann", "result": "ok"})
    refused = alive.handle({"op": "check_login", "ip": "10.0.0.2", "user": "ann"})
    assert refused[0] == "sessions_per_user"
    dead.release()  # the worker died with its session open
    assert limiter.sessions_of("10.0.0.1") == 1
    assert alive.handle({"op": "check_login", "ip": "10.0.0.2", "user": "ann"})[0] is None


def test_reserve_fixes_port_zero_and_refuses_a_busy_port() -> None:
    address, held = reserve(Address("127.0.0.1", 0))
    try:
        assert address.port != 0
        again, more = reserve(address)
        assert again == address  # SO_REUSEPORT: a second reservation is allowed
        for s in more:
            s.close()
    finally:
        for s in held:
            s.close()
    with socket.socket() as busy:  # a plain listener without SO_REUSEPORT owns the port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            reserve(Address("127.0.0.1", busy.getsockname()[1]))
