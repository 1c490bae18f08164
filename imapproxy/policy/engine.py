"""The compiled policy the session consults for every client command and mailbox response.

Semantics (rules are evaluated in file order; ``when`` keys are AND-ed):

* ``log``: every matching log rule applies; the command is logged once, with the strongest
  ``detail`` among them (``full`` beats ``command``) and the union of their directions.
* ``block``: the *first* matching block rule answers the command (``TAG NO [...] message``);
  later block rules are not consulted. Blocked commands are still logged by matching logs.
* ``read_only``: ``SELECT`` of a mailbox its ``when`` matches is sent upstream as
  ``EXAMINE`` (same arguments), so the server itself opens it read-only: no STORE,
  EXPUNGE, CLOSE-expunge or ``\\Seen`` from ``FETCH BODY[]``, whatever is pipelined behind
  it. The client gets a usable SELECT answer whose tagged OK carries ``[READ-ONLY]``
  (RFC 9051 allows that for SELECT). A SELECT whose mailbox cannot be read becomes
  EXAMINE too (fail closed). Block rules still come first.
* ``rewrite_mailbox``: all such rules form one mapping table (see ``mailboxes``); for each
  name the longest matching prefix wins. A client name that is the upstream path of a
  mapped folder is refused, an upstream name with no client form is hidden.

``when.mailbox`` matches the decoded client-side names a command involves: its mailbox
arguments (both for RENAME, the destination for COPY/MOVE) and, for commands that act on
the selected mailbox (FETCH, STORE, EXPUNGE, MOVE, SEARCH, ...), the selected one. COPY
only involves its destination: it leaves the source unchanged, so "no COPY into Archive"
does not forbid copying out of it (block SELECT/EXAMINE to keep a mailbox unread).
LIST/LSUB name patterns, not mailboxes, and are never matched by ``when.mailbox``.

RENAME and DELETE act on a whole tree (see ``trees``): a ``when.mailbox`` glob of a block
rule also matches when it could match any name under an argument (``Mail/Archive/*``
blocks ``RENAME Mail X`` and ``DELETE Mail``; DELETE is judged so too, although RFC 9051
servers keep the children, because some servers delete them), and any mapped folder
whose upstream path lies under an argument's upstream name (``RENAME Old X`` moves the
client's ``Archive`` = ``Old/Archive``). With rewrite rules, a RENAME/DELETE whose
argument is a parent of a mapped folder on either side, and a RENAME of a mapped folder
itself or onto one, is refused by that rewrite rule, so nothing leaves its mapping;
renames inside mapped trees and DELETE of a mapped folder stay allowed.

When a rule that blocks or rewrites depends on arguments the engine cannot parse, the
command is refused rather than forwarded unchecked (fail closed).

Responses: besides mailbox names in LIST/LSUB/STATUS/... (``rewrite_response``), the text
of tagged and untagged OK/NO/BAD/BYE responses shows client names for upstream paths
(``rewrite_status_text``, see ``texts``). A ``* STATUS`` for a mailbox whose STATUS
command a block rule would refuse under the session's facts is dropped, so LIST
``RETURN (STATUS)`` and NOTIFY never show counts STATUS would not.

Children of a mapped name are found across the server's hierarchy delimiter, learned from
LIST/LSUB replies passing through ``rewrite_response`` (``LIST "" ""`` or any mapped name);
``/`` is assumed until then. A policy is shared by all sessions; on reload, ``carry_over``
hands the learned delimiter to the new one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from imapproxy.policy.mailboxes import MailboxMap, Mapped, decode_mailbox, decode_mutf7
from imapproxy.policy.matchers import IPAddress, Matcher
from imapproxy.policy.model import Rule
from imapproxy.policy.texts import StatusTexts
from imapproxy.policy.trees import (
    CONFLICT_MESSAGE,
    TREE_COMMANDS,
    MappedRoot,
    mapping_conflict,
    tree_scope,
)
from imapproxy.wire import grammar
from imapproxy.wire.commands import KNOWN_COMMANDS
from imapproxy.wire.sasl import login_user_of
from imapproxy.wire.tokens import (
    ParsedCommand,
    Token,
    TokenError,
    TokenKind,
    encode_astring,
    parse_command,
    tokenize,
)

__all__ = ["Policy", "SessionFacts", "Verdict"]

# Argument positions of mailbox names in client commands.
_FIRST = (0,)
MAILBOX_ARGS: dict[str, tuple[int, ...]] = {
    **dict.fromkeys(
        (
            "SELECT",
            "EXAMINE",
            "CREATE",
            "DELETE",
            "SUBSCRIBE",
            "UNSUBSCRIBE",
            "STATUS",
            "APPEND",
            "GETQUOTAROOT",
            "MYRIGHTS",
            "GETACL",
            "SETACL",
            "DELETEACL",
            "LISTRIGHTS",
            "SETMETADATA",
            "GETMETADATA",  # shifted by one when options come first, see _mailbox_tokens
        ),
        _FIRST,
    ),
    "RENAME": (0, 1),
    **dict.fromkeys(("COPY", "MOVE", "UID COPY", "UID MOVE", "REPLACE", "UID REPLACE"), (1,)),
}
LIST_COMMANDS = frozenset({"LIST", "LSUB", "XLIST"})
REWRITE_COMMANDS = frozenset(MAILBOX_ARGS) | LIST_COMMANDS
# Commands acting on the selected mailbox: when.mailbox also sees facts.selected.
# COPY is absent on purpose: it leaves the source unchanged, so a glob on it means the
# destination ("no COPY into Archive" must not forbid copying out of it).
SELECTED_COMMANDS = frozenset(
    {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "MOVE"}
    | {"SORT", "THREAD", "REPLACE"}
    | {name for name in KNOWN_COMMANDS if name.startswith("UID ") and name != "UID COPY"}
)
# Untagged responses carrying a mailbox name, and where: LIST-like ones after flags and
# delimiter, the others first.
_LIST_RESPONSES = frozenset(word.encode() for word in grammar.LIST_RESPONSES)
_NAME_FIRST_RESPONSES = frozenset(word.encode() for word in grammar.NAME_FIRST_RESPONSES)
_RESERVED_MESSAGE = "Mailbox name is reserved by policy"
_UNPARSABLE_MESSAGE = "Command arguments could not be checked against policy"
_TRAILING_LITERAL = grammar.LITERAL_AT_END_RE
_LITERAL_HEADER = grammar.LITERAL_HEAD_RE


@dataclass(frozen=True, slots=True)
class SessionFacts:
    client_ip: IPAddress
    user: str | None  # after a successful LOGIN/AUTHENTICATE (LOGIN: read from the command)
    selected: str | None  # the selected mailbox as the client names it (decoded)
    utf8: bool = False  # the client enabled UTF8=ACCEPT: names on the wire are UTF-8


@dataclass(frozen=True, slots=True)
class Verdict:
    block: tuple[str, str] | None  # (rule name, message): answer `TAG NO [...] message`
    rewritten: bytes | None  # the command (or its prefix before a live literal), rewritten
    log: str | None  # None | "command" | "full"
    matched: tuple[tuple[str, str], ...]  # (rule name, action) of every rule that applied
    log_direction: str = "both"  # "both" | "client" (command line only) | "server"


_PASS = Verdict(None, None, None, ())


def _parse(raw: bytes, complete: bool) -> ParsedCommand | None:
    """The command's arguments, or None when they cannot be parsed.

    Token offsets index ``raw`` itself, so rewrites splice the original bytes; when the
    command is incomplete, parsing stops before the live literal's announcement (APPEND's
    message), which a rewrite then keeps as it is.
    """
    end = len(raw)
    if not complete:
        m = _TRAILING_LITERAL.search(raw)
        if m is not None:
            end = m.start()
    try:
        return parse_command(raw[:end])
    except TokenError:
        return None


_CACHE_LIMIT = 4096  # verdicts kept per command name; cleared when full


class _Candidates:
    """The non-rewrite rules that can apply to one command name, with what they need.

    Matching depends only on (client address, user, involved mailboxes), and only on the
    parts some candidate tests; those few values repeat for every command of a session, so
    verdicts are memoised on exactly them and the rule loop runs once per distinct key.
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
        key = (
            client if self.needs_client else None,
            user if self.needs_user else None,
            mailboxes,
            trees,
        )
        verdict = self.cache.get(key)
        if verdict is None:
            if len(self.cache) >= _CACHE_LIMIT:
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
        sides = 0  # bit 1: client side, bit 2: server side
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
                direction = rule.when.direction
                sides |= 1 if direction == "client" else 2 if direction == "server" else 3
        if block is None and detail is None and not matched:
            return _PASS
        log_direction = "client" if sides == 1 else "server" if sides == 2 else "both"
        return Verdict(block, None, detail, tuple(matched), log_direction)


