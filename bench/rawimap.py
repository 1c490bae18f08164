"""A minimal raw-socket IMAP client for the benchmark: literal-aware, cheap, blocking.

It is built so that the client is never the bottleneck: lines are found with ``bytes.find``
in a small buffer; literal payloads (the 10 MB FETCH body) are received with ``recv_into``
straight into a reusable scratch buffer and dropped, never accumulated or copied, unless the
caller asks to keep them (``keep_literals=True``, used once per target to check the bytes).
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass, field

_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r\n\Z")
_SCRATCH = 1 << 20  # literal payload sink
_RECV = 256 * 1024


class IMAPError(Exception):
    pass


@dataclass
class Reply:
    status: bytes  # OK / NO / BAD
    tagged: bytes  # the whole tagged line
    untagged: list[bytes] = field(default_factory=list)  # only when collected
    literals: list[bytes] = field(default_factory=list)  # only when kept
    literal_bytes: int = 0


class Conn:
    __slots__ = ("_buf", "_n", "_pos", "_rbuf", "_rmv", "_sink", "sock")

    def __init__(
        self,
        address: tuple[str, int],
        timeout: float = 30.0,
        *,
        tls: ssl.SSLContext | None = None,
        recv_buffer: int = _RECV,
    ) -> None:
        """Connect; ``tls``: implicit TLS (handshake now, name ``localhost``).
        ``recv_buffer``: small for the idle mode's thousands of connections."""
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = sock
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(sock, server_hostname="localhost")
            except BaseException:
                sock.close()
                raise
        self._buf = bytearray()
        self._pos = 0
        self._n = 0
        self._rbuf = bytearray(recv_buffer)
        self._rmv = memoryview(self._rbuf)
        self._sink: memoryview | None = None  # made at the first literal

    def starttls(self, tls: ssl.SSLContext) -> None:
        """After the greeting: STARTTLS, then the handshake (nothing may be buffered)."""
        self.command(b"T", b"STARTTLS")
        if len(self._buf) != self._pos:
            raise IMAPError("data after the STARTTLS answer")
        self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")

    # -- reading ------------------------------------------------------------------------
    def _fill(self) -> None:
        n = self.sock.recv_into(self._rbuf)
        if n == 0:
            raise IMAPError("connection closed by peer")
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += self._rmv[:n]

    def readline(self) -> bytes:
        while True:
            idx = self._buf.find(b"\n", self._pos)
            if idx >= 0:
                line = bytes(self._buf[self._pos : idx + 1])
                self._pos = idx + 1
                if self._pos == len(self._buf):
                    self._buf.clear()
                    self._pos = 0
                return line
            self._fill()

    def _literal(self, size: int, keep: bool) -> bytes | None:
        """Consume ``size`` payload bytes: first what is buffered, then recv_into the sink."""
        kept = bytearray() if keep else None
        avail = len(self._buf) - self._pos
        take = min(avail, size)
        if take:
            if kept is not None:
                kept += self._buf[self._pos : self._pos + take]
            self._pos += take
            if self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
        left = size - take
        if self._sink is None:
            self._sink = memoryview(bytearray(_SCRATCH))
        sink = self._sink
        recv_into = self.sock.recv_into
        while left:
            n = recv_into(sink[: min(left, _SCRATCH)])
            if n == 0:
                raise IMAPError("connection closed inside a literal")
            if kept is not None:
                kept += sink[:n]
            left -= n
        return bytes(kept) if kept is not None else None

    def read_reply(
        self, tag: bytes, *, collect: bool = False, keep_literals: bool = False
    ) -> Reply:
        """Read up to and including the tagged line for ``tag``."""
        prefix = tag + b" "
        reply = Reply(b"", b"")
        while True:
            line = self.readline()
            if line.startswith(prefix):
                reply.tagged = line
                reply.status = line[len(prefix) :].split(b" ", 1)[0].rstrip(b"\r\n")
                return reply
            full = line
            while line.endswith(b"}\r\n"):
                m = _LITERAL.search(line)
                if m is None:
                    break
                size = int(m.group(1))
                data = self._literal(size, keep_literals)
                reply.literal_bytes += size
                if data is not None:
                    reply.literals.append(data)
                line = self.readline()  # the rest of the response after the literal
                if collect:
                    full += line
            if collect:
                reply.untagged.append(full)

    # -- commands -----------------------------------------------------------------------
    def greeting(self) -> bytes:
        line = self.readline()
        if not line.startswith(b"* OK"):
            raise IMAPError(f"unexpected greeting {line[:80]!r}")
        return line

    def command(self, tag: bytes, text: bytes, *, check: bool = True, **kw: bool) -> Reply:
        self.sock.sendall(tag + b" " + text + b"\r\n")
        reply = self.read_reply(tag, **kw)
        if check and reply.status != b"OK":
            raise IMAPError(f"{text[:40]!r} -> {reply.tagged[:120]!r}")
        return reply

    def timed(self, tag: bytes, text: bytes) -> int:
        """Send one command and read its answer; nanoseconds taken (perf_counter_ns)."""
        data = tag + b" " + text + b"\r\n"
        t0 = time.perf_counter_ns()
        self.sock.sendall(data)
        reply = self.read_reply(tag)
        t1 = time.perf_counter_ns()
        if reply.status != b"OK":
            raise IMAPError(f"{text[:40]!r} -> {reply.tagged[:120]!r}")
        return t1 - t0

    def login(self, user: str, password: str, mailbox: str | None = "INBOX") -> None:
        self.greeting()
        self.command(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
        if mailbox is not None:
            self.command(b"S", b'SELECT "%s"' % mailbox.encode())

    def logout(self) -> None:
        try:
            self.command(b"Z", b"LOGOUT", check=False)
        finally:
            self.close()

    def close(self) -> None:
        self.sock.close()


def open_session(
    address: tuple[str, int],
    user: str,
    password: str,
    mailbox: str | None = "INBOX",
    *,
    tls: ssl.SSLContext | None = None,
    starttls: bool = False,
) -> Conn:
    """A logged-in (and SELECTed) session; ``tls`` with ``starttls``: STARTTLS after the
    greeting, ``tls`` alone: implicit TLS."""
    conn = Conn(address, tls=None if starttls else tls)
    try:
        if starttls:
            assert tls is not None
            conn.greeting()
            conn.starttls(tls)
            conn.command(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
            if mailbox is not None:
                conn.command(b"S", b'SELECT "%s"' % mailbox.encode())
            return conn
        conn.login(user, password, mailbox)
    except BaseException:
        conn.close()
        raise
    return conn
