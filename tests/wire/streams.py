"""Hypothesis strategies for valid IMAP byte streams in both directions.

Each generated stream comes with the events a correct parser must produce, built here from
the grammar (RFC 9051 / RFC 3501, LITERAL+ RFC 7888, BINARY RFC 3516), independently of the
parser under test. Events are compared in a normalised form (see ``normalise_client`` and
``normalise_server``): literal payload pieces are merged, since chunking depends on how the
bytes arrived, and the pieces of an over-long server line are merged back into one line.

Client streams also carry a *plan*: for every command that makes the client parser pause
(synchronising literal, AUTHENTICATE, IDLE, STARTTLS, COMPRESS), the server's answers in
order, ``"+"`` (continuation request) or ``"done"`` (tagged answer). ``drive_client`` plays
that plan against a parser.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from imapproxy.wire import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    ClientParser,
    Command,
    CommandPart,
    EmptyLine,
    IdleDone,
    LiteralData,
    LiteralHeader,
    Response,
    ResponseKind,
    ResponsePart,
    SaslResponse,
    ServerParser,
)

# RFC 9051 ATOM-CHAR (printable ASCII minus atom-specials); tags also exclude "+".
ATOM_CHARS = "".join(
    c for c in map(chr, range(0x21, 0x7F)) if c not in '(){ %*"\\]' and c not in "\x7f"
)
TAG_CHARS = ATOM_CHARS.replace("+", "")
# Free text of server responses: no "{" so that text never ends like a literal announcement.
TEXT_CHARS = "".join(c for c in map(chr, range(0x20, 0x7F)) if c not in "{[]")
QUOTED_CHARS = "".join(map(chr, range(0x20, 0x7F)))  # TEXT-CHAR; '"' and '\' get escaped

Event = tuple[Any, ...]


# --- normalisation -------------------------------------------------------------------
def normalise_client(events: Iterable[object]) -> list[Event]:
    """Client events as tuples; consecutive literal pieces merged into one."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, LiteralData):
            if out and out[-1][0] == "LiteralData" and not out[-1][2]:
                out[-1] = ("LiteralData", out[-1][1] + ev.data, ev.last)
            else:
                out.append(("LiteralData", ev.data, ev.last))
        elif isinstance(ev, Command):
            out.append(("Command", ev.tag, ev.name, ev.raw, ev.literal))
        elif isinstance(ev, CommandPart):
            out.append(("CommandPart", ev.raw, ev.literal))
        elif isinstance(ev, SaslResponse):
            out.append(("SaslResponse", ev.raw))
        elif isinstance(ev, IdleDone):
            out.append(("IdleDone", ev.raw))
        elif isinstance(ev, EmptyLine):
            out.append(("EmptyLine", ev.raw))
        else:
            raise AssertionError(f"unexpected client event {ev!r}")
    return out


def normalise_server(events: Iterable[object]) -> list[Event]:
    """Server events as tuples; literal pieces merged; pieces of a long line merged."""
    out: list[Event] = []
    open_line = False  # the last tuple is a line still going on in the next piece
    for ev in events:
        if isinstance(ev, LiteralData):
            assert not open_line, "literal data inside an unfinished line"
            if out and out[-1][0] == "LiteralData" and not out[-1][2]:
                out[-1] = ("LiteralData", out[-1][1] + ev.data, ev.last)
            else:
                out.append(("LiteralData", ev.data, ev.last))
        elif isinstance(ev, Response):
            assert not open_line, "a new response inside an unfinished line"
            out.append(("Response", ev.kind, ev.tag, ev.word, ev.raw, ev.literal))
            open_line = ev.partial
        elif isinstance(ev, ResponsePart):
            if open_line:
                last = out[-1]
                out[-1] = (*last[:-2], last[-2] + ev.raw, ev.literal)
            else:
                out.append(("ResponsePart", ev.raw, ev.literal))
            open_line = ev.partial
        else:
            raise AssertionError(f"unexpected server event {ev!r}")
    assert not open_line, "stream ended inside a line"
    return out


