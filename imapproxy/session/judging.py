"""Client commands judged by the rules: on their first line, or held for their arguments.

While a policy is in force, ``ClientCommands`` (``commands.py``) hands each command that
got past its local checks to the session's ``RuleJudge``:

* ``first_line``: a command no rule needs the arguments of is decided on its first line;
  the verdict's rule hits are noted, a block is answered ``NO [rule] ...`` (the rest of the
  command read and dropped), otherwise the line to forward comes back, maybe rewritten;
* ``hold``: a command a rule needs the arguments of becomes the held command (``held.py``
  has the glossary): its lines (``part``) and small literals are collected, the proxy
  answering the client's ``{n}`` itself, until it is complete, a large literal starts or
  APPEND's message starts; then it is decided on what was collected and blocked or released
  upstream in segments (one per ``+`` the server must send), client bytes queued behind.

Contract: every path either forwards (or releases) the command, or answers it through
``ClientCommands.refuse``/``answer``, so the client gets exactly one tagged answer and the
stream stays in step. The verdict is recorded on the ``InFlightCommand`` (``log``) and the
rule hits are noted in the same ``Output``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from imapproxy.session.held import HeldCommand
from imapproxy.session.inflight import LOGINS, OBSERVED, InFlightCommand
from imapproxy.session.output import CommandBlocked, LoginDone, Note, RuleHit
from imapproxy.session.settings import PolicyLike, SessionFacts, VerdictLike
from imapproxy.wire import Command, CommandPart, LiteralHeader, grammar
from imapproxy.wire.framing import literal_at_end
from imapproxy.wire.literals import split_at_literals
from imapproxy.wire.sasl import login_user

if TYPE_CHECKING:
    from imapproxy.session.commands import ClientCommands

TOO_LONG = b"BAD [TOOBIG] Command line too long to check against the rules"


class RuleJudge:
    """Verdicts on the client's commands, and the command held for one (module docstring).

    ``held`` is the command being collected for its verdict, or None; it is always the
    session's current command (``ClientCommands.current``).
    """

    __slots__ = ("commands", "held", "session")

    def __init__(self, commands: ClientCommands) -> None:
        self.commands = commands
        self.session = commands.session
        self.held: HeldCommand | None = None

    def first_line(self, policy: PolicyLike, cmd: InFlightCommand, ev: Command) -> bytes | None:
        """Decide ``cmd`` on its first line ``ev``: the bytes to forward (maybe rewritten),
        or None when a rule blocked it (answered, its rest dropped)."""
        verdict = policy.decide(self._facts_for(cmd, ev.raw), cmd.name, ev.raw, ev.literal is None)
        if self._apply(cmd, verdict, ev.literal, ev.raw):
            return None
        return verdict.rewritten if verdict.rewritten is not None else ev.raw

    def hold(self, ev: Command) -> None:
        """Start collecting the current command (first line ``ev``) for its verdict."""
        self.held = HeldCommand(ev.raw)
        self._collected(ev.literal)

    def part(self, ev: CommandPart) -> None:
        """A further line of the held command; an over-long one is refused, never held."""
        held, commands = self.held, self.commands
        assert held is not None
        if ev.partial:
            cmd = commands.current
            assert cmd is not None
            self.held = None
            commands.answer(cmd, TOO_LONG)
            self.session.client.drop_rest()
            commands.current = None
            return
        held.add_line(ev.raw)
        self._collected(ev.literal)

    def _collected(self, literal: LiteralHeader | None) -> None:
        """A line of the held command was collected; ``literal`` is what it announces."""
        if literal is None:
            self._release(complete=True)
        else:
            self._hold_literal(literal)

    def _hold_literal(self, literal: LiteralHeader) -> None:
        s = self.session
        held, cmd = self.held, self.commands.current
        assert held is not None and cmd is not None
        if held.announce(literal, s.settings.max_line) or held.append_target_known(cmd.name):
            # A large literal, or APPEND's message once its mailbox is known: decide on what
            # came before it and stream the payload; a blocked APPEND never gets a "+", and
            # an allowed one gets the upstream's.
            self._release(complete=False)
        elif literal.sync or s.client.silent_continuation:
            if literal.sync:  # the proxy plays the server while it holds the command
                s.out.to_client.append(b"+ Ready for literal data\r\n")
            s.client.continuation_received()

    def _release(self, complete: bool) -> None:
        """Decide the held command on what was collected (all of it when ``complete``);
        block it, or send it upstream in segments."""
        s, commands = self.session, self.commands
        cmd, held = commands.current, self.held
        assert cmd is not None and held is not None
        self.held = None
        raw = b"".join(held.parts)
        policy = s.policy
        assert policy is not None
        if cmd.name in OBSERVED and complete:
            cmd.capture = [raw]
        verdict = policy.decide(self._facts_for(cmd, raw), cmd.name, raw, complete)
        last_literal = literal_at_end(raw) if not complete else None
        if self._apply(cmd, verdict, last_literal, raw):
            return
        if verdict.rewritten is not None:
            raw = verdict.rewritten
        if commands.gate_refuses(cmd, raw, last_literal, complete):
            return
        s.inflight.track(cmd)
        segments = split_at_literals(raw, confirm=s.client.confirm_literals)
        if not complete and len(segments) > 1 and not segments[-1]:
            # The last announcement is the live literal the client is about to stream: its
            # "+" belongs to the client, so it ends the last segment, not waited for.
            segments.pop()
        s.release_queue.release(cmd.tag, segments, s.out.to_upstream)
        if complete:
            commands.end_command()

    def _facts_for(self, cmd: InFlightCommand, raw: bytes) -> SessionFacts:
        """The facts ``cmd`` is decided under: a login is judged by the user it names."""
        s = self.session
        if cmd.name == "AUTHENTICATE" and cmd.user is not None:
            return s.make_facts(cmd.user, s.selected)
        if cmd.name == "LOGIN" and s.user is None:
            return s.make_facts(login_user(raw), s.selected)
        return s.facts()

    def _apply(
        self,
        cmd: InFlightCommand,
        verdict: VerdictLike,
        literal: LiteralHeader | None,
        raw: bytes,
    ) -> bool:
        """Record a verdict on ``raw`` (what was decided on); True when it blocked the
        command (already answered)."""
        notes = self.session.out.notes
        for rule, action in verdict.matched:
            notes.append(RuleHit(rule, action))
        cmd.log = verdict.log
        if verdict.block is None:
            return False
        if cmd.name == "LOGIN" and cmd.user is None:
            # A blocked LOGIN never reaches end_command (where its user is read): its note
            # names the user it was judged by (_facts_for).
            cmd.user = login_user(raw)
        self.commands.refuse(cmd, literal, block_answer(notes, cmd, verdict.block))
        return True


def block_answer(notes: list[Note], cmd: InFlightCommand, block: tuple[str, str]) -> bytes:
    """Note that a rule blocked ``cmd``; the text of the proxy's answer (``NO [rule] ...``)."""
    rule, message = block
    notes.append(CommandBlocked(rule, cmd.name))
    if cmd.name in LOGINS:
        notes.append(LoginDone(cmd.mechanism or "LOGIN", "blocked", cmd.user))
    code = rule if _is_atom(rule) else "POLICY"
    return b"NO [%s] %s" % (code.encode(), message.encode())


def _is_atom(text: str) -> bool:
    """A rule name that can stand as the response code itself (an ASCII atom)."""
    return text.isascii() and _ATOM_RE.fullmatch(text.encode()) is not None


_ATOM_RE = re.compile(grammar.ATOM)
