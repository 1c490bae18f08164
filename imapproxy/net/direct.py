"""The socket behind a stream, for reading and writing it directly (``net.fastio``).

Descriptors: a plain leg's socket is a second Python object on trio's own descriptor (no
``dup``), so a plain session costs two descriptors, one per leg. It must never close that
descriptor: it is ``detach()``-ed (``Sender.close``/``Receiver.close``, and ``__del__``), and
before trio's stream is closed (a closed descriptor number is soon reused by another
connection). A TLS leg's ``ssl.SSLSocket`` is lent by its ``SocketTLSStream``
(``hub_socket``): it stays the stream's, never detached nor closed by the borrower.
"""

from __future__ import annotations

import socket

import trio

from imapproxy.net.streams import PrefixedStream
from imapproxy.net.tls import UpstreamTLSStream
from imapproxy.net.tls_socket import SocketTLSStream

__all__ = ["direct_socket", "plain_socket", "prefix_of", "socket_twin"]


def direct_socket(
    stream: trio.abc.Stream,
) -> tuple[socket.socket | None, SocketTLSStream | None]:
    """The socket to read and write directly, and the TLS stream it belongs to (if any).

    A ``SocketTLSStream`` (also behind the upstream's ``UpstreamTLSStream``) lends its
    ``ssl.SSLSocket`` once its handshake is done (``hub_socket``); it stays the stream's,
    never detached here. Any other TLS stream (``trio.SSLStream``): none."""
    if type(stream) is trio.SocketStream:  # the common case: no ABC isinstance checks
        return socket_twin(stream.socket), None
    tls = getattr(stream, "ssl_stream", stream)
    if isinstance(tls, SocketTLSStream):
        return tls.hub_socket(), tls
    return plain_socket(stream), None


def plain_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """A stdlib socket object on the stream's own descriptor (plain TCP streams only).

    It shares trio's descriptor and file flags (non-blocking), so ``send``/``recv`` on it never
    block. It must be ``detach()``-ed, never closed or left to the garbage collector (which
    would close trio's descriptor): ``Sender.close``/``Receiver.close`` and ``__del__`` see to
    that.
    """
    if isinstance(stream, PrefixedStream):
        stream = stream.transport
    if not isinstance(stream, trio.SocketStream):
        return None
    return socket_twin(stream.socket)


def socket_twin(sock: trio.socket.SocketType) -> socket.socket | None:
    """A stdlib socket object on the descriptor of trio's TCP socket ``sock`` (a connection
    or a listener), or None when it is closed; to be ``detach()``-ed, never closed.

    Family, type and protocol given, and SOCK_NONBLOCK in the type: no system call (the
    descriptor is non-blocking already; trio made it so), and no ``dup``. A trio TCP socket
    is SOCK_STREAM (``sock.type`` would cost an enum conversion)."""
    fd = sock.fileno()
    if fd < 0:
        return None
    try:
        return socket.socket(sock.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, sock.proto, fd)
    except OSError:
        return None


def prefix_of(stream: trio.abc.Stream) -> bytes:
    # Bytes a connector read before handing the stream over, still to deliver first.
    if type(stream) is trio.SocketStream:
        return b""
    if isinstance(stream, PrefixedStream | UpstreamTLSStream):
        return stream.prefix
    return b""