def event_bytes(events: Iterable[object]) -> bytes:
    """The wire bytes events stand for, in order."""
    parts: list[bytes] = []
    for ev in events:
        parts.append(ev.data if isinstance(ev, LiteralData) else ev.raw)  # type: ignore[attr-defined]
    return b"".join(parts)


# --- drivers -------------------------------------------------------------------------
def drive_client(
    parser: ClientParser, chunks: Sequence[bytes], plan: dict[bytes, list[str]]
) -> list[object]:
    """Feed ``chunks`` (then EOF), answering every pause from ``plan``. Returns the events;
    asserts that the stream ends cleanly and that every planned answer was used."""
    answers = {tag: deque(a) for tag, a in plan.items()}
    events: list[object] = []
    for chunk in [*chunks, b""]:
        parser.receive_data(chunk)
        while True:
            ev = parser.next_event()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                tag = parser.waiting_tag
                assert tag is not None
                action = answers[tag].popleft()
                if action == "+":
                    assert parser.continuation_received()
                else:
                    assert parser.command_finished(tag)
                continue
            if ev is CLOSED:
                assert chunk == b"", "CLOSED before EOF"
                assert all(not a for a in answers.values()), f"unused answers {answers}"
                return events
            events.append(ev)
    raise AssertionError("no CLOSED after EOF")


def drive_server(parser: ServerParser, chunks: Sequence[bytes]) -> list[object]:
    events: list[object] = []
    for chunk in [*chunks, b""]:
        parser.receive_data(chunk)
        while True:
            ev = parser.next_event()
            if ev is NEED_DATA:
                break
            if ev is CLOSED:
                assert chunk == b"", "CLOSED before EOF"
                return events
            events.append(ev)
    raise AssertionError("no CLOSED after EOF")


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates give empty-free pieces)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def splits(draw: st.DrawFn, data: bytes, max_cuts: int = 40) -> list[bytes]:
    """A random way of cutting ``data`` into reads (including one byte per read)."""
    if data and draw(st.integers(0, 9)) == 0:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = draw(st.lists(st.integers(0, max(0, len(data))), max_size=max_cuts))
    return split(data, cuts)


