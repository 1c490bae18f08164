"""Connecting to the mail server: plain TCP, implicit TLS, or STARTTLS before relaying."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .config import Upstream
    from .telemetry import Telemetry


def make_upstream_connector(
    upstream: Upstream, telemetry: Telemetry
) -> Callable[[], Awaitable[trio.abc.Stream]]:
    """A connector for the session driver. TCP_NODELAY is on: trio's SocketStream sets it."""
    host, port = upstream.address.host, upstream.address.port
    if upstream.tls == "none":

        async def connect_plain() -> trio.abc.Stream:
            return await trio.open_tcp_stream(host, port)

        return connect_plain
    from .tls import tls_upstream_connector  # noqa: PLC0415

    return tls_upstream_connector(upstream, telemetry)
