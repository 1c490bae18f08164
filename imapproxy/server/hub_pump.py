"""The synchronous half of a session's driver, and its legs served by the hub.

``HubPump`` holds what executing a ``Session`` decision needs without an ``await``:
queueing an ``Output``'s bytes on both sides (``_enqueue``), passing its notes on
(``_observe``), moving the idle deadline (``_touch``). ``SessionDriver`` adds the async half
(the pumps, flushes, TLS, endings).

Hub mode (``_serve_in_hub``): when the hub can drive both legs, the session's two sockets are
watched by the process's readiness hub (``net.hub``) and every read is handled in the hub's
task, with no task switch: ``read_now``, ``Session.client_data``/``server_data``,
``_enqueue``, notes. A leg the hub can drive is plain TCP, or TLS once its handshake is done
(the implicit-TLS listener's, before the driver starts; the upstream's, in
``open_upstream``; the client's STARTTLS, below), through its ``ssl.SSLSocket`` itself
(``net.receiver``, ``net.fastio``); a ``trio.SSLStream`` is left to the pumps. A prefix a
connector read (the greeting it synthesized or read before its ID step) is the first upstream
read, handled before the sockets are watched. The session's own task (``run``) just waits
meanwhile; a logged-in idle session holds no other task. The backpressure rules are the
pumps' (``server.driver``), as masks:

* the client socket is read only while neither side has bytes queued (a partial write) and
  the client parser is not paused;
* the upstream socket is read while the client side has nothing queued, whatever is queued
  upstream: a server blocked on its output (a large FETCH) may not read its input until it
  can write, so reading it must not wait for the bytes it is to read;
* a side with bytes queued is watched for ``OUT`` and written from the hub.

What needs an ``await`` is handed over (``Handover``) to the session's task, with the hub no
longer watching either socket: EOF or a close either way, STARTTLS, a throttled login (the
guard's delay), a failed write, and on a TLS leg what OpenSSL must do the other way round (a
read that must write first, a write that must read first: renegotiation) or an end met right
behind bytes. Ends with nothing queued are finished by the task itself (``Handover.inline``);
so is STARTTLS with nothing queued upstream: the task writes the OK, runs the handshake
(within the auth deadline) and the session goes back to the hub over TLS
(``_serve_hub_rounds``). The rest continue on the pumps for the remainder of the session,
which carry on from the exact point the hub stopped (the output handed over comes first).
"""

from __future__ import annotations

from collections.abc import Callable
from math import inf
from typing import TYPE_CHECKING, NamedTuple, cast

import trio

from imapproxy.net.fastio import Receiver, Sender
from imapproxy.net.hub import ERR, HUP, IN, OUT, Hub
from imapproxy.server.endings import auth_expired
from imapproxy.server.session_view import ObservedDriver
from imapproxy.session.output import LimitHit, LoginDone, Output

if TYPE_CHECKING:
    from imapproxy.server.driver import SessionDriver

__all__ = ["RECEIVE_SIZE", "Handover", "HubPump"]

RECEIVE_SIZE = 256 * 1024
_READ = IN | ERR | HUP  # a read tells which (data, EOF or an error)
_WRITE = OUT | ERR | HUP
_MAX_HUB_ROUNDS = 3  # hub, STARTTLS in the session's task, hub again (one STARTTLS a session)


class Handover(NamedTuple):
    """What the hub could not finish: the side it read (``client``/``upstream``; ``""``
    when the pumps just carry on, e.g. after a failed write), what it read (``b""``: EOF),
    the session's output and whether that output is queued already (a throttled login's is
    not: it waits for the delay)."""

    side: str
    data: bytes
    out: Output
    enqueued: bool = True

    def inline(self, driver: HubPump) -> bool:
        """The session's task finishes it without pumps: an end (or a plain hand-over) with
        nothing left to write, or STARTTLS with nothing queued upstream (the handshake needs
        only the client; the server, every command before STARTTLS answered, has nothing
        to say that cannot wait in its socket until the hub reads it again)."""
        upstream = driver._to_upstream is not None and bool(driver._to_upstream.pending)
        if self.out.start_client_tls:
            return self.enqueued and not upstream
        return self.enqueued and not upstream and not driver._to_client.pending


