"""Who the client is, and telling the mail server (``upstream.client_ip``).

``ClientOrigin`` is the client's endpoint and the endpoint it connected to: the TCP peer and
the proxy's own address, or what a trusted PROXY header carried (see ``server.proxy_in``).
The upstream connector passes it on, before the session sees a byte:

- ``proxy_v2``: a PROXY v2 header is the first thing written on the upstream connection
  (Dovecot: ``haproxy_trusted_networks`` and ``haproxy = yes`` on the listener).
- ``id``: after the greeting (and after upstream STARTTLS), ``ID ("x-originating-ip" ...)``
  and its answer is consumed here, so the client never sees either (Dovecot:
  ``login_trusted_networks``). A client's own ``ID`` later is relayed as is; Dovecot 2.3
  answers it and keeps the address the proxy gave (a test checks it).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from imapproxy.net.upstream_dialogue import Negotiation
from imapproxy.wire import ResponseKind
from imapproxy.wire.proxy_protocol import Endpoint, IPAddress, encode_v2

__all__ = ["ClientOrigin", "announce_by_id", "endpoint", "proxy_v2_header"]

ID_TAG = b"imapproxy-id"  # the client has sent nothing yet: no tag of its can collide


@dataclass(frozen=True, slots=True)
class ClientOrigin:
    client: Endpoint  # the client: the TCP peer, or a trusted PROXY header's source
    local: Endpoint  # where it connected to: the proxy's address, or the header's destination

    @classmethod
    def of_socket(cls, sock: trio.socket.SocketType) -> ClientOrigin:
        """From an accepted socket's peer and local names; raises OSError when the peer is
        already gone."""
        peer, local = sock.getpeername(), sock.getsockname()
        return cls(endpoint(peer[0], peer[1]), endpoint(local[0], local[1]))

    @property
    def client_text(self) -> str:
        """``host:port`` as the logs show the client."""
        host, port = self.client
        return f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"


def endpoint(host: str, port: int) -> Endpoint:
    """A socket name as an Endpoint: no IPv6 scope, IPv4-mapped IPv6 as IPv4 (a dual-stack
    listener reports IPv4 clients so; trusted networks and rules are written in IPv4)."""
    return _address(host), int(port)


# Parsing an address is ~3 µs, twice per session (peer and local); the proxy's own address and
# a reconnecting client's repeat. The objects are immutable, so they can be shared.
@functools.lru_cache(maxsize=1024)
def _address(host: str) -> IPAddress:
    address: IPAddress = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


def proxy_v2_header(origin: ClientOrigin) -> bytes:
    return encode_v2(origin.client, origin.local)


def id_command(origin: ClientOrigin) -> bytes:
    (client, client_port), (local, local_port) = origin.client, origin.local
    fields = (
        ("x-originating-ip", str(client)),
        ("x-originating-port", str(client_port)),
        ("x-connected-ip", str(local)),
        ("x-connected-port", str(local_port)),
    )
    pairs = " ".join(f'"{key}" "{value}"' for key, value in fields)
    return ID_TAG + b" ID (" + pairs.encode("ascii") + b")\r\n"


def announce_by_id(origin: ClientOrigin) -> Callable[[Negotiation], Awaitable[None]]:
    """The connector's step after the greeting: send ID, consume ``* ID`` and the tagged
    answer. A server that answers NO or BAD (no ID support) costs nothing more: the
    session goes on, only without the address at the server. BYE ends the session."""
    command = id_command(origin)

    async def announce(lines: Negotiation) -> None:
        await lines.send(command)
        for _ in range(1000):  # `* ID (...)`, then the tagged answer; bounded
            head, line = await lines.response()
            if head.kind is ResponseKind.TAGGED and head.tag == ID_TAG:
                return
            if head.kind is ResponseKind.UNTAGGED and head.word == "BYE":
                raise lines.error(f"upstream said BYE to the proxy's ID: {line[:120]!r}")
        raise lines.error("upstream sent no answer to the proxy's ID")

    return announce
