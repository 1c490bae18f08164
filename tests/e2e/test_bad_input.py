"""Bad input from clients: a protocol-correct answer or a clean close, one log line, no
traceback, and no effect on other sessions or the process."""

from __future__ import annotations

import logging
import random
import socket

import pytest
import trio

from imapproxy.demo.dovecot import Dovecot
from tests.support.accounts import new_account
from tests.support.rawimap import RawIMAP

from .conftest import RunningProxy


def _read_all(sock: socket.socket, limit: int = 1 << 22) -> bytes:
    """Everything the proxy sends until it closes (bounded)."""
    data = bytearray()
    sock.settimeout(15)
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _healthy_session(proxy: RunningProxy, dovecot: Dovecot) -> None:
    """A well-behaved session that must keep working while another one misbehaves."""
    account = new_account(dovecot)
    with RawIMAP(proxy.address) as c:
        assert c.command(
            b"h1", b"LOGIN " + account.name.encode() + b" " + account.password.encode()
        )[-1].startswith(b"h1 OK")
        assert c.command(b"h2", b"SELECT INBOX")[-1].startswith(b"h2 OK")
        assert c.command(b"h3", b"LOGOUT")[-1].startswith(b"h3 OK")


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="imapproxy")
    yield caplog
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_garbage_line_gets_bad_and_session_goes_on(
    dovecot: Dovecot, proxy: RunningProxy, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    def run() -> None:
        with RawIMAP(proxy.address) as c:
            c.send(b"\x01\x02 not imap at all\r\n")
            assert c.read_response() == b"* BAD malformed command line\r\n"
            c.send(b"t1 UID\r\n")  # a tag, but UID without a command
            assert c.read_response().startswith(b"t1 BAD")
            assert c.command(b"t2", b"NOOP")[-1].startswith(b"t2 OK")

    await trio.to_thread.run_sync(run)
    assert any(r.getMessage() == "protocol_error" for r in no_tracebacks.records)


async def test_oversized_line_is_judged_by_the_server(
    dovecot: Dovecot, proxy: RunningProxy, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    # Lines longer than the proxy's cap stream through as pieces (issue 8, bug 8): the
    # server, not the proxy, refuses this one (Dovecot: "Input buffer full").
    def run() -> bytes:
        with RawIMAP(proxy.address) as c:
            c.send(b"t1 NOOP " + b"x" * (70 * 1024))
            return _read_all(c.sock)

    reply = await trio.to_thread.run_sync(run)
    assert reply.startswith(b"* BYE ") and b"line longer than" not in reply
    await trio.to_thread.run_sync(_healthy_session, proxy, dovecot)


async def test_huge_literal_then_disconnect(
    dovecot: Dovecot, proxy: RunningProxy, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    account = new_account(dovecot)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            c.command(b"a1", b"LOGIN " + account.name.encode() + b" " + account.password.encode())
            c.send(b"a2 APPEND INBOX {4294967295}\r\n")
            answer = c.read_response()  # Dovecot refuses it; the proxy relays that
            assert answer.startswith((b"a2 NO", b"a2 BAD", b"+")), answer

    await trio.to_thread.run_sync(run)
    await trio.to_thread.run_sync(_healthy_session, proxy, dovecot)
    await _wait_closed(no_tracebacks)


async def test_client_vanishes_mid_literal(
    dovecot: Dovecot, proxy: RunningProxy, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    account = new_account(dovecot)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            c.command(b"a1", b"LOGIN " + account.name.encode() + b" " + account.password.encode())
            c.send(b"a2 APPEND INBOX {1000000+}\r\n" + b"x" * 5000)

    await trio.to_thread.run_sync(run)
    await _wait_closed(no_tracebacks)
    issues = [r for r in no_tracebacks.records if r.getMessage() == "protocol_error"]
    assert any("middle of a command" in str(getattr(r, "imapproxy_fields", {})) for r in issues)
    await trio.to_thread.run_sync(_healthy_session, proxy, dovecot)


async def test_one_megabyte_of_random_bytes(
    dovecot: Dovecot, proxy: RunningProxy, no_tracebacks: pytest.LogCaptureFixture
) -> None:
    noise = random.Random(1234).randbytes(1 << 20)

    def run() -> bytes:
        with socket.create_connection(proxy.address, timeout=15) as s:
            s.recv(4096)  # greeting
            try:
                s.sendall(noise)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the proxy may close first: that is a clean outcome
            try:
                return _read_all(s)
            except ConnectionResetError:
                return b""

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, _healthy_session, proxy, dovecot)
        reply = await trio.to_thread.run_sync(run)
    for line in reply.splitlines():
        assert line.startswith((b"* BAD", b"* BYE")) or b" BAD " in line or b" NO " in line, line
    await trio.to_thread.run_sync(_healthy_session, proxy, dovecot)


async def _wait_closed(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        while not any(r.getMessage() == "session_closed" for r in caplog.records):
            await trio.sleep(0.02)
