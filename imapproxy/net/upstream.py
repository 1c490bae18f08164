"""Connecting to the mail server: plain TCP, implicit TLS, or STARTTLS before relaying, with
the client's address passed on as ``upstream.client_ip`` says (see ``client_ip``)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from imapproxy.net.client_ip import ClientOrigin, announce_by_id, proxy_v2_header
from imapproxy.net.streams import PrefixedStream, UpstreamConnector, UpstreamSetupError
from imapproxy.net.upstream_dialogue import Greeted, Negotiation, after_greeting, tls_upgrader

if TYPE_CHECKING:
    from imapproxy.config.loader import Upstream
    from imapproxy.telemetry.recorder import Telemetry

__all__ = ["Dialer", "make_upstream_connector", "make_upstream_dialer", "tcp_connector"]

# One connector per session: the client's origin is part of what it sends.
Dialer = Callable[[ClientOrigin], UpstreamConnector]


def make_upstream_dialer(upstream: Upstream, telemetry: Telemetry) -> Dialer:
    """Build once per config (a TLS one loads the CA store now); call per session with the
    client's origin. TCP_NODELAY is on: trio's SocketStream sets it."""
    open_tcp = tcp_connector(upstream.address.host, upstream.address.port)
    upgrade = tls_upgrader(upstream, telemetry) if upstream.tls != "none" else None
    mode = upstream.client_ip
    if mode == "none" and upgrade is None:
        return lambda origin: open_tcp  # the common case: nothing per session

    def dial(origin: ClientOrigin) -> UpstreamConnector:
        greeted = announce_by_id(origin) if mode == "id" else None
        header = proxy_v2_header(origin) if mode == "proxy_v2" else b""

        async def connect() -> trio.abc.Stream:
            tcp = await open_tcp()
            try:
                if header:  # before anything else, TLS included: Dovecot reads it first
                    await tcp.send_all(header)
                if upgrade is not None:
                    return await upgrade(tcp, greeted)
                if greeted is not None:
                    return await _greeted_plain(tcp, greeted)
                return tcp
            except BaseException:  # failures and the driver's connect timeout alike
                await trio.aclose_forcefully(tcp)
                raise

        return connect

    return dial


def make_upstream_connector(upstream: Upstream, telemetry: Telemetry) -> UpstreamConnector:
    """A connector for sessions whose origin does not matter (``client_ip: none``)."""
    loopback = ipaddress.ip_address("127.0.0.1")
    return make_upstream_dialer(upstream, telemetry)(ClientOrigin((loopback, 0), (loopback, 0)))


async def _greeted_plain(tcp: trio.abc.Stream, greeted: Greeted) -> trio.abc.Stream:
    assert isinstance(tcp, trio.SocketStream)
    lines = Negotiation(tcp, "ID", UpstreamSetupError)
    return PrefixedStream(tcp, await after_greeting(lines, greeted))


def tcp_connector(host: str, port: int) -> UpstreamConnector:
    """Connect by TCP. An IP-literal host (the usual upstream) gets one plain connect:
    ``open_tcp_stream``'s resolver and happy-eyeballs nursery cost ~0.2 ms per session, and
    ``trio.socket``'s ``connect`` (address resolution, two scheduler passes) more than a
    non-blocking ``connect``, and a wait for the socket to be writable only when the
    handshake is not done yet. Not a checkpoint when it is (nothing waited: the session's
    first wait comes soon after)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:

        async def connect_by_name() -> trio.abc.Stream:
            return await trio.open_tcp_stream(host, port)

        return connect_by_name

    address = (host, port)

    async def connect_ip() -> trio.abc.Stream:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            err = sock.connect_ex(address)
            if err == errno.EINPROGRESS and not _connected(sock):
                await trio.lowlevel.wait_writable(sock)
                if err := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # trio's words:
                    raise OSError(err, f"Error connecting to {address!r}: {os.strerror(err)}")
            elif err not in (0, errno.EINPROGRESS):  # failed at once, as socket.connect says
                raise OSError(err, os.strerror(err))
            return trio.SocketStream(trio.socket.from_stdlib_socket(sock))  # sets TCP_NODELAY
        except BaseException:
            sock.close()
            raise

    return connect_ip


def _connected(sock: socket.socket) -> bool:
    """Whether a connect in progress is done already: on loopback (or a server close by) the
    handshake has completed by the time ``connect`` returns, and waiting in trio for the
    socket to be writable would cost a pass of the scheduler and its epoll registrations."""
    try:
        sock.getpeername()
    except OSError:  # ENOTCONN: still connecting, or failed (the wait reports which)
        return False
    return True
