"""Parser for the client-to-server direction (commands).

Theory of operation
-------------------
h11-style: ``receive_data(bytes)`` adds input, ``next_event()`` returns one event, or
``NEED_DATA`` (feed more), ``PAUSED`` (waiting for the server, see below) or ``CLOSED``.

Most client lines can be read without knowing what the server says. Four cannot, because
the server's answer decides what the client's next bytes are:

* a synchronising literal ``{n}``: the payload comes only after the server's ``+``; if the
  server answers the command with a tagged NO/BAD instead, the next bytes are a new command;
* AUTHENTICATE: lines after a ``+`` are SASL data until the tagged answer;
* IDLE: the ``DONE`` line only follows the server's ``+``; a rejected IDLE has no DONE;
* STARTTLS (and COMPRESS): after the tagged OK the stream is no longer plain IMAP.

In those states the parser returns ``PAUSED`` and reads nothing until the session reports
the server's answer with ``continuation_received()`` or ``command_finished(tag)``. Reading on
would let a client smuggle a command past the policy as "SASL data" or "literal payload"
that the server then executes as a command. The driver stops reading the socket while the
parser is paused, so TCP backpressure holds the client.

Three more rules keep the proxy's reading of the stream the server's (issue 8):

* Refused confirmed literal. With ``confirm_literals`` a ``{n+}`` waits for the server's
  ``+`` like ``{n}`` (the session forwards it as ``{n}``). If the command is answered
  instead (``NO [TRYCREATE]`` to APPEND), the client has sent the payload anyway: those n
  bytes, the rest of the command line and its further ``{n+}`` payloads are dropped, never
  parsed as commands (a server reading the client's ``{n+}`` would have taken them as data).
* State barrier. After a command named in ``barrier_commands`` (set by the session while
  rules are in force: LOGIN, SELECT, ...) the parser waits (``PAUSED``) for its tagged
  answer, so later commands are judged in the state the server reached; their bytes stay in
  the framer and the driver stops reading (TCP backpressure).
* Long lines. A line longer than ``max_line`` arrives as pieces: ``Command(partial=True)``,
  then ``CommandPart(partial=True)`` pieces, then the final ``CommandPart`` (with the line's
  literal announcement, kept whole). Memory stays bounded; the session decides whether such
  a command may go on (``drop_rest`` drops what is left of one it refuses). SASL and IDLE
  lines that long are fatal. Open quotes are not tracked across pieces: a literal that
  follows one is still taken as a literal, which confirmed literals make safe (the server
  sends no ``+``, so the payload is dropped).

State transitions (``line`` = a complete line; ``lit`` = it announces a literal):

    COMMAND         line, no lit  -> COMMAND
                    (WAIT_SERVER after AUTHENTICATE, IDLE, STARTTLS, COMPRESS and the
                    barrier commands)
    COMMAND         piece         -> COMMAND_REST (the line goes on)
    COMMAND         line, {n+}    -> LITERAL
    COMMAND         line, {n}     -> WAIT_CONTINUATION
    WAIT_CONTINUATION  +          -> LITERAL;   tagged answer -> COMMAND
                       (tagged answer to a confirmed {n+}: LITERAL, dropping to the end)
    LITERAL         payload done  -> COMMAND_REST
    COMMAND_REST    same as COMMAND for the line's end
    WAIT_SERVER     +             -> SASL_LINE (AUTHENTICATE) | IDLE_LINE (IDLE); tagged -> COMMAND
    SASL_LINE       line          -> WAIT_SERVER
    IDLE_LINE       line          -> COMMAND
"""

from __future__ import annotations

import enum

from . import grammar
from .command_line import command_head, literal_starts_argument
from .errors import ProtocolError
from .events import (
    CLOSED,
    PAUSED,
    ClientEvent,
    Command,
    CommandPart,
    EmptyLine,
    IdleDone,
    LiteralData,
    LiteralHeader,
    SaslResponse,
    Sentinel,
)
from .parser_base import DirectionParser

DEFAULT_MAX_LINE = grammar.DEFAULT_MAX_LINE

# What a command that waits for the server turns into on a continuation request.
_WAITING_COMMANDS = {
    "AUTHENTICATE": "SASL_LINE",
    "IDLE": "IDLE_LINE",
    "STARTTLS": "",
    "COMPRESS": "",
}


class _State(enum.Enum):
    COMMAND = enum.auto()
    COMMAND_REST = enum.auto()
    LITERAL = enum.auto()
    WAIT_CONTINUATION = enum.auto()
    WAIT_SERVER = enum.auto()
    SASL_LINE = enum.auto()
    IDLE_LINE = enum.auto()
    CLOSED = enum.auto()


_AFTER_CONTINUATION = (_State.SASL_LINE, _State.IDLE_LINE)


