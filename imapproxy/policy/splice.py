"""Splicing new mailbox names into a command or response, in the form the old one had.

The bytes around each replaced token are kept as they were; a replacement is re-encoded as
the token's own kind (atom, quoted string, literal) when that kind can hold it.
"""

from __future__ import annotations

from imapproxy.wire import grammar
from imapproxy.wire.tokens import Token, TokenKind, encode_astring

__all__ = ["splice"]

_LITERAL_HEADER = grammar.LITERAL_HEAD_RE


def splice(raw: bytes, edits: list[tuple[Token, bytes]], *, list_pattern: bool) -> bytes:
    """``raw`` with each token replaced by its new value (``list_pattern``: LIST patterns,
    whose atoms may carry ``%`` and ``*``)."""
    out: list[bytes] = []
    pos = 0
    for token, value in sorted(edits, key=lambda e: e[0].start):
        out.append(raw[pos : token.start])
        out.append(_encode_like(raw, token, value, list_pattern))
        pos = token.end
    out.append(raw[pos:])
    return b"".join(out)


def _encode_like(raw: bytes, token: Token, value: bytes, list_pattern: bool) -> bytes:
    """Re-encode ``value`` in the token's own form when that form can hold it.

    Literals stay literals with the same synchronising style (the session's literal
    handling does not change), quoted stays quoted, atoms stay atoms while valid.
    """
    if token.kind is TokenKind.LITERAL:
        header = _LITERAL_HEADER.match(raw, token.start)
        tilde, plus = (header.group(1), header.group(3)) if header else (b"", b"")
        return b"%s{%d%s}\r\n%s" % (tilde, len(value), plus, value)
    # "[" is a valid atom char, but in an atom it reads like a BODY[...] section to many
    # parsers (ours included): such names are quoted.
    if token.kind is TokenKind.ATOM and value and b"[" not in value:
        if list_pattern and grammar.is_list_mailbox_atom(value):
            return value
        if encode_astring(value) == value:
            return value
    if any(b in value for b in b"\r\n\x00"):
        return b"{%d}\r\n%s" % (len(value), value)
    # 8-bit bytes only occur in UTF8=ACCEPT names, which quoted strings may carry (RFC 6855).
    return grammar.quote(value)
