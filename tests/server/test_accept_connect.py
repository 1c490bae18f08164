"""The session's cheap setup and teardown on real loopback sockets: the accept loop's direct
``accept`` (several pending connections, closing), the handler task closing only what the
handler left open, and the upstream connect without trio.socket (connected, refused, pending
until the caller's deadline)."""

from __future__ import annotations

import os
import socket
import ssl

import pytest
import trio

from imapproxy.net.tls_socket import SocketTLSStream
from imapproxy.net.upstream import tcp_connector
from imapproxy.server import accept
from imapproxy.server.admission import ClientStream
from imapproxy.telemetry.recorder import Telemetry


async def test_plain_listener_accepts_every_pending_connection_then_closes() -> None:
    [inner] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    address = inner.socket.getsockname()
    listener: accept._BackOff[trio.SocketStream] = accept._BackOff(
        inner, "plain", Telemetry(None), lambda: 0
    )
    assert listener._raw is not None  # the direct path
    n = accept._CHECKPOINT_EVERY + 4  # past one checkpoint in a row
    clients = [socket.create_connection(address, timeout=5) for _ in range(n)]
    try:
        with trio.fail_after(5):
            streams = [await listener.accept() for _ in range(n)]
        for i, (client, stream) in enumerate(zip(clients, streams, strict=True)):
            assert isinstance(stream, trio.SocketStream)
            assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.sendall(b"x%d" % i)
            assert await stream.receive_some(16) == b"x%d" % i
            await stream.send_all(b"ok")
            assert client.recv(16) == b"ok"
            await stream.aclose()
    finally:
        for client in clients:
            client.close()
    fd = inner.socket.fileno()
    await listener.aclose()
    assert listener._raw is None and inner.socket.fileno() == -1
    with pytest.raises(OSError):  # the descriptor is closed (by trio; the twin let go of it)
        os.fstat(fd)


async def test_handler_task_closes_only_what_the_handler_left_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forced: list[object] = []
    real = trio.aclose_forcefully

    async def counting(resource: trio.abc.AsyncResource) -> None:
        forced.append(resource)
        await real(resource)

    monkeypatch.setattr(trio, "aclose_forcefully", counting)
    [inner] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener: accept._BackOff[trio.SocketStream] = accept._BackOff(
        inner, "plain", Telemetry(None), lambda: 0
    )
    address = inner.socket.getsockname()

    async def closes(stream: ClientStream) -> None:
        await stream.aclose()

    async def leaves_open(stream: ClientStream) -> None:
        await trio.lowlevel.checkpoint()

    with socket.create_connection(address, timeout=5), socket.create_connection(address):
        first, second = await listener.accept(), await listener.accept()
        await accept._run_handler(first, closes)
        assert forced == []
        await accept._run_handler(second, leaves_open)
        assert forced == [second] and second.socket.fileno() == -1
    # An implicit-TLS stream (here before its handshake: the transport owns the descriptor).
    forced.clear()
    context = ssl.create_default_context()
    with socket.create_connection(address, timeout=5), socket.create_connection(address):
        first = SocketTLSStream(await listener.accept(), context, server_side=True)
        second = SocketTLSStream(await listener.accept(), context, server_side=True)
        await accept._run_handler(first, closes)
        assert forced == []
        await accept._run_handler(second, leaves_open)
        assert forced == [second] and second.transport_stream.socket.fileno() == -1
    await listener.aclose()


async def test_upstream_connect_direct() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        connect = tcp_connector("127.0.0.1", server.getsockname()[1])
        with trio.fail_after(5):
            stream = await connect()
        assert isinstance(stream, trio.SocketStream)
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        peer, _ = server.accept()
        with peer:
            peer.sendall(b"* OK hi\r\n")
            assert await stream.receive_some(64) == b"* OK hi\r\n"
            await stream.send_all(b"a LOGOUT\r\n")
            assert peer.recv(64) == b"a LOGOUT\r\n"
        await stream.aclose()
        port = server.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        await tcp_connector("127.0.0.1", port)()


async def test_upstream_connect_waits_for_a_pending_handshake_and_is_cancellable() -> None:
    """A listener whose queue is full drops SYNs: the connect stays in progress, so the
    connector waits in trio, and the caller's deadline ends it with the socket closed."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        address = server.getsockname()
        queued = []
        try:
            for _ in range(8):  # fill the accept queue (its length is the backlog + 1)
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(address)
                queued.append(s)
            before = _open_descriptors()
            with trio.move_on_after(0.5) as scope:
                await tcp_connector(*address)()
            assert scope.cancelled_caught
            assert _open_descriptors() == before
        finally:
            for s in queued:
                s.close()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))
