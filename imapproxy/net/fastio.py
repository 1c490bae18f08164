"""Socket I/O for one side of a session, cheap in the common case, in order always.

Reading is ``net.receiver.Receiver`` (re-exported here). Writing is split in two so that
order never depends on which task gets to run first:

* ``Sender.enqueue`` is synchronous. It puts the bytes behind everything enqueued before
  them; when nothing is queued, it tries a non-blocking ``send`` at once on the side's
  direct socket (``net.direct``: a plain TCP socket, or a TLS leg's ``ssl.SSLSocket`` once
  its handshake is done) and queues only what was not taken. Both pumps of a session write
  to both sides, and a caller that enqueues right after the session produced the bytes (no
  ``await`` between) gets the session's order on the wire, whichever task it runs in.
* ``await Sender.flush()`` returns once everything enqueued so far is written. When the
  socket took it all it returns without a trip through the scheduler (most writes are a
  small command or response). Otherwise one task at a time drains the queue (a FIFO lock),
  oldest bytes first. A pump awaits it before reading more: that is the backpressure.

The readiness hub (``net.hub``, ``server.hub_pump``) uses the same objects without
awaiting: it reads with ``Receiver.read_now``, and writes what is queued with
``Sender.write_queued`` when the socket is writable (``pending`` says there is some).

TLS writes: ``SSLWantWriteError`` is a write that would block; OpenSSL then holds a
half-done write (no partial writes; the ssl module sets
``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``), so the very same bytes must be retried: such a
chunk stays the head of the queue, unchanged, until it is written (by ``write_queued``, or
by ``flush`` through the stream's ``send_all``, which retries the same way).
``SSLWantReadError`` on a write (renegotiation) sets ``needs_pumps``: the hub hands over.
A failure marks the TLS stream broken too (``SocketTLSStream.mark_broken``), so its own
calls and its close see it. A stream without a direct socket (``trio.SSLStream``, memory
streams in tests) queues everything and writes in ``flush``.

``upgrade`` switches a sender to a new stream (STARTTLS) and keeps back whatever is enqueued
after the last plaintext bytes until the new stream is there.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable

import trio

from imapproxy.net.direct import direct_socket
from imapproxy.net.receiver import Receiver

__all__ = ["Receiver", "Sender", "StreamUpgrade"]

# A send that would block: the kernel's buffer (plain) or OpenSSL's write (TLS) is full.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantWriteError)

StreamUpgrade = Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]]


class Sender:
    __slots__ = (
        "_background",
        "_broken",
        "_held_back",
        "_lock",
        "_raw",
        "_released",
        "_tls",
        "needs_pumps",
        "pending",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        # Held by the task draining the queue; made on first use (never, in the hub).
        self._lock: trio.StrictFIFOLock | None = None
        # Bytes not yet handed to the kernel (or the TLS stream), oldest first; the head
        # stays queued until it is written in full, so nothing can be sent ahead of it.
        # A list, not a deque: it is almost always empty, and an empty deque costs 600 bytes
        # per side per session; pop(0) on the few entries it ever holds is as cheap.
        # Public: the hub tests it on every event (truthy: a partial write waits for OUT).
        self.pending: list[bytes | memoryview] = []
        self._held_back: list[bytes] | None = None  # enqueued during an upgrade
        self._released: trio.Event | None = None  # made by hold(): rare, and 350 bytes
        self._broken: str | None = None  # why the stream failed (enqueue never raises)
        self._background = False  # a flush_soon task is on its way
        # The hub cannot go on with this side: it failed, or a TLS write must wait for the
        # peer's bytes (SSLWantReadError, renegotiation: the pumps' flush waits for them).
        # Kept by _set_broken/_set_wants_read: the hub reads it on every event.
        self.needs_pumps = False
        self._raw, self._tls = direct_socket(stream)

    @property
    def needs_flush(self) -> bool:
        """False when ``flush`` would return at once: callers skip the await (hot path)."""
        return bool(self.pending) or self._held_back is not None or self._broken is not None

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def raw(self) -> socket.socket | None:
        """The socket that ``enqueue`` writes to directly: a plain TCP socket, or a TLS
        leg's ``ssl.SSLSocket`` once its handshake is done; else None."""
        return self._raw

    @property
    def queued(self) -> int:
        """Bytes enqueued and not yet written."""
        held = sum(map(len, self._held_back)) if self._held_back is not None else 0
        return sum(map(len, self.pending)) + held

    def enqueue(self, data: bytes) -> None:
        """Write ``data`` after everything enqueued before it; never blocks, never raises
        (a failure is reported by the next ``flush``)."""
        if self._broken is not None or not data:
            return
        if self._held_back is not None:
            self._held_back.append(data)
            return
        raw = self._raw
        if self.pending or raw is None:
            self.pending.append(data)
            return
        try:
            sent = raw.send(data)
        except _WOULD_BLOCK:
            sent = 0
        except ssl.SSLWantReadError:
            sent = 0
            self._set_wants_read(True)
        except OSError as exc:  # the peer is gone
            self._fail(exc)
            return
        if sent < len(data):
            # TLS: the same bytes are retried (OpenSSL keeps the half-done write), so the
            # head of the queue stays this object until it is sent.
            self.pending.append(memoryview(data)[sent:] if sent else data)

    async def flush(self) -> None:
        """Wait until everything enqueued so far is written (raises BrokenResourceError if
        the stream failed). No checkpoint when nothing is queued."""
        while True:
            if self._broken is not None:
                raise trio.BrokenResourceError(self._broken)
            if not self.pending and self._held_back is None:
                return
            if self._held_back is not None and not self.pending:
                assert self._released is not None  # hold() made it
                await self._released.wait()  # the upgrade moves them to the queue
                continue
            async with self._drain_lock():
                await self._drain()

    def write_queued(self) -> None:
        """Write what is queued as far as the socket takes it now, without blocking (the
        hub's ``OUT`` handler; ``raw`` must be set). A failure marks the sender broken; a
        TLS write that needs to read first sets ``needs_pumps``."""
        pending, raw = self.pending, self._raw
        assert raw is not None
        while pending and self._broken is None:
            chunk = pending[0]
            try:
                sent = raw.send(chunk)
            except _WOULD_BLOCK:
                return
            except ssl.SSLWantReadError:
                self._set_wants_read(True)
                return
            except OSError as exc:
                self._fail(exc)
                pending.clear()
                return
            if sent < len(chunk):  # plain TCP (OpenSSL here writes all or nothing)
                pending[0] = memoryview(chunk)[sent:]
                return
            pending.pop(0)

    def _drain_lock(self) -> trio.StrictFIFOLock:
        if self._lock is None:
            self._lock = trio.StrictFIFOLock()
        return self._lock

    def _set_wants_read(self, wants: bool) -> None:
        self.needs_pumps = wants or self._broken is not None

    def _set_broken(self, why: str) -> None:
        self._broken = why
        self.needs_pumps = True

    def _fail(self, exc: OSError) -> None:
        self._set_broken(str(exc) or type(exc).__name__)
        if self._tls is not None:  # its own calls (the pumps, aclose) see it broken too
            self._tls.mark_broken(exc)

    def flush_soon(self, nursery: trio.Nursery) -> None:
        """Have what is queued written by a task of ``nursery``, for a caller that must not
        wait for this side (a pump whose own reading is what lets this side's peer go on).
        No task when nothing is queued; at most one at a time; its failure is reported by
        the next ``flush``."""
        if self._background or self._broken is not None:
            return
        if not self.pending and self._held_back is None:
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
        async with self._drain_lock():
            await self._drain()
            if self._broken is not None:
                raise trio.BrokenResourceError(self._broken)
            stream = await wrap(self.stream)
            self._detach()
            self.stream = stream
            self._raw, self._tls = direct_socket(stream)
            self.pending.extend(self._held_back)
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
        # TLS goes through the stream, whose send_all retries the head's very bytes (a
        # direct write that would have blocked may have left OpenSSL half-way through it).
        pending = self.pending
        while pending and self._broken is None:
            chunk = pending[0]
            raw = self._raw
            if raw is None or self._tls is not None:
                try:
                    await self.stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._set_broken(str(exc) or type(exc).__name__)
                    break
                pending.pop(0)
                self._set_wants_read(False)
                continue
            try:
                sent = raw.send(chunk)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._set_broken(str(exc))
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
        if self.pending and self._tls is not None:
            # The head may be a write OpenSSL left half-done: no close_notify after it.
            self._tls.mark_broken(trio.BrokenResourceError("closed with bytes queued"))
        self.pending.clear()
        self._held_back = None
        if self._released is not None:
            self._released.set()
        self._set_broken(self._broken or "closed")
        self._detach()

    def _detach(self) -> None:
        raw = getattr(self, "_raw", None)  # unset if __init__ failed before it
        if raw is not None:
            if getattr(self, "_tls", None) is None:  # a TLS stream's own socket: not ours
                raw.detach()
            self._raw = None
            self._tls = None

    def __del__(self) -> None:
        self._detach()  # a forgotten close must not close trio's descriptor
