"""Parser for the server-to-client direction (greeting and responses).

Theory of operation
-------------------
Same contract as ``ClientParser``: ``receive_data`` then ``next_event`` until ``NEED_DATA``.
The server direction needs no answer from the client to be framed: server literals are
never synchronising, so every ``{n}`` at a line end is followed by n bytes at once.

Server lines are not capped the way client lines are: a ``* SEARCH`` over a large mailbox or
a big ``FETCH (ENVELOPE ...)`` line is legitimate. A line longer than ``max_line`` is handed
on in pieces (``partial=True``) so memory stays bounded; the literal announcement at its end
is never split across pieces.

    RESPONSE      line, no lit -> RESPONSE;  line, lit -> LITERAL;  piece -> PIECE
    LITERAL       payload done -> REST
    REST / PIECE  same as RESPONSE for the line's end, emitting ResponsePart
"""

from __future__ import annotations

import enum

from . import grammar
from .errors import ProtocolError
from .events import (
    CLOSED,
    NEED_DATA,
    LiteralHeader,
    Response,
    ResponseKind,
    ResponsePart,
    ServerEvent,
    _Sentinel,
)
from .framing import Framer, literal_at_end

DEFAULT_MAX_LINE = grammar.DEFAULT_MAX_LINE

_HEAD = grammar.RESPONSE_HEAD_RE


class _State(enum.Enum):
    RESPONSE = enum.auto()
    REST = enum.auto()  # after a literal
    PIECE = enum.auto()  # after a piece of an over-long line
    LITERAL = enum.auto()
    CLOSED = enum.auto()


class ServerParser:
    __slots__ = ("_framer", "_state")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._framer = Framer(max_line, split_long_lines=True)
        self._state = _State.RESPONSE

    def receive_data(self, data: bytes | bytearray) -> None:
        self._framer.receive_data(data)

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    def take_rest(self) -> bytes:
        """Every byte received and not yet parsed (handed on when another reader takes over)."""
        return self._framer.take_rest()

    def start_tls(self) -> None:
        """The proxy's STARTTLS to the server succeeded; nothing may have been sent after the
        tagged OK in plain text (that would be injected into the TLS session)."""
        if self._framer.buffered:
            raise ProtocolError("data pipelined after the server's STARTTLS answer", fatal=True)
        self._state = _State.RESPONSE

    def next_event(self) -> ServerEvent | _Sentinel:
        state = self._state
        framer = self._framer
        if state is _State.LITERAL:
            data = framer.next_literal_data()
            if data is None:
                return self._starved()
            if data.last:
                self._state = _State.REST
            return data
        if state is _State.CLOSED:
            return CLOSED
        got = framer.next_line()
        if got is None:
            return self._starved()
        line, complete = got
        if not complete:
            self._state = _State.PIECE
            if state is _State.RESPONSE:
                return self._response(line, None, partial=True)
            return ResponsePart(line, None, partial=True)
        try:
            literal = literal_at_end(line)
        except ProtocolError:
            self._state = _State.CLOSED
            raise
        if literal is None:
            self._state = _State.RESPONSE
        elif literal.size:
            framer.start_literal(literal.size)
            self._state = _State.LITERAL
        else:
            self._state = _State.REST
        if state is _State.RESPONSE:
            return self._response(line, literal, partial=False)
        return ResponsePart(line, literal)

    @staticmethod
    def _response(line: bytes, literal: LiteralHeader | None, *, partial: bool) -> Response:
        if line[:1] == b"+":
            return Response(ResponseKind.CONTINUATION, b"+", "", line, literal, partial)
        m = _HEAD.match(line)
        if m is None:
            return Response(ResponseKind.UNKNOWN, b"", "", line, literal, partial)
        tag = m.group(1)
        kind = ResponseKind.UNTAGGED if tag == b"*" else ResponseKind.TAGGED
        word = m.group(2).decode("ascii").upper()
        return Response(kind, tag, word, line, literal, partial)

    def _starved(self) -> _Sentinel:
        if not self._framer.eof:
            return NEED_DATA
        clean = self._state is _State.RESPONSE and not self._framer.buffered
        self._state = _State.CLOSED
        if clean:
            return CLOSED
        raise ProtocolError("server closed the connection in the middle of a response", fatal=True)
