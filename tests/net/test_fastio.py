"""fastio's Sender and Receiver on real loopback TCP sockets: order, fast path, backpressure,
STARTTLS hand-over and descriptors."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from imapproxy.net.fastio import Receiver, Sender


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    with listener:
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return trio.SocketStream(client), trio.SocketStream(server)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """(writer, reader); the writer's send buffer and the reader's receive buffer are small,
    so a few MiB fill them."""
    writer, reader = await _tcp_pair()
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    # Not below the loopback MSS (64 KiB): a window smaller than one segment stalls TCP on
    # its persist timer (seconds), which would only slow the tests down.
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 131072)
    yield writer, reader
    await writer.aclose()
    await reader.aclose()


async def _read_all(stream: trio.abc.ReceiveStream, n: int, pace: float = 0.0) -> bytes:
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < n:
            chunk = await stream.receive_some(65536)
            assert chunk
            data += chunk
            if pace:
                await trio.sleep(pace)
    return bytes(data)


def _completes_without_yielding(coro: object) -> bool:
    """True if the coroutine finished on its first step (no checkpoint, no scheduler trip)."""
    try:
        coro.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        return True
    coro.close()  # type: ignore[attr-defined]
    return False


async def test_small_write_goes_out_at_once(pair: tuple[trio.SocketStream, ...]) -> None:
    writer, reader = pair
    sender = Sender(writer)
    sender.enqueue(b"a1 NOOP\r\n")
    assert sender.queued == 0  # the kernel took it during enqueue
    assert _completes_without_yielding(sender.flush())
    assert await reader.receive_some(100) == b"a1 NOOP\r\n"
    sender.close()


async def test_later_bytes_queue_behind_a_partial_write(
    pair: tuple[trio.SocketStream, ...],
) -> None:
    """What the kernel did not take stays first: a later small write, which the kernel would
    take at once, must not be sent ahead of it, whichever task flushes."""
    writer, reader = pair
    sender = Sender(writer)
    big = os.urandom(2 * 1024 * 1024)
    sender.enqueue(big)
    assert 0 < sender.queued < len(big)
    sender.enqueue(b"tail\r\n")
    assert sender.queued > 6
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.flush)  # one task drains ...
        nursery.start_soon(sender.flush)  # ... the other waits for the same bytes
        received = await _read_all(reader, len(big) + 6)
    assert received == big + b"tail\r\n"
    assert sender.queued == 0
    sender.close()


async def test_two_tasks_keep_enqueue_order(pair: tuple[trio.SocketStream, ...]) -> None:
    """Two tasks write alternately, each enqueueing while the other may be blocked in its
    flush: the reader sees the bytes in the order of the enqueue calls."""
    writer, reader = pair
    sender = Sender(writer)
    chunks = [bytes([65 + i]) * (100_000 + i) for i in range(8)]
    order: list[bytes] = []

    async def producer(items: list[bytes]) -> None:
        for item in items:
            order.append(item)
            sender.enqueue(item)
            await sender.flush()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer, chunks[0::2])
        nursery.start_soon(producer, chunks[1::2])
        received = await _read_all(reader, sum(map(len, chunks)), pace=0.001)
    assert len(order) == len(chunks)
    assert received == b"".join(order)
    sender.close()


@pytest.mark.parametrize("seed", range(4))
async def test_random_writes_from_two_tasks_arrive_in_enqueue_order(
    pair: tuple[trio.SocketStream, ...], seed: int
) -> None:
    """Random sizes (1 B to 300 KB), random pauses on both ends, two writers that sometimes
    flush and sometimes do not: the stream is the enqueue calls' bytes, in their order."""
    writer, reader = pair
    sender = Sender(writer)
    rng = random.Random(seed)
    order: list[bytes] = []
    counter = iter(range(10**6))

    async def producer() -> None:
        for _ in range(40):
            n = next(counter)
            size = rng.choice([1, 7, 100, 5000, 70_000, 300_000])
            item = n.to_bytes(4, "big") * (size // 4 + 1)
            order.append(item)
            sender.enqueue(item)
            if rng.random() < 0.7:
                await sender.flush()
            else:
                await trio.sleep(rng.random() / 1000)

    received = bytearray()

    async def consume() -> None:
        while True:
            chunk = await reader.receive_some(rng.choice([1000, 65536]))
            if not chunk:
                return
            received.extend(chunk)
            if rng.random() < 0.1:
                await trio.sleep(0.001)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            async with trio.open_nursery() as producers:
                producers.start_soon(producer)
                producers.start_soon(producer)
            await sender.flush()
            await writer.send_eof()
    assert bytes(received) == b"".join(order)
    sender.close()


async def test_flush_waits_for_a_slow_reader(pair: tuple[trio.SocketStream, ...]) -> None:
    """Backpressure: flush returns only once the bytes are in the kernel."""
    writer, reader = pair
    sender = Sender(writer)
    sender.enqueue(b"x" * (4 * 1024 * 1024))
    with trio.move_on_after(0.2) as scope:
        await sender.flush()
    assert scope.cancelled_caught  # nobody reads: still waiting
    assert sender.queued > 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_all, reader, 4 * 1024 * 1024)
        await sender.flush()  # a cancelled flush left the queue consistent
    assert sender.queued == 0
    sender.close()


