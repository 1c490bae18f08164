"""Parser for the server-to-client direction (greeting and responses).

Theory of operation
-------------------
Same contract as ``ClientParser``: ``receive_data`` then ``next_event`` until ``NEED_DATA``;
the steps both share (input, literal payload, EOF, STARTTLS) are in ``parser_base.py``.
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
from .events import (
    CLOSED,
    LiteralHeader,
    Response,
    ResponseKind,
    ResponsePart,
    Sentinel,
    ServerEvent,
)
from .parser_base import DirectionParser

DEFAULT_MAX_LINE = grammar.DEFAULT_MAX_LINE

_HEAD = grammar.RESPONSE_HEAD_RE
# Response words as received -> as reported (upper-case str): a handful of words make up
# nearly every response, so decoding each once saves two calls per response.
_WORDS: dict[bytes, str] = {}
_MAX_WORDS = 512  # a server inventing words cannot grow it without bound


class _State(enum.Enum):
    RESPONSE = enum.auto()
    REST = enum.auto()  # after a literal
    PIECE = enum.auto()  # after a piece of an over-long line
    LITERAL = enum.auto()
    CLOSED = enum.auto()


class ServerParser(DirectionParser):
    """The server direction's parser (module docstring).

    Contract: ``receive_data`` adds bytes (``b""``: the server closed); ``next_event``
    returns the next ``ServerEvent``, ``NEED_DATA``, or ``CLOSED`` (clean end between
    responses, then always ``CLOSED``); it never pauses. Bytes that are no IMAP framing
    (a literal size out of range, EOF inside a response) raise a fatal ``ProtocolError``
    and leave the parser closed. Every event carries its exact bytes.
    """

    __slots__ = ()

    _READY = _State.RESPONSE
    _CLOSED = _State.CLOSED
    _AFTER_LITERAL = _State.REST
    _ENDED_INSIDE = "server closed the connection in the middle of a response"
    _PIPELINED_BEFORE_TLS = "data pipelined after the server's STARTTLS answer"

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        super().__init__(max_line)

    def next_event(self) -> ServerEvent | Sentinel:
        """The next event (class docstring)."""
        state = self._state
        if state is _State.LITERAL:
            return self._literal_data()
        if state is _State.CLOSED:
            return CLOSED
        framer = self._framer
        got = framer.next_line()
        if got is None:
            return self._input_exhausted()
        line, complete = got
        if not complete:
            self._state = _State.PIECE
            if state is _State.RESPONSE:
                return self._response(line, None, partial=True)
            return ResponsePart(line, None, partial=True)
        literal = self._literal(line)
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
        raw_word = m.group(2)
        word = _WORDS.get(raw_word)
        if word is None:
            word = raw_word.decode("ascii").upper()
            if len(_WORDS) < _MAX_WORDS:
                _WORDS[raw_word] = word
        return Response(kind, tag, word, line, literal, partial)
