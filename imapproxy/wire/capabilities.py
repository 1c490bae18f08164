"""Capability filtering: the proxy must not advertise what it cannot carry.

Capabilities appear in ``* CAPABILITY ...`` responses and in ``[CAPABILITY ...]`` response
codes (greeting, tagged OK after login). Only the capability words are touched; every other
byte of the line is kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence

# Words the proxy hides unless it implements them itself:
# STARTTLS would let a client encrypt end-to-end past the inspector; COMPRESS turns the stream
# into deflate data the parser cannot read; LOGINDISABLED belongs to the upstream's own TLS
# state, which the proxy's client leg does not share.
ALWAYS_HIDDEN_PREFIXES = (b"COMPRESS=",)

_CODE = re.compile(rb"\[CAPABILITY ([^\]\r\n]*)\]", re.IGNORECASE)
_UNTAGGED = re.compile(rb"(\* CAPABILITY )([^\r\n]*)", re.IGNORECASE)


class CapabilityFilter:
    """Removes ``hide`` words (case-insensitive, plus COMPRESS=*) and appends ``add`` words."""

    __slots__ = ("_add", "_hide", "_memo")

    def __init__(self, hide: Collection[bytes], add: Sequence[bytes] = ()) -> None:
        self._hide = frozenset(w.upper() for w in hide)
        self._add = tuple(add)
        self._memo: dict[bytes, bytes] = {}

    def _filter_words(self, words: bytes) -> bytes:
        # A server announces the same few capability lists to every session: remember them.
        done = self._memo.get(words)
        if done is None:
            if len(self._memo) >= 64:
                self._memo.clear()
            done = self._memo[words] = self._filter_uncached(words)
        return done

    def _filter_uncached(self, words: bytes) -> bytes:
        kept = [
            w
            for w in words.split(b" ")
            if w
            and w.upper() not in self._hide
            and not w.upper().startswith(ALWAYS_HIDDEN_PREFIXES)
        ]
        upper = {w.upper() for w in kept}
        kept.extend(w for w in self._add if w.upper() not in upper)
        return b" ".join(kept)

    def untagged(self, line: bytes) -> bytes:
        """Filter a ``* CAPABILITY ...`` line."""
        m = _UNTAGGED.match(line)
        if m is None:
            return line
        return line[: m.start(2)] + self._filter_words(m.group(2)) + line[m.end(2) :]

    def response_code(self, line: bytes) -> bytes:
        """Filter a ``[CAPABILITY ...]`` code inside a status response, if present."""
        m = _CODE.search(line)
        if m is None:
            return line
        return line[: m.start(1)] + self._filter_words(m.group(1)) + line[m.end(1) :]


@functools.lru_cache(maxsize=16)
def shared_filter(hide: frozenset[bytes], add: tuple[bytes, ...]) -> CapabilityFilter:
    """One filter per configuration, shared by sessions (its memo then pays off)."""
    return CapabilityFilter(hide, add)


def capability_words(line: bytes) -> list[bytes] | None:
    """The capability words a line announces (untagged or in a code), as sent."""
    m = _UNTAGGED.match(line)
    words = m.group(2) if m is not None else None
    if words is None:
        c = _CODE.search(line)
        words = c.group(1) if c is not None else None
    return None if words is None else [w for w in words.split(b" ") if w]


def capabilities_in(line: bytes) -> list[bytes] | None:
    """The capability words a line announces, upper case."""
    words = capability_words(line)
    return None if words is None else [w.upper() for w in words]
