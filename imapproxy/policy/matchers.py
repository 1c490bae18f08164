"""Precompiled `when` conditions: globs become one regex per rule, CIDRs one network list.

Everything is built once in ``Policy.compile``; matching a command then costs a few regex
``match`` calls and address comparisons per candidate rule, never any parsing.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from imapproxy.policy.model import Network, Rule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "GlobPrefix",
    "IPAddress",
    "Matcher",
    "NetworkSet",
    "compile_globs",
    "glob_error",
]


def glob_error(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable glob, or None.

    fnmatch accepts anything and treats a stray ``[`` as a literal character; in a policy
    that is almost certainly a typo that would silently never match, so it is an error.
    """
    if any(ch in pattern for ch in "\r\n\x00"):
        return "control characters are not allowed"
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":  # a leading ']' is a literal member
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                return f"unterminated '[' at position {i + 1}"
            i = close
        i += 1
    return None


def compile_globs(patterns: Sequence[str], *, ignore_case: bool) -> re.Pattern[str] | None:
    """One regex matching any of the globs (``*`` also crosses hierarchy delimiters)."""
    if not patterns:
        return None
    alternatives = "|".join(fnmatch.translate(p) for p in patterns)
    return re.compile(alternatives, re.IGNORECASE if ignore_case else 0)


_STAR = "*"


class GlobPrefix:
    """Whether a glob can match *some* name that starts with a given prefix.

    RENAME and DELETE act on a mailbox and everything under it, so a rule on
    ``Archive/*`` must also see ``RENAME Mail Foo`` when ``Mail/Archive`` exists: the
    question is whether the glob could match a name beginning ``Mail/``. A ``*`` matches
    anything, so once the walk reaches one the answer is yes; before it, the glob's parts
    are compared with the prefix one character at a time (``?`` and ``[...]`` classes
    match one). The cost is bounded by the glob's length, never by the name's.
    """

    __slots__ = ("_parts",)

    def __init__(self, glob: str) -> None:
        parts: list[str | re.Pattern[str]] = []
        i, n = 0, len(glob)
        while i < n:
            ch = glob[i]
            if ch == "*":
                parts.append(_STAR)
                break  # nothing after the first star matters for a prefix question
            if ch == "?":
                parts.append(re.compile(".", re.DOTALL))
            elif ch == "[" and (close := _class_end(glob, i)) > 0:
                parts.append(re.compile(fnmatch.translate(glob[i : close + 1])))
                i = close
            else:
                parts.append(ch)
            i += 1
        self._parts = tuple(parts)

    def extends(self, prefix: str) -> bool:
        parts = self._parts
        for index, ch in enumerate(prefix):
            if index >= len(parts):
                return False  # the glob ended before the prefix did
            part = parts[index]
            if part is _STAR:
                return True
            if isinstance(part, str):
                if part != ch:
                    return False
            elif part.match(ch) is None:
                return False
        return True  # the rest of the glob can be satisfied by what follows the prefix


def _class_end(glob: str, start: int) -> int:
    """Index of the ``]`` closing the class at ``start`` (fnmatch rules), or -1."""
    j = start + 1
    if j < len(glob) and glob[j] == "!":
        j += 1
    if j < len(glob) and glob[j] == "]":
        j += 1
    return glob.find("]", j)


def inbox_glob(glob: str) -> str:
    """A glob naming INBOX in any case (``inbox``, ``inbox/Keep``) as names are matched:
    INBOX is case-insensitive and decoded names carry it upper-cased. ``inbox*`` keeps its
    case (it also names ``inboxes``, which is case-sensitive)."""
    if glob[:5].upper() == "INBOX" and (
        len(glob) == 5 or not (glob[5].isalnum() or glob[5] in "*?[")
    ):
        return "INBOX" + glob[5:]
    return glob


class NetworkSet:
    """Client CIDRs as integer ranges; IPv4-mapped IPv6 peers (dual-stack listeners) match
    IPv4 networks."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Sequence[Network]) -> None:
        def ranges(version: int) -> tuple[tuple[int, int], ...]:
            return tuple(
                (int(n.network_address), int(n.broadcast_address))
                for n in networks
                if n.version == version
            )

        self._v4 = ranges(4)
        self._v6 = ranges(6)

    def __contains__(self, address: IPAddress) -> bool:
        table = self._v4
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            if mapped is None:
                table = self._v6
            else:
                address = mapped
        value = int(address)
        return any(low <= value <= high for low, high in table)


@dataclass(frozen=True, slots=True)
class Matcher:
    """A rule's conditions other than the command name (the engine indexes by command)."""

    rule: Rule
    users: re.Pattern[str] | None
    mailboxes: re.Pattern[str] | None
    clients: NetworkSet | None
    mailbox_prefixes: tuple[GlobPrefix, ...] = ()

    @classmethod
    def compile(cls, rule: Rule) -> Matcher:
        when = rule.when
        mailboxes = [inbox_glob(g) for g in when.mailbox]
        return cls(
            rule=rule,
            users=compile_globs(when.user, ignore_case=True),
            mailboxes=compile_globs(mailboxes, ignore_case=False),
            clients=NetworkSet(when.client) if when.client else None,
            mailbox_prefixes=tuple(GlobPrefix(g) for g in mailboxes),
        )

    def matches(
        self,
        client: IPAddress,
        user: str | None,
        mailboxes: Sequence[str] | None,
        trees: Sequence[str] = (),
    ) -> bool:
        """``mailboxes``: the decoded names the command involves (None: not computed);
        ``trees``: prefixes (``"Mail/"``) of whole subtrees it involves too (RENAME, DELETE):
        a mailbox glob matches when it could match any name under one of them."""
        if self.clients is not None and client not in self.clients:
            return False
        if self.users is not None and (user is None or self.users.match(user) is None):
            return False
        if self.mailboxes is not None:
            pattern = self.mailboxes
            if not (mailboxes and any(pattern.match(m) for m in mailboxes)) and not any(
                g.extends(t) for t in trees for g in self.mailbox_prefixes
            ):
                return False
        return True
