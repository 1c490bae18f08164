"""The trio side of one session: sockets in, ``Session`` decisions out, nothing else.

Two ways to run a session's I/O, one rule set. A session whose legs the hub can drive (plain
TCP, or TLS after its handshake over a ``SocketTLSStream``) is served by the process's
readiness hub (``server.hub_pump``: no task of its own while it runs, reads handled
synchronously in the hub's task) until something needs an ``await``; a client STARTTLS is
done by the session's task, which then hands the session back to the hub. Other sessions
(``trio.SSLStream`` legs), and any from the moment the hub hands it to the pumps, run on the
pumps below.

Pumps: one nursery per session with one pump task per direction. Each pump reads, hands the
bytes to the pure ``Session`` and executes the ``Output``: one write per destination (all
pieces joined), then TLS or close. Both pumps write to both sides (a blocked command is
answered from the client pump, responses from the upstream pump, client bytes held until the
server's ``+`` are released by the upstream pump), so the bytes of an ``Output`` are enqueued
on each side's ``Sender`` synchronously, with no ``await`` between the session producing them
and their queueing: each side then receives them in the session's order, whichever pump
produced them. Only then does the pump wait for the writes (``flush``) before reading more,
which is the backpressure: the client pump waits for both sides, the upstream pump for the
client side only (the upstream bytes it releases are written by a background task, see
``_after_upstream_read``). The client pump stops reading while the client parser is paused
(see ``wire.client``); the upstream pump wakes it once the output of the server answer that
resumed it is enqueued. The hub applies the same rules as socket masks.
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
from imapproxy.server.endings import (
    IDLE_BYE,
    SHUTDOWN_BYE,
    SessionOver,
    auth_deadline,
    close_legs,
    close_plain_legs,
)
from imapproxy.server.guard import SessionGuard
from imapproxy.server.hub_pump import RECEIVE_SIZE, Handover, HubPump
from imapproxy.server.upstream_leg import open_upstream
from imapproxy.session.core import Session
from imapproxy.session.output import Output
from imapproxy.session.settings import SessionSettings
from imapproxy.telemetry.observer import Observers
from imapproxy.telemetry.recorder import MetricsObserver, Telemetry
from imapproxy.telemetry.sessionlog import SessionLog

log = logging.getLogger("imapproxy.session")

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


class SessionDriver(HubPump):
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
        self._hub = None
        self._fds = (-1, -1)
        self._handover = None

    # --- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        started = time.monotonic()
        observers = self.observers
        observers.session_opened(self)
        self.session.tap = observers.line_tap(self)
        try:
            if await self._connect():
                await self._serve()
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
            if not close_plain_legs(self):  # plain TCP both ways: closed, no await
                with trio.CancelScope(shield=True):
                    await close_legs(self)
            observers.session_closed(self, time.monotonic() - started)

    async def _connect(self) -> bool:
        upstream = await open_upstream(self)
        if upstream is None:
            return False
        self.upstream = upstream
        self._to_upstream = Sender(upstream)
        self._from_upstream = Receiver(upstream)
        return True

    async def _serve(self) -> None:
        """Relay until the session is over: in the hub while it can (plain TCP both ways,
        ``server.hub_pump``), on the pumps otherwise and from wherever the hub stopped."""
        self._start_clock()
        now = self._now()
        self._idle_scope.deadline = now + self.ctx.idle_timeout
        auth_at = now + self.ctx.auth_timeout
        with self._idle_scope:
            try:
                handover = await self._serve_hub_rounds(auth_at)
                await self._pump_both(handover, auth_at)
            except* SessionOver:
                pass  # one pump decided the session is over; the nursery cancelled the other
        if self._idle_scope.cancelled_caught and self.close_reason == "unknown":
            self.close_reason = "idle timeout"
            await self.send_bye(IDLE_BYE)

    async def _pump_both(self, handover: Handover | None, auth_at: float) -> None:
        """The pumps, the first of them finishing what the hub handed over (if it did)."""
        async with trio.open_nursery() as nursery:
            client = handover if handover is not None and handover.side == "client" else None
            upstream = handover if handover is not None and handover.side == "upstream" else None
            nursery.start_soon(self._pump_client, client)
            nursery.start_soon(self._pump_upstream, nursery, upstream)
            if self.ctx.auth_timeout and self.session.user is None:
                nursery.start_soon(auth_deadline, self, auth_at)

    async def _finish(self, handover: Handover) -> None:
        """What the hub handed over that needs no pump (``Handover.inline``): an end with
        nothing left queued (raises ``SessionOver``), or STARTTLS."""
        if handover.side == "client":
            await self._after_client_read(handover)
        elif handover.side == "upstream":
            await self._after_upstream_read(handover, None)
        else:
            await self._complete(handover.out)

    async def send_bye(self, line: bytes, timeout: float = 5) -> None:
        """Tell the client why the session ends (after what is queued for it); a client that
        is gone is no error."""
        self._to_client.enqueue(line)
        with trio.move_on_after(timeout), contextlib.suppress(*CONNECTION_ERRORS):
            await self._to_client.flush()

    # --- pumps -----------------------------------------------------------------------
    async def _pump_client(self, handover: Handover | None) -> None:
        session = self.session
        if handover is not None:
            await self._after_client_read(handover)
        else:  # what the hub left queued is written before the client is read again
            await self._complete(Output())
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
            await self._after_client_read(
                Handover("client", data, session.client_data(data), False)
            )

    async def _after_client_read(self, read: Handover) -> None:
        """Execute the output of a client read (queue it first unless it is queued)."""
        out = read.out
        if not read.enqueued:
            guard = self.ctx.guard
            if guard is not None and guard.delay:
                await trio.sleep(guard.take_delay())  # a throttled login (server.limits)
            self._enqueue(out)
        await self._complete(out)
        if not read.data:
            self._stream_ended("client closed the connection")

    async def _pump_upstream(self, nursery: trio.Nursery, handover: Handover | None) -> None:
        session = self.session
        receiver = self._from_upstream
        assert receiver is not None
        if handover is not None:
            await self._after_upstream_read(handover, nursery)
        else:  # what the hub left queued for the client is written before reading on
            if self._to_upstream is not None:
                self._to_upstream.flush_soon(nursery)
            await self._complete(Output(), upstream=False)
        while True:
            try:
                data = await receiver.receive(RECEIVE_SIZE)
            except CONNECTION_ERRORS:
                data = b""
            self._touch()
            out = session.server_data(data)
            self._enqueue(out)
            await self._after_upstream_read(Handover("upstream", data, out), nursery)

    async def _after_upstream_read(self, read: Handover, nursery: trio.Nursery | None) -> None:
        """Execute the (queued) output of an upstream read; ``nursery`` None: nothing is
        queued upstream (an end the hub handed over)."""
        # Only now: the client pump's next bytes must queue behind what this answer
        # released (the held command, the rest of a literal).
        if not self.session.client_paused:
            self._resume.set()
        # The bytes this answer released upstream are written in the background: waiting
        # for them here would stop this pump reading the server, and a server blocked on
        # its output (a large FETCH) stops reading its input. What this pump may queue
        # upstream is bounded by what the client pump read, which waits for the queue.
        if self._to_upstream is not None and nursery is not None:
            self._to_upstream.flush_soon(nursery)
        await self._complete(read.out, upstream=False)
        if not read.data:
            self._stream_ended("upstream closed the connection")

    def _stream_ended(self, reason: str) -> NoReturn:
        """A pump stops at EOF: reading again could spin for ever, since a broken SSLStream
        raises at once, without a checkpoint, so the cancellation never gets in and no
        other task of the process runs."""
        if self.close_reason == "unknown":
            self.close_reason = self.session.closed or reason
        raise SessionOver

    # --- executing decisions -----------------------------------------------------------
    async def _execute(self, out: Output) -> None:
        self._enqueue(out)
        await self._complete(out)

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
