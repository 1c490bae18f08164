"""Parser events of one session -> inspector records (plain dicts), credentials redacted.

A record is what ``tail --json`` prints and a trace file holds, one JSON object per line:
``time`` (set when written), ``session``, ``event`` (``open``, ``close``, ``command``,
``response``, ``continuation``, ``literal``, ``sasl``, ``done``, ``dropped``), ``direction``
(the side that sent it, ``client`` or ``server``), ``line`` (text, redacted, at most
``MAX_LINE_TEXT`` characters), ``tag``, ``command`` (the command the line belongs to or
answers), ``status`` and ``duration`` (seconds) on tagged answers, ``phase`` (``idle`` or
``authenticate``), ``size`` and ``offset`` on literal pieces, ``continued`` on the rest of a
line after a literal. ``user`` is added by the inspector once known.

Literal payload is not in the record: a piece keeps the bytes under the private key
``_data`` (absent when redacted), and each consumer cuts what it may show (``bodies``)
before the record is queued or written. A transcriber that starts in the middle of a command
(a tail attached late) shows nothing of what it cannot place: continuation lines and
literal payload of an unseen command are redacted.
"""

from __future__ import annotations

import time
from typing import Any

from imapproxy.inspect.redact import (
    HIDDEN,
    LoginRedactor,
    authenticate_line,
    challenge_line,
    sasl_line,
)
from imapproxy.wire import (
    Command,
    CommandPart,
    IdleDone,
    LiteralData,
    LiteralHeader,
    Response,
    ResponseKind,
    ResponsePart,
    SaslResponse,
)
from imapproxy.wire.sasl import login_user, sasl_user

Record = dict[str, Any]
MAX_LINE_TEXT = 2000
_UNSEEN = HIDDEN.decode()


def text(raw: bytes) -> str:
    line = raw.rstrip(b"\r\n")
    if len(line) > MAX_LINE_TEXT:
        return line[:MAX_LINE_TEXT].decode("utf-8", "replace") + f"... ({len(line)} bytes)"
    return line.decode("utf-8", "replace")


class _Literal:
    __slots__ = ("command", "offset", "secret", "size")

    def __init__(self, size: int | None, command: str | None, secret: bool) -> None:
        self.size = size
        self.command = command
        self.secret = secret
        self.offset = 0


