"""The greeting the ID exchange read ahead reaches the session first, then the direct
socket path takes over (no slow path for the rest of the session)."""

from __future__ import annotations

import trio
import trio.testing

from imapproxy.net.fastio import Receiver, Sender
from imapproxy.net.streams import PrefixedStream


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_prefix_first_then_the_direct_path() -> None:
    ours, peer = await _pair()
    stream = PrefixedStream(ours, b"* OK greeting\r\n")
    receiver, sender = Receiver(stream), Sender(stream)
    assert sender._raw is not None  # writes go straight to the socket from the start
    await peer.send_all(b"later\r\n")
    assert await receiver.receive(4) == b"* OK"
    assert receiver._raw is None
    assert await receiver.receive(100) == b" greeting\r\n"
    assert receiver._raw is not None  # prefix delivered: direct reads from now on
    assert await receiver.receive(100) == b"later\r\n"
    sender.enqueue(b"a1 NOOP\r\n")
    await sender.flush()
    assert await peer.receive_some(100) == b"a1 NOOP\r\n"
    receiver.close()
    sender.close()
    await stream.aclose()
    await peer.aclose()
