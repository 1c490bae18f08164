"""The compiled policy the session consults for every client command and mailbox response.

Semantics (rules are evaluated in file order; ``when`` keys are AND-ed):

* ``log``: every matching log rule applies; the command is logged once, with the strongest
  ``detail`` among them (``full`` beats ``command``). ``when.direction`` is refused on log
  rules by the loader: a log line is a command together with its tagged answer.
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

Where each job lives: ``engine`` (``Policy``: compiling, ``decide``), ``arguments`` (which
arguments are mailboxes, reading them), ``verdicts`` (``Verdict``, matching block/log rules,
memoised), ``rewriting`` (client -> upstream names in commands), ``responses`` (upstream ->
client names in responses, the learned delimiter), ``splice``, ``mailboxes``, ``trees``,
``texts``, ``matchers``. ``SessionFacts`` is declared by the session (``session.settings``)
and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from imapproxy.policy.arguments import (
    LIST_COMMANDS,
    MAILBOX_ARGS,
    REWRITE_COMMANDS,
    SELECTED_COMMANDS,
    as_examine,
    decoded_selected,
    mailbox_tokens,
    parse_arguments,
)
from imapproxy.policy.mailboxes import MailboxMap, decode_mailbox
from imapproxy.policy.matchers import Matcher
from imapproxy.policy.model import Rule
from imapproxy.policy.responses import LearnedDelimiter, ResponseRewriter
from imapproxy.policy.rewriting import CommandRewriter
from imapproxy.policy.texts import StatusTexts
from imapproxy.policy.trees import (
    TREE_COMMANDS,
    MappedRoot,
    tree_scope,
)
from imapproxy.policy.verdicts import PASS, Candidates, Verdict, unparsable
from imapproxy.session.settings import SessionFacts
from imapproxy.wire.commands import KNOWN_COMMANDS
from imapproxy.wire.sasl import login_user_of
from imapproxy.wire.tokens import ParsedCommand

# Re-exported: the rules loader reads the command tables from here.
__all__ = [
    "LIST_COMMANDS",
    "MAILBOX_ARGS",
    "SELECTED_COMMANDS",
    "Policy",
    "SessionFacts",
    "Verdict",
]


class Policy:
    """Rules compiled for matching; shared by all sessions (only the delimiter is learned)."""

    EMPTY: ClassVar[Policy]

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        matchers = [Matcher.compile(r) for r in rules if r.action in ("block", "log")]
        self._read_only = Candidates(
            "SELECT", [Matcher.compile(r) for r in rules if r.action == "read_only"]
        )
        self._generic = Candidates(None, [m for m in matchers if not m.rule.when.command])
        self._by_command = {
            name: Candidates(
                name,
                [m for m in matchers if not m.rule.when.command or name in m.rule.when.command],
            )
            for name in KNOWN_COMMANDS
        }
        rewrites = [r for r in rules if r.action == "rewrite_mailbox"]
        self._map = MailboxMap([(r.name, r.from_ or "", r.to or "") for r in rewrites])
        self._needs_arguments = frozenset(
            name
            for name, cands in self._by_command.items()
            if cands.needs_args
            or (self._map and name in REWRITE_COMMANDS)
            or (name == "SELECT" and self._read_only.matchers)
        )
        self._delimiter = LearnedDelimiter()  # learned from the server's LIST responses
        roots = tuple(MappedRoot(r.name, r.from_ or "", r.to or "") for r in rewrites)
        self._commands = CommandRewriter(self._map, roots, self._delimiter)
        texts = StatusTexts([(r.from_ or "", r.to or "") for r in rewrites])
        self._responses = ResponseRewriter(
            self._map, texts, self._by_command["STATUS"], self._delimiter
        )

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
        return self._delimiter.current

    def carry_over(self, previous: Policy) -> None:
        """Keep what ``previous`` learned from the server (on reload: same upstream)."""
        if previous._delimiter.known and not self._delimiter.known:
            self.set_delimiter(previous._delimiter.value)

    def set_delimiter(self, delimiter: bytes | None) -> None:
        """Set the delimiter (b"" or None: flat namespace, names have no children)."""
        self._delimiter.set(delimiter)

    # -- commands -------------------------------------------------------------------------

    def needs_arguments(self, command: str) -> bool:
        return command in self._needs_arguments

    def decide(self, facts: SessionFacts, command: str, raw: bytes, complete: bool) -> Verdict:
        """The verdict on one client command (``command``: its upper-case name, ``UID X``
        style) under the session's ``facts``.

        ``raw`` is the command as read so far; ``complete`` is False when it stops at a
        literal still to come (APPEND's message), which a rewrite then keeps as it is. Pure
        apart from the memo (``verdicts``); never raises on hostile input: arguments that a
        blocking or rewriting rule needs and cannot be read refuse the command.
        """
        cands = self._by_command.get(command, self._generic)
        rewrite = bool(self._map) and command in REWRITE_COMMANDS
        read_only = command == "SELECT" and bool(self._read_only.matchers)
        if not cands.matchers and not rewrite and not read_only:
            return PASS
        args: ParsedCommand | None = None
        if cands.needs_args or rewrite or read_only:
            args = parse_arguments(raw, complete)

        user = facts.user
        if command == "LOGIN" and cands.needs_args:
            login_user = login_user_of(args)
            if login_user is not None:
                user = login_user
            elif user is None and cands.strict_user:
                return unparsable(cands, "user")
        mailboxes: tuple[str, ...] | None = None
        trees: tuple[str, ...] = ()
        if cands.needs_mailbox:
            mailboxes, ok = self._involved_mailboxes(facts, command, args)
            if not ok and cands.strict_mailbox:
                return unparsable(cands, "mailbox")
            if ok and command in TREE_COMMANDS and args is not None:
                # RENAME/DELETE act on everything under their names (see trees)
                extra, trees = tree_scope(*self._commands.tree_names(command, args, facts.utf8))
                mailboxes += extra

        verdict = cands.verdict(facts.client_ip, user, mailboxes, trees)
        if verdict.block is not None or not (rewrite or read_only):
            return verdict
        matched = verdict.matched
        rewritten: bytes | None = None
        if rewrite:
            block, rewritten, applied = self._commands.rewrite(command, raw, args, facts.utf8)
            matched += tuple((name, "rewrite_mailbox") for name in applied)
            if block is not None:
                return Verdict(block, None, verdict.log, matched)
        if read_only:
            names, ok = self._involved_mailboxes(facts, command, args)
            hits = self._read_only.verdict(facts.client_ip, user, names if ok else None).matched
            if hits or not ok:  # an unreadable name is opened read-only too (fail closed)
                rewritten = as_examine(rewritten if rewritten is not None else raw)
                matched += hits or ((self._read_only.matchers[0].rule.name, "read_only"),)
        if rewritten is None and matched is verdict.matched:
            return verdict
        return Verdict(None, rewritten, verdict.log, matched)

    def _involved_mailboxes(
        self, facts: SessionFacts, command: str, args: ParsedCommand | None
    ) -> tuple[tuple[str, ...], bool]:
        """Decoded client-side names the command involves; ok=False if some were unreadable."""
        names: list[str] = []
        ok = True
        delimiter = self.delimiter
        if command in SELECTED_COMMANDS and facts.selected is not None:
            names.append(decoded_selected(facts.selected, delimiter))
        if command in MAILBOX_ARGS:
            tokens = mailbox_tokens(command, args) if args is not None else None
            if tokens is None:
                ok = False
            else:
                for token in tokens:
                    names.append(decode_mailbox(token.value, facts.utf8, delimiter))
        return tuple(names), ok

    # -- responses (see policy.responses) ----------------------------------------------------

    def rewrites_responses(self) -> bool:
        return self._responses.active()

    def rewrite_status_text(self, raw: bytes) -> bytes | None:
        """A status response (tagged, or untagged OK/NO/BAD/BYE) whose text names upstream
        paths of mapped folders, with their client names instead; None when unchanged.

        Never hides a response: a status response answers a command. Only the part after
        the first word (the tag or ``*``) is looked at, so a tag is never changed.
        """
        return self._responses.status_text(raw)

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
        return self._responses.response(raw, facts, utf8)


Policy.EMPTY = Policy(())
