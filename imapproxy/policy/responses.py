"""Rewriting server responses for the client: mailbox names, status texts, STATUS counts.

``ResponseRewriter`` is the response half of a ``Policy`` (semantics in ``engine``): it
maps mailbox names in untagged LIST/LSUB/STATUS/... responses upstream -> client, hides
upstream names with no client form, replaces upstream paths in OK/NO/BAD/BYE texts, drops
``* STATUS`` counts a STATUS block rule would refuse, and learns the server's hierarchy
delimiter (``LearnedDelimiter``) from LIST replies on the way.
"""

from __future__ import annotations

from imapproxy.policy.mailboxes import MailboxMap, decode_mailbox
from imapproxy.policy.splice import splice
from imapproxy.policy.texts import StatusTexts
from imapproxy.policy.verdicts import Candidates
from imapproxy.session.settings import SessionFacts
from imapproxy.wire import grammar
from imapproxy.wire.tokens import Token, TokenError, TokenKind, tokenize

__all__ = ["LearnedDelimiter", "ResponseRewriter"]

# Untagged responses carrying a mailbox name, and where: LIST-like ones after flags and
# delimiter, the others first.
_LIST_RESPONSES = frozenset(word.encode() for word in grammar.LIST_RESPONSES)
_NAME_FIRST_RESPONSES = frozenset(word.encode() for word in grammar.NAME_FIRST_RESPONSES)


class LearnedDelimiter:
    """The server's hierarchy delimiter as learned from LIST replies (``/`` until then)."""

    __slots__ = ("known", "value")

    def __init__(self) -> None:
        self.value: bytes | None = None
        self.known = False

    @property
    def current(self) -> bytes | None:
        return self.value if self.known else b"/"

    def set(self, delimiter: bytes | None) -> None:
        """Set the delimiter (b"" or None: flat namespace, names have no children)."""
        self.value = delimiter or None
        self.known = True


class ResponseRewriter:
    """Upstream -> client rewriting of responses for one policy (module docstring)."""

    __slots__ = ("_delimiter", "_map", "_status", "_status_guard", "_texts")

    def __init__(
        self,
        mapping: MailboxMap,
        texts: StatusTexts,
        status: Candidates,
        delimiter: LearnedDelimiter,
    ) -> None:
        self._map = mapping
        self._texts = texts
        # `* STATUS` responses the client did not ask for by a STATUS command (LIST-STATUS,
        # NOTIFY) are judged like one: STATUS's block rules decide whether counts show.
        self._status = status
        self._status_guard = any(m.rule.action == "block" for m in status.matchers)
        self._delimiter = delimiter

    def active(self) -> bool:
        return bool(self._map) or self._status_guard

    def status_text(self, raw: bytes) -> bytes | None:
        """See ``Policy.rewrite_status_text``."""
        if not self._map:
            return None
        space = raw.find(b" ")
        if space < 0:
            return None
        text = self._texts.rewrite(raw[space:], self._delimiter.current)
        return None if text is None else raw[:space] + text

    def response(self, raw: bytes, facts: SessionFacts | None, utf8: bool | None) -> bytes | None:
        """See ``Policy.rewrite_response``."""
        if not raw.startswith(b"* ") or not (self._map or self._status_guard):
            return None
        if utf8 is None:
            utf8 = facts.utf8 if facts is not None else False
        space = raw.find(b" ", 2)
        word = raw[2:space].upper() if space > 0 else b""
        if word in _LIST_RESPONSES:
            return self._list_response(raw, space + 1, utf8) if self._map else None
        if word in _NAME_FIRST_RESPONSES:
            try:
                tokens = tokenize(raw, space + 1)
            except TokenError:
                return None
            if not tokens or tokens[0].kind is TokenKind.LIST:
                return None
            delimiter = self._delimiter.current
            result = self._apply_down(raw, tokens[0], delimiter, utf8) if self._map else None
            if word == b"STATUS" and result != b"" and facts is not None and self._status_guard:
                shown = result if result is not None else raw
                if self._status_blocked(facts, shown, utf8):
                    return b""
            return result
        return None

    def _status_blocked(self, facts: SessionFacts, response: bytes, utf8: bool) -> bool:
        """Would a block rule refuse ``STATUS <name>`` for this ``* STATUS <name> (...)``?"""
        try:
            tokens = tokenize(response, response.find(b" ", 2) + 1)
        except TokenError:
            return True  # fail closed: the counts of an unreadable name stay hidden
        if not tokens or tokens[0].kind is TokenKind.LIST:
            return True
        name = decode_mailbox(tokens[0].value, utf8, self._delimiter.current)
        verdict = self._status.verdict(facts.client_ip, facts.user, (name,))
        return verdict.block is not None

    def _list_response(self, raw: bytes, pos: int, utf8: bool) -> bytes | None:
        try:
            tokens = tokenize(raw, pos)
        except TokenError:
            return None
        if len(tokens) < 3 or tokens[2].kind is TokenKind.LIST:
            return None
        delim_token, name = tokens[1], tokens[2]
        # The reply's own delimiter is authoritative for its name; NIL means flat.
        delimiter = delim_token.value if delim_token.kind is TokenKind.QUOTED else None
        if name.value == b"":
            self._delimiter.set(delimiter)  # the LIST "" "" reply: the namespace's delimiter
            return None
        result = self._apply_down(raw, name, delimiter, utf8)
        if result and not self._delimiter.known:
            self._delimiter.set(delimiter)
        return result

    def _apply_down(
        self, raw: bytes, token: Token, delimiter: bytes | None, utf8: bool
    ) -> bytes | None:
        mapped = self._map.to_client(token.value, delimiter, utf8)
        if not mapped.valid:
            return b""
        if mapped.rule is None:
            return None
        return splice(raw, [(token, mapped.wire)], list_pattern=False)