# --- building blocks -----------------------------------------------------------------
@dataclass
class ClientStream:
    data: bytes = b""
    events: list[Event] = field(default_factory=list)
    plan: dict[bytes, list[str]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # command names in order (for sessions)

    def add(self, raw: bytes, event: Event | None) -> None:
        self.data += raw
        if event is not None:
            self.events.append(event)


@dataclass
class ServerStream:
    data: bytes = b""
    events: list[Event] = field(default_factory=list)


def _text(chars: str, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.text(chars, min_size=min_size, max_size=max_size).map(str.encode)


atoms = _text(ATOM_CHARS, 1, 10)


def _quote(s: bytes) -> bytes:
    return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


quoted = _text(QUOTED_CHARS, 0, 12).map(_quote)
numbers = st.integers(1, 10**6).map(lambda n: b"%d" % n)
seq_ranges = st.one_of(
    numbers, st.just(b"*"), st.tuples(numbers, st.one_of(numbers, st.just(b"*"))).map(b":".join)
)
sequence_sets = st.lists(seq_ranges, min_size=1, max_size=4).map(b",".join)
flags = st.sampled_from([b"\\Seen", b"\\Answered", b"\\Flagged", b"\\Deleted", b"$Junk"])
sections = st.one_of(
    st.just(b"BODY[]"),
    st.just(b"BODY.PEEK[HEADER]"),
    st.lists(atoms, min_size=1, max_size=3).map(
        lambda names: b"BODY[HEADER.FIELDS (" + b" ".join(names) + b")]"
    ),
    st.tuples(st.integers(1, 9), st.integers(1, 9)).map(lambda p: b"BINARY[%d.%d]" % p),
    st.just(b"BODY[1.2.MIME]"),
)
partials = st.tuples(st.integers(0, 10**6), st.integers(1, 10**6)).map(lambda p: b"<%d.%d>" % p)
fetch_atts = st.one_of(sections, st.tuples(sections, partials).map(b"".join))


def _args(depth: int = 2) -> st.SearchStrategy[bytes]:
    leaf = st.one_of(atoms, quoted, sequence_sets, flags, fetch_atts, st.just(b"NIL"))
    if depth == 0:
        return leaf
    lists = st.lists(st.deferred(lambda: _args(depth - 1)), max_size=3).map(
        lambda items: b"(" + b" ".join(items) + b")"
    )
    return st.one_of(leaf, lists)


arguments = st.lists(_args(), max_size=4).map(b" ".join)

SIMPLE_NAMES = [
    "NOOP",
    "CAPABILITY",
    "LOGOUT",
    "SELECT",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "LIST",
    "STATUS",
    "FETCH",
    "STORE",
    "SEARCH",
    "COPY",
    "MOVE",
    "EXPUNGE",
    "LOGIN",
    "ENABLE",
    "ID",
    "X-CUSTOM",
]
UID_NAMES = ["FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"]


@st.composite
def command_name(draw: st.DrawFn) -> tuple[bytes, str]:
    """A command name as sent (random case) and as the parser must report it."""

    def recase(name: str) -> bytes:
        mask = draw(st.integers(0, (1 << len(name)) - 1))
        return "".join(c.lower() if mask >> i & 1 else c for i, c in enumerate(name)).encode()

    if draw(st.integers(0, 4)) == 0:
        sub = draw(st.sampled_from(UID_NAMES))
        return recase("UID") + b" " + recase(sub), "UID " + sub
    name = draw(st.sampled_from(SIMPLE_NAMES))
    return recase(name), name


@st.composite
def literal_announcement(
    draw: st.DrawFn, size: int, *, binary_ok: bool = True
) -> tuple[bytes, LiteralHeader]:
    sync = draw(st.booleans())
    binary = binary_ok and draw(st.integers(0, 3)) == 0
    digits = b"%d" % size
    if draw(st.integers(0, 7)) == 0:
        digits = b"0" * draw(st.integers(1, 3)) + digits  # number = 1*DIGIT: leading zeros
    text = (b"~" if binary else b"") + b"{" + digits + (b"" if sync else b"+") + b"}"
    return text, LiteralHeader(size=size, sync=sync, binary=binary)


eols = st.sampled_from([b"\r\n"] * 7 + [b"\n"])  # bare LF is tolerated as a line end


# --- client streams ------------------------------------------------------------------
@st.composite
def client_unit(
    draw: st.DrawFn, stream: ClientStream, tag: bytes, tls: bool = True, refuse: bool = True
) -> None:
    kinds = ["simple"] * 4 + ["literal"] * 4 + ["authenticate", "idle", "empty"]
    kind = draw(st.sampled_from([*kinds, "starttls"] if tls else kinds))
    eol = draw(eols)
    if kind == "empty":
        stream.add(eol, ("EmptyLine", eol))
        return
    if kind == "simple":
        sent, name = draw(command_name())
        args = draw(arguments)
        raw = tag + b" " + sent + (b" " + args if args else b"") + eol
        stream.add(raw, ("Command", tag, name, raw, None))
        stream.names.append(name)
        return
    if kind == "authenticate":
        mech = draw(st.sampled_from([b"PLAIN", b"LOGIN", b"XOAUTH2", b"x-other"]))
        ir = draw(st.one_of(st.none(), st.just(b"="), _text("ABCxyz0189+/=", 1, 16)))
        raw = tag + b" AUTHENTICATE " + mech + (b" " + ir if ir else b"") + eol
        stream.add(raw, ("Command", tag, "AUTHENTICATE", raw, None))
        stream.names.append("AUTHENTICATE")
        lines = draw(st.lists(_text(TEXT_CHARS + "{}", 0, 20), max_size=3))
        for text in lines:
            line = text + draw(eols)
            stream.add(line, ("SaslResponse", line))
        stream.plan[tag] = ["+"] * len(lines) + ["done"]
        return
    if kind == "idle":
        raw = tag + b" " + draw(st.sampled_from([b"IDLE", b"idle"])) + eol
        stream.add(raw, ("Command", tag, "IDLE", raw, None))
        stream.names.append("IDLE")
        if draw(st.booleans()):
            done = draw(st.sampled_from([b"DONE", b"done", b"x"])) + draw(eols)
            stream.add(done, ("IdleDone", done))
            stream.plan[tag] = ["+"]
        else:
            stream.plan[tag] = ["done"]  # rejected IDLE: the next line is a command
        return
    if kind == "starttls":
        word, name = draw(
            st.sampled_from([(b"STARTTLS", "STARTTLS"), (b"COMPRESS DEFLATE", "COMPRESS")])
        )
        raw = tag + b" " + word + eol
        stream.add(raw, ("Command", tag, name, raw, None))
        stream.names.append(name)
        stream.plan[tag] = ["done"]  # refused (or answered by a proxy): plain IMAP goes on
        return
    # A command with one or more literals (APPEND/MULTIAPPEND, LOGIN, SEARCH, ...).
    sent, name = draw(
        st.sampled_from(
            [
                (b"APPEND", "APPEND"),
                (b"LOGIN", "LOGIN"),
                (b"SEARCH", "SEARCH"),
                (b"uid search", "UID SEARCH"),
                (b"RENAME", "RENAME"),
                (b"Select", "SELECT"),
            ]
        )
    )
    stream.names.append(name)
    plan: list[str] = []
    count = draw(st.integers(1, 4))
    prefix = draw(arguments)
    line = tag + b" " + sent + b" " + (prefix + b" " if prefix else b"")
    first = True
    for _ in range(count):
        payload = draw(st.binary(max_size=40))
        text, header = draw(literal_announcement(len(payload)))
        line += text + draw(eols)
        if first:
            stream.add(line, ("Command", tag, name, line, header))
            first = False
        else:
            stream.add(line, ("CommandPart", line, header))
        if header.sync:
            if refuse and draw(st.integers(0, 5)) == 0:
                plan.append("done")  # the server refuses: no payload, the command is over
                stream.plan[tag] = plan
                return
            plan.append("+")
        stream.add(payload, ("LiteralData", payload, True) if payload else None)
        more = draw(arguments)
        line = (b" " + more if more else b"") + b" "
    end = line[:-1] + draw(eols)
    stream.add(end, ("CommandPart", end, None))
    if plan:
        stream.plan[tag] = plan


@st.composite
def client_streams(
    draw: st.DrawFn, max_units: int = 6, tls: bool = True, refuse: bool = True
) -> ClientStream:
    """``tls=False``: no STARTTLS/COMPRESS (a proxy answers those itself);
    ``refuse=False``: the server accepts every synchronising literal."""
    stream = ClientStream()
    n = draw(st.integers(1, max_units))
    for i in range(n):
        tag = draw(_text(TAG_CHARS, 0, 4)) + b"%d" % i  # unique tags
        draw(client_unit(stream, tag, tls, refuse))
    return stream


# --- server streams ------------------------------------------------------------------
def _resp(stream: ServerStream, raw: bytes, kind: ResponseKind, tag: bytes, word: str) -> None:
    stream.data += raw
    stream.events.append(("Response", kind, tag, word, raw, None))


@st.composite
def server_unit(draw: st.DrawFn, stream: ServerStream, long_at: int) -> None:
    kind = draw(
        st.sampled_from(
            ["numbered", "status", "tagged", "continuation", "search", "fetch", "fetch", "list"]
        )
    )
    eol = b"\r\n"
    if kind == "numbered":
        word = draw(st.sampled_from(["EXISTS", "RECENT", "EXPUNGE", "exists"]))
        raw = b"* %d " % draw(st.integers(0, 10**9)) + word.encode() + eol
        _resp(stream, raw, ResponseKind.UNTAGGED, b"*", word.upper())
    elif kind == "status":
        word = draw(st.sampled_from(["OK", "NO", "BAD", "BYE"]))
        code = draw(
            st.sampled_from(
                [b"", b"[ALERT] ", b"[UIDVALIDITY 17] ", b"[CAPABILITY IMAP4rev1 IDLE] "]
            )
        )
        raw = b"* " + word.encode() + b" " + code + draw(_text(TEXT_CHARS, 1, 30)) + eol
        _resp(stream, raw, ResponseKind.UNTAGGED, b"*", word)
    elif kind == "tagged":
        tag = draw(_text(TAG_CHARS, 1, 6))
        word = draw(st.sampled_from(["OK", "NO", "BAD"]))
        code = draw(
            st.sampled_from([b"", b"[TRYCREATE] ", b"[APPENDUID 38505 3955] ", b"[READ-WRITE] "])
        )
        raw = tag + b" " + word.encode() + b" " + code + draw(_text(TEXT_CHARS, 1, 30)) + eol
        _resp(stream, raw, ResponseKind.TAGGED, tag, word)
    elif kind == "continuation":
        raw = (
            b"+"
            + draw(st.sampled_from([b"", b" ", b" Ready for literal data", b" dGVzdA=="]))
            + eol
        )
        _resp(stream, raw, ResponseKind.CONTINUATION, b"+", "")
    elif kind == "search":
        # Possibly much longer than the parser's max_line: must stream as pieces.
        count = draw(st.integers(0, long_at // 3))
        raw = b"* SEARCH" + b"".join(b" %d" % (i * 7919 % 100003) for i in range(count)) + eol
        _resp(stream, raw, ResponseKind.UNTAGGED, b"*", "SEARCH")
    elif kind == "list":
        name = draw(st.one_of(atoms, quoted))
        raw = b'* LIST (\\HasNoChildren) "/" ' + name + eol
        _resp(stream, raw, ResponseKind.UNTAGGED, b"*", "LIST")
    else:  # FETCH with zero or more literals, some of them literal8
        n = draw(st.integers(1, 10**6))
        # Sometimes an over-long line that ends in a literal announcement.
        pad = b"X" * draw(st.sampled_from([0, 0, long_at])) + b" "
        line = b"* %d FETCH (UID %d FLAGS (\\Seen) " % (n, n + 1) + pad
        first = True
        for _ in range(draw(st.integers(0, 3))):
            payload = draw(st.binary(max_size=60))
            section = draw(fetch_atts)
            binary = draw(st.integers(0, 3)) == 0
            header = LiteralHeader(size=len(payload), sync=True, binary=binary)
            line += section + b" " + (b"~" if binary else b"") + b"{%d}" % len(payload) + eol
            stream.data += line
            if first:
                stream.events.append(
                    ("Response", ResponseKind.UNTAGGED, b"*", "FETCH", line, header)
                )
                first = False
            else:
                stream.events.append(("ResponsePart", line, header))
            stream.data += payload
            if payload:
                stream.events.append(("LiteralData", payload, True))
            line = b" "
        end = line + b"RFC822.SIZE 42)" + eol
        if first:
            _resp(stream, end, ResponseKind.UNTAGGED, b"*", "FETCH")
        else:
            stream.data += end
            stream.events.append(("ResponsePart", end, None))


@st.composite
def server_streams(draw: st.DrawFn, max_units: int = 8, long_at: int = 256) -> ServerStream:
    """A greeting then responses. ``long_at``: some lines grow past this many bytes."""
    stream = ServerStream()
    word = draw(st.sampled_from(["OK", "PREAUTH"]))
    greeting = b"* " + word.encode() + b" [CAPABILITY IMAP4rev1 LITERAL+ IDLE] ready\r\n"
    _resp(stream, greeting, ResponseKind.UNTAGGED, b"*", word)
    for _ in range(draw(st.integers(0, max_units))):
        draw(server_unit(stream, long_at))
    return stream
