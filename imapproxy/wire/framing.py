"""Framing: one direction's byte stream cut into line pieces and literal payload pieces.

IMAP is line-based except for literals: a line ending in ``{n}``, ``{n+}`` or ``~{n}`` is
followed by exactly n bytes of payload, then the line goes on. The framer knows nothing
else; the direction parsers decide what the lines mean and when a literal's payload may
start (a synchronising client literal waits for the server's continuation request).

Cost model: line ends are found with ``bytes.find`` (C speed) and a remembered scan offset,
so a line drip-fed a byte at a time is scanned once; literal payload is handed out as slices,
and when a read is all payload the received ``bytes`` object itself is handed out (no copy).
Buffered input is capped: a line never exceeds ``max_line`` bytes. With
``split_long_lines`` a longer line is handed out as pieces (the last one keeps the line's
end and any literal announcement whole); without it, it is a fatal ``LineTooLong``.
"""

from __future__ import annotations

from . import grammar
from .errors import ProtocolError
from .events import LiteralData, LiteralHeader

# Over-long lines are cut into pieces that keep the longest literal announcement back, so an
# announcement is never split.
_TAIL_KEEP = grammar.LITERAL_TAIL
_COMPACT_AT = 1 << 16  # buffer compaction threshold (not a line limit)
_LITERAL_END = grammar.LITERAL_AT_END_RE
_LITERAL_LINE_ENDS = grammar.LITERAL_LINE_ENDS


def literal_at_end(line: bytes) -> LiteralHeader | None:
    """The literal a line announces at its end, if any (grammar: literal, literal8).

    A size beyond number64, or with more digits than the grammar reads, is a fatal
    ``ProtocolError``: a server might read a literal there, so the proxy must not read
    "no literal".
    """
    if not line.endswith(_LITERAL_LINE_ENDS):
        return None
    m = _LITERAL_END.search(line, max(0, len(line) - _TAIL_KEEP))
    if m is None:
        if grammar.overlong_literal(line):
            raise ProtocolError("literal size out of range", fatal=True)
        return None
    size = grammar.literal_size(m.group(2))
    if size is None:
        raise ProtocolError(f"literal size {int(m.group(2))} out of range", fatal=True)
    return LiteralHeader(size=size, sync=m.group(3) != b"+", binary=m.group(1) == b"~")


class LineTooLong(ProtocolError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than {limit} bytes", fatal=True)


class Framer:
    """One direction's buffer, cut into lines and literal payload (module docstring).

    Contract: ``receive_data`` appends (``b""``: EOF); ``next_line`` hands out the next
    line with its LF, or a piece of an over-long one, or None (more input needed); after
    ``start_literal(n)``, ``next_literal_chunk``/``next_literal_data`` hand out exactly n
    bytes of payload in pieces. It never interprets a line: the parser decides when a
    literal starts. Bytes handed out are never handed out again.
    """

    __slots__ = ("_buf", "_eof", "_literal_left", "_max_line", "_pos", "_scan", "_split")

    def __init__(self, max_line: int, *, split_long_lines: bool) -> None:
        self._buf: bytes | bytearray = b""
        self._pos = 0  # start of unconsumed input in _buf
        self._scan = 0  # no LF before this offset (avoids rescanning a growing line)
        self._literal_left = 0
        self._max_line = max_line
        self._split = split_long_lines  # server side: long lines stream as pieces
        self._eof = False

    # -- input ----------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        if self._pos >= len(self._buf):
            # Nothing left over: adopt the new bytes as they are (the zero-copy path).
            self._buf = data if isinstance(data, bytes) else bytes(data)
            self._pos = self._scan = 0
            return
        if isinstance(self._buf, bytes):
            self._buf = bytearray(memoryview(self._buf)[self._pos :])
            self._scan -= self._pos
            self._pos = 0
        self._buf += data

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out."""
        return len(self._buf) - self._pos

    @property
    def literal_left(self) -> int:
        return self._literal_left

    def take_rest(self) -> bytes:
        """Hand out every unconsumed byte (used to detect data pipelined after STARTTLS)."""
        rest = bytes(self._buf[self._pos :])
        self._buf, self._pos, self._scan = b"", 0, 0
        return rest

    # -- lines ----------------------------------------------------------------------
    def next_line(self) -> tuple[bytes, bool] | None:
        """The next line (with its LF) as ``(line, True)``, a piece of an over-long line as
        ``(piece, False)`` when splitting, or None when more input is needed."""
        buf, pos, scan = self._buf, self._pos, self._scan
        idx = buf.find(b"\n", pos if pos > scan else scan)
        if idx < 0:
            end = len(buf)
            self._scan = end
            if end - pos <= self._max_line:
                return None
            if not self._split:
                raise LineTooLong(self._max_line)
            cut = end - _TAIL_KEEP
            piece = bytes(buf[pos:cut])
            self._consume(cut)
            return piece, False
        end = idx + 1
        if end - pos > self._max_line:
            if not self._split:
                raise LineTooLong(self._max_line)
            # Cut even when the line end is at hand, so a long line arrives as the same
            # kind of pieces however the peer's writes split it.
            cut = min(pos + self._max_line, end - _TAIL_KEEP)
            piece = bytes(buf[pos:cut])
            self._consume(cut)
            return piece, False
        if end == len(buf):  # the line ends the input (the common case): nothing left
            self._buf, self._pos, self._scan = b"", 0, 0
            if pos == 0 and type(buf) is bytes:
                return buf, True  # the whole read is the line: no copy
            line = buf[pos:end]
        else:
            line = buf[pos:end]  # before _consume: compaction changes a bytearray in place
            self._consume(end)
        return (line if type(line) is bytes else bytes(line)), True

    # -- literals -------------------------------------------------------------------
    def start_literal(self, size: int) -> None:
        self._literal_left = size

    def next_literal_chunk(self) -> bytes | None:
        """The next piece of the current literal's payload, or None when input is needed."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail <= 0:
            return None
        take = min(avail, self._literal_left)
        if pos == 0 and take == len(buf) and isinstance(buf, bytes):
            chunk = buf  # a whole read of payload: forward the very object
        else:
            chunk = bytes(buf[pos : pos + take])
        self._literal_left -= take
        self._consume(pos + take)
        return chunk

    def next_literal_data(self) -> LiteralData | None:
        """The next payload piece as an event (``last`` on the literal's final piece)."""
        chunk = self.next_literal_chunk()
        return None if chunk is None else LiteralData(chunk, not self._literal_left)

    def _consume(self, new_pos: int) -> None:
        if new_pos >= len(self._buf):
            self._buf, self._pos, self._scan = b"", 0, 0
        elif new_pos >= _COMPACT_AT and isinstance(self._buf, bytearray):
            del self._buf[:new_pos]
            self._scan = max(0, self._scan - new_pos)
            self._pos = 0
        else:
            self._pos = new_pos
