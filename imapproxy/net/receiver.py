"""Reading one side of a session: ``receive`` for the pumps, ``read_now`` for the hub.

``receive`` (pumps): trio's ``receive_some`` tries ``recv``, and after a successful one still
yields to the scheduler; per small command that forced pass is a large share of the relay's
CPU. On a plain TCP stream the reader calls ``recv`` on the non-blocking socket itself and
waits in trio (``wait_readable``) only when there is nothing to read, with a checkpoint every
``_CHECKPOINT_EVERY`` reads so a busy session still lets others run and can be cancelled. TLS
legs and a prefix still to deliver go through the stream.

``read_now`` (hub): one read that never waits, on a plain socket or on a TLS leg's
``ssl.SSLSocket`` (``net.direct``). ``SSLWantReadError`` is "nothing there" like
``BlockingIOError``; bytes OpenSSL already decrypted (``pending()``) are invisible to epoll,
so they are read in the same call, never left behind. What the hub does not handle (a read
that must write first, an end met after some bytes) sets ``needs_pumps``.
"""

from __future__ import annotations

import socket
import ssl

import trio

from imapproxy.net.direct import direct_socket, prefix_of
from imapproxy.net.streams import PrefixedStream
from imapproxy.net.tls import UpstreamTLSStream

__all__ = ["Receiver"]

_CHECKPOINT_EVERY = 32
_NOTHING_YET = (BlockingIOError, ssl.SSLWantReadError)  # a read with nothing to read
_MIN_CONTINUE = 4096  # a TLS record this big may have others queued behind it: read on
_MAX_RECORDS = 80  # TLS records read in one call (16 KiB each at most; 256 KiB a read)


class Receiver:
    """One side's reading: ``receive`` for the pumps, ``read_now`` for the hub."""

    __slots__ = ("_raw", "_reads", "_sock", "_ssl", "_tls", "needs_pumps", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._reads = 0
        self.needs_pumps = False  # read_now met what the hub leaves to the pumps
        self._attach()

    def _attach(self) -> None:
        self._sock, self._tls = direct_socket(self.stream)
        self._ssl = self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        # What receive() reads itself: a plain socket once no prefix is left (TLS: the stream).
        self._raw = None
        if self._ssl is None and not prefix_of(self.stream):
            self._raw = self._sock

    @property
    def raw(self) -> socket.socket | None:
        """The socket ``read_now`` reads: plain TCP, or a TLS leg's ``ssl.SSLSocket`` once
        its handshake is done (whether or not a prefix is left: ``take_prefix``), else None."""
        return self._sock

    def hub_socket(self) -> socket.socket | None:
        """``raw``, unless a TLS leg holds decrypted bytes already: epoll cannot see those,
        so the hub must not start on it (the pumps read them)."""
        if self._ssl is not None and self._ssl.pending():
            return None
        return self._sock

    def take_prefix(self) -> bytes:
        """What the stream still had to deliver before the socket's bytes (a greeting the
        connector read), taken now: the caller passes it on as the first bytes read."""
        stream = self.stream
        if not isinstance(stream, PrefixedStream | UpstreamTLSStream) or not stream.prefix:
            return b""
        prefix, stream.prefix = stream.prefix, b""
        if self._ssl is None:  # the same socket object: a second one would close the fd
            self._raw = self._sock
        return prefix

    def replace(self, stream: trio.abc.Stream) -> None:
        """The stream changed (STARTTLS): read from the new one from now on."""
        self.close()
        self.stream = stream
        self._attach()

    async def receive(self, max_bytes: int) -> bytes:
        raw = self._raw
        if raw is None:
            data = bytes(await self.stream.receive_some(max_bytes))
            if self._sock is not None and self._ssl is None and not prefix_of(self.stream):
                self._raw = self._sock  # prefix delivered: the direct path
            return data
        self._reads += 1
        if self._reads % _CHECKPOINT_EVERY == 0:
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return raw.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw)
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    def read_now(self, max_bytes: int) -> bytes | None:
        """One read without waiting (the hub's; ``raw`` set, prefix taken): the bytes,
        ``b""`` at the end (EOF, ``close_notify``, an error: a TLS stream is then broken), or
        None when nothing was there after all. On a TLS leg the records already decrypted
        are read too, never left behind (epoll cannot see them). ``needs_pumps`` set: the
        hub must hand this side to the pumps after these bytes (a TLS read that must write
        first; an end met after some bytes, which the pumps' next read reports)."""
        raw = self._sock
        assert raw is not None
        try:
            data = raw.recv(max_bytes)
        except _NOTHING_YET:
            return None
        except ssl.SSLWantWriteError:  # renegotiation, a post-handshake message: rare
            self.needs_pumps = True
            return None
        except OSError as exc:
            if self._tls is not None:
                self._tls.mark_broken(exc)
            return b""
        sock = self._ssl
        if sock is not None and data and (len(data) >= _MIN_CONTINUE or sock.pending()):
            return self._more_records(sock, data, max_bytes)
        return data

    def _more_records(self, sock: ssl.SSLSocket, first: bytes, max_bytes: int) -> bytes:
        # A bulk FETCH arrives as 4-16 KiB records, one per SSL_read: the ones already in
        # the socket are read now rather than one per hub pass. Past max_bytes, only what
        # OpenSSL decrypted already (pending) is read.
        parts, n = [first], len(first)
        for _ in range(_MAX_RECORDS):
            want = max_bytes - n if n < max_bytes else sock.pending()
            if want <= 0:
                break
            try:
                more = sock.recv(want)
            except ssl.SSLWantReadError:
                break
            except OSError as exc:  # WantWrite, or the end: the pumps see it next
                if not isinstance(exc, ssl.SSLWantWriteError) and self._tls is not None:
                    self._tls.mark_broken(exc)
                self.needs_pumps = True
                break
            if not more:  # close_notify behind the bytes: the pumps' next read is b""
                self.needs_pumps = True
                break
            parts.append(more)
            n += len(more)
            if len(more) < _MIN_CONTINUE and not sock.pending():
                break
        else:
            self.needs_pumps = bool(sock.pending())  # (never with 16 KiB records)
        return b"".join(parts)

    def close(self) -> None:
        """Let go of the descriptor (before the stream is closed); never closes it."""
        sock = getattr(self, "_sock", None)  # unset if __init__ failed before it
        if sock is not None:
            if self._ssl is None:  # a TLS stream's own socket: not ours
                sock.detach()
            self._raw = self._sock = self._ssl = self._tls = None

    def __del__(self) -> None:
        self.close()  # a forgotten close must not close trio's descriptor