class ClientParser(DirectionParser):
    """The client direction's parser (module docstring: states, pauses, dropped commands).

    Contract: ``receive_data`` adds bytes (``b""``: the client closed); ``next_event``
    returns the next ``ClientEvent``, or ``NEED_DATA``, ``PAUSED`` (nothing is read until
    ``continuation_received`` or ``command_finished`` resumes it) or ``CLOSED`` (clean end
    between commands, then always ``CLOSED``). A line a server answers ``BAD`` raises a
    non-fatal ``ProtocolError`` (already consumed, with the rest of its command; parsing
    goes on); a fatal one leaves the parser closed. Every event carries its exact bytes.
    """

    __slots__ = (
        "_dropping",
        "_name",
        "_pending_literal",
        "_silent",
        "_tag",
        "_wait_next",
        "barrier_commands",
        "confirm_literals",
    )

    _READY = _State.COMMAND
    _CLOSED = _State.CLOSED
    _AFTER_LITERAL = _State.COMMAND_REST
    _ENDED_INSIDE = "connection closed in the middle of a command"
    _PIPELINED_BEFORE_TLS = "data pipelined after STARTTLS"

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        # Over-long lines stream as pieces (bounded memory); the session decides whether a
        # command may go on without the proxy seeing its whole line.
        super().__init__(max_line)
        self._tag = b""  # the command being read (or waited for)
        self._name = ""
        self._pending_literal = 0  # size of a synchronising literal awaiting "+"
        self._wait_next: _State | None = None  # where WAIT_SERVER goes on "+"
        # When set, a non-synchronising literal waits for the server's "+" like {n}: the
        # session forwards it as {n}, so the server, not the proxy, decides whether the
        # next bytes are payload or a command (see session/core.py, "confirmed literals").
        self.confirm_literals = False
        self._silent = False  # the awaited "+" answers a {n+}: the client expects none
        # Commands after which the parser waits for the tagged answer before reading the
        # next command: their outcome changes facts the policy judges later commands by
        # (user, selected mailbox). Set by the session while rules are in force.
        self.barrier_commands: frozenset[str] = frozenset()
        # The command was answered before the "+" its {n+} payload waited for: the client
        # sends that payload anyway; it and the rest of the command are consumed, never
        # parsed as commands (see command_finished).
        self._dropping = False

    # -- state, for the session -----------------------------------------------------
    @property
    def paused(self) -> bool:
        """The parser waits for the server (a ``+`` or a tagged answer) before reading on."""
        return self._state in (_State.WAIT_CONTINUATION, _State.WAIT_SERVER)

    @property
    def waiting_tag(self) -> bytes | None:
        """The tag whose server answer the parser waits for, when paused."""
        return self._tag if self.paused else None

    @property
    def last_command(self) -> str:
        """The name of the last command read ("" after a rejected line); for observers."""
        return self._name

    @property
    def idling(self) -> bool:
        """An IDLE was read and has not ended (waiting for "+", or for the client's DONE)."""
        return self._name == "IDLE" and self._state in (_State.WAIT_SERVER, _State.IDLE_LINE)

    # -- answers from the other direction -------------------------------------------
    @property
    def silent_continuation(self) -> bool:
        """The awaited ``+`` confirms a ``{n+}`` literal: it is not for the client."""
        return self._state is _State.WAIT_CONTINUATION and self._silent

    def continuation_received(self) -> bool:
        """The server sent ``+``. Returns True if that resumed the parser."""
        if self._state is _State.WAIT_CONTINUATION:
            self._begin_literal(self._pending_literal)
            return True
        if self._state is _State.WAIT_SERVER and self._wait_next is not None:
            self._state = self._wait_next
            return True
        return False

    def command_finished(self, tag: bytes) -> bool:
        """The command ``tag`` got its tagged answer (from the server or the proxy itself).
        Returns True if that resumed the parser.

        If the parser was waiting for the ``+`` that confirms a ``{n+}`` (confirmed
        literals), the client has sent that payload already: it is the answered command's
        data, so it and the rest of that command (further ``{n+}`` payloads included) are
        read and dropped, never parsed as commands. A server that refuses a command before
        its literal (APPEND to a missing mailbox: ``NO [TRYCREATE]``) would itself have read
        those bytes as data, had the client's ``{n+}`` reached it.
        """
        # Also after "+": a server that ends AUTHENTICATE or IDLE itself reads a command next.
        if tag == self._tag and (self.paused or self._state in _AFTER_CONTINUATION):
            if self._state is _State.WAIT_CONTINUATION and self._silent:
                self._dropping = True
                self._begin_literal(self._pending_literal)
            else:
                self._state = _State.COMMAND
            return True
        return False

    def drop_rest(self) -> None:
        """The session refused the command being read (e.g. an over-long line a rule needs
        whole): the rest of it, ``{n+}`` payloads included, is read and dropped."""
        if self._state in (_State.COMMAND_REST, _State.LITERAL):
            self._dropping = True
        elif self._state is _State.WAIT_CONTINUATION:  # its "+" never comes
            self._state = _State.COMMAND

    # -- events ---------------------------------------------------------------------
    def next_event(self) -> ClientEvent | Sentinel:
        """The next event (class docstring); raises ``ProtocolError`` for a refused line."""
        if self._dropping:
            return self._next_after_drop()
        state = self._state
        if state is _State.LITERAL:
            return self._literal_data()
        if state is _State.WAIT_CONTINUATION or state is _State.WAIT_SERVER:
            return PAUSED
        if state is _State.CLOSED:
            return CLOSED
        # With split_long_lines the framer never raises: a long line comes as pieces.
        got = self._framer.next_line()
        if got is None:
            return self._input_exhausted()
        line, whole = got
        if state is _State.COMMAND:
            return self._command(line, whole)
        if state is _State.COMMAND_REST:
            if not whole:  # a piece of an over-long line; the line goes on
                return CommandPart(line, None, partial=True)
            literal = self._literal(line)
            if literal is not None and not literal_starts_argument(self._name, line, 0):
                # Servers end the command at this syntax error and read what follows as a
                # new command; so does the proxy, and checks it like any other.
                literal = None
            self._after_line(literal)
            return CommandPart(line, literal)
        if not whole:  # SASL data or IDLE's DONE: no reason to be long
            self._state = _State.CLOSED
            raise ProtocolError("line too long", fatal=True)
        if state is _State.SASL_LINE:
            self._state = _State.WAIT_SERVER
            return SaslResponse(line)
        self._state = _State.COMMAND  # IDLE_LINE: any line ends IDLE, as servers treat it
        return IdleDone(line)

    def _next_after_drop(self) -> ClientEvent | Sentinel:
        """Consume the rest of a dropped command, then parse on (bounded: each round
        consumes input or returns)."""
        while self._dropping:
            if self._state is _State.LITERAL:
                data = self._literal_data()
                if not isinstance(data, LiteralData):
                    return data
                continue
            got = self._framer.next_line()
            if got is None:
                return self._input_exhausted()
            self._drop_line(*got)
        return self.next_event()

    def _drop_line(self, line: bytes, whole: bool) -> None:
        """Consume a line (piece) of a command being dropped, and the payload of the
        ``{n+}`` literals it announces; a ``{n}`` is never sent (the client has its answer)."""
        if not whole:
            return
        literal = self._literal(line)
        if literal is not None and not literal.sync:
            self._begin_literal(literal.size)
        else:
            self._dropping = False
            self._state = _State.COMMAND

    def _command(self, line: bytes, whole: bool) -> Command | EmptyLine:
        if line == b"\r\n" or line == b"\n":
            return EmptyLine(line)
        try:
            tag, name, arguments_start = command_head(line)
        except ProtocolError:
            self._skip_bad_command(line, whole)
            raise
        literal = self._literal(line)
        if literal is not None and not literal_starts_argument(name, line, arguments_start):
            # The server would not read this as a literal (a command without arguments, a
            # "{" glued to an atom or inside an open quote) and would run the payload as a
            # command of its own. Never forwarded: answered BAD, the payload skipped.
            self._skip_bad_command(line, whole)
            raise ProtocolError("literal not allowed here", fatal=False, tag=tag)
        self._tag = tag
        self._name = name
        if not whole:  # the first piece of an over-long line: the rest follows as parts
            self._state = _State.COMMAND_REST
            return Command(tag, name, line, None, partial=True)
        self._after_line(literal)
        return Command(tag, name, line, literal)

    def _after_line(self, literal: LiteralHeader | None) -> None:
        if literal is None:
            wait_next = _WAITING_COMMANDS.get(self._name)
            if wait_next is None:
                if self._name in self.barrier_commands:
                    self._state = _State.WAIT_SERVER  # until its tagged answer
                    self._wait_next = None
                else:
                    self._state = _State.COMMAND
            else:
                self._state = _State.WAIT_SERVER
                self._wait_next = _State[wait_next] if wait_next else None
        elif literal.sync or self.confirm_literals:
            self._state = _State.WAIT_CONTINUATION
            self._pending_literal = literal.size
            self._silent = not literal.sync
        else:
            self._begin_literal(literal.size)

    def _begin_literal(self, size: int) -> None:
        if size:
            self._framer.start_literal(size)
            self._state = _State.LITERAL
        else:
            self._state = _State.COMMAND_REST

    def _skip_bad_command(self, line: bytes, whole: bool = True) -> None:
        # A rejected line that announces a non-synchronising literal is followed by its
        # payload: consume it as the rest of a (rejected) command to stay in step. A
        # synchronising one is never sent, since the client gets BAD instead of "+".
        self._tag, self._name = b"", ""
        if not whole:  # the rest of an over-long rejected line is dropped, not parsed
            self._dropping = True
            self._state = _State.COMMAND_REST
            return
        literal = self._literal(line)
        if literal is not None and not literal.sync:
            self._begin_literal(literal.size)
        else:
            self._state = _State.COMMAND
