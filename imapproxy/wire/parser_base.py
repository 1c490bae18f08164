"""What the two direction parsers share: input, literal payload, the end of the stream, STARTTLS.

``ClientParser`` (``client.py``) and ``ServerParser`` (``server.py``) each own a state
machine over one ``Framer``; the steps that do not depend on the direction are written
here once:

* input: ``receive_data`` (``b""`` is the peer closing its side), ``buffered``,
  ``take_rest``;
* a literal's payload: ``_literal_data`` hands out the next piece and moves to the state
  after the literal on its last piece;
* a literal announcement: ``_literal`` reads it from a line's end; one out of range is
  fatal, and the parser is closed before the error propagates;
* the end of the input: ``_input_exhausted`` (no complete event buffered) answers
  ``NEED_DATA`` while the peer may send more; at EOF it is ``CLOSED`` between commands
  (responses) with nothing buffered, and a fatal ``ProtocolError`` in the middle of one;
* STARTTLS: ``start_tls`` restarts plain-text parsing on the TLS stream; bytes received
  before it and not yet parsed were sent in plain text and must never be read as part of
  the TLS session (the CVE-2011-0411 class), so they are a fatal ``ProtocolError``.

A subclass names its states: ``_READY`` (between commands or responses), ``_CLOSED`` and
``_AFTER_LITERAL``, and the two error texts.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from .errors import ProtocolError
from .events import CLOSED, NEED_DATA, LiteralData, LiteralHeader, Sentinel
from .framing import Framer, literal_at_end
from .grammar import LITERAL_LINE_ENDS


class DirectionParser:
    """The shared steps of a direction parser (module docstring); not used on its own."""

    __slots__ = ("_framer", "_state")

    _READY: ClassVar[enum.Enum]  # between commands (responses): a clean place to end
    _CLOSED: ClassVar[enum.Enum]
    _AFTER_LITERAL: ClassVar[enum.Enum]  # the line goes on after a literal's payload
    _ENDED_INSIDE: ClassVar[str]  # the error text for EOF in the middle of a command
    _PIPELINED_BEFORE_TLS: ClassVar[str]  # the error text for plain text before TLS

    def __init__(self, max_line: int) -> None:
        # Over-long lines stream as pieces in both directions (bounded memory).
        self._framer = Framer(max_line, split_long_lines=True)
        self._state: enum.Enum = self._READY

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        self._framer.receive_data(data)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed."""
        return self._framer.buffered

    def take_rest(self) -> bytes:
        """Every byte received and not yet parsed (handed on when another reader takes over)."""
        return self._framer.take_rest()

    def start_tls(self) -> None:
        """The TLS handshake on this direction's stream is due: parsing restarts in the ready
        state. Raises a fatal ``ProtocolError`` if plain-text bytes are still buffered."""
        if self._framer.buffered:
            raise ProtocolError(self._PIPELINED_BEFORE_TLS, fatal=True)
        self._state = self._READY

    def _literal_data(self) -> LiteralData | Sentinel:
        """The next piece of the current literal's payload, or what ``_input_exhausted`` says."""
        data = self._framer.next_literal_data()
        if data is None:
            return self._input_exhausted()
        if data.last:
            self._state = self._AFTER_LITERAL
        return data

    def _literal(self, line: bytes) -> LiteralHeader | None:
        """The literal ``line`` announces at its end; a size out of range closes the parser
        and raises (fatal)."""
        if not line.endswith(LITERAL_LINE_ENDS):
            return None  # most lines: no call, no regular expression
        try:
            return literal_at_end(line)
        except ProtocolError:
            self._state = self._CLOSED
            raise

    def _input_exhausted(self) -> Sentinel:
        """No complete event is buffered: ``NEED_DATA``, or at EOF ``CLOSED`` (clean) or a
        fatal ``ProtocolError`` (in the middle of a command or response)."""
        if not self._framer.eof:
            return NEED_DATA
        clean = self._state is self._READY and not self._framer.buffered
        self._state = self._CLOSED
        if clean:
            return CLOSED
        raise ProtocolError(self._ENDED_INSIDE, fatal=True)
