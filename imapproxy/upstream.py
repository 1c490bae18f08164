"""Connecting to the mail server: plain TCP, implicit TLS, or STARTTLS before relaying."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .driver import UpstreamConnector
from .tls import tls_upstream_connector

if TYPE_CHECKING:
    from .config import Upstream
    from .telemetry import Telemetry


def make_upstream_connector(upstream: Upstream, telemetry: Telemetry) -> UpstreamConnector:
    """A connector for the session driver; build it once per config (a TLS one loads the
    CA store now). TCP_NODELAY is on: trio's SocketStream sets it."""
    if upstream.tls != "none":
        return tls_upstream_connector(upstream, telemetry)
    host, port = upstream.address.host, upstream.address.port

    async def connect_plain() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    return connect_plain