class Policy:
    """Rules compiled for matching; shared by all sessions (only the delimiter is learned)."""

    EMPTY: ClassVar[Policy]

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        matchers = [Matcher.compile(r) for r in rules if r.action in ("block", "log")]
        self._read_only = _Candidates(
            "SELECT", [Matcher.compile(r) for r in rules if r.action == "read_only"]
        )
        self._generic = _Candidates(None, [m for m in matchers if not m.rule.when.command])
        self._by_command = {
            name: _Candidates(
                name,
                [m for m in matchers if not m.rule.when.command or name in m.rule.when.command],
            )
            for name in KNOWN_COMMANDS
        }
        rewrites = [r for r in rules if r.action == "rewrite_mailbox"]
        self._map = MailboxMap([(r.name, r.from_ or "", r.to or "") for r in rewrites])
        self._roots = tuple(MappedRoot(r.name, r.from_ or "", r.to or "") for r in rewrites)
        self._texts = StatusTexts([(r.from_ or "", r.to or "") for r in rewrites])
        self._needs_arguments = frozenset(
            name
            for name, cands in self._by_command.items()
            if cands.needs_args
            or (self._map and name in REWRITE_COMMANDS)
            or (name == "SELECT" and self._read_only.matchers)
        )
        # `* STATUS` responses the client did not ask for by a STATUS command (LIST-STATUS,
        # NOTIFY) are judged like one: STATUS's block rules decide whether counts show.
        self._status = self._by_command["STATUS"]
        self._status_guard = any(m.rule.action == "block" for m in self._status.matchers)
        self._delimiter: bytes | None = None  # learned from the server's LIST responses
        self._delimiter_known = False

    @classmethod
    def compile(cls, rules: Sequence[Rule]) -> Policy:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        return cls(rules)

    # -- hierarchy delimiter -----------------------------------------------------------------

    @property
    def delimiter(self) -> bytes | None:
        """The server's hierarchy delimiter; ``/`` is assumed until a LIST reply shows it."""
        return self._delimiter if self._delimiter_known else b"/"

    def carry_over(self, previous: Policy) -> None:
        """Keep what ``previous`` learned from the server (on reload: same upstream)."""
        if previous._delimiter_known and not self._delimiter_known:
            self.set_delimiter(previous._delimiter)

    def set_delimiter(self, delimiter: bytes | None) -> None:
        """Set the delimiter (b"" or None: flat namespace, names have no children)."""
        self._delimiter = delimiter or None
        self._delimiter_known = True

    # -- commands -------------------------------------------------------------------------

    def needs_arguments(self, command: str) -> bool:
        return command in self._needs_arguments

    def decide(self, facts: SessionFacts, command: str, raw: bytes, complete: bool) -> Verdict:
        cands = self._by_command.get(command, self._generic)
        rewrite = bool(self._map) and command in REWRITE_COMMANDS
        read_only = command == "SELECT" and bool(self._read_only.matchers)
        if not cands.matchers and not rewrite and not read_only:
            return _PASS
        args: ParsedCommand | None = None
        if cands.needs_args or rewrite or read_only:
            args = _parse(raw, complete)

        user = facts.user
        if command == "LOGIN" and cands.needs_args:
            login_user = login_user_of(args)
            if login_user is not None:
                user = login_user
            elif user is None and cands.strict_user:
                return _unparsable(cands, "user")
        mailboxes: tuple[str, ...] | None = None
        trees: tuple[str, ...] = ()
        if cands.needs_mailbox:
            mailboxes, ok = self._involved_mailboxes(facts, command, args)
            if not ok and cands.strict_mailbox:
                return _unparsable(cands, "mailbox")
            if ok and command in TREE_COMMANDS and args is not None:
                # RENAME/DELETE act on everything under their names (see trees)
                extra, trees = tree_scope(*self._tree_names(command, args, facts.utf8))
                mailboxes += extra

        verdict = cands.verdict(facts.client_ip, user, mailboxes, trees)
        if verdict.block is not None or not (rewrite or read_only):
            return verdict
        matched = verdict.matched
        rewritten: bytes | None = None
        if rewrite:
            block, rewritten, applied = self._rewrite_command(command, raw, args, facts.utf8)
            matched += tuple((name, "rewrite_mailbox") for name in applied)
            if block is not None:
                return Verdict(block, None, verdict.log, matched, verdict.log_direction)
        if read_only:
            names, ok = self._involved_mailboxes(facts, command, args)
            hits = self._read_only.verdict(facts.client_ip, user, names if ok else None).matched
            if hits or not ok:  # an unreadable name is opened read-only too (fail closed)
                rewritten = _as_examine(rewritten if rewritten is not None else raw)
                matched += hits or ((self._read_only.matchers[0].rule.name, "read_only"),)
        if rewritten is None and matched is verdict.matched:
            return verdict
        return Verdict(None, rewritten, verdict.log, matched, verdict.log_direction)

    def _involved_mailboxes(
        self, facts: SessionFacts, command: str, args: ParsedCommand | None
    ) -> tuple[tuple[str, ...], bool]:
        """Decoded client-side names the command involves; ok=False if some were unreadable."""
        names: list[str] = []
        ok = True
        delimiter = self.delimiter
        if command in SELECTED_COMMANDS and facts.selected is not None:
            names.append(_decoded_selected(facts.selected, delimiter))
        if command in MAILBOX_ARGS:
            tokens = _mailbox_tokens(command, args) if args is not None else None
            if tokens is None:
                ok = False
            else:
                for token in tokens:
                    names.append(decode_mailbox(token.value, facts.utf8, delimiter))
        return tuple(names), ok

    def _tree_names(
        self, command: str, args: ParsedCommand, utf8: bool
    ) -> tuple[list[str], list[str], tuple[MappedRoot, ...], str | None]:
        """(client names, their upstream names, mapped roots, delimiter) for trees."""
        delimiter = self.delimiter
        text_delimiter = delimiter.decode("utf-8", "replace") if delimiter else None
        clients: list[str] = []
        upstreams: list[str] = []
        for token in _mailbox_tokens(command, args) or ():
            clients.append(decode_mailbox(token.value, utf8, delimiter))
            up = self._map.to_upstream(token.value, delimiter, utf8).wire if self._map else None
            upstreams.append(decode_mailbox(up, utf8, delimiter) if up else clients[-1])
        return clients, upstreams, self._roots, text_delimiter

    def _rewrite_command(
        self, command: str, raw: bytes, parsed: ParsedCommand | None, utf8: bool
    ) -> tuple[tuple[str, str] | None, bytes | None, tuple[str, ...]]:
        """(block, rewritten, rules applied): map mailbox arguments client -> upstream."""
        if parsed is None:
            return self._refuse(_UNPARSABLE_MESSAGE)
        delimiter = self.delimiter
        edits: list[tuple[Token, bytes]] = []
        applied: list[str] = []
        if command in LIST_COMMANDS:
            for token, is_reference in _list_tokens(parsed):
                if token.kind is TokenKind.LIST:
                    return self._refuse(_UNPARSABLE_MESSAGE)
                new, rule = self._map.pattern_to_upstream(token.value, delimiter, utf8)
                if rule is not None:
                    edits.append((token, new))
                    applied.append(rule)
                if is_reference and token.value:
                    break  # a pattern after a non-empty reference is relative to it
        else:
            tokens = _mailbox_tokens(command, parsed)
            if tokens is None:
                return self._refuse(_UNPARSABLE_MESSAGE)
            for token in tokens:
                mapped: Mapped = self._map.to_upstream(token.value, delimiter, utf8)
                if not mapped.valid:
                    return self._refuse(_RESERVED_MESSAGE, mapped.rule)
                if mapped.rule is not None:
                    edits.append((token, mapped.wire))
                    applied.append(mapped.rule)
            if command in TREE_COMMANDS:
                conflict = mapping_conflict(command, *self._tree_names(command, parsed, utf8))
                if conflict is not None:
                    return self._refuse(CONFLICT_MESSAGE, conflict.rule)
        if not edits:
            return None, None, ()
        rewritten = _splice(raw, edits, list_pattern=command in LIST_COMMANDS)
        return None, rewritten, tuple(dict.fromkeys(applied))

    def _refuse(
        self, message: str, rule: str | None = None
    ) -> tuple[tuple[str, str], None, tuple[str, ...]]:
        if rule is None:  # blame the first rewrite rule: the table as a whole refused
            rule = next(r.name for r in self.rules if r.action == "rewrite_mailbox")
        return (rule, message), None, (rule,)

    # -- responses ------------------------------------------------------------------------

    def rewrites_responses(self) -> bool:
        return bool(self._map) or self._status_guard

    def rewrite_status_text(self, raw: bytes) -> bytes | None:
        """A status response (tagged, or untagged OK/NO/BAD/BYE) whose text names upstream
        paths of mapped folders, with their client names instead; None when unchanged.

        Never hides a response: a status response answers a command. Only the part after
        the first word (the tag or ``*``) is looked at, so a tag is never changed.
        """
        if not self._map:
            return None
        space = raw.find(b" ")
        if space < 0:
            return None
        text = self._texts.rewrite(raw[space:], self.delimiter)
        return None if text is None else raw[:space] + text

    def rewrite_response(
        self, raw: bytes, facts: SessionFacts | None = None, *, utf8: bool | None = None
    ) -> bytes | None:
        """Map the mailbox name in one untagged response upstream -> client.

        Returns the new response, None when unchanged, or b"" when the response names an
        upstream mailbox the client must not see (drop it). ``facts`` are the session's
        (``utf8`` defaults to theirs): a ``* STATUS`` for a mailbox whose STATUS command a
        block rule would refuse under them is dropped too, whoever asked for it (LIST
        ``RETURN (STATUS)``, NOTIFY). Without facts that check is skipped.
        """
        if not raw.startswith(b"* ") or not (self._map or self._status_guard):
            return None
        if utf8 is None:
            utf8 = facts.utf8 if facts is not None else False
        space = raw.find(b" ", 2)
        word = raw[2:space].upper() if space > 0 else b""
        if word in _LIST_RESPONSES:
            return self._rewrite_list_response(raw, space + 1, utf8) if self._map else None
        if word in _NAME_FIRST_RESPONSES:
            try:
                tokens = tokenize(raw, space + 1)
            except TokenError:
                return None
            if not tokens or tokens[0].kind is TokenKind.LIST:
                return None
            result = self._apply_down(raw, tokens[0], self.delimiter, utf8) if self._map else None
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
        name = decode_mailbox(tokens[0].value, utf8, self.delimiter)
        verdict = self._status.verdict(facts.client_ip, facts.user, (name,))
        return verdict.block is not None

    def _rewrite_list_response(self, raw: bytes, pos: int, utf8: bool) -> bytes | None:
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
            self.set_delimiter(delimiter)  # the LIST "" "" reply: the namespace's delimiter
            return None
        result = self._apply_down(raw, name, delimiter, utf8)
        if result and not self._delimiter_known:
            self.set_delimiter(delimiter)
        return result

    def _apply_down(
        self, raw: bytes, token: Token, delimiter: bytes | None, utf8: bool
    ) -> bytes | None:
        mapped = self._map.to_client(token.value, delimiter, utf8)
        if not mapped.valid:
            return b""
        if mapped.rule is None:
            return None
        return _splice(raw, [(token, mapped.wire)], list_pattern=False)


