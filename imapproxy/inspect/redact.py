"""Credential redaction for observed lines, done in the proxy before anything leaves it.

What is hidden (replaced by ``***``):

* LOGIN's password and anything after it, whether sent as an atom, a quoted string or a
  literal (``LoginRedactor`` follows the command across its lines and literals; every
  literal payload of a LOGIN is hidden, the user's too, which ``user`` shows anyway);
* AUTHENTICATE's initial response (SASL-IR), so the XOAUTH2 / OAUTHBEARER token too;
* every client line of an AUTHENTICATE exchange and the server's challenges (the caller
  knows the phase; ``sasl_line``).

Arguments are found with the one IMAP tokenizer (``wire.tokens``); when a LOGIN cannot be
tokenised everything after the command name is hidden. The rule for doubt is "hide".
"""

from __future__ import annotations

from imapproxy.wire.grammar import SPACED_LITERAL_AT_END_RE
from imapproxy.wire.tokens import TokenError, tokenize

HIDDEN = b"***"


def _args_start(raw: bytes) -> int:
    """Offset just past ``tag SP name`` (the first two words of a command line)."""
    first = raw.find(b" ")
    if first < 0:
        return len(raw)
    second = raw.find(b" ", first + 1)
    if second < 0:
        return len(raw.rstrip(b"\r\n"))
    return second


class LoginRedactor:
    """Follows one LOGIN command; ``line`` returns the text to show and whether the literal
    the line announces (if any) holds a secret."""

    __slots__ = ("_args", "_broken")

    def __init__(self) -> None:
        self._args = 0  # arguments seen so far: 0 the user, 1 the password, more: hidden too
        self._broken = False

    def first_line(self, raw: bytes) -> tuple[bytes, bool]:
        return self._redact(raw, _args_start(raw))

    def part(self, raw: bytes) -> tuple[bytes, bool]:
        return self._redact(raw, 0)

    def _redact(self, raw: bytes, start: int) -> tuple[bytes, bool]:
        announced = SPACED_LITERAL_AT_END_RE.search(raw)
        end = announced.start() if announced is not None else len(raw)
        if self._broken:
            return raw[:start] + b" " + HIDDEN, True
        try:
            tokens = tokenize(raw, start, end)
        except TokenError:
            self._broken = True
            return raw[:start] + b" " + HIDDEN, True
        pieces: list[bytes] = [raw[:start]]
        pos = start
        for token in tokens:
            if self._args >= 1:
                pieces += (raw[pos : token.start], HIDDEN)
                pos = token.end
            self._args += 1
        pieces.append(raw[pos:])
        if announced is not None:
            self._args += 1
        return b"".join(pieces), announced is not None


def authenticate_line(raw: bytes) -> bytes:
    """``tag AUTHENTICATE MECH`` with any initial response hidden (``=``, empty, stays)."""
    words = raw.rstrip(b"\r\n").split(None, 3)
    if len(words) <= 3:
        return raw
    initial = words[3]
    return b" ".join([*words[:3], initial if initial == b"=" else HIDDEN])


def sasl_line(raw: bytes) -> bytes:
    """A client line of an AUTHENTICATE exchange: only the cancel ``*`` is shown."""
    return b"*" if raw.strip() == b"*" else HIDDEN


def challenge_line(raw: bytes) -> bytes:
    """A server ``+`` during AUTHENTICATE: the challenge data is hidden."""
    return b"+ " + HIDDEN if raw.rstrip(b"\r\n") != b"+" else b"+"
