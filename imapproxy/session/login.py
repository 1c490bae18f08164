"""The not-authenticated phase as the upstream runs it: greeting, STARTTLS, login.

Today the upstream greets the client and authenticates it; the proxy relays and looks on.
``UpstreamLogin`` is that phase's seam. It sees the greeting (PREAUTH, a refusing BYE),
answers STARTTLS and COMPRESS itself (relaying them would take the stream out of the
inspector's sight), reads the user a LOGIN or a SASL exchange names (never the secret), lets
rules block an AUTHENTICATE once its user is known, and notes a login's outcome.

A pre-authentication phase (the proxy greets and authenticates the client itself, then
picks the upstream by user) replaces this object: see ``session/core.py``'s module
docstring for where the session hands over to it.

Credentials: the ``raw`` bytes of LOGIN and SASL lines pass through here; only user names
leave (in ``InFlightCommand.user`` and ``LoginDone``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imapproxy.session.inflight import InFlightCommand
from imapproxy.session.judging import block_answer
from imapproxy.session.output import LoginDone, RuleHit
from imapproxy.wire import ProtocolError
from imapproxy.wire.sasl import sasl_user

if TYPE_CHECKING:
    from imapproxy.session.core import Session


class UpstreamLogin:
    """Greeting, STARTTLS/COMPRESS and login observation (see the module docstring)."""

    __slots__ = ("authenticating", "deferred_starttls", "greeted", "server_bye", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.greeted = False
        self.server_bye = False  # the upstream said BYE: the client needs no second one
        # AUTHENTICATE whose first SASL response (the one naming the user) is still to come.
        self.authenticating: InFlightCommand | None = None
        self.deferred_starttls: InFlightCommand | None = None  # waits for earlier commands

    # --- server direction -------------------------------------------------------------
    def greeting(self, word: str) -> str | None:
        """The upstream's first response, ``word`` its status; the user it implies."""
        self.greeted = True
        if word == "PREAUTH":
            return "(preauth)"
        if word == "BYE":  # a refusing greeting: the client needs no second BYE
            self.server_bye = True
        return None

    @staticmethod
    def outcome(cmd: InFlightCommand, ok: bool) -> LoginDone:
        """The observation for a LOGIN/AUTHENTICATE the upstream answered."""
        return LoginDone(cmd.mechanism or "LOGIN", "ok" if ok else "failed", cmd.user)

    # --- client direction -------------------------------------------------------------
    def start_authenticate(self, cmd: InFlightCommand, raw: bytes) -> None:
        """An AUTHENTICATE line: its mechanism, and the user if it has an initial response."""
        self.authenticating = cmd
        words = raw.split(None, 3)
        cmd.mechanism = words[2].decode("ascii", "replace").upper() if len(words) > 2 else "?"
        if len(words) > 3 and words[3].strip() != b"=":  # SASL-IR initial response
            cmd.user = sasl_user(cmd.mechanism, words[3])
            self.authenticating = None  # the initial response was the first one

    def sasl(self, raw: bytes) -> None:
        """A client line of an AUTHENTICATE exchange: forwarded, or (the user it names is
        blocked) replaced by a cancellation."""
        s = self.session
        cmd = self.authenticating
        self.authenticating = None  # later lines answer challenges (LOGIN: the password)
        if cmd is not None and cmd.user is None and cmd.mechanism is not None:
            cmd.user = sasl_user(cmd.mechanism, raw)
            if (cmd.user is not None and self._blocked(cmd)) or self._gated(cmd):
                # The upstream is mid-exchange: cancel it (RFC 9051 6.2.2) and swallow its
                # answer; the client already has ours.
                s.to_upstream(b"*\r\n")
                return
        s.to_upstream(raw)

    def _blocked(self, cmd: InFlightCommand) -> bool:
        """An AUTHENTICATE mid-exchange whose user is now known: block it if rules say so."""
        s = self.session
        policy = s.policy
        if policy is None:
            return False
        verdict = policy.decide(s.make_facts(cmd.user, s.selected), cmd.name, b"", True)
        if verdict.block is None:
            return False
        cmd.answered = True
        if cmd.tag not in s.inflight.pending:
            s.inflight.track(cmd)
        notes = s.out.notes
        for rule, action in verdict.matched:
            notes.append(RuleHit(rule, action))
        s.commands.answer(cmd, block_answer(notes, cmd, verdict.block))
        return True

    def gate_refusal(self, cmd: InFlightCommand, user: str | None) -> bytes | None:
        """Ask the abuse-limit gate (``SessionSettings.login_gate``) about a login before it
        is forwarded: the refusal text, noted as a blocked login, or None to go on."""
        gate = self.session.settings.login_gate
        refusal = gate(user) if gate is not None else None
        if refusal is not None:
            self.session.out.notes.append(LoginDone(cmd.mechanism or "LOGIN", "blocked", user))
            if self.authenticating is cmd:
                self.authenticating = None
        return refusal

    def _gated(self, cmd: InFlightCommand) -> bool:
        """The gate for an AUTHENTICATE without initial response, at its first response (the
        one naming the user); the upstream is mid-exchange: the caller cancels it."""
        s = self.session
        refusal = self.gate_refusal(cmd, cmd.user)
        if refusal is None:
            return False
        cmd.answered = True
        if cmd.tag not in s.inflight.pending:
            s.inflight.track(cmd)
        s.commands.answer(cmd, refusal)
        return True

    def answer_locally(self, cmd: InFlightCommand) -> None:
        """STARTTLS or COMPRESS (without arguments), once no command is in flight."""
        s = self.session
        answer = s.commands.answer
        if cmd.name == "COMPRESS":
            answer(cmd, b"NO [CANNOT] COMPRESS is not available through this proxy")
        elif s.settings.offer_starttls and not s.client_tls and s.user is None:
            try:
                s.client.start_tls()
            except ProtocolError as exc:
                s.fatal("client", exc.reason)
                return
            answer(cmd, b"OK Begin TLS negotiation now")
            s.out.start_client_tls = True
            s.tls_starting = True
        elif s.user is not None:  # RFC 9051 6.2.1: not-authenticated state only
            answer(cmd, b"BAD STARTTLS is only valid before login")
        elif s.client_tls:
            answer(cmd, b"BAD TLS is already active")
        else:
            answer(cmd, b"BAD STARTTLS is not available")
        s.client.command_finished(cmd.tag)
        s.commands.end_command()

    def answer_deferred_starttls(self) -> None:
        """Every command before a deferred STARTTLS is answered: answer it now."""
        cmd = self.deferred_starttls
        assert cmd is not None
        self.deferred_starttls = None
        s = self.session
        s.commands.current = cmd
        self.answer_locally(cmd)
