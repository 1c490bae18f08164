"""Rewriting client commands: mailbox arguments mapped client -> upstream.

``CommandRewriter`` is the command half of the ``rewrite_mailbox`` table (semantics in
``engine``): it maps the mailbox arguments of a command and LIST/LSUB patterns, refuses
reserved names, unreadable arguments and RENAME/DELETE that would take a mapped folder
out of its mapping (``trees``), and splices the new names into the original bytes.
"""

from __future__ import annotations

from imapproxy.policy.arguments import LIST_COMMANDS, list_tokens, mailbox_tokens
from imapproxy.policy.mailboxes import MailboxMap, Mapped, decode_mailbox
from imapproxy.policy.responses import LearnedDelimiter
from imapproxy.policy.splice import splice
from imapproxy.policy.trees import CONFLICT_MESSAGE, TREE_COMMANDS, MappedRoot, mapping_conflict
from imapproxy.policy.verdicts import UNPARSABLE_MESSAGE
from imapproxy.wire.tokens import ParsedCommand, Token, TokenKind

__all__ = ["CommandRewriter"]

_RESERVED_MESSAGE = "Mailbox name is reserved by policy"
# (block, rewritten, rules applied)
Rewrite = tuple[tuple[str, str] | None, bytes | None, tuple[str, ...]]


class CommandRewriter:
    """Client -> upstream mapping of one policy's commands (module docstring)."""

    __slots__ = ("_delimiter", "_map", "_roots")

    def __init__(
        self, mapping: MailboxMap, roots: tuple[MappedRoot, ...], delimiter: LearnedDelimiter
    ) -> None:
        self._map = mapping
        self._roots = roots  # one per rewrite rule, in file order
        self._delimiter = delimiter

    def tree_names(
        self, command: str, args: ParsedCommand, utf8: bool
    ) -> tuple[list[str], list[str], tuple[MappedRoot, ...], str | None]:
        """(client names, their upstream names, mapped roots, delimiter) for trees."""
        delimiter = self._delimiter.current
        text_delimiter = delimiter.decode("utf-8", "replace") if delimiter else None
        clients: list[str] = []
        upstreams: list[str] = []
        for token in mailbox_tokens(command, args) or ():
            clients.append(decode_mailbox(token.value, utf8, delimiter))
            up = self._map.to_upstream(token.value, delimiter, utf8).wire if self._map else None
            upstreams.append(decode_mailbox(up, utf8, delimiter) if up else clients[-1])
        return clients, upstreams, self._roots, text_delimiter

    def rewrite(
        self, command: str, raw: bytes, parsed: ParsedCommand | None, utf8: bool
    ) -> Rewrite:
        """(block, rewritten, rules applied): map mailbox arguments client -> upstream.

        ``parsed`` None (unreadable arguments) refuses the command; ``rewritten`` None
        leaves it as it is.
        """
        if parsed is None:
            return self._refuse(UNPARSABLE_MESSAGE)
        delimiter = self._delimiter.current
        edits: list[tuple[Token, bytes]] = []
        applied: list[str] = []
        if command in LIST_COMMANDS:
            for token, is_reference in list_tokens(parsed):
                if token.kind is TokenKind.LIST:
                    return self._refuse(UNPARSABLE_MESSAGE)
                new, rule = self._map.pattern_to_upstream(token.value, delimiter, utf8)
                if rule is not None:
                    edits.append((token, new))
                    applied.append(rule)
                if is_reference and token.value:
                    break  # a pattern after a non-empty reference is relative to it
        else:
            tokens = mailbox_tokens(command, parsed)
            if tokens is None:
                return self._refuse(UNPARSABLE_MESSAGE)
            for token in tokens:
                mapped: Mapped = self._map.to_upstream(token.value, delimiter, utf8)
                if not mapped.valid:
                    return self._refuse(_RESERVED_MESSAGE, mapped.rule)
                if mapped.rule is not None:
                    edits.append((token, mapped.wire))
                    applied.append(mapped.rule)
            if command in TREE_COMMANDS:
                conflict = mapping_conflict(command, *self.tree_names(command, parsed, utf8))
                if conflict is not None:
                    return self._refuse(CONFLICT_MESSAGE, conflict.rule)
        if not edits:
            return None, None, ()
        rewritten = splice(raw, edits, list_pattern=command in LIST_COMMANDS)
        return None, rewritten, tuple(dict.fromkeys(applied))

    def _refuse(
        self, message: str, rule: str | None = None
    ) -> tuple[tuple[str, str], None, tuple[str, ...]]:
        if rule is None:  # blame the first rewrite rule: the table as a whole refused
            rule = self._roots[0].rule
        return (rule, message), None, (rule,)
