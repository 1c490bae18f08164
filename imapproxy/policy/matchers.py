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

__all__ = ["IPAddress", "Matcher", "NetworkSet", "compile_globs", "glob_error"]


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

    @classmethod
    def compile(cls, rule: Rule) -> Matcher:
        when = rule.when
        return cls(
            rule=rule,
            users=compile_globs(when.user, ignore_case=True),
            mailboxes=compile_globs(when.mailbox, ignore_case=False),
            clients=NetworkSet(when.client) if when.client else None,
        )

    def matches(self, client: IPAddress, user: str | None, mailboxes: Sequence[str] | None) -> bool:
        """``mailboxes``: the decoded names the command involves (None: not computed)."""
        if self.clients is not None and client not in self.clients:
            return False
        if self.users is not None and (user is None or self.users.match(user) is None):
            return False
        if self.mailboxes is not None:
            pattern = self.mailboxes
            if not mailboxes or not any(pattern.match(m) for m in mailboxes):
                return False
        return True
