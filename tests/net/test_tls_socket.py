"""net.tls_socket.SocketTLSStream over a real loopback TCP tls_pair (trustme certificates): the
semantics trio.SSLStream gives (EOF, breakage, cancellation), big writes, partial reads."""

from __future__ import annotations

import ssl

import pytest
import trio

from imapproxy.net.streams import tls_details
from imapproxy.net.tls_socket import SocketTLSStream, tls_stream
from tests.net.conftest import shaken_tls_pair, tcp_pair


async def test_handshake_details_and_one_descriptor(
    tls_pair: tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream]],
) -> None:
    server, client = tls_pair
    assert server.transport_stream.socket.fileno() == -1  # the descriptor moved, not copied
    assert server.fileno() >= 0
    details = tls_details(server)
    assert details["tls_version"] == client.version()
    assert details["tls_cipher"] == client.cipher()[0]  # type: ignore[index]
    assert server.getpeercert() is None  # no client certificate asked for
    assert server.selected_alpn_protocol() is None


async def test_data_both_ways_and_partial_reads(
    tls_pair: tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream]],
) -> None:
    server, client = tls_pair
    with trio.fail_after(10):
        await client.send_all(b"a NOOP\r\n")
        assert await server.receive_some(3) == b"a N"  # the rest stays decrypted in OpenSSL
        assert await server.receive_some(100) == b"OOP\r\n"
        await server.send_all(b"a OK done\r\n")
        assert await client.receive_some(100) == b"a OK done\r\n"


async def test_big_write_to_a_slow_reader_arrives_whole(
    tls_pair: tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream]],
) -> None:
    server, client = tls_pair
    payload = bytes(range(256)) * 20_000  # 5 MB: far more than the socket buffers hold
    received = bytearray()

    async def slow_reader() -> None:
        while len(received) < len(payload):
            received.extend(await client.receive_some(65536))
            await trio.sleep(0.001)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_reader)
            await server.send_all(payload)
    assert received == payload


async def test_bulk_reads_take_several_records(
    tls_pair: tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream]],
) -> None:
    server, client = tls_pair
    with trio.fail_after(10):
        for _ in range(8):  # eight 8 KiB records, all in the socket before the read
            await client.send_all(b"x" * 8192)
        await trio.sleep(0.05)
        assert len(await server.receive_some(65536)) > 16384


async def test_close_notify_is_eof_and_abrupt_close_is_broken(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    for clean in (True, False):
        server, client = await shaken_tls_pair(server_ctx, client_ctx)
        with trio.fail_after(10):
            if clean:
                await client.aclose()  # close_notify
                assert await server.receive_some(100) == b""
            else:
                client.transport_stream.socket.close()  # FIN without close_notify
                with pytest.raises(trio.BrokenResourceError):
                    await server.receive_some(100)
                with pytest.raises(trio.BrokenResourceError):
                    await server.send_all(b"late")
        await server.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await server.receive_some(100)


async def test_aclose_sends_close_notify(
    tls_pair: tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream]],
) -> None:
    server, client = tls_pair
    await server.aclose()
    with trio.fail_after(10):
        assert await client.receive_some(100) == b""  # clean EOF, not a broken stream


async def test_handshake_failure_is_broken_and_closes_nothing_twice(
    server_ctx: ssl.SSLContext,
) -> None:
    server_tcp, client_tcp = await tcp_pair()
    server = SocketTLSStream(server_tcp, server_ctx, server_side=True)
    await client_tcp.send_all(b"a LOGIN user secret\r\n")  # plaintext for a ClientHello
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as info:
        await server.do_handshake()
    assert isinstance(info.value.__cause__, ssl.SSLError)
    await server.aclose()
    # The unread plaintext was read away: the peer sees an alert and EOF, not a reset.
    rest = bytearray()
    with trio.fail_after(10):
        while chunk := await client_tcp.receive_some(4096):
            rest += chunk
    assert not rest or rest[:1] == b"\x15"
    await client_tcp.aclose()


async def test_handshake_cancelled_then_closed(
    server_ctx: ssl.SSLContext,
) -> None:
    server_tcp, client_tcp = await tcp_pair()
    server = SocketTLSStream(server_tcp, server_ctx, server_side=True)
    with trio.move_on_after(0.2) as scope:
        await server.do_handshake()  # the peer never says hello
    assert scope.cancelled_caught
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some(10)
    assert server.fileno() >= 0
    await server.aclose()
    assert server.fileno() == -1  # the stream closed the descriptor it took over
    with trio.fail_after(10):
        assert await client_tcp.receive_some(10) == b""
    await client_tcp.aclose()


async def test_send_cancelled_half_way_leaves_the_stream_broken(
    tls_pair: tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream]],
) -> None:
    server, _client = tls_pair  # the client reads nothing: the socket buffers fill up
    with trio.move_on_after(0.3) as scope:
        await server.send_all(b"y" * 20_000_000)
    assert scope.cancelled_caught
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"more")


async def test_concurrent_receives_are_refused(
    tls_pair: tuple[SocketTLSStream, trio.SSLStream[trio.SocketStream]],
) -> None:
    server, client = tls_pair
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_some, 10)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some(10)
            await client.send_all(b"x")


async def test_close_before_handshake_closes_the_transport(server_ctx: ssl.SSLContext) -> None:
    server_tcp, client_tcp = await tcp_pair()
    server = SocketTLSStream(server_tcp, server_ctx, server_side=True)
    await server.aclose()
    assert server_tcp.socket.fileno() == -1
    with trio.fail_after(10):
        assert await client_tcp.receive_some(10) == b""
    await client_tcp.aclose()


async def test_tls_stream_keeps_sslstream_for_other_streams(server_ctx: ssl.SSLContext) -> None:
    a, _b = trio.testing.memory_stream_pair()
    assert isinstance(tls_stream(a, server_ctx, server_side=True), trio.SSLStream)
    server_tcp, client_tcp = await tcp_pair()
    assert isinstance(tls_stream(server_tcp, server_ctx, server_side=True), SocketTLSStream)
    await server_tcp.aclose()
    await client_tcp.aclose()


async def test_give_back_returns_the_descriptor_to_the_transport(
    server_ctx: ssl.SSLContext,
) -> None:
    server_tcp, client_tcp = await tcp_pair()
    server = SocketTLSStream(server_tcp, server_ctx, server_side=True)
    await client_tcp.send_all(b"b LOGIN user secret\r\n")  # where the ClientHello belongs
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await server.do_handshake()
    server.give_back()
    assert server.fileno() == -1 and server_tcp.socket.fileno() >= 0
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some(10)
    await server_tcp.aclose()  # the transport closes it, as its owner again
    rest = bytearray()
    with trio.fail_after(10):
        while chunk := await client_tcp.receive_some(4096):
            rest += chunk
    assert not rest or rest[:1] == b"\x15"  # an alert, then EOF (not a reset)
    await client_tcp.aclose()
