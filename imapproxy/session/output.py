"""What a session decides: bytes to send each way, control actions, and observations.

Observations (``Note`` subclasses) feed metrics and logs; the driver executes nothing for
them. Tests assert on all of it, so decisions and what gets logged are checked without
sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Note:
    pass


@dataclass(frozen=True, slots=True)
class CommandDone(Note):
    """A command got its tagged answer (from the server, or from the proxy itself)."""

    tag: str
    command: str
    status: str  # OK | NO | BAD | none (session ended first)
    code: str | None  # response code word, e.g. "TRYCREATE"
    duration: float
    mailbox: str | None
    user: str | None
    log: str | None  # None | "command" | "full": a log rule asked for a line
    bytes_in: int  # command bytes from the client
    bytes_out: int  # server bytes since the previous tagged answer, up to and including this one


@dataclass(frozen=True, slots=True)
class LoginDone(Note):
    mechanism: str  # LOGIN or the SASL mechanism
    result: str  # ok | failed | blocked
    user: str | None


@dataclass(frozen=True, slots=True)
class RuleHit(Note):
    rule: str
    action: str


@dataclass(frozen=True, slots=True)
class CommandBlocked(Note):
    rule: str
    command: str


@dataclass(frozen=True, slots=True)
class ProtocolIssue(Note):
    side: str  # client | upstream
    reason: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class LimitHit(Note):
    """The session refused something because of an abuse limit (e.g. ``pipelined``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ResponseLogged(Note):
    """An untagged response a ``detail: full`` log rule asked to see (first line only)."""

    line: str


@dataclass(slots=True)
class Output:
    """Everything one call into the session decided, in order per destination.

    The driver sends ``to_client`` and ``to_upstream`` first (each joined into one write),
    then performs ``start_client_tls`` and ``close``.
    """

    to_client: list[bytes] = field(default_factory=list)
    to_upstream: list[bytes] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    start_client_tls: bool = False
    close: str | None = None  # reason; the session is over after this output
