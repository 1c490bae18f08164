"""Socket I/O for one side of a session, cheap in the common case.

Reading: trio's ``receive_some`` tries ``recv``, and after a successful one still yields to
the scheduler; per small command that forced pass is a large share of the relay's CPU. On a
plain TCP stream the reader calls ``recv`` on the non-blocking socket itself and waits in
trio (``wait_readable``) only when there is nothing to read, with a checkpoint every
``_CHECKPOINT_EVERY`` reads so a busy session still lets others run and can be cancelled.

Most writes are small (a command, a response) and fit the kernel's socket buffer at once.
``trio``'s ``send_all`` costs a trip through the scheduler per call, which dominates a small
command's relay cost; a plain non-blocking ``send`` on the socket does not. So a write goes
straight to the socket when nothing is queued before it, and only what the kernel did not take
goes through ``send_all`` under a FIFO lock (both pumps of a session may write to the client;
the lock keeps their writes whole and in order). TLS streams always take the ``send_all``
path: their bytes must go through the SSL object.
"""

from __future__ import annotations

import os
import socket

import trio

from imapproxy.net.streams import PrefixedStream

_CHECKPOINT_EVERY = 32


class Sender:
    __slots__ = ("_lock", "_raw", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._lock = trio.StrictFIFOLock()
        self._raw = _raw_socket(stream)

    @property
    def lock(self) -> trio.StrictFIFOLock:
        """Held for writes that must not interleave with any other (STARTTLS's OK)."""
        return self._lock

    def replace(self, stream: trio.abc.Stream) -> None:
        """The stream changed (STARTTLS): write through the new one from now on."""
        self.close()
        self.stream = stream
        self._raw = _raw_socket(stream)

    async def send(self, data: bytes) -> None:
        raw = self._raw
        if raw is not None and not self._lock.locked():
            try:
                sent = raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:  # the peer is gone: report it as trio would
                raise trio.BrokenResourceError(str(exc)) from exc
            if sent == len(data):
                return
            data = data[sent:]
        async with self._lock:
            await self.stream.send_all(data)

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """A blocking-free stdlib socket on a duplicate of the stream's descriptor (TCP only).

    The duplicate shares the open file (and its O_NONBLOCK flag) with trio's socket, so a
    ``send`` on it never blocks; owning its own descriptor, it can be closed independently.
    """
    if isinstance(stream, PrefixedStream):
        stream = stream.transport
    if not isinstance(stream, trio.SocketStream):
        return None
    fd = os.dup(stream.socket.fileno())
    try:
        return socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None


class Receiver:
    __slots__ = ("_raw", "_reads", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._raw = _receiving_socket(stream)
        self._reads = 0

    def replace(self, stream: trio.abc.Stream) -> None:
        self.close()
        self.stream = stream
        self._raw = _receiving_socket(stream)

    async def receive(self, max_bytes: int) -> bytes:
        raw = self._raw
        if raw is None:
            data = bytes(await self.stream.receive_some(max_bytes))
            if isinstance(self.stream, PrefixedStream) and not self.stream.prefix:
                self._raw = _raw_socket(self.stream)  # prefix delivered: the direct path
            return data
        self._reads += 1
        if self._reads % _CHECKPOINT_EVERY == 0:
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return raw.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw)
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def _receiving_socket(stream: trio.abc.Stream) -> socket.socket | None:
    # A prefix still to deliver goes through the stream first (see ``receive``).
    if isinstance(stream, PrefixedStream) and stream.prefix:
        return None
    return _raw_socket(stream)
