"""Upstream faults and timeouts. Scripted fake servers appear only for faults the real
Dovecot cannot produce on demand (closing mid-session, broken framing)."""

from __future__ import annotations

import dataclasses
import functools
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from imapproxy.config.loader import Address, Config, Limits, Upstream
from imapproxy.demo.dovecot import Dovecot
from imapproxy.net.upstream import make_upstream_connector
from imapproxy.telemetry.recorder import Telemetry
from tests.support.accounts import new_account

from .conftest import ProxyFactory, RunningProxy

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _fake_upstream(nursery: trio.Nursery, handler: Handler) -> Address:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    port = listeners[0].socket.getsockname()[1]
    return Address("127.0.0.1", port)


async def _receive_until_closed(address: tuple[str, int], send: bytes = b"") -> bytes:
    stream = await trio.open_tcp_stream(*address)
    data = bytearray()
    with trio.fail_after(10):
        if send:
            await stream.send_all(send)
        while chunk := await stream.receive_some(65536):
            data += chunk
    await stream.aclose()
    return bytes(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_upstream_gets_bye_unavailable(proxy_factory: ProxyFactory) -> None:
    dead = Upstream(address=Address("127.0.0.1", _free_port()))  # nothing listens there
    proxy = await proxy_factory(Config(upstream=dead))
    reply = await _receive_until_closed(proxy.address)
    assert reply == b"* BYE [UNAVAILABLE] Mail server unavailable\r\n"


async def test_upstream_closing_mid_session_gets_bye(
    proxy_factory: ProxyFactory, nursery: trio.Nursery
) -> None:
    async def greet_then_hang_up(stream: trio.SocketStream) -> None:
        await stream.send_all(b"* OK ready\r\n")
        await stream.receive_some(1024)
        await stream.send_all(b"a1 OK logged in\r\n")
        await stream.aclose()

    upstream = await _fake_upstream(nursery, greet_then_hang_up)
    proxy = await proxy_factory(Config(upstream=Upstream(address=upstream)))
    reply = await _receive_until_closed(proxy.address, b"a1 LOGIN u p\r\n")
    assert reply == (
        b"* OK ready\r\na1 OK logged in\r\n"
        b"* BYE [UNAVAILABLE] The mail server closed the connection\r\n"
    )


async def test_upstream_broken_framing_gets_bye(
    proxy_factory: ProxyFactory, nursery: trio.Nursery
) -> None:
    async def absurd_literal(stream: trio.SocketStream) -> None:
        await stream.send_all(b"* OK ready\r\n* 1 FETCH (BODY[] {99999999999999999999}\r\n")
        await trio.sleep(5)

    upstream = await _fake_upstream(nursery, absurd_literal)
    proxy = await proxy_factory(Config(upstream=Upstream(address=upstream)))
    reply = await _receive_until_closed(proxy.address)
    assert reply == b"* OK ready\r\n* BYE [UNAVAILABLE] Mail server protocol error\r\n"


async def test_idle_timeout_closes_silent_session(
    dovecot: Dovecot, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(Config(limits=Limits(idle_timeout=0.5)))
    with trio.fail_after(5):
        reply = await _receive_until_closed(proxy.address)
    assert reply.startswith(b"* OK ")
    assert reply.endswith(b"* BYE Idle timeout\r\n")


async def test_traffic_keeps_session_past_idle_timeout(
    dovecot: Dovecot, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(Config(limits=Limits(idle_timeout=0.6)))
    stream = await trio.open_tcp_stream(*proxy.address)
    await stream.receive_some(4096)
    for i in range(6):  # 1.2 s in all, never 0.6 s of silence
        await trio.sleep(0.2)
        await stream.send_all(b"n%d NOOP\r\n" % i)
        assert (await stream.receive_some(4096)).startswith(b"n%d OK" % i)
    await stream.aclose()


async def test_upstream_leg_has_tcp_nodelay(dovecot: Dovecot) -> None:
    connect = make_upstream_connector(Upstream(address=Address(*dovecot.address)), Telemetry(None))
    stream = await connect()
    assert isinstance(stream, trio.SocketStream)
    assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await stream.aclose()


async def test_two_hundred_concurrent_sessions(dovecot: Dovecot, proxy: RunningProxy) -> None:
    account = new_account(dovecot)
    login = b"c1 LOGIN " + account.name.encode() + b" " + account.password.encode() + b"\r\n"
    completed = []

    async def one(i: int) -> None:
        stream = await trio.open_tcp_stream(*proxy.address)
        buf = bytearray()

        async def until(tag: bytes) -> None:
            while not (buf.startswith(tag + b" ") or (b"\r\n" + tag + b" ") in buf):
                chunk = await stream.receive_some(65536)
                assert chunk, f"session {i} closed early: {bytes(buf)!r}"
                buf.extend(chunk)
            assert (b"\r\n" + tag + b" OK") in buf or buf.startswith(tag + b" OK"), bytes(buf)

        await stream.send_all(login)
        await until(b"c1")
        await stream.send_all(b"c2 SELECT INBOX\r\nc3 NOOP\r\nc4 LOGOUT\r\n")
        await until(b"c4")
        await stream.aclose()
        completed.append(i)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert sorted(completed) == list(range(200))


@pytest.mark.parametrize("max_sessions", [2])
async def test_connection_limit_says_bye(
    dovecot: Dovecot, proxy_factory: ProxyFactory, max_sessions: int
) -> None:
    proxy = await proxy_factory(
        Config(limits=dataclasses.replace(Limits(), max_sessions=max_sessions))
    )
    held = [await trio.open_tcp_stream(*proxy.address) for _ in range(max_sessions)]
    for s in held:
        assert (await s.receive_some(4096)).startswith(b"* OK")
    reply = await _receive_until_closed(proxy.address)
    assert reply == b"* BYE [UNAVAILABLE] Too many connections\r\n"
    for s in held:
        await s.aclose()
