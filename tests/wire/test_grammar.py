"""wire/grammar.py: each IMAP grammar rule once, with the bounds every reader shares."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapproxy.config.loader import Limits
from imapproxy.policy import mailboxes
from imapproxy.wire import grammar
from imapproxy.wire.client import ClientParser
from imapproxy.wire.server import ServerParser

_PACKAGE = Path(grammar.__file__).resolve().parents[1]


# --- literal announcements ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("digits", "size"),
    [
        (b"0", 0),
        (b"5", 5),
        (b"00000000000000000005", 5),  # 20 digits: leading zeros are number64 too
        (b"4294967296", 2**32),
        (b"9223372036854775807", 2**63 - 1),
        (b"9223372036854775808", None),  # 2^63
        (b"18446744073709551616", None),  # 2^64
        (b"99999999999999999999", None),
    ],
)
def test_literal_size_range(digits: bytes, size: int | None) -> None:
    assert grammar.literal_size(digits) == size


@pytest.mark.parametrize(
    ("line", "groups"),
    [
        (b"a APPEND x {5}\r\n", (b"", b"5", b"")),
        (b"a APPEND x {5+}\r\n", (b"", b"5", b"+")),
        (b"a APPEND x ~{5}\r\n", (b"~", b"5", b"")),
        (b"a APPEND x ~{5+}\n", (b"~", b"5", b"+")),
        (b"a APPEND x {%s}\r\n" % (b"0" * 19 + b"5"), (b"", b"0" * 19 + b"5", b"")),
        (b"a APPEND x {%s}\r\n" % (b"0" * 20 + b"5"), None),  # 21 digits
        (b"a APPEND x {}\r\n", None),
        (b"a APPEND x {-1}\r\n", None),
        (b"a APPEND x {5 }\r\n", None),
        (b"a APPEND x {5}+\r\n", None),
        (b"a APPEND x {5}\r\n ", None),
    ],
)
def test_literal_at_end(line: bytes, groups: tuple[bytes, bytes, bytes] | None) -> None:
    m = grammar.LITERAL_AT_END_RE.search(line, max(0, len(line) - grammar.LITERAL_TAIL))
    assert (m.groups() if m else None) == groups


def test_longest_announcement_fits_the_tail() -> None:
    longest = b"~{" + b"9" * 20 + b"+}\r\n"
    assert grammar.LITERAL_AT_END_RE.fullmatch(longest)
    assert len(longest) <= grammar.LITERAL_TAIL


@pytest.mark.parametrize(
    ("line", "overlong"),
    [
        (b"a LOGIN {%s}\r\n" % (b"0" * 21), True),
        (b"a LOGIN {%s+}\n" % (b"0" * 30), True),
        (b"a LOGIN ~{%s}\r\n" % (b"1" * 25), True),
        (b"a LOGIN {%s}\r\n" % (b"0" * 20), False),  # the grammar reads it
        (b"a LOGIN x%s}\r\n" % (b"0" * 25), False),  # no "{": not an announcement
        (b"a LOGIN {}\r\n", False),
        (b"a LOGIN x\r\n", False),
    ],
)
def test_overlong_literal(line: bytes, overlong: bool) -> None:
    assert grammar.overlong_literal(line) is overlong


# --- quoted strings ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b'""', b""),
        (b'"a b"', b"a b"),
        (b'"a\\\\b"', b"a\\b"),
        (b'"say \\"hi\\""', b'say "hi"'),
        (b'"\\\\"', b"\\"),
        (b'"Entw\xc3\xbcrfe"', b"Entw\xc3\xbcrfe"),  # 8-bit: UTF8=ACCEPT
    ],
)
def test_quoted(wire: bytes, value: bytes) -> None:
    m = grammar.QUOTED_RE.fullmatch(wire)
    assert m is not None
    assert grammar.unquote(m.group(1)) == value


@pytest.mark.parametrize("wire", [b'"a', b'"a\\"', b'"a\rb"', b'"a\nb"', b'"a\\\rb"'])
def test_quoted_rejects(wire: bytes) -> None:
    assert grammar.QUOTED_RE.fullmatch(wire) is None


@given(st.binary().filter(grammar.quotable))
def test_quote_round_trip(value: bytes) -> None:
    m = grammar.QUOTED_RE.fullmatch(grammar.quote(value))
    assert m is not None
    assert grammar.unquote(m.group(1)) == value


def test_quotable() -> None:
    assert grammar.quotable(b'a "b" \\c')
    assert not any(grammar.quotable(b) for b in (b"\r", b"\n", b"\x00", b"\xc3\xa4"))


# --- character classes, tag, command head ------------------------------------------------
_CHARS = [bytes([b]) for b in range(256)]
_SPECIALS = set(b'(){ %*"\\]')


def _members(cls: bytes) -> set[int]:
    pattern = re.compile(cls)
    return {c[0] for c in _CHARS if pattern.fullmatch(c)}


def test_character_classes_follow_rfc_9051() -> None:
    char = set(range(0x21, 0x7F))  # CHAR without CTL and SP
    atom = char - _SPECIALS
    assert _members(grammar.ATOM_CHAR) == atom
    assert _members(grammar.ASTRING_CHAR) == atom | {ord("]")}
    assert _members(grammar.LIST_CHAR) == atom | set(b"%*]")
    assert _members(grammar.TAG_CHAR) == (atom | {ord("]")}) - {ord("+")}


@pytest.mark.parametrize(
    ("line", "head"),
    [
        (b"a1 NOOP\r\n", (b"a1", b"NOOP")),
        (b"a]b SELECT x\r\n", (b"a]b", b"SELECT")),
        (b"a uid FETCH 1\r\n", (b"a", b"uid")),
        (b"a X-FOO.bar_1\n", (b"a", b"X-FOO.bar_1")),
        (b"a NOOP", (b"a", b"NOOP")),  # a piece without its line end
        (b"a+ NOOP\r\n", None),
        (b" a NOOP\r\n", None),
        (b"a  NOOP\r\n", None),
        (b"a 1NOOP\r\n", None),
        (b"a NOOP(\r\n", None),
        (b"a NO\xc3\xa4\r\n", None),
    ],
)
def test_command_head(line: bytes, head: tuple[bytes, bytes] | None) -> None:
    m = grammar.COMMAND_HEAD_RE.match(line)
    assert (m.groups() if m else None) == head


@pytest.mark.parametrize(
    ("line", "head"),
    [
        (b"* 12 FETCH (FLAGS ())\r\n", (b"*", b"FETCH")),
        (b"* OK [CAPABILITY IMAP4rev1] hi\r\n", (b"*", b"OK")),
        (b"a1 NO [TRYCREATE] no\r\n", (b"a1", b"NO")),
        (b"* 3 EXPUNGE\r\n", (b"*", b"EXPUNGE")),
        (b"* \r\n", None),  # continuation requests ("+") are told apart before
    ],
)
def test_response_head(line: bytes, head: tuple[bytes, bytes] | None) -> None:
    m = grammar.RESPONSE_HEAD_RE.match(line)
    assert (m.groups() if m else None) == head


def test_astring_and_list_atoms() -> None:
    assert grammar.is_astring_atom(b"[Gmail]/Sent")
    assert not grammar.is_astring_atom(b"a*")
    assert grammar.is_list_mailbox_atom(b"Arch*/%")
    assert not grammar.is_list_mailbox_atom(b"a b")
    assert not grammar.is_astring_atom(b"")


# --- one definition, every user ----------------------------------------------------------
def test_modified_utf7_exists_once() -> None:
    assert mailboxes.encode_mutf7 is grammar.encode_mutf7
    assert mailboxes.decode_mutf7 is grammar.decode_mutf7
    assert grammar.encode_mutf7("Entwürfe & Co") == b"Entw&APw-rfe &- Co"


def test_mailbox_name_encodings_exist_once() -> None:
    # The session (SELECT's mailbox) and the policy (globs, the mapping) read names alike.
    assert mailboxes.decode_mailbox is grammar.decode_mailbox
    assert mailboxes.encode_mailbox is grammar.encode_mailbox
    assert mailboxes.canonical_inbox is grammar.canonical_inbox


def test_default_line_cap_is_one_constant() -> None:
    assert grammar.DEFAULT_MAX_LINE == 64 * 1024
    assert Limits().max_line == grammar.DEFAULT_MAX_LINE
    for parser in (ClientParser(), ServerParser()):
        assert parser._framer._max_line == grammar.DEFAULT_MAX_LINE


def test_mailbox_responses() -> None:
    assert grammar.MAILBOX_RESPONSES == grammar.LIST_RESPONSES | grammar.NAME_FIRST_RESPONSES
    assert not grammar.LIST_RESPONSES & grammar.NAME_FIRST_RESPONSES


# Files that still carry a copy until the session restructure (H8) lands and switches
# them to grammar.py: session/settings.py (the 64 KiB default) and session/core.py
# (_MAILBOX_RESPONSES).
_PENDING: set[str] = set()
_COPIES = [
    re.compile(rb"\\\{\\d"),  # a literal announcement pattern
    re.compile(rb"\b(?:64 \* 1024|65536)\b"),  # the 64 KiB default
    re.compile(rb"def \w*utf7"),  # a modified UTF-7 codec
    re.compile(rb"\\x00-\\x20"),  # an atom / tag character class
]
# Not grammar copies: a file-descriptor limit, the STARTTLS negotiation line cap, and
# buffer sizes of the control socket, the trace writer and the workers' link.
_UNRELATED = {
    ("demo/dovecot_process.py", 1),
    ("net/upstream_dialogue.py", 1),
    ("inspect/client.py", 1),
    ("inspect/control.py", 1),
    ("inspect/trace.py", 1),
    ("server/workers.py", 1),
}


def test_no_grammar_copies_outside_grammar_py() -> None:
    found = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        rel = path.relative_to(_PACKAGE).as_posix()
        if rel == "wire/grammar.py" or rel in _PENDING:
            continue
        text = path.read_bytes()
        for index, pattern in enumerate(_COPIES):
            if pattern.search(text) and (rel, index) not in _UNRELATED:
                found.append((rel, pattern.pattern))
    assert found == []
