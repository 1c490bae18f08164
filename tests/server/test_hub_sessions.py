"""Plain sessions served by the readiness hub (``server.hub_pump``), through the real Dovecot:
no pump task while a session is logged in and idle, answers in order, backpressure with a
slow reader, EOF from either side in the middle of a command, and a session whose processing
fails ending alone. Scripted servers only where Dovecot cannot do it on demand (closing in the
middle of a response)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Any

import pytest
import trio

from imapproxy.config.loader import Address, Config, Limits, MetricsConfig, Upstream
from imapproxy.demo.dovecot import Dovecot
from imapproxy.net.hub import IN, Hub
from imapproxy.server.driver import SessionDriver
from imapproxy.server.listener import Proxy
from imapproxy.session.core import Session
from imapproxy.telemetry.recorder import Telemetry
from tests.conftest import SeedMessage
from tests.support.accounts import Account
from tests.support.hub_checks import all_tasks, assert_a_slow_reader_stops_upstream_reads
from tests.support.stream_client import StreamClient, tcp_connect

pytestmark = pytest.mark.usefixtures("hub_mode")  # each test in both modes (conftest.py)

_TAGGED = re.compile(rb"(?m)^(\w+) (OK|NO|BAD) ")


async def _start(nursery: trio.Nursery, upstream: Address) -> tuple[Proxy, tuple[str, int]]:
    cfg = Config(limits=Limits(max_sessions_per_ip=0, max_sessions_per_user=0))
    cfg = dataclasses.replace(
        cfg,
        listen=dataclasses.replace(cfg.listen, address=Address("127.0.0.1", 0)),
        upstream=Upstream(address=upstream),
        metrics=MetricsConfig(address=None),
    )
    proxy = Proxy(cfg, Telemetry(None))
    bound = await nursery.start(proxy.serve)
    return proxy, bound[0]


@pytest.fixture
async def running(nursery: trio.Nursery, dovecot: Dovecot) -> tuple[Proxy, tuple[str, int]]:
    return await _start(nursery, Address(*dovecot.address))


class Client(StreamClient):
    @classmethod
    async def connect(cls, address: tuple[str, int], *, rcvbuf: int | None = None) -> Client:
        client = cls(await tcp_connect(address, rcvbuf))
        await client.until(b"\r\n")
        return client


def _driver(proxy: Proxy) -> SessionDriver:
    [driver] = proxy.sessions.drivers
    return driver


def _task_names() -> list[str]:
    return [task.name for task in all_tasks()]


def _tasks_named(name: str) -> list[trio.lowlevel.Task]:
    return [task for task in all_tasks() if task.name == name]


async def _ended(proxy: Proxy) -> None:
    with trio.fail_after(10):
        while proxy.active:
            await trio.sleep(0.01)


async def test_idle_logged_in_session_holds_no_pump_task(
    running: tuple[Proxy, tuple[str, int]], imap_user: Account
) -> None:
    proxy, address = running
    client = await Client.connect(address)
    await client.login(imap_user)
    driver = _driver(proxy)
    hub = Hub.current()
    client_fd, upstream_fd = driver._fds
    assert hub.mask(client_fd) == IN and hub.mask(upstream_fd) == IN
    tasks = _task_names()
    assert not [n for n in tasks if "._pump" in n or "auth_deadline" in n], tasks
    # The session's task (trio's handler for the connection) waits with no child task.
    [handler] = _tasks_named("trio._highlevel_serve_listeners._run_handler")
    assert not [t for n in handler.child_nurseries for t in n.child_tasks]
    assert (await client.command(b"n1", b"NOOP")).startswith(b"n1 OK")
    await client.stream.send_all(b"z LOGOUT\r\n")
    assert b"z OK" in await client.rest()
    await _ended(proxy)
    assert driver.close_reason == "upstream closed the connection"
    assert hub.mask(client_fd) == 0 and hub.mask(upstream_fd) == 0


async def test_pipelined_commands_relayed_whole_and_in_order(
    running: tuple[Proxy, tuple[str, int]], imap_user: Account, seed_message: SeedMessage
) -> None:
    """Dovecot may answer pipelined commands out of order; what the proxy must keep is the
    byte order of each stream: every literal whole, every command answered once."""
    messages = [seed_message(imap_user, size=20_000 + 997 * i) for i in range(5)]
    proxy, address = running
    client = await Client.connect(address)
    await client.login(imap_user)
    kinds = [b"NOOP", b"FETCH %d (BODY.PEEK[])", b"BOGUS", b"STATUS INBOX (MESSAGES)"]
    batch = b"".join(
        b"t%d %s\r\n" % (i, kinds[i % 4].replace(b"%d", b"%d" % (i % 5 + 1))) for i in range(200)
    )
    # Sent in uneven pieces: reads end anywhere, in the middle of a line or a tag.
    for start in range(0, len(batch), 997):
        await client.stream.send_all(batch[start : start + 997])
    got = b""
    for i in range(200):  # Dovecot's order: wait for each tag in turn, in what is read
        if not re.search(rb"(?m)^t%d " % i, got):
            got += await client.tagged(b"t%d" % i)
    assert sorted(m.group(1) for m in _TAGGED.finditer(got)) == sorted(
        b"t%d" % i for i in range(200)
    )
    for n, message in enumerate(messages, 1):
        fetches = got.count(b"* %d FETCH (BODY[] {%d}\r\n%s)" % (n, len(message), message))
        assert fetches == 10
    assert _driver(proxy)._hub is not None  # still in the hub


async def test_slow_reader_stops_upstream_reads_until_it_catches_up(
    running: tuple[Proxy, tuple[str, int]], imap_user: Account, seed_message: SeedMessage
) -> None:
    size = 8 * 1024 * 1024
    message = seed_message(imap_user, size=size)
    proxy, address = running
    client = await Client.connect(address, rcvbuf=64 * 1024)
    await client.login(imap_user)
    driver = _driver(proxy)
    await assert_a_slow_reader_stops_upstream_reads(driver, client.stream, size)
    got = await client.tagged(b"f")
    assert b"{%d}\r\n%s)" % (len(message), message) in got
    assert b"\r\nf OK" in got
    assert (await client.command(b"n", b"NOOP")).startswith(b"n OK")
    assert driver._hub is not None and Hub.current().mask(driver._fds[1]) == IN


async def test_client_eof_in_the_middle_of_a_command(
    running: tuple[Proxy, tuple[str, int]], imap_user: Account
) -> None:
    proxy, address = running
    client = await Client.connect(address)
    await client.login(imap_user)
    driver = _driver(proxy)
    await client.stream.send_all(b"a APPEND INBOX {100}\r\n")
    await client.until(b"+ ")
    await client.stream.send_all(b"only part of it")
    await client.stream.aclose()
    await _ended(proxy)
    assert driver.close_reason.startswith("client protocol error: connection closed")
    assert driver._hub is None


async def test_upstream_eof_in_the_middle_of_a_response(nursery: trio.Nursery) -> None:
    async def hang_up_mid_literal(stream: trio.SocketStream) -> None:
        await stream.send_all(b"* OK ready\r\n")
        await stream.receive_some(1024)
        await stream.send_all(b"* 1 FETCH (BODY[] {100}\r\nonly part")
        await stream.aclose()

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"), hang_up_mid_literal, 0
    )
    port = listeners[0].socket.getsockname()[1]
    proxy, address = await _start(nursery, Address("127.0.0.1", port))
    client = await Client.connect(address)
    driver = _driver(proxy)
    assert driver._hub is not None
    await client.stream.send_all(b"f FETCH 1 BODY[]\r\n")
    got = await client.rest()
    assert got.startswith(b"* 1 FETCH (BODY[] {100}\r\nonly part")
    await _ended(proxy)
    assert driver.close_reason.startswith("upstream protocol error: server closed")


async def test_a_session_that_fails_ends_alone(
    running: tuple[Proxy, tuple[str, int]],
    imap_user: Account,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, address = running
    first = await Client.connect(address)
    await first.login(imap_user)
    [broken] = proxy.sessions.drivers
    second = await Client.connect(address)
    await second.login(imap_user)

    class Buggy:
        """The session with a bug in its client side (a stand-in: the compiled core's
        classes take no patched methods)."""

        def __init__(self, session: Session) -> None:
            self.session = session

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

        def client_data(self, data: bytes | bytearray) -> None:
            raise ZeroDivisionError("a bug in one session")

    broken.session = Buggy(broken.session)  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="imapproxy.session"):
        await first.stream.send_all(b"n NOOP\r\n")
        assert await first.rest() == b""  # closed, nothing relayed
    assert broken.close_reason == "internal error"
    [record] = [r for r in caplog.records if r.message == f"session {broken.id} failed"]
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    for i in range(3):  # the other session is served on, by the same hub
        assert (await second.command(b"n%d" % i, b"NOOP")).startswith(b"n%d OK" % i)
    assert _driver(proxy)._hub is not None


async def test_a_server_busy_writing_is_read_while_client_bytes_wait_for_it(
    nursery: trio.Nursery,
) -> None:
    """The upstream is read even while bytes for it are queued: this server reads nothing
    until it has written a large answer, so waiting for it to read first would deadlock."""
    size = 16 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    received = 0

    async def writes_first(stream: trio.SocketStream) -> None:
        nonlocal received
        await stream.send_all(b"* OK ready\r\n")
        received += len(await stream.receive_some(1 << 16))  # the start of the APPEND
        await stream.send_all(b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (size, payload))
        expected = len(b"a APPEND INBOX {%d+}\r\n" % size) + size + 2
        with trio.fail_after(30):
            while received < expected:
                chunk = await stream.receive_some(1 << 20)
                assert chunk, "the proxy closed the upstream leg"
                received += len(chunk)
        await stream.send_all(b"a OK APPEND completed\r\n")

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"), writes_first, 0
    )
    port = listeners[0].socket.getsockname()[1]
    proxy, address = await _start(nursery, Address("127.0.0.1", port))
    client = await Client.connect(address)
    assert _driver(proxy)._hub is not None

    async def append() -> None:
        await client.stream.send_all(b"a APPEND INBOX {%d+}\r\n" % size + payload + b"\r\n")

    with trio.fail_after(30):
        async with trio.open_nursery() as both:
            both.start_soon(append)
            got = await client.until(b"a OK", limit=30)
    assert got.startswith(b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (size, payload))
    assert received == len(b"a APPEND INBOX {%d+}\r\n" % size) + size + 2
