"""Listening sockets several processes share with ``SO_REUSEPORT`` (``--workers``).

Each worker binds its own listener on the same address; the kernel spreads new connections
over them. The parent only *reserves* the address (bound, never listening, so it is never
handed a connection): a busy port fails once, at start, and port 0 is resolved once.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from imapproxy.config.loader import Address

__all__ = ["open_reuseport_listeners", "reserve"]


def _reuseport_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _addresses(host: str, port: int) -> list[tuple[int, Any]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: list[tuple[int, Any]] = []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    return seen


async def open_reuseport_listeners(port: int, *, host: str | None = None) -> list[Any]:
    """``trio.open_tcp_listeners`` with ``SO_REUSEPORT``: several processes accept on one port."""
    listeners = []
    for family, sockaddr in _addresses(host or "0.0.0.0", port):
        sock = _reuseport_socket(family)
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    return listeners


def reserve(address: Address) -> tuple[Address, list[socket.socket]]:
    """Bind (not listen) ``address`` with SO_REUSEPORT: proves it is free and fixes port 0."""
    held: list[socket.socket] = []
    port = address.port
    for family, sockaddr in _addresses(address.host, port):
        sock = _reuseport_socket(family)
        try:
            sock.bind((sockaddr[0], port, *sockaddr[2:]))  # the port the first one got
        except OSError:
            sock.close()
            for s in held:
                s.close()
            raise
        port = port or int(sock.getsockname()[1])
        held.append(sock)
    return Address(address.host, port), held
