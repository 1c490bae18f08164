"""Verdicts, and their computation memoised per command name.

``Candidates`` holds the block and log rules that can apply to one command name and
computes a ``Verdict`` from what those rules test (client address, user, involved
mailboxes), caching it on exactly those values: they repeat for every command of a
session, so the rule loop runs once per distinct key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imapproxy.policy.arguments import MAILBOX_ARGS
from imapproxy.policy.matchers import IPAddress, Matcher

__all__ = ["CACHE_LIMIT", "PASS", "UNPARSABLE_MESSAGE", "Candidates", "Verdict", "unparsable"]

UNPARSABLE_MESSAGE = "Command arguments could not be checked against policy"
CACHE_LIMIT = 4096  # verdicts kept per command name; cleared when full


@dataclass(frozen=True, slots=True)
class Verdict:
    block: tuple[str, str] | None  # (rule name, message): answer `TAG NO [...] message`
    rewritten: bytes | None  # the command (or its prefix before a live literal), rewritten
    log: str | None  # None | "command" | "full"
    matched: tuple[tuple[str, str], ...]  # (rule name, action) of every rule that applied


PASS = Verdict(None, None, None, ())


class Candidates:
    """The non-rewrite rules that can apply to one command name, with what they need.

    Matching depends only on (client address, user, involved mailboxes), and only on the
    parts some candidate tests; verdicts are memoised on exactly them (module docstring).
    """

    __slots__ = (
        "cache",
        "matchers",
        "needs_args",
        "needs_client",
        "needs_mailbox",
        "needs_user",
        "strict_mailbox",
        "strict_user",
    )

    def __init__(self, command: str | None, matchers: Sequence[Matcher]) -> None:
        self.matchers = tuple(matchers)
        self.needs_client = any(m.clients is not None for m in matchers)
        self.needs_user = any(m.users is not None for m in matchers)
        self.needs_mailbox = any(m.mailboxes is not None for m in matchers)
        arg_mailbox = command in MAILBOX_ARGS
        login = command == "LOGIN"
        self.needs_args = (arg_mailbox and self.needs_mailbox) or (login and self.needs_user)
        # Unparsable arguments refuse the command only when a block rule depends on them.
        blocks = [m for m in matchers if m.rule.action == "block"]
        self.strict_mailbox = arg_mailbox and any(m.mailboxes is not None for m in blocks)
        self.strict_user = login and any(m.users is not None for m in blocks)
        self.cache: dict[tuple[object, ...], Verdict] = {}

    def verdict(
        self,
        client: IPAddress,
        user: str | None,
        mailboxes: tuple[str, ...] | None,
        trees: tuple[str, ...] = (),
    ) -> Verdict:
        """The verdict of these rules for one command (``trees``: see ``policy.trees``)."""
        key = (
            client if self.needs_client else None,
            user if self.needs_user else None,
            mailboxes,
            trees,
        )
        verdict = self.cache.get(key)
        if verdict is None:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            verdict = self.cache[key] = self._match(client, user, mailboxes, trees)
        return verdict

    def _match(
        self,
        client: IPAddress,
        user: str | None,
        mailboxes: tuple[str, ...] | None,
        trees: tuple[str, ...],
    ) -> Verdict:
        block: tuple[str, str] | None = None
        detail: str | None = None
        matched: list[tuple[str, str]] = []
        for matcher in self.matchers:
            rule = matcher.rule
            if rule.action == "block" and block is not None:
                continue  # the first matching block rule decides
            if not matcher.matches(client, user, mailboxes, trees):
                continue
            matched.append((rule.name, rule.action))
            if rule.action == "block":
                block = (rule.name, rule.block_message())
            elif rule.action == "log":
                detail = "full" if rule.detail == "full" or detail == "full" else "command"
        if block is None and detail is None and not matched:
            return PASS
        return Verdict(block, None, detail, tuple(matched))


def unparsable(cands: Candidates, what: str) -> Verdict:
    """Fail closed: a block rule depends on arguments (``user``/``mailbox``) that could
    not be read; the first such rule refuses the command."""
    for matcher in cands.matchers:
        rule = matcher.rule
        if rule.action == "block" and (
            (what == "user" and matcher.users is not None)
            or (what == "mailbox" and matcher.mailboxes is not None)
        ):
            return Verdict((rule.name, UNPARSABLE_MESSAGE), None, None, ((rule.name, "block"),))
    return PASS
