"""fastio's Sender and Receiver driving a ``SocketTLSStream``'s ``ssl.SSLSocket`` directly,
as the hub does (``read_now``, ``enqueue``, ``write_queued``), over a real loopback TCP tls_pair:
decrypted bytes never left in OpenSSL, ends after bytes, the same-bytes retry of a write
that would block, and the stream left broken by what the direct calls saw."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trio

from imapproxy.net.fastio import Receiver, Sender
from imapproxy.net.tls_socket import SocketTLSStream
from tests.net.conftest import TLSPair, tcp_pair

Pair = TLSPair


async def _readable(receiver: Receiver) -> None:
    raw = receiver.raw
    assert raw is not None
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(raw)


@pytest.fixture
async def direct(tls_pair: Pair) -> AsyncIterator[tuple[Receiver, Sender, Pair]]:
    receiver, sender = Receiver(tls_pair[0]), Sender(tls_pair[0])
    yield receiver, sender, tls_pair
    receiver.close()
    sender.close()


async def test_the_ssl_socket_is_lent_only_after_the_handshake(
    server_ctx: ssl.SSLContext,
) -> None:
    server_tcp, client_tcp = await tcp_pair()
    stream = SocketTLSStream(server_tcp, server_ctx, server_side=True)
    assert stream.hub_socket() is None and Receiver(stream).raw is None
    sender = Sender(stream)
    assert sender.raw is None
    sender.enqueue(b"x")
    assert sender.queued == 1  # no direct write before the handshake: flush does it
    sender.close()
    await stream.aclose()
    await client_tcp.aclose()


async def test_a_record_bigger_than_the_read_is_read_whole(
    direct: tuple[Receiver, Sender, Pair],
) -> None:
    receiver, _, (_, client) = direct
    assert isinstance(receiver.raw, ssl.SSLSocket)
    payload = bytes(range(256)) * 40  # 10 KiB: one record
    await client.send_all(payload)
    await _readable(receiver)
    # 1,000 bytes asked: OpenSSL decrypted the whole record, epoll would not see the rest.
    assert receiver.read_now(1000) == payload
    assert receiver.raw.pending() == 0 and not receiver.needs_pumps
    assert receiver.read_now(1000) is None  # nothing more: SSLWantReadError


async def test_small_records_are_one_read_each_and_bulk_ones_read_together(
    direct: tuple[Receiver, Sender, Pair],
) -> None:
    receiver, _, (_, client) = direct
    for _ in range(3):
        await client.send_all(b"a NOOP\r\n")
    await trio.sleep(0.05)
    assert receiver.read_now(1 << 18) == b"a NOOP\r\n"  # the rest waits for the next pass
    assert receiver.read_now(1 << 18) == b"a NOOP\r\n"
    assert receiver.read_now(1 << 18) == b"a NOOP\r\n"
    for i in range(8):
        await client.send_all(bytes([65 + i]) * 8192)
    await trio.sleep(0.05)
    got = receiver.read_now(1 << 18)
    assert got == b"".join(bytes([65 + i]) * 8192 for i in range(8))


@pytest.mark.parametrize("clean", [True, False], ids=["close_notify", "abrupt"])
async def test_an_end_right_behind_bytes_is_left_to_the_pumps(
    direct: tuple[Receiver, Sender, Pair], clean: bool
) -> None:
    receiver, _, (server, client) = direct
    payload = b"y" * 6000  # a bulk-sized record: the read goes on and meets the end
    await client.send_all(payload)
    if clean:
        await client.aclose()  # close_notify
    else:
        client.transport_stream.socket.close()  # FIN without close_notify
    await trio.sleep(0.05)
    assert receiver.read_now(1 << 18) == payload
    assert receiver.needs_pumps  # the end is the pumps' next read
    if clean:
        assert server._broken is None
        assert await receiver.receive(100) == b""
    else:
        assert isinstance(server._broken, ssl.SSLError)
        with pytest.raises(trio.BrokenResourceError):
            await receiver.receive(100)


async def test_an_end_alone_reads_as_eof_and_an_error_breaks_the_stream(
    direct: tuple[Receiver, Sender, Pair],
) -> None:
    receiver, _, (server, client) = direct
    client.transport_stream.socket.close()
    await _readable(receiver)
    assert receiver.read_now(100) == b""
    assert isinstance(server._broken, ssl.SSLError) and not receiver.needs_pumps
    assert server.hub_socket() is None  # a new Sender or Receiver would not use it


async def test_a_write_that_would_block_is_retried_with_the_same_bytes(
    direct: tuple[Receiver, Sender, Pair],
) -> None:
    _, sender, (_, client) = direct
    chunks = [bytes([i]) * (1 << 20) for i in range(1, 9)]  # 8 MiB, far past the buffers
    for chunk in chunks:
        sender.enqueue(chunk)
    assert sender.pending
    head = sender.pending[0]
    assert any(head is chunk for chunk in chunks)  # the very object OpenSSL started on
    received = bytearray()

    async def read() -> None:
        while len(received) < 8 << 20:
            received.extend(await client.receive_some(1 << 16))
            await trio.sleep(0)

    raw = sender.raw
    assert raw is not None
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            while sender.pending:
                await trio.lowlevel.wait_writable(raw)
                sender.write_queued()
    assert not sender.needs_pumps
    assert received == b"".join(chunks)


async def test_a_failed_direct_write_breaks_the_stream(
    direct: tuple[Receiver, Sender, Pair],
) -> None:
    _, sender, (server, client) = direct
    await trio.aclose_forcefully(client)
    with trio.fail_after(5):
        while not sender.broken:  # the first writes may still reach the kernel
            sender.enqueue(b"x" * 65536)
            await trio.sleep(0.01)
    assert server._broken is not None
    with pytest.raises(trio.BrokenResourceError):
        await sender.flush()
