"""Events produced by the sans-I/O parsers.

Every event that stands for bytes on the wire carries those bytes unchanged in ``raw`` (or
``data`` for literal payload), so forwarding an event is forwarding the original bytes: the
parsers observe, they never re-serialise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Sentinel(enum.Enum):
    """What ``next_event`` returns when it has no event: compare with ``is``."""

    NEED_DATA = "NEED_DATA"  # nothing more can be parsed until receive_data() brings bytes
    PAUSED = "PAUSED"  # the parser waits for the other direction (see ClientParser)
    CLOSED = "CLOSED"  # end of stream reached cleanly between commands/responses


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED
CLOSED: Final = Sentinel.CLOSED


@dataclass(frozen=True, slots=True)
class LiteralHeader:
    """A literal announced at the end of a line: ``{n}``, ``{n+}`` or ``~{n}`` (literal8)."""

    size: int
    sync: bool  # {n}: the client must wait for a continuation request before sending it
    binary: bool  # ~{n}: may contain NUL (RFC 3516)


# --- client to server ----------------------------------------------------------------


@dataclass(slots=True)
class Command:
    """The first line of a command, up to and including CRLF or a literal announcement."""

    tag: bytes
    name: str  # upper case; "UID FETCH" style for UID commands
    raw: bytes
    literal: LiteralHeader | None
    partial: bool = False  # the first piece of an over-long line: CommandParts follow


@dataclass(slots=True)
class CommandPart:
    """A command's text after a literal, up to CRLF or the next literal announcement, or
    the next piece of an over-long line (``partial``: the line goes on)."""

    raw: bytes
    literal: LiteralHeader | None
    partial: bool = False


@dataclass(slots=True)
class LiteralData:
    """A piece of literal payload; ``last`` marks its final piece. Either direction."""

    data: bytes
    last: bool


@dataclass(slots=True)
class SaslResponse:
    """One client line of an AUTHENTICATE exchange (credentials: never log ``raw``)."""

    raw: bytes


@dataclass(slots=True)
class EmptyLine:
    """A bare CRLF between commands. Servers ignore it; it can carry no command, so it is
    forwarded rather than answered."""

    raw: bytes


@dataclass(slots=True)
class IdleDone:
    """The line that ends IDLE (normally ``DONE``)."""

    raw: bytes


# --- server to client ----------------------------------------------------------------


class ResponseKind(enum.Enum):
    UNTAGGED = "untagged"  # * ...
    TAGGED = "tagged"  # TAG OK|NO|BAD ...
    CONTINUATION = "continuation"  # + ...
    UNKNOWN = "unknown"  # a line the parser could not classify; forwarded as is


@dataclass(slots=True)
class Response:
    """The first line (or first piece of an over-long line) of a server response.

    ``word`` is the status (OK, NO, BAD, BYE, PREAUTH) or the response name (CAPABILITY,
    LIST, FETCH, EXISTS, ...), upper case; empty for continuations.
    """

    kind: ResponseKind
    tag: bytes
    word: str
    raw: bytes
    literal: LiteralHeader | None
    partial: bool = False  # the line goes on in following ResponsePart events


@dataclass(slots=True)
class ResponsePart:
    """The rest of a response after a literal, or the next piece of an over-long line."""

    raw: bytes
    literal: LiteralHeader | None
    partial: bool = False


ClientEvent = Command | CommandPart | LiteralData | SaslResponse | IdleDone | EmptyLine
ServerEvent = Response | ResponsePart | LiteralData
