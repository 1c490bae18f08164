"""Fixtures of the network-layer tests: a trustme CA, TLS contexts for both ends, a
loopback TCP pair, and a handshaken TLS pair over it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trio
import trustme

from imapproxy.net.tls_socket import SocketTLSStream

TLSPair = tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for ``imap.test``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("imap.test").configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """(accepted, connecting) ends of one loopback TCP connection."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    try:
        async with trio.open_nursery() as nursery:
            accepted: list[trio.SocketStream] = []

            async def accept() -> None:
                accepted.append(await listener.accept())

            nursery.start_soon(accept)
            client = await trio.open_tcp_stream("127.0.0.1", port)
    finally:
        await listener.aclose()
    return accepted[0], client


async def shaken_tls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> TLSPair:
    """A SocketTLSStream (server side) and a trio.SSLStream (client) over one loopback TCP
    connection, their handshake done."""
    server_tcp, client_tcp = await tcp_pair()
    server = SocketTLSStream(server_tcp, server_ctx, server_side=True)
    client = trio.SSLStream(client_tcp, client_ctx, server_hostname="imap.test")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
    return server, client


@pytest.fixture
async def tls_pair(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> AsyncIterator[TLSPair]:
    """(proxy side: SocketTLSStream as server, peer: trio.SSLStream as client), shaken."""
    server, client = await shaken_tls_pair(server_ctx, client_ctx)
    yield server, client
    await trio.aclose_forcefully(server)
    await trio.aclose_forcefully(client)
