"""Stream types and connection errors shared by the network layer and the session driver."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

# Errors that mean "this connection is gone", not "the proxy has a bug".
CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

UpstreamConnector = Callable[[], Awaitable[trio.abc.Stream]]
ClientTLSStarter = Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]]


class UpstreamTLSError(Exception):
    """The upstream leg could not be secured (no STARTTLS offered, handshake failed)."""


def tls_details(stream: trio.abc.Stream, prefix: str = "") -> dict[str, object]:
    """Log fields for a TLS leg; an upstream STARTTLS stream wraps its SSLStream."""
    stream = getattr(stream, "ssl_stream", stream)
    if isinstance(stream, trio.SSLStream):
        cipher = stream.cipher()
        return {
            f"{prefix}tls_version": stream.version(),
            f"{prefix}tls_cipher": cipher[0] if cipher else None,
        }
    return {}
