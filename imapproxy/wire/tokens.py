"""Tokenising IMAP arguments: the slow, precise path used by policy, never by plain forwarding.

The framer (``framing.py``) only finds line ends and literal announcements; a command's
arguments are tokenised here, on demand, when a rule or the session needs to look inside
(mailbox names, the LOGIN user). Every token keeps its byte span so a rewrite can splice the
original bytes instead of re-serialising the whole command.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from . import grammar
from .commands import UID_SUBCOMMANDS


class TokenError(ValueError):
    """The bytes are not a well-formed IMAP argument list."""


class TokenKind(enum.Enum):
    ATOM = "atom"
    QUOTED = "quoted"
    LITERAL = "literal"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    value: bytes  # atom bytes, unescaped quoted content, literal content; b"" for a list
    start: int  # offset of the token's wire form in the tokenised bytes
    end: int  # offset just past it
    items: tuple[Token, ...] = ()

    def astring(self) -> bytes | None:
        """The value when the token is an astring (atom, quoted or literal), else None."""
        return None if self.kind is TokenKind.LIST else self.value


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    tag: bytes
    name: str  # upper case, "UID FETCH" style
    args: list[Token]


# An atom run stops at space, parentheses, quotes, brackets (sections are handled apart) and
# line ends: laxer than grammar.ATOM on purpose, so the policy reads what servers accept.
# "\" is allowed so flags such as \Seen tokenise as atoms, as servers treat them; 8-bit
# bytes so UTF8=ACCEPT names do.
_ATOM_RUN = re.compile(rb'[^ ()"\[\r\n]+')
_QUOTED = grammar.QUOTED_RE
_LITERAL = grammar.LITERAL_ANNOUNCEMENT_RE
# Fetch attributes whose "[...]" section may contain spaces and lists (RFC 9051 fetch-att).
_SECTION_ATOMS = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})


def tokenize(data: bytes, pos: int = 0, end: int | None = None) -> list[Token]:
    """Tokenise space-separated arguments from ``pos`` up to the final line end (or ``end``).

    Literals are expected inline in wire form: the ``{n}`` header, CRLF, then n bytes.
    """
    stop = len(data) if end is None else end
    top: list[Token] = []
    # Open parenthesised lists: (start offset, members).
    stack: list[tuple[int, list[Token]]] = []
    while pos < stop:
        c = data[pos]
        if c == 0x20:  # space
            pos += 1
            continue
        if c in (0x0D, 0x0A):  # line end: only valid at the very end of the arguments
            if data[pos:stop].strip(b"\r\n"):
                raise TokenError(f"unexpected line end at offset {pos}")
            break
        members = stack[-1][1] if stack else top
        if c == 0x28:  # (
            stack.append((pos, []))
            pos += 1
        elif c == 0x29:  # )
            if not stack:
                raise TokenError(f"unbalanced ')' at offset {pos}")
            start, items = stack.pop()
            pos += 1
            (stack[-1][1] if stack else top).append(
                Token(TokenKind.LIST, b"", start, pos, tuple(items))
            )
        elif c == 0x22:  # "
            m = _QUOTED.match(data, pos, stop)
            if m is None:
                raise TokenError(f"unterminated quoted string at offset {pos}")
            members.append(Token(TokenKind.QUOTED, grammar.unquote(m.group(1)), pos, m.end()))
            pos = m.end()
        elif c == 0x7B or (c == 0x7E and data[pos + 1 : pos + 2] == b"{"):  # { or ~{
            m = _LITERAL.match(data, pos, stop)
            if m is None:
                raise TokenError(f"malformed literal at offset {pos}")
            size = grammar.literal_size(m.group(2))
            if size is None:
                raise TokenError(f"literal size out of range at offset {pos}")
            content_end = m.end() + size
            if content_end > stop:
                raise TokenError(f"literal of {size} bytes runs past the data at offset {pos}")
            members.append(Token(TokenKind.LITERAL, data[m.end() : content_end], pos, content_end))
            pos = content_end
        else:
            start = pos
            pos = _scan_atom(data, pos, stop)
            members.append(Token(TokenKind.ATOM, data[start:pos], start, pos))
    if stack:
        raise TokenError(f"unbalanced '(' at offset {stack[-1][0]}")
    return top


def _scan_atom(data: bytes, pos: int, stop: int) -> int:
    """Return the end of the atom at ``pos``; ``[...]`` sections (with nesting) belong to it."""
    start = pos
    while pos < stop:
        m = _ATOM_RUN.match(data, pos, stop)
        if m is not None:
            pos = m.end()
        if pos < stop and data[pos] == 0x5B:  # [ opens a section, e.g. BODY[HEADER.FIELDS (A)]
            if data[start:pos].upper() in _SECTION_ATOMS:
                pos = _section_end(data, pos, stop) + 1
            else:
                pos += 1  # elsewhere "[" is a plain ATOM-CHAR (mailbox "foo[bar", "[Gmail]/x")
            continue
        break
    if pos == start:
        raise TokenError(f"unexpected byte {data[pos : pos + 1]!r} at offset {pos}")
    return pos


def _section_end(data: bytes, pos: int, stop: int) -> int:
    depth = 0
    for i in range(pos, stop):  # sections are short; this never runs on literal payloads
        b = data[i]
        if b == 0x5B:
            depth += 1
        elif b == 0x5D:
            depth -= 1
            if depth == 0:
                return i
        elif b in (0x0D, 0x0A):
            break
    raise TokenError(f"unterminated '[' at offset {pos}")


def parse_command(raw: bytes) -> ParsedCommand:
    """Split a whole command (tag, name, arguments with literals inline).

    The head is read by the grammar the client parser reads it with (``tag SP name``, then
    a UID sub-command), so both agree on every command's tag and name.
    """
    m = grammar.COMMAND_HEAD_RE.match(raw)
    if m is None:
        raise TokenError("missing or malformed tag or command name")
    tag = m.group(1)
    name = m.group(2).decode("ascii").upper()
    pos = m.end()
    if name == "UID":
        sub = grammar.COMMAND_NAME_RE.match(raw, pos + 1) if raw[pos : pos + 1] == b" " else None
        sub_name = sub.group(1).decode("ascii").upper() if sub is not None else ""
        if sub is None or sub_name not in UID_SUBCOMMANDS:
            raise TokenError(f"unknown UID command {sub_name!r}")
        name = f"UID {sub_name}"
        pos = sub.end()
    return ParsedCommand(tag, name, tokenize(raw, pos))


def encode_astring(value: bytes) -> bytes:
    """Encode a string the cheapest valid way: atom, else quoted, else a synchronising literal."""
    if value and grammar.is_astring_atom(value):
        return value
    if grammar.quotable(value):
        return grammar.quote(value)
    return b"{%d}\r\n" % len(value) + value
