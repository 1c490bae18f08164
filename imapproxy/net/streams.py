"""Stream types and connection errors shared by the network layer and the session driver."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import trio

# Errors that mean "this connection is gone", not "the proxy has a bug".
CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

# Errors that mean "out of resources right now" (the process or the system is full), not
# "this socket or peer is broken": whoever meets one waits and tries again.
RESOURCE_ERRNOS = {
    errno.EMFILE: "emfile",
    errno.ENFILE: "enfile",
    errno.ENOMEM: "enomem",
    errno.ENOBUFS: "enobufs",
}


def resource_error(exc: BaseException) -> str | None:
    """The ``reason`` label of an out-of-resources OSError, or None for any other error."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return RESOURCE_ERRNOS.get(exc.errno)
    return None


UpstreamConnector = Callable[[], Awaitable[trio.abc.Stream]]
ClientTLSStarter = Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]]


class UpstreamSetupError(Exception):
    """The proxy's own exchange with a fresh upstream connection failed; ``reason`` is the
    ``upstream_errors_total`` label."""

    reason = "setup"


class UpstreamTLSError(UpstreamSetupError):
    """The upstream leg could not be secured (no STARTTLS offered, handshake failed)."""

    reason = "tls"


class PrefixedStream(trio.abc.Stream):
    """A plain TCP stream from which the connector already read ``prefix`` (the greeting,
    before its own ID exchange): reads return the prefix first. ``fastio`` reads and writes
    ``transport``'s socket directly once the prefix is delivered."""

    def __init__(self, transport: trio.SocketStream, prefix: bytes) -> None:
        self.transport = transport
        self.prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self.prefix:
            return await self.transport.receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        n = len(self.prefix) if max_bytes is None else max_bytes
        chunk, self.prefix = self.prefix[:n], self.prefix[n:]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport.aclose()


def tls_details(stream: trio.abc.Stream, prefix: str = "") -> dict[str, object]:
    """Log fields for a TLS leg; an upstream STARTTLS stream wraps its SSLStream."""
    if type(stream) is trio.SocketStream:  # plain TCP: the common case, no lookups
        return {}
    stream = getattr(stream, "ssl_stream", stream)
    version = getattr(stream, "version", None)  # trio.SSLStream or net.tls_socket's stream
    cipher_of = getattr(stream, "cipher", None)
    if callable(version) and callable(cipher_of):
        cipher = cipher_of()
        return {
            f"{prefix}tls_version": version(),
            f"{prefix}tls_cipher": cipher[0] if cipher else None,
        }
    return {}
