"""One proxied IMAP session as a pure state machine: bytes in, decisions (``Output``) out.

Theory of operation
-------------------
The session owns one parser per direction and is the only place that knows IMAP state:
the user (once a login succeeds), the selected mailbox, the commands in flight, and the
modes that couple the directions. It never touches sockets or trio; ``client_data`` and
``server_data`` return what to send where, and what was observed.

Forwarding is of original bytes. With no policy, every client byte reaches the upstream and
every server byte reaches the client, except:

* capability words the proxy cannot carry are filtered (see ``wire.capabilities``);
* STARTTLS and COMPRESS from the client are answered by the proxy itself (relaying them
  would let the stream leave the inspector's sight);
* lines the client parser cannot classify are answered ``BAD`` by the proxy, not forwarded.

Couplings between directions, all resolved here:

* A paused client parser (sync literal, AUTHENTICATE, IDLE; see ``wire.client``) resumes on
  the server's ``+`` or the tagged answer; buffered client bytes are then parsed at once.
* Held commands: when a rule needs a command's arguments, its bytes are held (the proxy
  answers the client's synchronising literals itself, up to ``max_line`` of payload) until
  the command is complete or a large literal starts. The verdict then blocks it, or sends
  it (maybe rewritten) upstream. Sync literals in held bytes need the upstream's ``+`` each:
  the segments wait in ``_dance`` and those ``+`` are consumed, not relayed; client bytes
  that follow wait behind them so nothing overtakes the held command.
* Blocked commands are answered ``TAG NO [rule] message``; their remaining parts and
  literal payload are read and discarded so the stream stays in step.
* Confirmed literals: whether a server reads a ``{n+}`` as a literal depends on the
  command, its arguments and the server (Dovecot skips the rest of a line after a syntax
  error or a command's last argument, and runs the "payload" as a command). While rules are
  in force, each ``{n+}`` is therefore forwarded as ``{n}`` and the client parser waits
  for the server's ``+`` (consumed, not relayed): the server decides, and a payload it
  would run as a command is read by the proxy as a command too, and checked. When the
  server answers such a command instead of sending ``+`` (APPEND to a missing mailbox),
  the payload the client already sent is that command's data: the parser drops it.

Integrity rules with a policy in force (issue 8):

* State barrier: after a command that changes what rules judge by (``STATE_CHANGING``:
  LOGIN, AUTHENTICATE, SELECT, EXAMINE, CLOSE, UNSELECT, ENABLE, ...), the next command is
  not read until its tagged answer, so ``a LOGIN erin pw`` + ``b DELETE x`` in one write is
  judged as erin, and STORE after ``SELECT Archive`` with Archive selected. Costs one round
  trip per such command when the client pipelines; pure pass-through keeps full pipelining.
* Duplicate tags: a command whose tag is still in flight is answered ``BAD Duplicate tag in
  flight`` and never forwarded (its ``{n+}`` payload read and dropped): the in-flight model
  is keyed by tag and rules read its outcome. Without rules the server decides.
* Bounded backlog: bytes queued behind a held command (``_after_dance``) and proxy answers
  waiting for their turn count in ``backlog``; at ``backlog_limit`` (``max_line``) the session
  stops parsing and reports ``client_paused``, so the driver stops reading the client.
* Long lines stream as pieces; one whose arguments a rule or the session needs (held,
  observed: LOGIN, SELECT, EXAMINE, AUTHENTICATE) is answered ``BAD [TOOBIG]`` and skipped.

Always:

* Answer order: the proxy's own tagged answers (blocks, BAD, ...) wait until every command
  forwarded before them has its server answer, so the client sees answers in order.
* STARTTLS is answered after the commands before it, and only before login (``BAD``
  once authenticated, RFC 9051 6.2.1); between its OK and the handshake ``client_paused``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from imapproxy.policy.mailboxes import decode_mailbox
from imapproxy.session.output import (
    CommandBlocked,
    CommandDone,
    LimitHit,
    LoginDone,
    Output,
    ProtocolIssue,
    ResponseLogged,
    RuleHit,
)
from imapproxy.session.settings import PolicyLike, SessionSettings, VerdictLike
from imapproxy.wire import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    ClientParser,
    Command,
    CommandPart,
    EmptyLine,
    IdleDone,
    LiteralData,
    LiteralHeader,
    ProtocolError,
    Response,
    ResponseKind,
    ResponsePart,
    SaslResponse,
    ServerParser,
)
from imapproxy.wire.capabilities import CapabilityFilter, shared_filter
from imapproxy.wire.framing import literal_at_end
from imapproxy.wire.literals import TRAILING_LITERAL, as_sync, split_at_literals
from imapproxy.wire.sasl import login_user, sasl_user
from imapproxy.wire.tokens import TokenError, parse_command

__all__ = ["MAX_CONSECUTIVE_BAD", "Session", "SessionSettings"]

MAX_CONSECUTIVE_BAD = 10
# Commands whose outcome changes the facts rules judge later commands by (user, selected
# mailbox, UTF-8 names): with rules in force, the client parser reads no further command
# until their tagged answer (see "state barrier" in the module docstring).
STATE_CHANGING = frozenset(
    {
        "LOGIN",
        "AUTHENTICATE",
        "UNAUTHENTICATE",
        "SELECT",
        "EXAMINE",
        "CLOSE",
        "UNSELECT",
        "ENABLE",
        "LOGOUT",
    }
)
_NO_BARRIER: frozenset[str] = frozenset()
# Commands whose arguments the session reads for itself (user, selected mailbox).
_OBSERVED = frozenset({"LOGIN", "SELECT", "EXAMINE"})
_DESELECTING = frozenset({"CLOSE", "UNSELECT"})
# Untagged responses that name mailboxes, rewritten upstream->client by rewrite rules.
_MAILBOX_RESPONSES = frozenset(
    {"LIST", "LSUB", "STATUS", "XLIST", "MYRIGHTS", "ACL", "LISTRIGHTS", "QUOTAROOT", "METADATA"}
)
# Untagged status responses: their text may quote upstream names (policy.rewrite_status_text).
_STATUS_WORDS = frozenset({"OK", "NO", "BAD", "BYE"})


class _Command:
    """A command in flight (read from the client, not yet answered)."""

    __slots__ = (
        "answered",
        "bytes_in",
        "bytes_out",
        "capture",
        "log",
        "mailbox",
        "mechanism",
        "name",
        "seq",
        "start",
        "tag",
        "user",
    )

    def __init__(self, tag: bytes, name: str, start: float) -> None:
        self.tag = tag
        self.name = name
        self.start = start
        self.bytes_in = 0
        self.bytes_out = 0
        self.capture: list[bytes] | None = None  # observed bytes (small commands only)
        self.mailbox: str | None = None
        self.user: str | None = None
        self.mechanism: str | None = None
        self.log: str | None = None
        self.answered = False  # the proxy answered it; swallow the upstream's answer
        self.seq = 0  # forwarding order (see Session._answer_in_order)


class Session:
    def __init__(self, settings: SessionSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._clock = clock
        self.client = ClientParser(settings.max_line)
        self.server = ServerParser(settings.max_line)
        self.user: str | None = None
        self.selected: str | None = None
        self.client_tls = settings.client_tls_active
        self.closed: str | None = None
        self._out = Output()
        self._pending: dict[bytes, _Command] = {}
        self._current: _Command | None = None  # the command being read from the client
        # AUTHENTICATE whose first SASL response (the one naming the user) is still to come.
        self._authenticating: _Command | None = None
        self._discarding = False  # drop the rest of the current command (blocked / bad)
        self._held: list[bytes] | None = None  # bytes of a command held for a verdict
        self._held_payload = 0
        self._dance: deque[bytes] = deque()  # held segments waiting for upstream "+"
        self._dance_tag = b""
        # Client bytes that must not overtake them, and (tag, segments) of held commands
        # released meanwhile: each starts its own dance when the one before it ends.
        self._after_dance: list[bytes | tuple[bytes, list[bytes]]] = []
        self._greeted = False
        self._server_bye = False
        self._bad_streak = 0
        self._response_hold: list[bytes] | None = None  # an untagged response to rewrite
        # Server bytes since the last tagged answer: the responses that answer command
        # in flight, credited to the command whose tagged answer closes them.
        self._response_bytes = 0
        # The proxy's own tagged answers that must wait for the server's answers to the
        # commands forwarded before them: (last forwarded seq, tag, line); tags counted.
        self._local_queue: deque[tuple[int, bytes, bytes]] = deque()
        self._queued_tags: dict[bytes, int] = {}
        self._seq = 0  # commands forwarded so far
        self._deferred_starttls: _Command | None = None  # waits for earlier commands
        # Bytes queued behind a held command or waiting for ordering; above
        # ``backlog_limit`` the session stops parsing and reports ``client_paused``.
        self._backlog = 0
        self._stalled = False  # parsing stopped on the backlog; resume when it drains
        self._tls_starting = False  # STARTTLS answered OK; the handshake is the driver's
        self._caps = self._capability_filter()
        # Observers' line tap (direction, parser event), set by the driver only while one
        # wants lines: None costs one attribute test per event.
        self.tap: Callable[[str, object], None] | None = None

    # === public API ====================================================================
    @property
    def policy(self) -> PolicyLike | None:
        source = self.settings.policy_source
        return source() if source is not None else self.settings.policy

    @property
    def backlog_limit(self) -> int:
        return self.settings.max_line

    @property
    def client_paused(self) -> bool:
        """The driver must not read the client socket: the parser waits for the server, or
        the bytes queued behind a held command reached ``backlog_limit`` (TCP backpressure
        then holds the client; memory per session stays bounded)."""
        if self._tls_starting:  # no plaintext read between STARTTLS's OK and the handshake
            return True
        return self.client.paused or self._backlog >= self.backlog_limit

    @property
    def backlog(self) -> int:
        """Client bytes (and proxy answers) queued inside the session, not yet sent."""
        return self._backlog

    def client_data(self, data: bytes | bytearray) -> Output:
        """Feed bytes from the client (``b""``: the client closed)."""
        self.client.receive_data(data)
        self._drain_client()
        return self._take()

    def server_data(self, data: bytes | bytearray) -> Output:
        """Feed bytes from the upstream (``b""``: the upstream closed)."""
        self.server.receive_data(data)
        self._drain_server()
        return self._take()

    def client_tls_started(self) -> Output:
        """The driver finished the client-side TLS handshake after STARTTLS."""
        self.client_tls = True
        self._tls_starting = False
        self._caps = self._capability_filter()
        self._drain_client()
        return self._take()

    def abandon(self) -> list[CommandDone]:
        """Commands still in flight when the session ends, as observations."""
        now = self._clock()
        done = [self._done_note(c, "none", None, now) for c in self._pending.values()]
        self._pending.clear()
        return done

    # === client direction ==============================================================
    def _drain_client(self) -> None:
        parser = self.client
        # Confirmed literals (module docstring) while rules are in force; pure pass-through
        # stays byte-exact.
        confirm = self.settings.confirm_literals
        ruled = self.policy is not None
        parser.confirm_literals = ruled if confirm is None else confirm
        parser.barrier_commands = STATE_CHANGING if ruled else _NO_BARRIER
        limit = self.backlog_limit
        while self.closed is None:
            if self._backlog >= limit:
                self._stalled = True  # the rest stays in the framer until the queue drains
                return
            try:
                ev = parser.next_event()
            except ProtocolError as exc:
                self._client_error(exc)
                continue
            if ev is NEED_DATA or ev is PAUSED:
                return
            if ev is CLOSED:
                self._close("client closed the connection")
                return
            if self.tap is not None:
                self.tap("client", ev)
            t = type(ev)
            if t is LiteralData:
                self._client_payload(ev.data)  # type: ignore[union-attr]
            elif t is Command:
                self._on_command(ev)  # type: ignore[arg-type]
            elif t is CommandPart:
                self._on_command_part(ev)  # type: ignore[arg-type]
            elif t is SaslResponse:
                self._on_sasl(ev)  # type: ignore[arg-type]
            elif t is IdleDone or t is EmptyLine:
                self._to_upstream(ev.raw)  # type: ignore[union-attr]

    def _on_command(self, ev: Command) -> None:
        self._bad_streak = 0
        self._discarding = False  # whatever was being dropped ended before this command
        cmd = _Command(ev.tag, ev.name, self._clock())
        cmd.bytes_in = len(ev.raw)
        self._current = cmd
        name = ev.name
        policy = self.policy
        if policy is not None and self._tag_in_flight(ev.tag):
            # In-flight commands are keyed by tag: a second one would overwrite the first
            # and the session would record the wrong outcome (a SELECT never seen), which
            # rules then judge by. Without rules the server decides, as it would directly.
            self._refuse_command(cmd, ev, b"BAD Duplicate tag in flight")
            return
        if name == "STARTTLS" or name == "COMPRESS":
            if ev.literal is not None or ev.partial:  # neither takes one: refuse, drop it
                self._refuse_command(cmd, ev, b"BAD %s takes no arguments" % name.encode())
                return
            if self._pending:
                # The answer to STARTTLS changes the stream: decide it once every command
                # sent before it has its answer (the parser reads nothing meanwhile).
                self._deferred_starttls = cmd
                return
            self._answer_locally_special(cmd)
            return
        if self.settings.require_tls and not self.client_tls and name in ("LOGIN", "AUTHENTICATE"):
            self._refuse(cmd, ev.literal, b"NO [PRIVACYREQUIRED] Use STARTTLS first")
            return
        if self.settings.max_pipelined and len(self._pending) >= self.settings.max_pipelined:
            self._out.notes.append(LimitHit("pipelined"))
            self._refuse(cmd, ev.literal, b"BAD [LIMIT] Too many commands in flight")
            return
        if name == "AUTHENTICATE":
            self._start_authenticate(cmd, ev.raw)
        if ev.partial and policy is not None and self._reads_arguments(policy, name):
            # An over-long line whose arguments a rule or the session needs: never held
            # whole (bounded memory); refused, the session goes on.
            self._refuse_command(cmd, ev, _TOO_LONG)
            return
        gated = self.settings.login_gate is not None and name == "LOGIN"
        if policy is not None and policy.needs_arguments(name):
            self._held = [ev.raw]
            self._held_payload = 0
            if ev.literal is None:
                self._release_held(complete=True)
            else:
                self._hold_literal(ev.literal)
            return
        if name in _OBSERVED:
            cmd.capture = [ev.raw]
        if policy is not None:
            verdict = policy.decide(self._facts_for(cmd, ev.raw), name, ev.raw, ev.literal is None)
            if self._apply_verdict(cmd, verdict, ev.literal):
                return
            raw = verdict.rewritten if verdict.rewritten is not None else ev.raw
        else:
            raw = ev.raw
        if gated or (name == "AUTHENTICATE" and self._authenticating is None):
            # A user name sent as a literal is not known yet: the gate judges the address
            # only (holding the line would answer the client's "+" ourselves and break
            # byte-exact pass-through).
            user = (login_user(ev.raw) if ev.literal is None else None) if gated else cmd.user
            if self._login_gated(cmd, user, ev.literal):
                return
        self._track(cmd)
        if self.client.silent_continuation:
            raw = as_sync(raw)
        self._to_upstream(raw)
        if ev.literal is None and not ev.partial:
            self._end_command()

    def _reads_arguments(self, policy: PolicyLike, name: str) -> bool:
        return policy.needs_arguments(name) or name in _OBSERVED or name == "AUTHENTICATE"

    def _refuse_command(self, cmd: _Command, ev: Command, text: bytes) -> None:
        """Refuse the command just read; an over-long line's rest is dropped unread."""
        if ev.partial:
            self._answer(cmd, text)
            self.client.drop_rest()
            self._current = None
        else:
            self._refuse(cmd, ev.literal, text)

    def _on_command_part(self, ev: CommandPart) -> None:
        cmd = self._current
        if cmd is not None:
            cmd.bytes_in += len(ev.raw)
        if self._discarding:
            if ev.partial:
                return
            if ev.literal is None or ev.literal.sync:
                # A sync literal of a discarded command is never sent: the client already
                # has its tagged answer. Either way the discarded command ends here.
                if cmd is not None:
                    self.client.command_finished(cmd.tag)
                self._end_command()
            elif self.client.silent_continuation:
                self.client.continuation_received()  # a {n+} payload comes anyway: drop it
            return
        if self._held is not None:
            if ev.partial:  # over-long: the held command is refused, never held whole
                assert cmd is not None
                self._held = None
                self._answer(cmd, _TOO_LONG)
                self.client.drop_rest()
                self._current = None
                return
            self._held.append(ev.raw)
            self._held_payload += len(ev.raw)
            if ev.literal is None:
                self._release_held(complete=True)
            else:
                self._hold_literal(ev.literal)
            return
        if cmd is not None and cmd.capture is not None:
            self._capture(cmd, ev.raw)
        self._to_upstream(as_sync(ev.raw) if self.client.silent_continuation else ev.raw)
        if ev.literal is None and not ev.partial:
            self._end_command()

    def _client_payload(self, data: bytes) -> None:
        cmd = self._current
        if cmd is not None:
            cmd.bytes_in += len(data)
        if self._discarding:
            return
        if self._held is not None:
            self._held.append(data)
            return
        if cmd is not None and cmd.capture is not None:
            self._capture(cmd, data)
        self._to_upstream(data)

    def _on_sasl(self, ev: SaslResponse) -> None:
        cmd = self._authenticating
        self._authenticating = None  # later lines answer challenges (LOGIN: the password)
        if cmd is not None and cmd.user is None and cmd.mechanism is not None:
            cmd.user = sasl_user(cmd.mechanism, ev.raw)
            if (cmd.user is not None and self._login_blocked(cmd)) or self._sasl_gated(cmd):
                # The upstream is mid-exchange: cancel it (RFC 9051 6.2.2) and swallow its
                # answer; the client already has ours.
                self._to_upstream(b"*\r\n")
                return
        self._to_upstream(ev.raw)

    def _start_authenticate(self, cmd: _Command, raw: bytes) -> None:
        self._authenticating = cmd
        words = raw.split(None, 3)
        cmd.mechanism = words[2].decode("ascii", "replace").upper() if len(words) > 2 else "?"
        if len(words) > 3 and words[3].strip() != b"=":  # SASL-IR initial response
            cmd.user = sasl_user(cmd.mechanism, words[3])
            self._authenticating = None  # the initial response was the first one

    def _end_command(self) -> None:
        cmd = self._current
        self._current = None
        self._discarding = False
        if cmd is None or cmd.capture is None:
            return
        raw = b"".join(cmd.capture)
        cmd.capture = None
        if cmd.name == "LOGIN":
            cmd.user = login_user(raw)
        else:  # SELECT / EXAMINE
            try:
                args = parse_command(raw).args
            except TokenError:
                return
            value = args[0].astring() if args else None
            cmd.mailbox = decode_mailbox(value) if value is not None else None

    def _capture(self, cmd: _Command, data: bytes) -> None:
        assert cmd.capture is not None
        cmd.capture.append(data)
        if cmd.bytes_in > self.settings.max_line:
            cmd.capture = None  # too big to be a name: stop observing, keep forwarding

    # --- held commands (policy needs the arguments) -----------------------------------
    def _hold_literal(self, literal: LiteralHeader) -> None:
        self._held_payload += literal.size
        if self._held_payload > self.settings.max_line or self._append_target_known():
            # A large literal, or APPEND's message once its mailbox is known: decide on what
            # came before it and stream the payload; a blocked APPEND never gets a "+", and
            # an allowed one gets the upstream's.
            self._release_held(complete=False)
        elif literal.sync or self.client.silent_continuation:
            if literal.sync:  # the proxy plays the server while it holds the command
                self._out.to_client.append(b"+ Ready for literal data\r\n")
            self.client.continuation_received()

    def _append_target_known(self) -> bool:
        """APPEND's first argument is the mailbox; every later literal is message data."""
        cmd = self._current
        if cmd is None or cmd.name != "APPEND" or self._held is None:
            return False
        head = TRAILING_LITERAL.sub(b"", b"".join(self._held))  # the message's announcement
        try:
            return len(parse_command(head + b"\r\n").args) >= 1
        except TokenError:
            return False

    def _release_held(self, complete: bool) -> None:
        cmd = self._current
        held = self._held
        assert cmd is not None and held is not None
        self._held = None
        raw = b"".join(held)
        policy = self.policy
        assert policy is not None
        if cmd.name in _OBSERVED and complete:
            cmd.capture = [raw]
        verdict = policy.decide(self._facts_for(cmd, raw), cmd.name, raw, complete)
        last_literal = literal_at_end(raw) if not complete else None
        if self._apply_verdict(cmd, verdict, last_literal):
            return
        if verdict.rewritten is not None:
            raw = verdict.rewritten
        if self.settings.login_gate is not None and (
            cmd.name == "LOGIN" or (cmd.name == "AUTHENTICATE" and self._authenticating is None)
        ):
            user = (login_user(raw) if complete else None) if cmd.name == "LOGIN" else cmd.user
            if self._login_gated(cmd, user, last_literal):
                return
        self._track(cmd)
        self._send_segmented(cmd.tag, raw, live_tail=not complete)
        if complete:
            self._end_command()

    def _send_segmented(self, tag: bytes, raw: bytes, *, live_tail: bool) -> None:
        """Send held command bytes upstream, cut after each sync literal announcement.

        With ``live_tail``, the last announcement is the live literal the client is about
        to stream; its ``+`` belongs to the client, so it ends the last segment unqueued.
        """
        segments = split_at_literals(raw, confirm=self.client.confirm_literals)
        rest = segments[1:]
        if live_tail and rest and not rest[-1]:
            rest = rest[:-1]
        if self._dance:  # another held command is mid-dance: queue this one whole behind it
            queued = [segments[0], *rest]
            self._after_dance.append((tag, queued))
            self._backlog += sum(len(x) for x in queued)
            return
        self._to_upstream(segments[0])
        if rest:
            self._dance.extend(rest)
            self._dance_tag = tag

    def _apply_verdict(
        self, cmd: _Command, verdict: VerdictLike, literal: LiteralHeader | None
    ) -> bool:
        """Record a verdict; True when it blocked the command (already answered)."""
        out = self._out
        for rule, action in verdict.matched:
            out.notes.append(RuleHit(rule, action))
        cmd.log = verdict.log
        if verdict.block is None:
            return False
        rule, message = verdict.block
        out.notes.append(CommandBlocked(rule, cmd.name))
        if cmd.name in ("LOGIN", "AUTHENTICATE"):
            out.notes.append(LoginDone(cmd.mechanism or "LOGIN", "blocked", cmd.user))
        code = rule if _is_atom(rule) else "POLICY"
        self._refuse(cmd, literal, b"NO [%s] %s" % (code.encode(), message.encode()))
        return True

    def _refuse(self, cmd: _Command, literal: LiteralHeader | None, text: bytes) -> None:
        """Answer ``cmd`` ourselves and drop whatever the client still sends for it."""
        self._answer(cmd, text)
        if literal is not None and not literal.sync:
            if self.client.silent_continuation:
                self.client.continuation_received()  # a {n+} payload comes anyway: read it
            self._discarding = True  # its payload is on the way: read it, drop it
        else:
            self.client.command_finished(cmd.tag)
            if literal is None:
                self._end_command()
            else:
                self._current = None

    def _answer(self, cmd: _Command, text: bytes) -> None:
        # A command already forwarded (AUTHENTICATE blocked mid-exchange) waits only for the
        # commands forwarded before it.
        after = cmd.seq - 1 if cmd.seq else self._seq
        self._answer_in_order(cmd.tag, cmd.tag + b" " + text + b"\r\n", after)
        status = text.split(b" ", 1)[0].decode("ascii")
        self._out.notes.append(self._done_note(cmd, status, None, self._clock()))

    def _answer_locally_special(self, cmd: _Command) -> None:
        if cmd.name == "COMPRESS":
            self._answer(cmd, b"NO [CANNOT] COMPRESS is not available through this proxy")
        elif self.settings.offer_starttls and not self.client_tls and self.user is None:
            try:
                self.client.start_tls()
            except ProtocolError as exc:
                self._fatal("client", exc.reason)
                return
            self._answer(cmd, b"OK Begin TLS negotiation now")
            self._out.start_client_tls = True
            self._tls_starting = True
        elif self.user is not None:  # RFC 9051 6.2.1: not-authenticated state only
            self._answer(cmd, b"BAD STARTTLS is only valid before login")
        elif self.client_tls:
            self._answer(cmd, b"BAD TLS is already active")
        else:
            self._answer(cmd, b"BAD STARTTLS is not available")
        self.client.command_finished(cmd.tag)
        self._end_command()

    def _login_blocked(self, cmd: _Command) -> bool:
        policy = self.policy
        if policy is None:
            return False
        facts = self._make_facts(cmd.user, self.selected)
        verdict = policy.decide(facts, cmd.name, b"", True)
        if verdict.block is None:
            return False
        cmd.answered = True
        if cmd.tag not in self._pending:
            self._track(cmd)
        rule, message = verdict.block
        for r, a in verdict.matched:
            self._out.notes.append(RuleHit(r, a))
        self._out.notes.append(CommandBlocked(rule, cmd.name))
        self._out.notes.append(LoginDone(cmd.mechanism or "LOGIN", "blocked", cmd.user))
        code = rule if _is_atom(rule) else "POLICY"
        self._answer(cmd, b"NO [%s] %s" % (code.encode(), message.encode()))
        return True

    def _login_gated(self, cmd: _Command, user: str | None, literal: LiteralHeader | None) -> bool:
        """Ask the abuse-limit gate about a login before it is forwarded; True: refused."""
        gate = self.settings.login_gate
        refusal = gate(user) if gate is not None else None
        if refusal is None:
            return False
        self._out.notes.append(LoginDone(cmd.mechanism or "LOGIN", "blocked", user))
        if self._authenticating is cmd:
            self._authenticating = None
        self._refuse(cmd, literal, refusal)
        return True

    def _sasl_gated(self, cmd: _Command) -> bool:
        """The gate for an AUTHENTICATE without initial response, at its first response (the
        one naming the user); the upstream is mid-exchange: the caller cancels it."""
        gate = self.settings.login_gate
        refusal = gate(cmd.user) if gate is not None else None
        if refusal is None:
            return False
        cmd.answered = True
        if cmd.tag not in self._pending:
            self._track(cmd)
        self._out.notes.append(LoginDone(cmd.mechanism or "LOGIN", "blocked", cmd.user))
        self._answer(cmd, refusal)
        return True

    def _client_error(self, exc: ProtocolError) -> None:
        self._out.notes.append(ProtocolIssue("client", exc.reason, exc.fatal))
        if exc.fatal:
            self._fatal("client", exc.reason)
            return
        self._bad_streak += 1
        # The rejected line may announce a non-synchronising literal: the parser skips its
        # payload and the rest of the line as parts of that line; none of it is forwarded.
        self._current = None
        self._discarding = True
        tag = exc.tag if exc.tag is not None else b"*"
        self._answer_in_order(tag, tag + b" BAD " + exc.reason.encode() + b"\r\n", self._seq)
        if self._bad_streak >= MAX_CONSECUTIVE_BAD:
            self._out.to_client.append(b"* BYE Too many invalid commands\r\n")
            self._close("too many invalid commands")

    # === server direction ==============================================================
    def _drain_server(self) -> None:
        parser = self.server
        resumed = False
        while self.closed is None:
            try:
                ev = parser.next_event()
            except ProtocolError as exc:
                self._out.notes.append(ProtocolIssue("upstream", exc.reason, True))
                self._fatal("upstream", exc.reason)
                return
            if ev is NEED_DATA:
                break
            if ev is CLOSED:
                if not self._server_bye:
                    self._out.to_client.append(
                        b"* BYE [UNAVAILABLE] The mail server closed the connection\r\n"
                    )
                self._close("upstream closed the connection")
                return
            if self.tap is not None:
                self.tap("server", ev)
            t = type(ev)
            if t is LiteralData or t is ResponsePart:
                raw = ev.data if t is LiteralData else ev.raw  # type: ignore[union-attr]
                self._response_bytes += len(raw)
                if self._response_hold is not None:
                    self._hold_response_part(raw, ev)  # type: ignore[arg-type]
                else:
                    self._out.to_client.append(raw)
            else:
                self._response_bytes += len(ev.raw)  # type: ignore[union-attr]
                resumed |= self._on_response(ev)  # type: ignore[arg-type]
        if resumed or self._stalled:
            if self.client_paused:
                self._stalled = True  # parse on once the backlog drains
            else:
                self._stalled = False
                self._drain_client()

    def _on_response(self, ev: Response) -> bool:
        """Handle a response's first line; True if it resumed the client parser."""
        out = self._out
        kind = ev.kind
        if kind is ResponseKind.UNTAGGED:
            self._on_untagged(ev)
            return False
        if kind is ResponseKind.CONTINUATION:
            if self._dance:
                self._to_upstream_now(self._dance.popleft())
                if not self._dance:
                    self._flush_after_dance()
                return False
            silent = self.client.silent_continuation  # it confirms a {n+}: not the client's
            resumed = self.client.continuation_received()
            if not silent:
                out.to_client.append(ev.raw)
            return resumed
        if kind is ResponseKind.TAGGED:
            return self._on_tagged(ev)
        out.to_client.append(ev.raw)
        return False

    def _on_untagged(self, ev: Response) -> None:
        raw = ev.raw
        word = ev.word
        if not self._greeted:
            self._greeted = True
            self._response_bytes = 0  # the greeting answers no command
            if word == "PREAUTH":
                self.user = self.user or "(preauth)"
            elif word == "BYE":  # a refusing greeting: the client needs no second BYE
                self._server_bye = True
            raw = self._caps.response_code(raw)
        elif word == "CAPABILITY":
            raw = self._caps.untagged(raw)
        elif word == "OK" and b"[CAPABILITY" in raw[:20].upper():
            raw = self._caps.response_code(raw)
        elif word == "BYE":
            self._server_bye = True
        policy = self.policy
        if (
            policy is not None
            and word in _MAILBOX_RESPONSES
            and not ev.partial
            and policy.rewrites_responses()
        ):
            if ev.literal is None:
                rewritten = policy.rewrite_response(raw, self._facts())
                if rewritten == b"":
                    return  # an upstream name with no client-side form: hidden
                raw = rewritten if rewritten is not None else raw
            else:
                self._response_hold = [raw]
                return
        elif policy is not None and word in _STATUS_WORDS and policy.rewrites_responses():
            raw = policy.rewrite_status_text(raw) or raw
        self._maybe_log_response(raw)
        self._out.to_client.append(raw)

    def _hold_response_part(self, raw: bytes, ev: LiteralData | ResponsePart) -> None:
        held = self._response_hold
        assert held is not None
        held.append(raw)
        if isinstance(ev, ResponsePart) and ev.literal is None and not ev.partial:
            self._response_hold = None
            whole = b"".join(held)
            policy = self.policy
            rewritten = policy.rewrite_response(whole, self._facts()) if policy else None
            if rewritten != b"":  # b"": hidden, see _on_untagged
                self._out.to_client.append(rewritten if rewritten is not None else whole)
        elif sum(len(p) for p in held) > self.settings.max_line:
            self._response_hold = None  # too large to be a mailbox name: pass through as is
            self._out.to_client.append(b"".join(held))

    def _maybe_log_response(self, raw: bytes) -> None:
        if any(c.log == "full" for c in self._pending.values()):
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            self._out.notes.append(ResponseLogged(line[:512]))

    def _on_tagged(self, ev: Response) -> bool:
        out = self._out
        tag = ev.tag
        cmd = self._pending.pop(tag, None)
        if cmd is not None and cmd is self._authenticating:
            self._authenticating = None
        if self._dance and tag == self._dance_tag:
            self._dance.clear()  # the upstream refused the held command mid-way
            self._flush_after_dance()
        resumed = self.client.command_finished(tag)
        if cmd is not None and cmd.answered:
            return self._after_tagged(tag) or resumed  # the proxy answered the client already
        status = ev.word
        raw = ev.raw
        code = _response_code(raw)
        if status == "OK" and code == "CAPABILITY":
            raw = self._caps.response_code(raw)
        if cmd is not None:
            self._after_completion(cmd, status)
            cmd.bytes_out = self._response_bytes
            out.notes.append(self._done_note(cmd, status, code, self._clock()))
        self._response_bytes = 0
        policy = self.policy
        if policy is not None and policy.rewrites_responses():
            raw = policy.rewrite_status_text(raw) or raw  # upstream names in error texts
        out.to_client.append(raw)
        return self._after_tagged(tag) or resumed

    def _after_tagged(self, tag: bytes) -> bool:
        """Release the proxy's answers that waited for ``tag``, then a deferred STARTTLS.
        True if that resumed the client parser."""
        queue = self._local_queue
        if queue:
            oldest = self._oldest_in_flight()
            while queue and queue[0][0] < oldest:
                _, qtag, line = queue.popleft()
                self._untrack_queued(qtag)
                self._backlog -= len(line)
                self._out.to_client.append(line)
        starttls = self._deferred_starttls
        if starttls is not None and not self._pending:
            self._deferred_starttls = None
            self._current = starttls
            self._answer_locally_special(starttls)
            return True
        return False

    def _after_completion(self, cmd: _Command, status: str) -> None:
        name = cmd.name
        ok = status == "OK"
        if name in ("LOGIN", "AUTHENTICATE"):
            if ok:
                self.user = cmd.user
            self._out.notes.append(
                LoginDone(cmd.mechanism or "LOGIN", "ok" if ok else "failed", cmd.user)
            )
        elif name in ("SELECT", "EXAMINE"):
            # A failed SELECT leaves no mailbox selected (RFC 9051 6.3.2): NO. After BAD the
            # server may still have the old one (Dovecot keeps it after a line-level syntax
            # error, drops it after an argument error): keep it, the stricter for rules.
            if ok:
                self.selected = cmd.mailbox
            elif status != "BAD":
                self.selected = None
        elif name in _DESELECTING and ok:
            self.selected = None

    # === shared helpers ================================================================
    def _to_upstream(self, data: bytes) -> None:
        if self._dance:
            self._after_dance.append(data)
            self._backlog += len(data)
        else:
            self._out.to_upstream.append(data)

    def _to_upstream_now(self, data: bytes) -> None:
        self._out.to_upstream.append(data)

    def _flush_after_dance(self) -> None:
        queued, self._after_dance = self._after_dance, []
        for i, item in enumerate(queued):
            if not isinstance(item, tuple):
                self._out.to_upstream.append(item)
                self._backlog -= len(item)
                continue
            tag, segments = item
            self._backlog -= sum(len(x) for x in segments)
            self._out.to_upstream.append(segments[0])
            if len(segments) > 1:  # its own dance; what follows waits behind it again
                self._dance.extend(segments[1:])
                self._dance_tag = tag
                self._after_dance = queued[i + 1 :]
                return

    def _track(self, cmd: _Command) -> None:
        """``cmd`` goes upstream: in flight until its tagged answer."""
        self._seq += 1
        cmd.seq = self._seq
        self._pending.pop(cmd.tag, None)  # (a duplicate without rules) keep forwarding order
        self._pending[cmd.tag] = cmd

    def _tag_in_flight(self, tag: bytes) -> bool:
        return tag in self._pending or tag in self._queued_tags

    def _oldest_in_flight(self) -> int:
        # _pending keeps forwarding order: its first entry is the oldest unanswered.
        return next(iter(self._pending.values())).seq if self._pending else self._seq + 1

    def _answer_in_order(self, tag: bytes, line: bytes, after: int) -> None:
        """Send one of the proxy's own answers once the server has answered every command
        forwarded up to number ``after`` (servers answer in order; so does the proxy)."""
        if self._local_queue or self._oldest_in_flight() <= after:
            self._local_queue.append((after, tag, line))
            self._queued_tags[tag] = self._queued_tags.get(tag, 0) + 1
            self._backlog += len(line)
        else:
            self._out.to_client.append(line)

    def _untrack_queued(self, tag: bytes) -> None:
        left = self._queued_tags[tag] - 1
        if left:
            self._queued_tags[tag] = left
        else:
            del self._queued_tags[tag]

    def _done_note(self, cmd: _Command, status: str, code: str | None, now: float) -> CommandDone:
        return CommandDone(
            tag=cmd.tag.decode("ascii", "replace"),
            command=cmd.name,
            status=status,
            code=code,
            duration=now - cmd.start,
            mailbox=cmd.mailbox if cmd.mailbox is not None else self.selected,
            user=self.user if self.user is not None else cmd.user,
            log=cmd.log,
            bytes_in=cmd.bytes_in,
            bytes_out=cmd.bytes_out,
        )

    def _facts(self) -> object:
        return self._make_facts(self.user, self.selected)

    def _facts_for(self, cmd: _Command, raw: bytes) -> object:
        """Facts for deciding ``cmd``: a login is judged by the user it names."""
        if cmd.name == "AUTHENTICATE" and cmd.user is not None:
            return self._make_facts(cmd.user, self.selected)
        if cmd.name == "LOGIN" and self.user is None:
            return self._make_facts(login_user(raw), self.selected)
        return self._facts()

    def _make_facts(self, user: str | None, selected: str | None) -> object:
        factory = self.settings.facts
        if factory is None:
            return None
        return factory(self.settings.client_ip, user, selected)

    def _capability_filter(self) -> CapabilityFilter:
        s = self.settings
        add: list[bytes] = []
        if s.offer_starttls and not self.client_tls:
            add.append(b"STARTTLS")
        if s.require_tls and not self.client_tls:
            add.append(b"LOGINDISABLED")
        return shared_filter(s.hide_capabilities, tuple(add))

    def _fatal(self, side: str, reason: str) -> None:
        if side == "client":
            self._out.to_client.append(b"* BYE " + reason.encode("ascii", "replace") + b"\r\n")
        else:
            self._out.to_client.append(b"* BYE [UNAVAILABLE] Mail server protocol error\r\n")
        self._close(f"{side} protocol error: {reason}")

    def _close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self._out.close = reason

    def _take(self) -> Output:
        out = self._out
        self._out = Output()
        return out


_TOO_LONG = b"BAD [TOOBIG] Command line too long to check against the rules"


def _response_code(raw: bytes) -> str | None:
    """The response code word of a status response, e.g. ``CAPABILITY`` or ``TRYCREATE``."""
    lb = raw.find(b"[", 0, 64)
    if lb < 0:
        return None
    end = lb + 1
    while end < len(raw) and raw[end] not in b" ]\r\n":
        end += 1
    return raw[lb + 1 : end].decode("ascii", "replace").upper() or None


def _is_atom(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "-_." for c in text)
