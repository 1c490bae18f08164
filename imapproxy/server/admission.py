"""Admission: whether an accepted connection may become a session, and who its client is.

In order, before a session exists: the client's address (the socket's, or the PROXY header's
on a ``proxy_protocol`` listener, see ``server.proxy_in``), then ``limits.max_sessions`` for
the process, then ``limits.max_sessions_per_ip`` (the ``LimitBackend``: this process's
``Limiter``, or the supervisor's with several workers). A connection turned away hears one
``* BYE [UNAVAILABLE]`` line and is closed; one refused at the PROXY header step hears
nothing (it is not known to speak IMAP). Every refusal is counted and logged once.

An admitted connection holds a per-IP slot until its ``SessionGuard`` is closed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import trio

from imapproxy.net.client_ip import ClientOrigin
from imapproxy.net.streams import CONNECTION_ERRORS
from imapproxy.net.tls_socket import SocketTLSStream
from imapproxy.server.guard import LimitBackend, SessionGuard, report_hit
from imapproxy.server.proxy_in import receive_origin
from imapproxy.server.runtime import Runtime
from imapproxy.telemetry.recorder import Telemetry

__all__ = ["Admission", "Admitted", "ClientStream"]

ClientStream = trio.SocketStream | SocketTLSStream

TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections\r\n"
TOO_MANY_FROM_IP = b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A connection that may start a session: who it is, and its limits' bookkeeping."""

    origin: ClientOrigin
    guard: SessionGuard


class Admission:
    def __init__(self, limits: LimitBackend, telemetry: Telemetry) -> None:
        self.limits = limits
        self.telemetry = telemetry

    async def admit(
        self, stream: ClientStream, listener: str, runtime: Runtime, active: int
    ) -> Admitted | None:
        """Admit ``stream`` (accepted on ``listener``, ``active`` sessions open), or close
        it and return None. Reads nothing but a PROXY header: the TLS handshake and the
        session's bytes stay in the socket."""
        tcp = stream.transport_stream if isinstance(stream, SocketTLSStream) else stream
        try:
            origin = ClientOrigin.of_socket(tcp.socket)
        except OSError:  # gone already (getpeername fails)
            await stream.aclose()
            return None
        accept = runtime.proxy_accept(listener)
        if accept is not None:  # before anything else: the header names the client
            carried = None
            try:
                carried = await receive_origin(tcp.socket, origin, accept, self.telemetry, listener)
            finally:  # refused, or cancelled by a shutdown while waiting
                if carried is None:
                    await trio.aclose_forcefully(stream)
            if carried is None:
                return None
            origin = carried
        peer = origin.client_text
        ip = str(origin.client[0])  # the carried address when behind a balancer
        if active >= runtime.config.limits.max_sessions:
            report_hit(self.telemetry, "sessions", peer)
            await turn_away(stream, TOO_MANY)
            return None
        if self.limits.open_session(ip) is not None:
            report_hit(self.telemetry, "sessions_per_ip", peer)
            await turn_away(stream, TOO_MANY_FROM_IP)
            return None
        return Admitted(origin, SessionGuard(self.limits, ip, peer, self.telemetry))


async def turn_away(stream: trio.abc.Stream, line: bytes) -> None:
    """Refuse a connection at accept: one line, then close; a client gone is no error."""
    with trio.move_on_after(2):
        with contextlib.suppress(*CONNECTION_ERRORS):
            await stream.send_all(line)
        with contextlib.suppress(*CONNECTION_ERRORS):
            await stream.aclose()
