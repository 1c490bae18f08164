"""Hide upstream mailbox paths in the human-readable text of status responses.

Servers quote the mailbox they were given in their error texts: with ``Archive`` mapped to
``Old/Archive``, Dovecot answers ``STATUS Archive/nope`` with ``NO Mailbox doesn't exist:
Old/Archive/nope``, which would show the path the mapping hides. ``StatusTexts`` maps every
upstream name of the table back to its client name in such text.

Only whole path components are replaced: a match must not continue a longer word on the
left (``XOld/Archive``) or be the tail of a longer path (``Foo/Old/Archive``), and must end
at the delimiter (a child follows), at a byte that cannot continue a name component, or at
the end. So ``Old/Archive2`` and ``Old/Archives`` stay as they are. Both wire forms of each
name (modified UTF-7 and UTF-8) are recognised; the longest upstream name wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from imapproxy.policy.mailboxes import encode_mailbox

__all__ = ["StatusTexts"]

# Bytes that continue a name component in text ("." unless it is the delimiter).
_WORD = rb"A-Za-z0-9_\-&+~.\x80-\xff"


class StatusTexts:
    """Client names for upstream names in response text; one regex per delimiter."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        """``pairs``: (client name, upstream name), decoded."""
        self._to_client: dict[bytes, bytes] = {}
        for client, upstream in pairs:
            for utf8 in (False, True):
                self._to_client.setdefault(
                    encode_mailbox(upstream, utf8), encode_mailbox(client, utf8)
                )
        self._patterns: dict[bytes | None, re.Pattern[bytes]] = {}

    def _pattern(self, delimiter: bytes | None) -> re.Pattern[bytes]:
        pattern = self._patterns.get(delimiter)
        if pattern is None:
            names = sorted(self._to_client, key=len, reverse=True)
            alternatives = b"|".join([re.escape(n) for n in names])
            word = _WORD
            if delimiter and len(delimiter) == 1:
                word = word.replace(b".", b"") if delimiter == b"." else word
                before = word + re.escape(delimiter)
            else:
                before = word
            ahead = re.escape(delimiter) + b"|" if delimiter else b""
            end = b"(?=" + ahead + b"[^" + word + b"]|\\Z)"
            pattern = re.compile(b"(?<![" + before + b"])(" + alternatives + b")" + end)
            self._patterns[delimiter] = pattern
        return pattern

    def rewrite(self, text: bytes, delimiter: bytes | None) -> bytes | None:
        """``text`` with upstream names replaced, or None when none occurs."""
        if not self._to_client:
            return None
        pattern = self._pattern(delimiter)
        if pattern.search(text) is None:
            return None
        return pattern.sub(lambda m: self._to_client[m.group(1)], text)
