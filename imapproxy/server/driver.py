"""The trio side of one session: sockets in, ``Session`` decisions out, nothing else.

One nursery per session with one pump task per direction. Each pump reads, hands the bytes
to the pure ``Session`` and executes the ``Output``: one write per destination (all pieces
joined), then TLS or close. Both pumps may write to the same side (a blocked command is
answered from the client pump, responses from the upstream pump), so each side has a FIFO
send lock. The client pump stops reading while the client parser is paused (see
``wire.client``) and the upstream pump wakes it when a server answer resumes it.
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
    UpstreamTLSError,
    tls_details,
)
from imapproxy.session.core import Session
from imapproxy.session.output import Output
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
    # Everything observed goes here (metrics, logs, inspector); None: metrics and logs only.
    observers: Observers | None = None


class _SessionOver(Exception):
    pass


class SessionDriver:
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
                    await self._last_words(b"* BYE [UNAVAILABLE] Proxy shutting down\r\n", 1)
            elif self._kicked is not None:
                with trio.CancelScope(shield=True):
                    await self._last_words(self._kicked, 1)
            observers.notes(self, self.session.abandon())
            with trio.CancelScope(shield=True):
                await self._close_streams()
            observers.session_closed(self, time.monotonic() - started)

    async def _connect(self) -> bool:
        t0 = time.monotonic()
        reason = "connect_timeout"
        with trio.move_on_after(self.ctx.connect_timeout):
            try:
                self.upstream = await self.ctx.connect_upstream()
                self._to_upstream = Sender(self.upstream)
                self._from_upstream = Receiver(self.upstream)
            except OSError as exc:
                reason = "connect_refused"
                detail = str(exc)
            except UpstreamTLSError as exc:
                reason = "tls"
                detail = str(exc)
            else:
                self._tls_info.update(tls_details(self.upstream, "upstream_"))
                self.observers.upstream_connected(self, time.monotonic() - t0)
                return True
        if reason == "connect_timeout":
            detail = f"no answer within {self.ctx.connect_timeout:g}s"
        self.close_reason = f"upstream unavailable: {reason}"
        self.observers.upstream_failed(self, reason, detail)
        await self._last_words(b"* BYE [UNAVAILABLE] Mail server unavailable\r\n")
        return False

    async def _pump_both(self) -> None:
        self._idle_scope.deadline = trio.current_time() + self.ctx.idle_timeout
        with self._idle_scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_client)
                    nursery.start_soon(self._pump_upstream)
            except* _SessionOver:
                pass  # one pump decided the session is over; the nursery cancelled the other
        if self._idle_scope.cancelled_caught and self.close_reason == "unknown":
            self.close_reason = "idle timeout"
            await self._last_words(b"* BYE Idle timeout\r\n")

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

    async def _last_words(self, line: bytes, timeout: float = 5) -> None:
        """Tell the client why the session ends; a client that is gone is no error."""
        with (
            trio.move_on_after(timeout),
            contextlib.suppress(*CONNECTION_ERRORS, trio.BusyResourceError),
        ):
            await self.client.send_all(line)

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
            await self._execute(session.client_data(data))
            if not data:
                self._stream_ended("client closed the connection")

    async def _pump_upstream(self) -> None:
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
            if not session.client_paused:
                self._resume.set()
            await self._execute(out)
            if not data:
                self._stream_ended("upstream closed the connection")

    def _stream_ended(self, reason: str) -> NoReturn:
        """A pump stops at EOF: reading again could spin for ever, since a broken SSLStream
        raises at once, without a checkpoint, so the cancellation never gets in and no
        other task of the process runs."""
        if self.close_reason == "unknown":
            self.close_reason = self.session.closed or reason
        raise _SessionOver

    def _touch(self) -> None:
        # Moving a cancel scope's deadline is a heap operation: not on every read (at most
        # every tenth of the timeout, so the timeout stays within 10% of what is configured).
        now = trio.current_time()
        if now - self._touched > min(1.0, self.ctx.idle_timeout / 10):
            self._touched = now
            self._idle_scope.deadline = now + self.ctx.idle_timeout

    # --- executing decisions -----------------------------------------------------------
    async def _execute(self, out: Output) -> None:
        # Client first: the proxy's own answers concern commands sent before anything
        # forwarded in this batch, and must reach the client before the server's replies.
        if out.to_client:
            data = out.to_client[0] if len(out.to_client) == 1 else b"".join(out.to_client)
            try:
                if out.start_client_tls:
                    # Under the lock that sends the OK: no response may reach the client
                    # in plaintext between the OK and the handshake.
                    async with self._to_client.lock:
                        await self.client.send_all(data)
                        await self._start_client_tls()
                else:
                    await self._to_client.send(data)
            except CONNECTION_ERRORS:
                out.close = out.close or "client connection lost"
            self.bytes_down += len(data)
            self.ctx.telemetry.bytes_forwarded("upstream_to_client", len(data))
        if out.to_upstream and self._to_upstream is not None:
            data = out.to_upstream[0] if len(out.to_upstream) == 1 else b"".join(out.to_upstream)
            try:
                await self._to_upstream.send(data)
            except CONNECTION_ERRORS:
                out.close = out.close or "upstream connection lost"
            self.bytes_up += len(data)
            self.ctx.telemetry.bytes_forwarded("client_to_upstream", len(data))
        if out.notes:
            self._observe(out)
        if out.start_client_tls and out.close is None:
            await self._execute(self.session.client_tls_started())
        if out.close is not None:
            self.close_reason = out.close
            raise _SessionOver

    def _observe(self, out: Output) -> None:
        self.observers.notes(self, out.notes)

    async def _start_client_tls(self) -> None:
        """The handshake after the session's ``OK Begin TLS`` (which it always sends)."""
        starter = self.ctx.start_client_tls
        assert starter is not None, "session asked for TLS without a client TLS context"
        try:
            self.client = await starter(self.client)
        except Exception as exc:  # handshake failures end this session only
            self.ctx.telemetry.tls_handshake("client", "failed")
            self.close_reason = f"client TLS handshake failed: {exc}"
            raise _SessionOver from exc
        self.ctx.telemetry.tls_handshake("client", "ok")
        self._to_client.replace(self.client)
        self._from_client.replace(self.client)
        self._tls_info.update(tls_details(self.client))

    # --- hooks for observers (the inspector's session registry) -----------------------
    @property
    def tls(self) -> dict[str, Any]:
        """TLS facts of both legs (``tls_version``, ``upstream_tls_version``, ...)."""
        return self._tls_info

    @property
    def last_activity(self) -> float:
        """``trio.current_time()`` of the last traffic either way (to within a second)."""
        return self._touched

    def update_tap(self) -> None:
        self.session.tap = self.observers.line_tap(self)

    def kick(self, reason: str) -> None:
        """End the session now: the client reads ``* BYE [UNAVAILABLE] reason``, the
        upstream connection is closed (FIN, no command in the middle of its stream)."""
        if self._kicked is not None or self.close_reason != "unknown":
            return
        text = " ".join(reason.split()).encode("ascii", "replace")[:200] or b"Session ended"
        self._kicked = b"* BYE [UNAVAILABLE] " + text + b"\r\n"
        self.close_reason = "kicked: " + text.decode()
        self.ctx.telemetry.session_kicked()
        self._idle_scope.cancel()
