"""Socket I/O for one side of a session, cheap in the common case, in order always.

Reading: trio's ``receive_some`` tries ``recv``, and after a successful one still yields to
the scheduler; per small command that forced pass is a large share of the relay's CPU. On a
plain TCP stream the reader calls ``recv`` on the non-blocking socket itself and waits in
trio (``wait_readable``) only when there is nothing to read, with a checkpoint every
``_CHECKPOINT_EVERY`` reads so a busy session still lets others run and can be cancelled.

Writing is split in two so that order never depends on which task gets to run first:

* ``Sender.enqueue`` is synchronous. It puts the bytes behind everything enqueued before
  them; when nothing is queued, a plain TCP stream tries a non-blocking ``send`` at once and
  queues only what the kernel did not take. Both pumps of a session write to both sides, and
  a caller that enqueues right after the session produced the bytes (no ``await`` between)
  gets the session's order on the wire, whichever task it runs in.
* ``await Sender.flush()`` returns once everything enqueued so far is written. When the
  kernel took it all it returns without a trip through the scheduler (most writes are a
  small command or response). Otherwise one task at a time drains the queue (a FIFO lock),
  oldest bytes first. A pump awaits it before reading more: that is the backpressure.

The readiness hub (``net.hub``, ``server.hub_pump``) uses the same objects without
awaiting: it reads ``Receiver.raw`` itself, and writes a partial write's remainder with
``Sender.write_queued`` when the socket is writable (``waiting`` says there is one).

TLS streams queue everything and write in ``flush``: their bytes must go through the SSL
object. ``upgrade`` switches a sender to a new stream (STARTTLS) and keeps back whatever is
enqueued after the last plaintext bytes until the new stream is there.

Descriptors: the raw socket is a second Python object on trio's own descriptor (no ``dup``),
so a plain session costs two descriptors, one per leg. It must never close that descriptor:
``close`` detaches it, and must run before trio's stream is closed (a closed descriptor
number is soon reused by another connection).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from imapproxy.net.streams import PrefixedStream

_CHECKPOINT_EVERY = 32

StreamUpgrade = Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]]


class Sender:
    __slots__ = (
        "_background",
        "_broken",
        "_held_back",
        "_lock",
        "_pending",
        "_raw",
        "_released",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._lock = trio.StrictFIFOLock()  # held by the task draining the queue
        # Bytes not yet handed to the kernel (or the TLS stream), oldest first; the head
        # stays queued until it is written in full, so nothing can be sent ahead of it.
        # A list, not a deque: it is almost always empty, and an empty deque costs 600 bytes
        # per side per session; pop(0) on the few entries it ever holds is as cheap.
        self._pending: list[bytes | memoryview] = []
        self._held_back: list[bytes] | None = None  # enqueued during an upgrade
        self._released: trio.Event | None = None  # made by hold(): rare, and 350 bytes
        self._broken: str | None = None  # why the stream failed (enqueue never raises)
        self._background = False  # a flush_soon task is on its way
        self._raw = _raw_socket(stream)

    @property
    def needs_flush(self) -> bool:
        """False when ``flush`` would return at once: callers skip the await (hot path)."""
        return bool(self._pending) or self._held_back is not None or self._broken is not None

    @property
    def waiting(self) -> bool:
        """Bytes are queued for the kernel (a partial write): the hub waits for ``OUT``."""
        return bool(self._pending)

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def raw(self) -> socket.socket | None:
        """The socket that ``enqueue`` writes to directly (plain TCP), else None."""
        return self._raw

    @property
    def queued(self) -> int:
        """Bytes enqueued and not yet written."""
        held = sum(map(len, self._held_back)) if self._held_back is not None else 0
        return sum(map(len, self._pending)) + held

    def enqueue(self, data: bytes) -> None:
        """Write ``data`` after everything enqueued before it; never blocks, never raises
        (a failure is reported by the next ``flush``)."""
        if self._broken is not None or not data:
            return
        if self._held_back is not None:
            self._held_back.append(data)
            return
        raw = self._raw
        if self._pending or raw is None:
            self._pending.append(data)
            return
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the peer is gone
            self._broken = str(exc)
            return
        if sent < len(data):
            self._pending.append(memoryview(data)[sent:])

    async def flush(self) -> None:
        """Wait until everything enqueued so far is written (raises BrokenResourceError if
        the stream failed). No checkpoint when nothing is queued."""
        while True:
            if self._broken is not None:
                raise trio.BrokenResourceError(self._broken)
            if not self._pending and self._held_back is None:
                return
            if self._held_back is not None and not self._pending:
                assert self._released is not None  # hold() made it
                await self._released.wait()  # the upgrade moves them to the queue
                continue
            async with self._lock:
                await self._drain()

    def write_queued(self) -> None:
        """Write what is queued as far as the kernel takes it now, without blocking (the
        hub's ``OUT`` handler; plain TCP only). A failure marks the sender broken."""
        pending, raw = self._pending, self._raw
        assert raw is not None
        while pending and self._broken is None:
            chunk = pending[0]
            try:
                sent = raw.send(chunk)
            except BlockingIOError:
                return
            except OSError as exc:
                self._broken = str(exc)
                pending.clear()
                return
            if sent < len(chunk):
                pending[0] = memoryview(chunk)[sent:]
                return
            pending.pop(0)

    def flush_soon(self, nursery: trio.Nursery) -> None:
        """Have what is queued written by a task of ``nursery``, for a caller that must not
        wait for this side (a pump whose own reading is what lets this side's peer go on).
        No task when nothing is queued; at most one at a time; its failure is reported by
        the next ``flush``."""
        if self._background or self._broken is not None:
            return
        if not self._pending and self._held_back is None:
            return
        self._background = True
        nursery.start_soon(self._flush_in_background)

    async def _flush_in_background(self) -> None:
        try:
            await self.flush()
        except trio.BrokenResourceError:
            pass  # recorded in _broken: the next flush raises it
        finally:
            self._background = False

    async def upgrade(self, wrap: StreamUpgrade) -> trio.abc.Stream:
        """Write what is queued (the last plaintext, e.g. ``OK Begin TLS``), then replace the
        stream with ``wrap(stream)``. Bytes enqueued from the call of ``hold`` until the new
        stream exists are written through the new stream only. Call ``hold`` synchronously
        right after enqueueing the last plaintext bytes."""
        assert self._held_back is not None, "hold() first"
        async with self._lock:
            await self._drain()
            if self._broken is not None:
                raise trio.BrokenResourceError(self._broken)
            stream = await wrap(self.stream)
            self._detach()
            self.stream = stream
            self._raw = _raw_socket(stream)
            self._pending.extend(self._held_back)
            self._held_back = None
            if self._released is not None:
                self._released.set()
        return stream

    def hold(self) -> None:
        """Keep back bytes enqueued from now on, until ``upgrade`` has a new stream."""
        self._held_back = []
        self._released = trio.Event()

    async def _drain(self) -> None:
        # Under the lock. Cancellation leaves the raw queue consistent (a partial write
        # shortens the head in place), so a later flush carries on where this one stopped. A
        # cancelled TLS send_all leaves the SSLStream broken: the head is never re-sent.
        pending = self._pending
        while pending and self._broken is None:
            chunk = pending[0]
            raw = self._raw
            if raw is None:
                try:
                    await self.stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._broken = str(exc) or type(exc).__name__
                    break
                pending.pop(0)
                continue
            try:
                sent = raw.send(chunk)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._broken = str(exc)
                break
            if sent == len(chunk):
                pending.pop(0)
                continue
            if sent:
                pending[0] = memoryview(chunk)[sent:]
            await trio.lowlevel.wait_writable(raw)
        if self._broken is not None:
            pending.clear()
            raise trio.BrokenResourceError(self._broken)

    def close(self) -> None:
        """Drop what is queued and let go of the descriptor (before the stream is closed)."""
        self._pending.clear()
        self._held_back = None
        if self._released is not None:
            self._released.set()
        self._broken = self._broken or "closed"
        self._detach()

    def _detach(self) -> None:
        raw = getattr(self, "_raw", None)  # unset if __init__ failed before it
        if raw is not None:
            raw.detach()
            self._raw = None

    def __del__(self) -> None:
        self._detach()  # a forgotten close must not close trio's descriptor


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """A stdlib socket object on the stream's own descriptor (plain TCP streams only).

    It shares trio's descriptor and file flags (non-blocking), so ``send``/``recv`` on it never
    block. It must be ``detach()``-ed, never closed or left to the garbage collector (which
    would close trio's descriptor): ``Sender.close``/``Receiver.close`` and ``__del__`` see to
    that.
    """
    if isinstance(stream, PrefixedStream):
        stream = stream.transport
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = stream.socket
    fd = sock.fileno()
    if fd < 0:
        return None
    try:
        # Family, type and protocol given, and SOCK_NONBLOCK in the type: no system call
        # (the descriptor is non-blocking already; trio made it so). A SocketStream's socket
        # is SOCK_STREAM (``sock.type`` costs an enum conversion).
        kind = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
        raw = socket.socket(sock.family, kind, sock.proto, fd)
    except OSError:
        return None
    return raw


class Receiver:
    __slots__ = ("_raw", "_reads", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._raw = _receiving_socket(stream)
        self._reads = 0

    @property
    def raw(self) -> socket.socket | None:
        """The socket ``receive`` reads directly (plain TCP, no prefix left), else None."""
        return self._raw

    def replace(self, stream: trio.abc.Stream) -> None:
        """The stream changed (STARTTLS): read from the new one from now on."""
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
        """Let go of the descriptor (before the stream is closed); never closes it."""
        raw = getattr(self, "_raw", None)  # unset if __init__ failed before it
        if raw is not None:
            raw.detach()
            self._raw = None

    def __del__(self) -> None:
        self.close()  # a forgotten close must not close trio's descriptor


def _receiving_socket(stream: trio.abc.Stream) -> socket.socket | None:
    # A prefix still to deliver goes through the stream first (see ``receive``).
    if isinstance(stream, PrefixedStream) and stream.prefix:
        return None
    return _raw_socket(stream)
