"""The driver writes to each side in the order the session produced the bytes (issue 8, bug 1).

Both pumps write to the upstream: the client pump forwards what the client sends, and the
upstream pump releases client bytes the session held until the server's ``+``. Here the client
is slow to read (a lockstep stream: a write waits for the reader), so the upstream pump's
output is stuck on the client side while the client pump, woken by the same ``+``, forwards
the rest of the literal. The server must still receive the literal in one piece, in order.
A scripted server: Dovecot cannot be made to hold its reply at that moment.
"""

from __future__ import annotations

import trio
import trio.testing

from imapproxy.policy import Policy, Rule, SessionFacts
from imapproxy.server.driver import SessionContext, SessionDriver
from imapproxy.session.settings import SessionSettings
from imapproxy.telemetry.recorder import Telemetry

PART1 = b"Subject: first half\r\n\r\n" + b"A" * 3000 + b"\r\n"
PART2 = b"B" * 4000 + b"\r\nx1 CREATE Injected\r\n" + b"C" * 500 + b"\r\n"
MESSAGE = PART1 + PART2


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = b""
    with trio.fail_after(5):
        while len(data) < n:
            chunk = await stream.receive_some(n - len(data))
            assert chunk, f"stream ended after {data!r}"
            data += chunk
    return data


async def _receive_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    with trio.fail_after(5):
        while not data.endswith(b"\r\n"):
            data += await stream.receive_some(1)
    return data


def _driver(client_end: trio.abc.Stream, upstream_end: trio.abc.Stream) -> SessionDriver:
    async def connect() -> trio.abc.Stream:
        return upstream_end

    settings = SessionSettings(policy=Policy.compile([Rule("audit", "log")]), facts=SessionFacts)
    ctx = SessionContext(settings=settings, connect_upstream=connect, telemetry=Telemetry(None))
    return SessionDriver(ctx, client_end, "127.0.0.1:40000")


async def test_released_literal_is_not_overtaken_by_the_rest_of_it() -> None:
    client, proxy_client = trio.testing.lockstep_stream_pair()
    proxy_upstream, server = trio.testing.memory_stream_pair()
    driver = _driver(proxy_client, proxy_upstream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        await server.send_all(b"* OK ready\r\n")
        assert await _receive_line(client) == b"* OK ready\r\n"

        # With rules the proxy forwards {n+} as {n} and holds the payload until the "+".
        await client.send_all(b"a APPEND INBOX {%d+}\r\n" % len(MESSAGE) + PART1)
        assert await _receive_line(server) == b"a APPEND INBOX {%d}\r\n" % len(MESSAGE)
        # The rest of the literal is on its way while the proxy waits for the "+" ...
        nursery.start_soon(client.send_all, PART2 + b"\r\n")
        await trio.testing.wait_all_tasks_blocked()
        # ... and the server's "+" comes with a response the client is slow to read.
        await server.send_all(b"* 1 RECENT\r\n+ OK\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert await _receive_line(client) == b"* 1 RECENT\r\n"
        received = await _receive_exactly(server, len(MESSAGE) + 2)
        assert received == MESSAGE + b"\r\n"  # the client's CRLF ending the APPEND line
        await server.send_all(b"a OK [APPENDUID 1 1] Append completed\r\n")
        assert await _receive_line(client) == b"a OK [APPENDUID 1 1] Append completed\r\n"
        nursery.cancel_scope.cancel()


async def test_server_blocked_on_output_is_still_read_while_client_bytes_wait() -> None:
    """The upstream pump keeps reading while the bytes it released wait for the server.

    A server writing a long response reads nothing until the write is done (Dovecot stops
    reading its input while its output is blocked). If the pump that must read that response
    waited for the server to take the released literal first, neither side would move. Here
    the upstream leg is a lockstep stream: a write returns only once the other side read it.
    """
    client, proxy_client = trio.testing.memory_stream_pair()
    proxy_upstream, server = trio.testing.lockstep_stream_pair()
    driver = _driver(proxy_client, proxy_upstream)
    flood = b"".join(b"* %d EXISTS\r\n" % i for i in range(20000))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        await server.send_all(b"* OK ready\r\n")
        assert await _receive_line(client) == b"* OK ready\r\n"
        await client.send_all(b"a APPEND INBOX {%d+}\r\n" % len(MESSAGE) + PART1)
        assert await _receive_line(server) == b"a APPEND INBOX {%d}\r\n" % len(MESSAGE)
        await client.send_all(PART2 + b"\r\n")
        await trio.testing.wait_all_tasks_blocked()
        # The "+" releases PART1 towards a server that now writes and does not read.
        with trio.fail_after(5):
            await server.send_all(b"+ OK\r\n" + flood)
        assert await _receive_exactly(server, len(MESSAGE) + 2) == MESSAGE + b"\r\n"
        assert await _receive_exactly(client, len(flood)) == flood
        nursery.cancel_scope.cancel()
