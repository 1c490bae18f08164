"""The trio side of one session: sockets in, ``Session`` decisions out, nothing else.

One nursery per session with one pump task per direction. Each pump reads, hands the bytes
to the pure ``Session`` and executes the ``Output``: one write per destination (all pieces
joined), then TLS or close. Both pumps write to both sides (a blocked command is answered from
the client pump, responses from the upstream pump, client bytes held until the server's ``+``
are released by the upstream pump), so the bytes of an ``Output`` are enqueued on each side's
``Sender`` synchronously, with no ``await`` between the session producing them and their
queueing: each side then receives them in the session's order, whichever pump produced them.
Only then does the pump wait for the writes (``flush``) before reading more, which is the
backpressure: the client pump waits for both sides, the upstream pump for the client side
only (the upstream bytes it releases are written by a background task, see
``_pump_upstream``). The client pump stops reading while the client parser is paused (see
``wire.client``); the upstream pump wakes it once the output of the server answer that resumed
it is enqueued.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import trio

from imapproxy.net.fastio import Receiver, Sender
from imapproxy.net.streams import (
    CONNECTION_ERRORS,
    ClientTLSStarter,
    UpstreamConnector,
    tls_details,
)
from imapproxy.server.endings import IDLE_BYE, SHUTDOWN_BYE, SessionOver, auth_deadline
from imapproxy.server.guard import SessionGuard
from imapproxy.server.session_view import ObservedDriver
from imapproxy.server.upstream_leg import open_upstream
from imapproxy.session.core import Session
from imapproxy.session.output import LimitHit, LoginDone, Output
from imapproxy.session.settings import SessionSettings
from imapproxy.telemetry.observer import Observers
from imapproxy.telemetry.recorder import MetricsObserver, Telemetry
from imapproxy.telemetry.sessionlog import SessionLog

log = logging.getLogger("imapproxy.session")

RECEIVE_SIZE = 256 * 1024
_session_ids = itertools.count(1)


@dataclass
class SessionContext:
    """What a session needs from the process: settings, connectors, observers."""

    settings: SessionSettings
    connect_upstream: UpstreamConnector
    telemetry: Telemetry
    listener: str = "plain"
    connect_timeout: float = 10.0
    idle_timeout: float = 1860.0  # IDLE clients re-issue IDLE every <= 29 minutes
    start_client_tls: ClientTLSStarter | None = None
    guard: SessionGuard | None = None  # abuse limits (server.guard)
    auth_timeout: float = 0.0  # seconds to log in before * BYE; 0: no deadline
    # Everything observed goes here (metrics, logs, inspector); None: metrics and logs only.
    observers: Observers | None = None


class SessionDriver(ObservedDriver):
    """Runs one session: ``run`` returns when it is over, its streams closed. I/O only:
    every decision is the ``Session``'s; the observer hooks come from ``ObservedDriver``,
    the upstream leg from ``server.upstream_leg``, the endings from ``server.endings``."""

    def __init__(self, ctx: SessionContext, client: trio.abc.Stream, peer: str) -> None:
        self.ctx = ctx
        self.client = client
        self.peer = peer
        self.id = next(_session_ids)
        self.session = Session(ctx.settings)
        self.upstream: trio.abc.Stream | None = None
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0  # upstream -> client
        self.close_reason = "unknown"
        self.shutting_down = False  # set by the listener when the grace period is over
        self.listener = ctx.listener
        self.observers = ctx.observers or Observers([MetricsObserver(ctx.telemetry), SessionLog()])
        self._kicked: bytes | None = None  # the BYE line of an administrator's kick
        # The auth deadline's scope while it waits: cancelled once the session has a user, so
        # a logged-in session does not keep a sleeping task (and its memory) for auth_timeout.
        self.auth_scope: trio.CancelScope | None = None
        self._to_client = Sender(client)
        self._from_client = Receiver(client)
        self._from_upstream: Receiver | None = None
        self._to_upstream: Sender | None = None
        self._resume = trio.Event()
        self._idle_scope = trio.CancelScope()
        self._touched = -1e9
        self._tls_info: dict[str, Any] = tls_details(client)  # implicit TLS: handshake done

    # --- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        started = time.monotonic()
        observers = self.observers
        observers.session_opened(self)
        self.session.tap = observers.line_tap(self)
        try:
            if await self._connect():
                await self._pump_both()
        except Exception:  # a bug must end this session only, with a traceback to fix it
            self.close_reason = "internal error"
            log.exception("session %d failed", self.id)
        finally:
            if self.shutting_down:
                self.close_reason = "proxy shutting down"
                with trio.CancelScope(shield=True):
                    await self.send_bye(SHUTDOWN_BYE, 1)
            elif self._kicked is not None:
                with trio.CancelScope(shield=True):
                    await self.send_bye(self._kicked, 1)
            observers.notes(self, self.session.abandon())
            with trio.CancelScope(shield=True):
                await self._close_streams()
            observers.session_closed(self, time.monotonic() - started)

    async def _connect(self) -> bool:
        upstream = await open_upstream(self)
        if upstream is None:
            return False
        self.upstream = upstream
        self._to_upstream = Sender(upstream)
        self._from_upstream = Receiver(upstream)
        return True

    async def _pump_both(self) -> None:
        self._idle_scope.deadline = trio.current_time() + self.ctx.idle_timeout
        with self._idle_scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_client)
                    nursery.start_soon(self._pump_upstream, nursery)
                    if self.ctx.auth_timeout and self.session.user is None:
                        nursery.start_soon(auth_deadline, self)
            except* SessionOver:
                pass  # one pump decided the session is over; the nursery cancelled the other
        if self._idle_scope.cancelled_caught and self.close_reason == "unknown":
            self.close_reason = "idle timeout"
            await self.send_bye(IDLE_BYE)

    async def _close_streams(self) -> None:
        self._to_client.close()
        self._from_client.close()
        if self._from_upstream is not None:
            self._from_upstream.close()
        if self._to_upstream is not None:
            self._to_upstream.close()
        for stream in (self.client, self.upstream):
            if stream is not None:
                with trio.move_on_after(2), contextlib.suppress(*CONNECTION_ERRORS):
                    await stream.aclose()

    async def send_bye(self, line: bytes, timeout: float = 5) -> None:
        """Tell the client why the session ends (after what is queued for it); a client that
        is gone is no error."""
        self._to_client.enqueue(line)
        with trio.move_on_after(timeout), contextlib.suppress(*CONNECTION_ERRORS):
            await self._to_client.flush()

    # --- pumps -----------------------------------------------------------------------
    async def _pump_client(self) -> None:
        session = self.session
        while True:
            while session.client_paused:
                self._resume = trio.Event()
                await self._resume.wait()
            try:
                # self.client, not a local: STARTTLS replaces it with the TLS stream.
                data = await self._from_client.receive(RECEIVE_SIZE)
            except CONNECTION_ERRORS:
                data = b""
            self._touch()
            out = session.client_data(data)
            guard = self.ctx.guard
            if guard is not None and guard.delay:
                await trio.sleep(guard.take_delay())  # a throttled login (server.limits)
            await self._execute(out)
            if not data:
                self._stream_ended("client closed the connection")

    async def _pump_upstream(self, nursery: trio.Nursery) -> None:
        session = self.session
        receiver = self._from_upstream
        assert receiver is not None
        while True:
            try:
                data = await receiver.receive(RECEIVE_SIZE)
            except CONNECTION_ERRORS:
                data = b""
            self._touch()
            out = session.server_data(data)
            self._enqueue(out)
            # Only now: the client pump's next bytes must queue behind what this answer
            # released (the held command, the rest of a literal).
            if not session.client_paused:
                self._resume.set()
            # The bytes this answer released upstream are written in the background: waiting
            # for them here would stop this pump reading the server, and a server blocked on
            # its output (a large FETCH) stops reading its input. What this pump may queue
            # upstream is bounded by what the client pump read, which waits for the queue.
            if self._to_upstream is not None:
                self._to_upstream.flush_soon(nursery)
            await self._complete(out, upstream=False)
            if not data:
                self._stream_ended("upstream closed the connection")

    def _stream_ended(self, reason: str) -> NoReturn:
        """A pump stops at EOF: reading again could spin for ever, since a broken SSLStream
        raises at once, without a checkpoint, so the cancellation never gets in and no
        other task of the process runs."""
        if self.close_reason == "unknown":
            self.close_reason = self.session.closed or reason
        raise SessionOver

    def _touch(self) -> None:
        # Moving a cancel scope's deadline is a heap operation: not on every read (at most
        # every tenth of the timeout, so the timeout stays within 10% of what is configured).
        now = trio.current_time()
        if now - self._touched > min(1.0, self.ctx.idle_timeout / 10):
            self._touched = now
            self._idle_scope.deadline = now + self.ctx.idle_timeout

    # --- executing decisions -----------------------------------------------------------
    async def _execute(self, out: Output) -> None:
        self._enqueue(out)
        await self._complete(out)

    def _enqueue(self, out: Output) -> None:
        """Queue the output's bytes on each side, one write each. Synchronous: call it right
        after the session produced ``out``, so nothing from the other pump gets between."""
        if out.to_client:
            data = out.to_client[0] if len(out.to_client) == 1 else b"".join(out.to_client)
            self._to_client.enqueue(data)
            self.bytes_down += len(data)
            self.ctx.telemetry.bytes_forwarded("upstream_to_client", len(data))
        if out.start_client_tls:
            # Nothing may reach the client in plaintext after the OK: keep back what either
            # pump enqueues from now on until the TLS stream exists.
            self._to_client.hold()
        if out.to_upstream and self._to_upstream is not None:
            data = out.to_upstream[0] if len(out.to_upstream) == 1 else b"".join(out.to_upstream)
            self._to_upstream.enqueue(data)
            self.bytes_up += len(data)
            self.ctx.telemetry.bytes_forwarded("client_to_upstream", len(data))

    async def _complete(self, out: Output, *, upstream: bool = True) -> None:
        """Wait for the writes ``_enqueue`` queued (the upstream side only if ``upstream``),
        then TLS or close. Upstream first: the client side may be a slow reader."""
        to_upstream = self._to_upstream
        if to_upstream is not None and to_upstream.needs_flush and (upstream or out.close):
            try:
                await to_upstream.flush()
            except CONNECTION_ERRORS:
                out.close = out.close or "upstream connection lost"
        try:
            if out.start_client_tls:
                await self._start_client_tls()
            if self._to_client.needs_flush:
                await self._to_client.flush()
        except CONNECTION_ERRORS:
            out.close = out.close or "client connection lost"
        if out.notes:
            self._observe(out)
        if out.start_client_tls and out.close is None:
            await self._execute(self.session.client_tls_started())
            if not self.session.client_paused:  # STARTTLS may be answered by this pump
                self._resume.set()
        if out.close is not None:
            self.close_reason = out.close
            raise SessionOver

    def _observe(self, out: Output) -> None:
        self.observers.notes(self, out.notes)
        if self.auth_scope is not None and self.session.user is not None:
            self.auth_scope.cancel()  # logged in: the deadline is over
            self.auth_scope = None
        guard = self.ctx.guard
        if guard is not None:  # the abuse limits learn from the same observations
            for note in out.notes:
                if isinstance(note, LoginDone):
                    guard.login_done(note)
                elif isinstance(note, LimitHit):
                    guard.hit(note.reason)

    async def _start_client_tls(self) -> None:
        """The handshake after the session's ``OK Begin TLS`` (which it always sends)."""
        starter = self.ctx.start_client_tls
        assert starter is not None, "session asked for TLS without a client TLS context"
        try:
            # Writes the OK, then hands the stream over to the handshake.
            self.client = await self._to_client.upgrade(starter)
        except Exception as exc:  # handshake failures end this session only
            self.ctx.telemetry.tls_handshake("client", "failed")
            self.close_reason = f"client TLS handshake failed: {exc}"
            raise SessionOver from exc
        self.ctx.telemetry.tls_handshake("client", "ok")
        self._from_client.replace(self.client)
        self._tls_info.update(tls_details(self.client))
