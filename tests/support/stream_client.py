"""A small IMAP client over a trio stream, for the tests that drive the proxy in-process
(the hub tests): read until a marker, a tagged answer, or the end; send a command."""

from __future__ import annotations

import re
import socket

import trio

from tests.support.accounts import Account


async def tcp_connect(address: tuple[str, int], rcvbuf: int | None = None) -> trio.SocketStream:
    """A TCP stream to ``address``; ``rcvbuf`` (a slow reader's small window) is set before
    connecting, so the window is that small from the handshake on."""
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(address)
    return trio.SocketStream(sock)


class StreamClient:
    """Reads what ``stream`` receives into ``buf``; every wait is bounded (``limit``)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def until(self, marker: bytes, limit: float = 20) -> bytes:
        """Everything up to and including ``marker``."""
        with trio.fail_after(limit):
            while marker not in self.buf:
                chunk = await self.stream.receive_some(1 << 20)
                if not chunk:
                    raise EOFError(self.buf[-300:])
                self.buf += chunk
        end = self.buf.index(marker) + len(marker)
        got, self.buf = self.buf[:end], self.buf[end:]
        return got

    async def rest(self, limit: float = 10) -> bytes:
        """Everything until the proxy closes the connection."""
        with trio.fail_after(limit):
            while chunk := await self.stream.receive_some(1 << 20):
                self.buf += chunk
        got, self.buf = self.buf, b""
        return got

    async def tagged(self, tag: bytes, limit: float = 20) -> bytes:
        """Everything up to and including the line tagged ``tag``."""
        data = self.buf
        marker = re.compile(rb"(?m)^" + re.escape(tag) + rb" [^\r\n]*\r\n")
        with trio.fail_after(limit):
            while (found := marker.search(data)) is None:
                chunk = await self.stream.receive_some(1 << 20)
                if not chunk:
                    raise EOFError(data[-300:])
                data += chunk
        self.buf = data[found.end() :]
        return data[: found.end()]

    async def command(self, tag: bytes, text: bytes) -> bytes:
        await self.stream.send_all(tag + b" " + text + b"\r\n")
        return await self.tagged(tag)

    async def login(self, account: Account) -> None:
        """LOGIN and SELECT INBOX, pipelined in one write."""
        creds = b"%s %s" % (account.name.encode(), account.password.encode())
        await self.stream.send_all(b"L LOGIN " + creds + b"\r\nS SELECT INBOX\r\n")
        assert b"\r\nS OK" in await self.tagged(b"S")