class Transcriber:
    """Per-session state: commands in flight (for durations), phases, the LOGIN redactor."""

    __slots__ = (
        "_auth_tag",
        "_client_literal",
        "_clock",
        "_current",
        "_idle_tag",
        "_login",
        "_pending",
        "_server_literal",
    )

    def __init__(self) -> None:
        self._clock = time.monotonic
        self._pending: dict[bytes, tuple[str, float]] = {}
        self._current: str | None = None  # the command being read (None: unseen or none)
        self._login: LoginRedactor | None = None
        self._client_literal: _Literal | None = None
        self._server_literal: _Literal | None = None
        self._auth_tag: bytes | None = None
        self._idle_tag: bytes | None = None

    def feed(self, direction: str, event: object) -> Record | None:
        if direction == "client":
            return self._client(event)
        return self._server(event)

    # --- client ------------------------------------------------------------------------
    def _client(self, ev: object) -> Record | None:
        if isinstance(ev, LiteralData):
            return self._literal("client", self._client_literal, ev)
        if isinstance(ev, Command):
            return self._command(ev)
        if isinstance(ev, CommandPart):
            return self._command_part(ev)
        if isinstance(ev, SaslResponse):
            return {
                "event": "sasl",
                "direction": "client",
                "line": sasl_line(ev.raw).decode(),
                "phase": "authenticate",
            }
        if isinstance(ev, IdleDone):
            return {"event": "done", "direction": "client", "line": text(ev.raw), "phase": "idle"}
        return None  # an empty line between commands

    def _command(self, ev: Command) -> Record:
        name = ev.name
        raw = ev.raw
        secret = False
        self._login = None
        if name == "LOGIN":
            self._login = LoginRedactor()
            raw, secret = self._login.first_line(raw)
        elif name == "AUTHENTICATE":
            raw = authenticate_line(raw)
            self._auth_tag = ev.tag
        elif name == "IDLE":
            self._idle_tag = ev.tag
        self._pending[ev.tag] = (name, self._clock())
        rec: Record = {
            "event": "command",
            "direction": "client",
            "tag": ev.tag.decode("ascii", "replace"),
            "command": name,
            "line": text(raw),
        }
        if name == "LOGIN" and ev.literal is None:
            rec["_user"] = login_user(ev.raw)
        elif name == "AUTHENTICATE":
            words = ev.raw.split(None, 3)
            if len(words) > 3:
                rec["_user"] = sasl_user(words[2].decode("ascii", "replace").upper(), words[3])
        self._after_line(ev.literal, name, secret)
        if name == "IDLE":
            rec["phase"] = "idle"
        elif name == "AUTHENTICATE":
            rec["phase"] = "authenticate"
        return rec

    def _command_part(self, ev: CommandPart) -> Record:
        name = self._current
        if name is None:
            shown, secret = HIDDEN, True  # the start of this command was not seen
        elif self._login is not None:
            shown, secret = self._login.part(ev.raw)
        else:
            shown, secret = ev.raw, False
        rec: Record = {"event": "command", "direction": "client", "line": text(shown)}
        if name is not None:
            rec["command"] = name
        rec["continued"] = True
        self._after_line(ev.literal, name, secret)
        return rec

    def _after_line(self, literal: LiteralHeader | None, name: str | None, secret: bool) -> None:
        if literal is None:
            self._current = None
            self._login = None
            self._client_literal = None
        else:
            self._current = name
            self._client_literal = _Literal(literal.size, name, secret or name == "LOGIN")

    # --- server ------------------------------------------------------------------------
    def _server(self, ev: object) -> Record | None:
        if isinstance(ev, LiteralData):
            return self._literal("server", self._server_literal, ev)
        if isinstance(ev, Response):
            rec = self._response(ev)
        elif isinstance(ev, ResponsePart):
            rec = {"event": "response", "direction": "server", "line": text(ev.raw)}
            rec["continued"] = True
        else:
            return None
        literal = ev.literal
        self._server_literal = None if literal is None else _Literal(literal.size, None, False)
        return rec

    def _response(self, ev: Response) -> Record:
        kind = ev.kind
        if kind is ResponseKind.CONTINUATION:
            rec: Record = {"event": "continuation", "direction": "server"}
            if self._auth_tag is not None:
                rec["line"] = challenge_line(ev.raw).decode()
                rec["phase"] = "authenticate"
            else:
                rec["line"] = text(ev.raw)
                if self._idle_tag is not None:
                    rec["phase"] = "idle"
            return rec
        rec = {"event": "response", "direction": "server", "line": text(ev.raw)}
        if kind is ResponseKind.TAGGED:
            tag = ev.tag
            rec["tag"] = tag.decode("ascii", "replace")
            rec["status"] = ev.word
            started = self._pending.pop(tag, None)
            if started is not None:
                rec["command"] = started[0]
                rec["duration"] = round(self._clock() - started[1], 6)
            if tag == self._auth_tag:
                self._auth_tag = None
            if tag == self._idle_tag:
                self._idle_tag = None
        elif self._pending:
            rec["command"] = next(reversed(self._pending.values()))[0]  # the latest in flight
        return rec

    # --- literal payload -----------------------------------------------------------------
    def _literal(self, direction: str, lit: _Literal | None, ev: LiteralData) -> Record:
        if lit is None:  # payload of a literal announced before this transcriber started
            lit = _Literal(None, None, True)
            if direction == "client":
                self._client_literal = lit
            else:
                self._server_literal = lit
        rec: Record = {"event": "literal", "direction": direction, "size": lit.size}
        rec["offset"] = lit.offset
        if lit.command is not None:
            rec["command"] = lit.command
        elif direction == "server" and self._pending:
            rec["command"] = next(reversed(self._pending.values()))[0]
        if lit.secret:
            rec["redacted"] = True
        else:
            rec["_data"] = ev.data
        lit.offset += len(ev.data)
        return rec
