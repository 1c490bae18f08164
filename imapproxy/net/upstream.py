"""Connecting to the mail server: plain TCP, implicit TLS, or STARTTLS before relaying."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

import trio

from imapproxy.net.streams import UpstreamConnector
from imapproxy.net.tls import tls_upstream_connector

if TYPE_CHECKING:
    from imapproxy.config.loader import Upstream
    from imapproxy.telemetry.recorder import Telemetry


def make_upstream_connector(upstream: Upstream, telemetry: Telemetry) -> UpstreamConnector:
    """A connector for the session driver; build it once per config (a TLS one loads the
    CA store now). TCP_NODELAY is on: trio's SocketStream sets it."""
    if upstream.tls != "none":
        return tls_upstream_connector(upstream, telemetry)
    return tcp_connector(upstream.address.host, upstream.address.port)


def tcp_connector(host: str, port: int) -> UpstreamConnector:
    """Connect by TCP. An IP-literal host (the usual upstream) gets one plain connect:
    ``open_tcp_stream``'s resolver and happy-eyeballs nursery cost ~0.2 ms per session."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:

        async def connect_by_name() -> trio.abc.Stream:
            return await trio.open_tcp_stream(host, port)

        return connect_by_name

    async def connect_ip() -> trio.abc.Stream:
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)  # sets TCP_NODELAY

    return connect_ip
