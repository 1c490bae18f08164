"""The client direction of a session: commands in, forwarded, held, or answered locally.

``ClientCommands`` handles the events of ``Session``'s client drain loop. Per command:

* refused locally (answered by the proxy, never forwarded; the rest of the command read and
  dropped, see ``discarding``): a duplicate tag in flight (with rules), STARTTLS/COMPRESS
  with arguments, LOGIN/AUTHENTICATE before TLS when TLS is required, too many commands in
  flight, an over-long line a rule or the session must read, a login the abuse-limit gate
  refuses;
* answered locally: STARTTLS (after the commands before it) and COMPRESS, by ``login.py``;
* judged by the rules, if any are in force (``judging.py``): on its first line, or held for
  its arguments; a block is answered ``NO [rule] ...``;
* otherwise forwarded as it streams, with LOGIN/SELECT/EXAMINE arguments observed on the
  way (``inflight.observe_arguments``).

Local answers go through ``InFlight.answer_in_order``, so they reach the client after the
server's answers to every command forwarded before them (``answer``); ``refuse`` also
drops whatever the client still sends for the refused command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imapproxy.session.inflight import LOGINS, OBSERVED, InFlightCommand, observe_arguments
from imapproxy.session.judging import TOO_LONG, RuleJudge
from imapproxy.session.output import LimitHit, ProtocolIssue
from imapproxy.session.settings import PolicyLike
from imapproxy.wire import Command, CommandPart, LiteralHeader, ProtocolError
from imapproxy.wire.literals import as_sync
from imapproxy.wire.sasl import login_user

if TYPE_CHECKING:
    from imapproxy.session.core import Session

MAX_CONSECUTIVE_BAD = 10


class ClientCommands:
    """Command handling for one session (see the module docstring).

    State: ``current`` (the command being read, until its end), ``discarding`` (the rest
    of the current command is read and dropped: it was refused), ``judge`` (the rules'
    side, with the held command), ``bad_streak`` (consecutive lines answered BAD; at
    ``MAX_CONSECUTIVE_BAD`` the session ends).
    """

    __slots__ = ("bad_streak", "current", "discarding", "judge", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.current: InFlightCommand | None = None  # the command being read
        self.discarding = False  # drop the rest of the current command (refused)
        self.judge = RuleJudge(self)
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
            self.refuse(cmd, ev.literal, b"NO [PRIVACYREQUIRED] Use STARTTLS first")
            return
        bound = s.settings.max_pipelined
        if bound and len(s.inflight.pending) >= bound:
            s.out.notes.append(LimitHit("pipelined"))
            self.refuse(cmd, ev.literal, b"BAD [LIMIT] Too many commands in flight")
            return
        if name == "AUTHENTICATE":
            s.login.start_authenticate(cmd, ev.raw)
        if ev.partial and policy is not None and _reads_arguments(policy, name):
            # An over-long line whose arguments a rule or the session needs: never held
            # whole (bounded memory); refused, the session goes on.
            self._refuse_command(cmd, ev, TOO_LONG)
            return
        if policy is not None and policy.needs_arguments(name):
            self.judge.hold(ev)
            return
        if name in OBSERVED:
            cmd.capture = [ev.raw]
        raw = ev.raw
        if policy is not None:
            judged = self.judge.first_line(policy, cmd, ev)
            if judged is None:  # blocked, answered
                return
            raw = judged
        if s.settings.login_gate is not None and self.gate_refuses(
            cmd, ev.raw, ev.literal, ev.literal is None
        ):
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
        if self.judge.held is not None:
            self.judge.part(ev)
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
        held = self.judge.held
        if held is not None:
            held.parts.append(data)
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

    # --- shared with judging.py and login.py ----------------------------------------
    def end_command(self) -> None:
        """The current command was read to its end: observe its arguments, read the next."""
        cmd = self.current
        self.current = None
        self.discarding = False
        if cmd is not None and cmd.capture is not None:
            observe_arguments(cmd)

    def gate_refuses(
        self, cmd: InFlightCommand, raw: bytes, literal: LiteralHeader | None, complete: bool
    ) -> bool:
        """Ask the abuse-limit gate about a LOGIN (``raw`` its line, ``complete`` when it
        holds the user) or an AUTHENTICATE whose initial response named the user, before
        it is forwarded; True when refused (answered, its rest dropped)."""
        s = self.session
        if s.settings.login_gate is None:
            return False
        if cmd.name == "LOGIN":
            # A user name sent as a literal is not known yet: the gate judges the address
            # only (holding the line would answer the client's "+" ourselves and break
            # byte-exact pass-through).
            user = login_user(raw) if complete else None
        elif cmd.name == "AUTHENTICATE" and s.login.authenticating is None:
            user = cmd.user
        else:
            return False
        refusal = s.login.gate_refusal(cmd, user)
        if refusal is None:
            return False
        self.refuse(cmd, literal, refusal)
        return True

    def refuse(self, cmd: InFlightCommand, literal: LiteralHeader | None, text: bytes) -> None:
        """Answer ``cmd`` ourselves and drop whatever the client still sends for it
        (``literal``: what its last line read announces)."""
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

    def _capture(self, cmd: InFlightCommand, data: bytes) -> None:
        assert cmd.capture is not None
        cmd.capture.append(data)
        if cmd.bytes_in > self.session.settings.max_line:
            cmd.capture = None  # too big to be a name: stop observing, keep forwarding

    def _refuse_command(self, cmd: InFlightCommand, ev: Command, text: bytes) -> None:
        """Refuse the command just read; an over-long line's rest is dropped unread."""
        if ev.partial:
            self.answer(cmd, text)
            self.session.client.drop_rest()
            self.current = None
        else:
            self.refuse(cmd, ev.literal, text)


def _reads_arguments(policy: PolicyLike, name: str) -> bool:
    return policy.needs_arguments(name) or name in OBSERVED or name == "AUTHENTICATE"