Policy.EMPTY = Policy(())


def _as_examine(raw: bytes) -> bytes:
    """``tag SELECT args`` as ``tag EXAMINE args`` (the command word is the second one)."""
    space = raw.find(b" ")
    assert raw[space + 1 : space + 7].upper() == b"SELECT", raw[:64]
    return raw[: space + 1] + b"EXAMINE" + raw[space + 7 :]


def _mailbox_tokens(command: str, parsed: ParsedCommand) -> list[Token] | None:
    """The mailbox-name tokens of a command, or None if they are missing or malformed."""
    positions = MAILBOX_ARGS[command]
    args = parsed.args
    if command == "GETMETADATA" and args and args[0].kind is TokenKind.LIST:
        positions = (1,)  # GETMETADATA (options) mailbox entries
    tokens: list[Token] = []
    for index in positions:
        if index >= len(args) or args[index].kind is TokenKind.LIST:
            return None
        tokens.append(args[index])
    if command in ("SETMETADATA", "GETMETADATA") and tokens[0].value == b"":
        return []  # "" addresses server annotations, not a mailbox
    return tokens


def _list_tokens(parsed: ParsedCommand) -> list[tuple[Token, bool]]:
    """LIST [(selection)] reference pattern|(patterns) [RETURN (...)]: (token, is_reference)."""
    args = list(parsed.args)
    if args and args[0].kind is TokenKind.LIST:
        args = args[1:]  # LIST-EXTENDED selection options
    if len(args) < 2:
        return [(args[0], True)] if args else []
    reference, patterns = args[0], args[1]
    members = patterns.items if patterns.kind is TokenKind.LIST else (patterns,)
    return [(reference, True), *((p, False) for p in members)]


def _splice(raw: bytes, edits: list[tuple[Token, bytes]], *, list_pattern: bool) -> bytes:
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


def _decoded_selected(selected: str, delimiter: bytes | None) -> str:
    # Sessions may hand over the wire form; modified UTF-7 ("&AOQ-") decodes here.
    if "&" in selected and selected.isascii():
        with contextlib.suppress(ValueError):
            selected = decode_mutf7(selected.encode("ascii"))
    return decode_mailbox(selected.encode("utf-8"), True, delimiter)


def _unparsable(cands: _Candidates, what: str) -> Verdict:
    """Fail closed: a block rule depends on arguments that could not be read."""
    for matcher in cands.matchers:
        rule = matcher.rule
        if rule.action == "block" and (
            (what == "user" and matcher.users is not None)
            or (what == "mailbox" and matcher.mailboxes is not None)
        ):
            return Verdict((rule.name, _UNPARSABLE_MESSAGE), None, None, ((rule.name, "block"),))
    return _PASS
