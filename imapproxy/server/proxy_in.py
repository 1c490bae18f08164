"""PROXY protocol on a listener (``listen.proxy_protocol``): who the client really is.

Behind a load balancer every connection comes from the balancer; the header it sends first
names the client. ``receive_origin`` admits a header only from ``trusted_networks`` and
only complete within ``limits.proxy_header_timeout``; anything else (an untrusted peer, no
header, a malformed or truncated one, a peer that closes) ends the connection with one
``proxy_header_refused`` log line and a client-side protocol error in the metrics.

The header is read with ``MSG_PEEK`` and then exactly its bytes are consumed, so nothing
after it is read here: the session's first bytes, or the TLS handshake of ``listen_tls``
(the header comes before it), stay in the socket for whoever reads next.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import trio

from imapproxy.net.client_ip import ClientOrigin
from imapproxy.net.streams import CONNECTION_ERRORS
from imapproxy.policy.model import Network
from imapproxy.telemetry.logs import log_event
from imapproxy.telemetry.recorder import Telemetry
from imapproxy.wire.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
)

__all__ = ["ProxyAccept", "receive_origin"]

log = logging.getLogger("imapproxy")

_PEEK = 16 + V2_MAX_LENGTH  # the largest header accepted


@dataclass(frozen=True, slots=True)
class ProxyAccept:
    """A listener's PROXY protocol settings."""

    trusted_networks: tuple[Network, ...]
    timeout: float


async def receive_origin(
    sock: trio.socket.SocketType,
    origin: ClientOrigin,
    accept: ProxyAccept,
    telemetry: Telemetry,
    listener: str,
) -> ClientOrigin | None:
    """The client's origin as the header tells it (the connection's own when the header
    carries none: LOCAL, UNKNOWN); None when the connection must be closed (logged)."""
    if not any(origin.client[0] in network for network in accept.trusted_networks):
        _refused(telemetry, origin, listener, "peer not in trusted_networks")
        return None
    try:
        with trio.fail_after(accept.timeout):
            header = await _read_header(sock)
    except ProxyHeaderError as exc:
        reason = str(exc)
    except trio.TooSlowError:
        reason = f"no complete PROXY header within {accept.timeout:g}s"
    except CONNECTION_ERRORS as exc:
        reason = f"connection lost: {exc}"
    else:
        if header.source is None or header.destination is None:
            return origin
        return ClientOrigin(header.source, header.destination)
    _refused(telemetry, origin, listener, reason)
    return None


async def _read_header(sock: trio.socket.SocketType) -> ProxyHeader:
    reader = ProxyHeaderReader()
    # Every pass consumes at least one byte of a header of bounded size: bounded.
    for _ in range(16 + V2_MAX_LENGTH + V1_MAX_LENGTH):
        data = await sock.recv(_PEEK, socket.MSG_PEEK)
        if not data:
            raise ProxyHeaderError("connection closed before the PROXY header was complete")
        taken = reader.feed(data)
        while taken:  # peeked bytes are queued: these reads return at once
            chunk = await sock.recv(taken)
            if not chunk:
                raise ProxyHeaderError("connection closed during the PROXY header")
            taken -= len(chunk)
        if reader.header is not None:
            return reader.header
    raise ProxyHeaderError("PROXY header without end")


def _refused(telemetry: Telemetry, origin: ClientOrigin, listener: str, reason: str) -> None:
    telemetry.protocol_error("client")
    log_event(
        log,
        "proxy_header_refused",
        client=origin.client_text,
        listener=listener,
        reason=reason,
        level=logging.WARNING,
    )
