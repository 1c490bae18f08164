"""The client direction of a session: commands in, forwarded, held, or answered locally.

``ClientCommands`` handles the events of ``Session``'s client drain loop. Per command:

* refused locally (answered by the proxy, never forwarded; the rest of the command read and
  dropped, see ``discarding``): a duplicate tag in flight (with rules), STARTTLS/COMPRESS
  with arguments, LOGIN/AUTHENTICATE before TLS when TLS is required, an over-long line a
  rule or the session must read, a rule's block;
* answered locally: STARTTLS (after the commands before it) and COMPRESS, by ``login.py``;
* held for a verdict (``held.py``) when a rule needs its arguments;
* otherwise judged on its first line (if rules are in force) and forwarded as it streams,
  with LOGIN/SELECT/EXAMINE arguments observed on the way (``observe_arguments``).

Local answers go through ``InFlight.answer_in_order``, so they reach the client after the
server's answers to every command forwarded before them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from imapproxy.session.held import HeldCommand
from imapproxy.session.inflight import InFlightCommand
from imapproxy.session.output import (
    CommandBlocked,
    LimitHit,
    LoginDone,
    Note,
    ProtocolIssue,
    RuleHit,
)
from imapproxy.session.settings import PolicyLike, VerdictLike
from imapproxy.wire import Command, CommandPart, LiteralHeader, ProtocolError, grammar
from imapproxy.wire.framing import literal_at_end
from imapproxy.wire.grammar import decode_mailbox
from imapproxy.wire.literals import as_sync, split_at_literals
from imapproxy.wire.sasl import login_user
from imapproxy.wire.tokens import TokenError, parse_command

if TYPE_CHECKING:
    from imapproxy.session.core import Session

MAX_CONSECUTIVE_BAD = 10
LOGINS = ("LOGIN", "AUTHENTICATE")
# Commands whose arguments the session reads for itself (user, selected mailbox).
OBSERVED = frozenset({"LOGIN", "SELECT", "EXAMINE"})
TOO_LONG = b"BAD [TOOBIG] Command line too long to check against the rules"


class ClientCommands:
    """Command handling for one session (see the module docstring)."""

    __slots__ = ("bad_streak", "current", "discarding", "held", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.current: InFlightCommand | None = None  # the command being read
        self.discarding = False  # drop the rest of the current command (refused)
        self.held: HeldCommand | None = None  # the current command, held for a verdict
        self.bad_streak = 0

    # --- events ---------------------------------------------------------------------
    def command(self, ev: Command) -> None:
        """A command's first line."""
        s = self.session
        self.bad_streak = 0
        self.discarding = False  # whatever was being dropped ended before this command
        cmd = InFlightCommand(ev.tag, ev.name, s.clock())
        cmd.bytes_in = len(ev.raw)
        self.current = cmd
        name = ev.name
        policy = s.policy
        if policy is not None and s.inflight.tag_in_flight(ev.tag):
            # In-flight commands are keyed by tag: a second one would overwrite the first
            # and the session would record the wrong outcome (a SELECT never seen), which
            # rules then judge by. Without rules the server decides, as it would directly.
            self._refuse_command(cmd, ev, b"BAD Duplicate tag in flight")
            return
        if name == "STARTTLS" or name == "COMPRESS":
            if ev.literal is not None or ev.partial:  # neither takes one: refuse, drop it
                self._refuse_command(cmd, ev, b"BAD %s takes no arguments" % name.encode())
                return
            if s.inflight.pending:
                # The answer to STARTTLS changes the stream: decide it once every command
                # sent before it has its answer (the parser reads nothing meanwhile).
                s.login.deferred_starttls = cmd
                return
            s.login.answer_locally(cmd)
            return
        if name in LOGINS and s.settings.require_tls and not s.client_tls:
            self._refuse(cmd, ev.literal, b"NO [PRIVACYREQUIRED] Use STARTTLS first")
            return
        bound = s.settings.max_pipelined
        if bound and len(s.inflight.pending) >= bound:
            s.out.notes.append(LimitHit("pipelined"))
            self._refuse(cmd, ev.literal, b"BAD [LIMIT] Too many commands in flight")
            return
        if name == "AUTHENTICATE":
            s.login.start_authenticate(cmd, ev.raw)
        if ev.partial and policy is not None and _reads_arguments(policy, name):
            # An over-long line whose arguments a rule or the session needs: never held
            # whole (bounded memory); refused, the session goes on.
            self._refuse_command(cmd, ev, TOO_LONG)
            return
        gated = s.settings.login_gate is not None and name == "LOGIN"
        if policy is not None and policy.needs_arguments(name):
            self.held = HeldCommand(ev.raw)
            if ev.literal is None:
                self._release_held(complete=True)
            else:
                self._hold_literal(ev.literal)
            return
        if name in OBSERVED:
            cmd.capture = [ev.raw]
        if policy is not None:
            verdict = policy.decide(s.facts_for(cmd, ev.raw), name, ev.raw, ev.literal is None)
            if self._apply_verdict(cmd, verdict, ev.literal, ev.raw):
                return
            raw = verdict.rewritten if verdict.rewritten is not None else ev.raw
        else:
            raw = ev.raw
        if gated or (name == "AUTHENTICATE" and s.login.authenticating is None):
            # A user name sent as a literal is not known yet: the gate judges the address
            # only (holding the line would answer the client's "+" ourselves and break
            # byte-exact pass-through).
            user = (login_user(ev.raw) if ev.literal is None else None) if gated else cmd.user
            refusal = s.login.gate_refusal(cmd, user)
            if refusal is not None:
                self._refuse(cmd, ev.literal, refusal)
                return
        s.inflight.track(cmd)
        if s.client.silent_continuation:
            raw = as_sync(raw)
        s.to_upstream(raw)
        if ev.literal is None and not ev.partial:
            self.end_command()

    def part(self, ev: CommandPart) -> None:
        """A command's text after a literal, or the next piece of an over-long line."""
        s = self.session
        cmd = self.current
        if cmd is not None:
            cmd.bytes_in += len(ev.raw)
        if self.discarding:
            if ev.partial:
                return
            if ev.literal is None or ev.literal.sync:
                # A sync literal of a discarded command is never sent: the client already
                # has its tagged answer. Either way the discarded command ends here.
                if cmd is not None:
                    s.client.command_finished(cmd.tag)
                self.end_command()
            elif s.client.silent_continuation:
                s.client.continuation_received()  # a {n+} payload comes anyway: drop it
            return
        held = self.held
        if held is not None:
            if ev.partial:  # over-long: the held command is refused, never held whole
                assert cmd is not None
                self.held = None
                self.answer(cmd, TOO_LONG)
                s.client.drop_rest()
                self.current = None
                return
            held.add_line(ev.raw)
            if ev.literal is None:
                self._release_held(complete=True)
            else:
                self._hold_literal(ev.literal)
            return
        if cmd is not None and cmd.capture is not None:
            self._capture(cmd, ev.raw)
        s.to_upstream(as_sync(ev.raw) if s.client.silent_continuation else ev.raw)
        if ev.literal is None and not ev.partial:
            self.end_command()

    def payload(self, data: bytes) -> None:
        """A piece of a client literal."""
        cmd = self.current
        if cmd is not None:
            cmd.bytes_in += len(data)
        if self.discarding:
            return
        if self.held is not None:
            self.held.parts.append(data)
            return
        if cmd is not None and cmd.capture is not None:
            self._capture(cmd, data)
        self.session.to_upstream(data)

    def error(self, exc: ProtocolError) -> None:
        """A line the client parser rejected: answered BAD in order, or the session ends."""
        s = self.session
        s.out.notes.append(ProtocolIssue("client", exc.reason, exc.fatal))
        if exc.fatal:
            s.fatal("client", exc.reason)
            return
        self.bad_streak += 1
        # The rejected line may announce a non-synchronising literal: the parser skips its
        # payload and the rest of the line as parts of that line; none of it is forwarded.
        self.current = None
        self.discarding = True
        tag = exc.tag if exc.tag is not None else b"*"
        line = tag + b" BAD " + exc.reason.encode() + b"\r\n"
        s.inflight.answer_in_order(tag, line, s.inflight.seq, s.out.to_client)
        if self.bad_streak >= MAX_CONSECUTIVE_BAD:
            s.out.to_client.append(b"* BYE Too many invalid commands\r\n")
            s.close("too many invalid commands")

    # --- helpers --------------------------------------------------------------------
    def end_command(self) -> None:
        """The current command was read to its end: observe its arguments, read the next."""
        cmd = self.current
        self.current = None
        self.discarding = False
        if cmd is not None and cmd.capture is not None:
            observe_arguments(cmd)

    def _capture(self, cmd: InFlightCommand, data: bytes) -> None:
        assert cmd.capture is not None
        cmd.capture.append(data)
        if cmd.bytes_in > self.session.settings.max_line:
            cmd.capture = None  # too big to be a name: stop observing, keep forwarding

    def _hold_literal(self, literal: LiteralHeader) -> None:
        s = self.session
        held, cmd = self.held, self.current
        assert held is not None and cmd is not None
        if held.announce(literal, s.settings.max_line) or held.append_target_known(cmd.name):
            # A large literal, or APPEND's message once its mailbox is known: decide on what
            # came before it and stream the payload; a blocked APPEND never gets a "+", and
            # an allowed one gets the upstream's.
            self._release_held(complete=False)
        elif literal.sync or s.client.silent_continuation:
            if literal.sync:  # the proxy plays the server while it holds the command
                s.out.to_client.append(b"+ Ready for literal data\r\n")
            s.client.continuation_received()

    def _release_held(self, complete: bool) -> None:
        s = self.session
        cmd, held = self.current, self.held
        assert cmd is not None and held is not None
        self.held = None
        raw = b"".join(held.parts)
        policy = s.policy
        assert policy is not None
        if cmd.name in OBSERVED and complete:
            cmd.capture = [raw]
        verdict = policy.decide(s.facts_for(cmd, raw), cmd.name, raw, complete)
        last_literal = literal_at_end(raw) if not complete else None
        if self._apply_verdict(cmd, verdict, last_literal, raw):
            return
        if verdict.rewritten is not None:
            raw = verdict.rewritten
        if s.settings.login_gate is not None and (
            cmd.name == "LOGIN" or (cmd.name == "AUTHENTICATE" and s.login.authenticating is None)
        ):
            user = (login_user(raw) if complete else None) if cmd.name == "LOGIN" else cmd.user
            refusal = s.login.gate_refusal(cmd, user)
            if refusal is not None:
                self._refuse(cmd, last_literal, refusal)
                return
        s.inflight.track(cmd)
        segments = split_at_literals(raw, confirm=s.client.confirm_literals)
        if not complete and len(segments) > 1 and not segments[-1]:
            # The last announcement is the live literal the client is about to stream: its
            # "+" belongs to the client, so it ends the last segment, not waited for.
            segments.pop()
        s.release_queue.release(cmd.tag, segments, s.out.to_upstream)
        if complete:
            self.end_command()

    def _apply_verdict(
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
            # names the user it was judged by (Session.facts_for).
            cmd.user = login_user(raw)
        self._refuse(cmd, literal, block_answer(notes, cmd, verdict.block))
        return True

    def _refuse_command(self, cmd: InFlightCommand, ev: Command, text: bytes) -> None:
        """Refuse the command just read; an over-long line's rest is dropped unread."""
        if ev.partial:
            self.answer(cmd, text)
            self.session.client.drop_rest()
            self.current = None
        else:
            self._refuse(cmd, ev.literal, text)

    def _refuse(self, cmd: InFlightCommand, literal: LiteralHeader | None, text: bytes) -> None:
        """Answer ``cmd`` ourselves and drop whatever the client still sends for it."""
        client = self.session.client
        self.answer(cmd, text)
        if literal is not None and not literal.sync:
            if client.silent_continuation:
                client.continuation_received()  # a {n+} payload comes anyway: read it
            self.discarding = True  # its payload is on the way: read it, drop it
        else:
            client.command_finished(cmd.tag)
            if literal is None:
                self.end_command()
            else:
                self.current = None

    def answer(self, cmd: InFlightCommand, text: bytes) -> None:
        """The proxy's own tagged answer ``TAG text`` to ``cmd``, in order (module
        docstring), with its ``CommandDone``; the caller deals with the command's rest."""
        s = self.session
        # A command already forwarded (AUTHENTICATE blocked mid-exchange) waits only for the
        # commands forwarded before it.
        after = cmd.seq - 1 if cmd.seq else s.inflight.seq
        line = cmd.tag + b" " + text + b"\r\n"
        s.inflight.answer_in_order(cmd.tag, line, after, s.out.to_client)
        status = text.split(b" ", 1)[0].decode("ascii")
        s.out.notes.append(cmd.done(status, None, s.clock(), s.user, s.selected))


def observe_arguments(cmd: InFlightCommand) -> None:
    """Read what the session tracks from a complete observed command (``cmd.capture``):
    LOGIN's user, SELECT/EXAMINE's mailbox."""
    assert cmd.capture is not None
    raw = b"".join(cmd.capture)
    cmd.capture = None
    if cmd.name == "LOGIN":
        cmd.user = login_user(raw)
        return
    try:  # SELECT / EXAMINE
        args = parse_command(raw).args
    except TokenError:
        return
    value = args[0].astring() if args else None
    cmd.mailbox = decode_mailbox(value) if value is not None else None


def _reads_arguments(policy: PolicyLike, name: str) -> bool:
    return policy.needs_arguments(name) or name in OBSERVED or name == "AUTHENTICATE"


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
