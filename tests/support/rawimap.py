"""A blocking, literal-aware raw IMAP client for transcript tests: bytes in, bytes out.

It keeps every response exactly as received, so a test can compare what a server said
directly with what it said through the proxy.
"""

from __future__ import annotations

import re
import socket

_LITERAL_END = re.compile(rb"~?\{(\d+)\+?\}\r\n\Z")


class RawIMAP:
    def __init__(
        self,
        address: tuple[str, int],
        timeout: float = 30.0,
        *,
        source: str | None = None,  # e.g. "127.0.0.5": play a distinct client address
        preamble: bytes = b"",  # sent before the greeting is read (a PROXY header)
    ) -> None:
        bind = None if source is None else (source, 0)
        self.sock = socket.create_connection(address, timeout=timeout, source_address=bind)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if preamble:
            self.sock.sendall(preamble)
        self._buf = bytearray()
        self.greeting = self.read_response()

    # -- sending ----------------------------------------------------------------------
    def send(self, data: bytes, *, bytewise: bool = False) -> None:
        if not bytewise:
            self.sock.sendall(data)
            return
        for i in range(len(data)):  # one byte per write: exercises every split point
            self.sock.sendall(data[i : i + 1])

    # -- receiving --------------------------------------------------------------------
    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("connection closed")
        self._buf += chunk

    def _take_line(self) -> bytes:
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line = bytes(self._buf[: idx + 1])
                del self._buf[: idx + 1]
                return line
            self._fill()

    def _take_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read_response(self) -> bytes:
        """One whole response: its lines and literal payloads, as received."""
        parts = []
        while True:
            line = self._take_line()
            parts.append(line)
            m = _LITERAL_END.search(line)
            if m is None:
                return b"".join(parts)
            parts.append(self._take_exact(int(m.group(1))))

    def until_tagged(self, tag: bytes) -> list[bytes]:
        """Responses up to and including the tagged answer to ``tag``."""
        out = []
        for _ in range(1_000_000):
            resp = self.read_response()
            out.append(resp)
            if resp.startswith(tag + b" "):
                return out
        raise AssertionError("no tagged answer")

    def until_continuation(self) -> list[bytes]:
        out = []
        for _ in range(1_000_000):
            resp = self.read_response()
            out.append(resp)
            if resp.startswith(b"+"):
                return out
        raise AssertionError("no continuation request")

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawIMAP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_VOLATILE = [
    # Dovecot's timing note: "(0.001 + 0.000 + 0.002 secs)"
    (re.compile(rb"\(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)"), b"(T secs)"),
    # per-mailbox UIDVALIDITY differs between two users seeded alike
    (re.compile(rb"(UIDVALIDITY|APPENDUID|COPYUID) \d+"), rb"\1 N"),
]


def normalise(responses: list[bytes]) -> list[bytes]:
    """Mask what legitimately differs between two equally seeded accounts."""
    out = []
    for resp in responses:
        for pattern, repl in _VOLATILE:
            resp = pattern.sub(repl, resp)
        out.append(resp)
    return out