async def test_peer_gone_is_reported_by_flush(pair: tuple[trio.SocketStream, ...]) -> None:
    writer, reader = pair
    sender = Sender(writer)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await reader.aclose()  # RST
    await trio.sleep(0.05)
    for _ in range(3):
        sender.enqueue(b"x" * 100_000)  # never raises
    with pytest.raises(trio.BrokenResourceError):
        await sender.flush()
    sender.close()


class _Wrapped(trio.abc.Stream):
    """A stand-in for the TLS stream: records what went through it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))
        await self.inner.send_all(b"<" + bytes(data) + b">")

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_upgrade_keeps_bytes_after_the_hold_for_the_new_stream(
    pair: tuple[trio.SocketStream, ...],
) -> None:
    writer, reader = pair
    sender = Sender(writer)
    sender.enqueue(b"s OK Begin TLS\r\n")
    sender.hold()
    sender.enqueue(b"* 2 EXISTS\r\n")  # e.g. the other pump, mid-handshake
    flushed = trio.Event()

    async def other_pump() -> None:
        await sender.flush()  # must not return before the held bytes are written
        flushed.set()

    handshake_seen: list[bytes] = []

    async def handshake(stream: trio.abc.Stream) -> trio.abc.Stream:
        handshake_seen.append(await reader.receive_some(100))  # the OK arrived in plaintext
        await trio.sleep(0.05)
        assert not flushed.is_set()
        return _Wrapped(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_pump)
        await trio.testing.wait_all_tasks_blocked()
        new = await sender.upgrade(handshake)
        sender.enqueue(b"* 3 EXISTS\r\n")
        await sender.flush()
    assert handshake_seen == [b"s OK Begin TLS\r\n"]
    assert isinstance(new, _Wrapped)
    assert new.sent == [b"* 2 EXISTS\r\n", b"* 3 EXISTS\r\n"]
    assert await _read_all(reader, 28) == b"<* 2 EXISTS\r\n><* 3 EXISTS\r\n>"
    sender.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_extra_descriptors_and_close_leaves_trio_socket_open(
    pair: tuple[trio.SocketStream, ...],
) -> None:
    writer, reader = pair
    before = _open_fds()
    sender, receiver = Sender(writer), Receiver(writer)
    assert _open_fds() == before  # the raw sockets share trio's descriptor
    sender.close()
    receiver.close()
    del sender, receiver
    # trio's socket still works: close only detached the raw objects.
    await writer.send_all(b"still open\r\n")
    assert await reader.receive_some(100) == b"still open\r\n"
    assert _open_fds() == before


async def test_receiver_reads_what_was_sent(pair: tuple[trio.SocketStream, ...]) -> None:
    writer, reader = pair
    receiver = Receiver(reader)
    await writer.send_all(b"a NOOP\r\n")
    assert await receiver.receive(1000) == b"a NOOP\r\n"
    await writer.send_eof()
    assert await receiver.receive(1000) == b""
    receiver.close()
