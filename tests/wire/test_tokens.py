"""The argument tokenizer used by policy and the session (spans, literals, sections)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapproxy.wire.tokens import (
    Token,
    TokenError,
    TokenKind,
    encode_astring,
    parse_command,
    tokenize,
)

A, Q, L, LIST = TokenKind.ATOM, TokenKind.QUOTED, TokenKind.LITERAL, TokenKind.LIST


def shape(tokens: list[Token] | tuple[Token, ...]) -> list[object]:
    """Kinds and values, lists as nested Python lists."""
    return [shape(t.items) if t.kind is LIST else (t.kind, t.value) for t in tokens]


def check_spans(data: bytes, tokens: list[Token] | tuple[Token, ...]) -> None:
    """Every token's span is its wire form; tokens are ordered and do not overlap."""
    last = -1
    for tok in tokens:
        wire = data[tok.start : tok.end]
        assert tok.start >= last
        last = tok.end
        if tok.kind is A:
            assert wire == tok.value
        elif tok.kind is Q:
            assert wire[:1] == wire[-1:] == b'"'
        elif tok.kind is L:
            assert wire.endswith(tok.value)
            assert wire[:1] in (b"{", b"~")
        else:
            assert wire[:1] == b"(" and wire[-1:] == b")"
            check_spans(data, tok.items)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"INBOX", [(A, b"INBOX")]),
        (b"1:*,3,5:7 (FLAGS)", [(A, b"1:*,3,5:7"), [(A, b"FLAGS")]]),
        (b'"a \\"b\\" \\\\c"', [(Q, b'a "b" \\c')]),
        (b'""', [(Q, b"")]),
        (b"\\Seen \\Deleted", [(A, b"\\Seen"), (A, b"\\Deleted")]),
        (b"(a (b c) ())", [[(A, b"a"), [(A, b"b"), (A, b"c")], []]]),
        (
            b"1 (UID BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>)",
            [(A, b"1"), [(A, b"UID"), (A, b"BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>")]],
        ),
        (b"BODY[1.2.MIME] BINARY[3]<5.7>", [(A, b"BODY[1.2.MIME]"), (A, b"BINARY[3]<5.7>")]),
        (b"{3}\r\nabc", [(L, b"abc")]),
        (b"{3+}\r\na\r\n INBOX", [(L, b"a\r\n"), (A, b"INBOX")]),
        (b"~{3}\r\n\x00\x01\xff", [(L, b"\x00\x01\xff")]),
        (b"{0}\r\n", [(L, b"")]),
        (b"(\\Seen) {5}\r\nhello)", None),  # unbalanced ")" after the literal
        (b"NIL", [(A, b"NIL")]),
        (b"INBOX\r\n", [(A, b"INBOX")]),  # the final line end is not a token
        (b"  a   b  ", [(A, b"a"), (A, b"b")]),
    ],
)
def test_tokenize(data: bytes, expected: list[object] | None) -> None:
    if expected is None:
        with pytest.raises(TokenError):
            tokenize(data)
        return
    tokens = tokenize(data)
    assert shape(tokens) == expected
    check_spans(data, tokens)


def test_literal_inside_a_list_and_spans() -> None:
    data = b'a APPEND INBOX (\\Seen) "date" {5}\r\nhello (x {2}\r\nhi)\r\n'
    tokens = tokenize(data, len(b"a APPEND "))
    assert shape(tokens) == [
        (A, b"INBOX"),
        [(A, b"\\Seen")],
        (Q, b"date"),
        (L, b"hello"),
        [(A, b"x"), (L, b"hi")],
    ]
    check_spans(data, tokens)
    assert data[tokens[3].start : tokens[3].end] == b"{5}\r\nhello"


def test_tokenize_respects_end() -> None:
    data = b"a b c d"
    assert shape(tokenize(data, 2, 5)) == [(A, b"b"), (A, b"c")]


@pytest.mark.parametrize(
    "data",
    [
        b"(a b",
        b"a b)",
        b'"abc',
        b'"ab\r\nc"',
        b"{5}\r\nabc",  # literal runs past the data
        b"{x}\r\nabc",
        b"{3}abc",  # no CRLF after the announcement
        b"a\r\nb",  # a line end in the middle
        b"BODY[HEADER",
    ],
)
def test_tokenize_errors(data: bytes) -> None:
    with pytest.raises(TokenError):
        tokenize(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # "[" is an ATOM-CHAR (RFC 9051 atom-specials exclude only "]"), so these are atoms
        # and mailbox names outside a fetch attribute's section.
        (b"foo[bar", [(A, b"foo[bar")]),
        (b"[", [(A, b"[")]),
        (b"[Gmail]/Drafts", [(A, b"[Gmail]/Drafts")]),
        (b"a[ b]", [(A, b"a["), (A, b"b]")]),  # RENAME a[ b]: two astrings
    ],
)
def test_open_bracket_is_an_atom_char_outside_sections(data: bytes, expected: list[object]) -> None:
    assert shape(tokenize(data)) == expected


# --- parse_command -----------------------------------------------------------------------------
def test_parse_command_with_literals_inline() -> None:
    parsed = parse_command(b"a1 login {3}\r\nbob {6}\r\nsecret\r\n")
    assert (parsed.tag, parsed.name) == (b"a1", "LOGIN")
    assert shape(parsed.args) == [(L, b"bob"), (L, b"secret")]


def test_parse_command_uid() -> None:
    parsed = parse_command(b"A7 uid fetch 1:5 (FLAGS)\r\n")
    assert (parsed.tag, parsed.name) == (b"A7", "UID FETCH")
    assert shape(parsed.args) == [(A, b"1:5"), [(A, b"FLAGS")]]


@pytest.mark.parametrize("raw", [b"a1", b" NOOP\r\n", b"a1 UID BOGUS 1\r\n", b"a1 \r\n"])
def test_parse_command_errors(raw: bytes) -> None:
    with pytest.raises(TokenError):
        parse_command(raw)


# --- encode_astring ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"INBOX", b"INBOX"),
        (b"Sent Items", b'"Sent Items"'),
        (b'a"b\\c', b'"a\\"b\\\\c"'),
        (b"", b'""'),
        ("Entwürfe".encode(), b"{9}\r\n" + "Entwürfe".encode()),
        (b"a\r\nb", b"{4}\r\na\r\nb"),
        (b"%", b'"%"'),  # list wildcards are not atom characters
        (b"*", b'"*"'),
    ],
)
def test_encode_astring(value: bytes, wire: bytes) -> None:
    assert encode_astring(value) == wire


# Characters that matter to the encoding choice, plus anything at all.
_TRICKY = st.text(alphabet='aZ09[]{}()<>"\\ %*~+\r\n\x00\x7fé.', max_size=10).map(str.encode)


@settings(max_examples=200, deadline=None)
@given(_TRICKY | st.binary(max_size=16))
def test_encode_astring_round_trips_through_tokenize(value: bytes) -> None:
    wire = encode_astring(value)
    (token,) = tokenize(wire)
    assert token.value == value
    assert (token.start, token.end) == (0, len(wire))