class HubPump(ObservedDriver):
    """The synchronous half of ``SessionDriver`` (module docstring)."""

    _to_client: Sender
    _from_client: Receiver
    _to_upstream: Sender | None
    _from_upstream: Receiver | None
    _resume: trio.Event  # wakes the client pump; in hub mode, the session's task
    auth_scope: trio.CancelScope | None
    _hub: Hub | None
    _fds: tuple[int, int]  # client, upstream (hub mode)
    _masks: tuple[int, int]  # what the hub watches on them now
    _handover: Handover | Exception | None
    _now: Callable[[], float]  # the run's clock (_start_clock)
    _touch_every: float

    # --- decisions without an await ------------------------------------------------------
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

    def _observe(self, out: Output) -> None:
        self.observers.notes(self, out.notes)
        if self.auth_scope is not None and self.session.user is not None:
            # Logged in: the deadline is over. In the hub the session's task waits in this
            # scope for a handover anyway: lift the deadline rather than wake the task only
            # for it to wait again (~35 µs a login); the pumps' deadline task must end.
            if self._hub is not None:
                self.auth_scope.deadline = inf
            else:
                self.auth_scope.cancel()
            self.auth_scope = None
        guard = self.ctx.guard
        if guard is not None:  # the abuse limits learn from the same observations
            for note in out.notes:
                if isinstance(note, LoginDone):
                    guard.login_done(note)
                elif isinstance(note, LimitHit):
                    guard.hit(note.reason)

    def _start_clock(self) -> None:
        """Before the first ``_touch`` (in the session's task): the run's clock, read
        directly (``trio.current_time`` is three calls deep; ``_touch`` runs on every read)."""
        self._now = trio.lowlevel.current_clock().current_time
        self._touch_every = min(1.0, self.ctx.idle_timeout / 10)

    def _touch(self) -> None:
        # Moving a cancel scope's deadline is a heap operation: not on every read (at most
        # every tenth of the timeout, so the timeout stays within 10% of what is configured).
        now = self._now()
        if now - self._touched > self._touch_every:
            self._touched = now
            self._idle_scope.deadline = now + self.ctx.idle_timeout

    # --- hub mode ----------------------------------------------------------------------
    async def _serve_hub_rounds(self, auth_at: float) -> Handover | None:
        """Serve the session in the hub for as long as it can be (``_serve_in_hub``), with a
        STARTTLS between two rounds done by the session's task itself; what the pumps must
        carry on with is returned (None: nothing, or the hub could not serve the session)."""
        driver = cast("SessionDriver", self)  # its only subclass
        for _ in range(_MAX_HUB_ROUNDS):
            sockets = self._hub_sockets()
            if sockets is None:
                return None
            handover = await self._serve_in_hub(sockets[0], sockets[1], auth_at)
            if not handover.inline(self):
                return handover
            if not handover.out.start_client_tls:
                await driver._finish(handover)  # an end: raises SessionOver
                return None  # (a plain hand-over: the pumps carry on)
            # STARTTLS (before login): the handshake within the auth deadline too, as on
            # the pumps, where the deadline task runs alongside.
            with trio.CancelScope(deadline=auth_at if self.ctx.auth_timeout else inf) as scope:
                await driver._finish(handover)
            if scope.cancelled_caught and self.session.user is None:
                await auth_expired(driver)
        return None

    def _hub_sockets(self) -> tuple[int, int] | None:
        """Both legs' descriptors when the hub can drive both (plain TCP, or TLS after its
        handshake: ``net.receiver``) and the hub is there, else None: the pumps run it."""
        up_in, up_out = self._from_upstream, self._to_upstream
        if up_in is None or up_out is None:
            return None
        client, upstream = self._from_client.hub_socket(), up_in.hub_socket()
        if client is None or upstream is None or self._to_client.raw is None or not up_out.raw:
            return None
        try:
            self._hub = Hub.current()
        except OSError:  # no descriptor for its epoll object (the listener makes it early)
            return None
        return client.fileno(), upstream.fileno()

    async def _serve_in_hub(self, client: int, upstream: int, auth_at: float) -> Handover:
        """Have the hub (``_hub_sockets`` found it) serve both sockets until it hands over
        (module docstring); what it handed over is returned. Raises ``SessionOver`` at the
        auth deadline, and whatever the hub caught from this session's processing (a bug:
        ``run`` logs it)."""
        self._fds = (client, upstream)
        self._masks = (0, 0)
        self._handover = None
        self._resume = trio.Event()
        assert self._from_upstream is not None
        try:
            prefix = self._from_upstream.take_prefix()
            if prefix:  # the greeting a connector read (and the ID step's answer)
                self._upstream_data(prefix)
            if self._handover is None:
                self._rewatch()
            while self._handover is None:
                if self.session.user is None and self.ctx.auth_timeout:
                    with trio.CancelScope(deadline=auth_at) as scope:
                        self.auth_scope = scope  # lifted at login (_observe)
                        await self._resume.wait()
                    self.auth_scope = None
                    if scope.cancelled_caught and self.session.user is None:
                        self._leave_hub()
                        await auth_expired(cast("SessionDriver", self))  # its only subclass
                else:
                    await self._resume.wait()
        finally:
            self._leave_hub()
        handover = self._handover
        if isinstance(handover, Exception):
            raise handover
        return handover

    def _leave_hub(self) -> None:
        hub = self._hub
        if hub is not None:
            self._hub = None
            self._masks = (0, 0)
            hub.forget(self._fds[0])
            hub.forget(self._fds[1])

    def _hand_over(self, handover: Handover | Exception) -> None:
        self._leave_hub()
        self._handover = handover
        self._resume.set()

    def hub_failed(self, exc: Exception) -> None:
        self._hand_over(exc)

    def hub_ready(self, fd: int, events: int) -> None:
        to_client, to_upstream = self._to_client, self._to_upstream
        assert to_upstream is not None
        session = self.session
        if fd == self._fds[0]:
            if events & _WRITE and to_client.pending:
                to_client.write_queued()
            readable = not (to_client.pending or to_upstream.pending or session.client_paused)
            if events & _READ and readable:
                self._client_readable()
        else:
            if events & _WRITE and to_upstream.pending:
                to_upstream.write_queued()
            if events & _READ and not to_client.pending:
                self._upstream_readable()
        if self._hub is not None:
            self._rewatch()

    def _rewatch(self) -> None:
        """Set both sockets' masks from the backpressure rules (module docstring)."""
        hub = self._hub
        to_client, to_upstream = self._to_client, self._to_upstream
        assert hub is not None and to_upstream is not None
        if to_client.needs_pumps or to_upstream.needs_pumps:
            # The pumps finish it: their flush reports a failure as the reason to close, or
            # waits for what a TLS write needs to read first.
            self._hand_over(Handover("", b"-", Output()))
            return
        client_mask = upstream_mask = 0
        if to_client.pending:
            client_mask = OUT
        else:
            upstream_mask = IN
            if not to_upstream.pending and not self.session.client_paused:
                client_mask = IN
        if to_upstream.pending:
            upstream_mask |= OUT
        masks = (client_mask, upstream_mask)
        if masks != self._masks:  # most events change nothing: no call into the hub
            self._masks = masks
            hub.watch(self._fds[0], self, client_mask)
            hub.watch(self._fds[1], self, upstream_mask)

    def _client_readable(self) -> None:
        receiver = self._from_client
        data = receiver.read_now(RECEIVE_SIZE)
        if data is None:
            if receiver.needs_pumps:
                self._hand_over(Handover("", b"-", Output()))
            return
        self._touch()
        out = self.session.client_data(data)
        guard = self.ctx.guard
        if guard is not None and guard.delay:
            self._hand_over(Handover("client", data, out, enqueued=False))
            return
        self._enqueue(out)
        if not data or out.close is not None or out.start_client_tls:
            self._hand_over(Handover("client", data, out))
            return
        if out.notes:
            self._observe(out)
        if receiver.needs_pumps:  # after these bytes: the pumps read on (net.receiver)
            self._hand_over(Handover("", b"-", Output()))

    def _upstream_readable(self) -> None:
        receiver = self._from_upstream
        assert receiver is not None
        data = receiver.read_now(RECEIVE_SIZE)
        if data is not None:
            self._touch()
            self._upstream_data(data)
        if receiver.needs_pumps and self._hub is not None:
            self._hand_over(Handover("", b"-", Output()))

    def _upstream_data(self, data: bytes) -> None:
        """Bytes read from upstream (``b""``: its end), executed as far as the hub can."""
        out = self.session.server_data(data)
        self._enqueue(out)
        if not data or out.close is not None or out.start_client_tls:
            self._hand_over(Handover("upstream", data, out))
        elif out.notes:
            self._observe(out)
