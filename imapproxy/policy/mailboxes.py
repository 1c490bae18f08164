"""Mailbox names: the rewrite_mailbox mapping table (the encodings are in wire/grammar.py).

Names travel as wire bytes: modified UTF-7, or UTF-8 once the client enabled UTF8=ACCEPT
(RFC 6855). Mapping works on those bytes prefix-wise, so the part of a name after a mapped
prefix is forwarded byte for byte; globs match the decoded ``str``.

The table maps client names to upstream names (``from`` -> ``to``) and back; the longest
matching prefix wins in both directions, and a prefix covers its children only across the
hierarchy delimiter (``Archive`` covers ``Archive/2024``, never ``Archives``).

A name is only passed through when the round trip is exact: a client name whose upstream
form would map back to something else (the client typed the upstream path ``Old/Archive``
itself) is *reserved* and the command is refused; an upstream name with no client form
(the upstream's own ``Archive`` while ``Archive`` means ``Old/Archive``) is *hidden* from
LIST/LSUB/STATUS. That keeps client->upstream->client the identity and hides the real path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The encodings of a name (modified UTF-7, UTF-8, INBOX) are grammar (wire/grammar.py, where
# the session reads them too); re-exported here for the policy's users.
from imapproxy.wire.grammar import (
    canonical_inbox,
    decode_mailbox,
    decode_mutf7,
    encode_mailbox,
    encode_mutf7,
)

__all__ = [
    "MailboxMap",
    "Mapped",
    "canonical_inbox",
    "decode_mailbox",
    "decode_mutf7",
    "encode_mailbox",
    "encode_mutf7",
]


def _canonical_rule_name(wire: bytes) -> bytes:
    # The server's delimiter is unknown when rules compile: any non-alphanumeric byte after
    # "inbox" in a configured name is taken as one.
    if wire[:5].upper() == b"INBOX" and not wire[5:6].isalnum():
        return b"INBOX" + wire[5:]
    return wire


@dataclass(frozen=True, slots=True)
class Mapped:
    wire: bytes  # the name on the other side (the input when no prefix applied)
    rule: str | None  # the rule whose prefix applied, or that reserves/hides the name
    valid: bool  # False: no counterpart on the other side (reserved or hidden)


@dataclass(frozen=True, slots=True)
class _Entry:
    src: bytes  # canonical-INBOX form
    dst: bytes
    rule: str


def _prefixes(name: bytes, delim: bytes | None, stop: int) -> list[int]:
    """Lengths at which ``name[:length]`` could be a mapped name, longest first: the whole
    name and every prefix ending just before a delimiter (within ``name[:stop]``)."""
    lengths = [len(name)] if stop == len(name) else []
    if delim:
        end = stop
        while (end := name.rfind(delim, 0, end)) > 0:
            lengths.append(end)
    return lengths


class _Table:
    """One direction of the mapping, in one wire encoding.

    Lookups cost one dict probe per hierarchy level of the name, not one per rule.
    """

    def __init__(self, pairs: Sequence[tuple[bytes, bytes, str]]) -> None:
        entries = [_Entry(_canonical_rule_name(s), d, r) for s, d, r in pairs]
        self.entries = {entry.src: entry for entry in entries}

    def apply(self, name: bytes, delim: bytes | None) -> tuple[bytes, str | None]:
        canon = canonical_inbox(name, delim)
        for length in _prefixes(canon, delim, len(canon)):
            entry = self.entries.get(canon[:length])
            if entry is not None:
                return entry.dst + name[length:], entry.rule
        return name, None

    def apply_pattern(self, pattern: bytes, delim: bytes | None) -> tuple[bytes, str | None]:
        """Like apply, but a mapped name followed by a LIST wildcard maps too."""
        canon = canonical_inbox(pattern, delim)
        # Mapped names hold no wildcard: only the part before the first one can match.
        wild = min((i for i in (canon.find(b"*"), canon.find(b"%")) if i >= 0), default=-1)
        lengths = (
            _prefixes(canon, delim, len(canon))
            if wild < 0
            else [
                wild,
                *_prefixes(canon, delim, wild),
            ]
        )
        for length in lengths:
            entry = self.entries.get(canon[:length])
            if entry is not None:
                return entry.dst + pattern[length:], entry.rule
        return pattern, None


class MailboxMap:
    """The rewrite_mailbox table: ``(rule name, client name, upstream name)`` triples."""

    def __init__(self, pairs: Sequence[tuple[str, str, str]]) -> None:
        self._up: dict[bool, _Table] = {}
        self._down: dict[bool, _Table] = {}
        for utf8 in (False, True):
            wire = [(encode_mailbox(f, utf8), encode_mailbox(t, utf8), r) for r, f, t in pairs]
            self._up[utf8] = _Table(wire)
            self._down[utf8] = _Table([(t, f, r) for f, t, r in wire])

    def __bool__(self) -> bool:
        return bool(self._up[False].entries)

    def to_upstream(self, name: bytes, delim: bytes | None, utf8: bool = False) -> Mapped:
        up, rule = self._up[utf8].apply(name, delim)
        back, back_rule = self._down[utf8].apply(up, delim)
        if canonical_inbox(back, delim) != canonical_inbox(name, delim):
            return Mapped(up, back_rule or rule, False)
        return Mapped(up, rule, True)

    def to_client(self, name: bytes, delim: bytes | None, utf8: bool = False) -> Mapped:
        down, rule = self._down[utf8].apply(name, delim)
        again, again_rule = self._up[utf8].apply(down, delim)
        if canonical_inbox(again, delim) != canonical_inbox(name, delim):
            return Mapped(down, again_rule or rule, False)
        return Mapped(down, rule, True)

    def pattern_to_upstream(
        self, pattern: bytes, delim: bytes | None, utf8: bool = False
    ) -> tuple[bytes, str | None]:
        """A LIST reference or pattern: prefix-mapped, never refused (replies are mapped)."""
        return self._up[utf8].apply_pattern(pattern, delim)
