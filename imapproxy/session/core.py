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

Where each job lives (one module each; ``held.py`` has the glossary of the words used):

* ``core.py``      ``Session``: the API, the two drain loops, event dispatch, shared state;
* ``commands.py``  ``ClientCommands``: client events (forward, refuse, answer locally);
* ``judging.py``   ``RuleJudge``: rules on client commands (verdicts on the first line, the
  command held for its arguments and released);
* ``responses.py`` ``ServerResponses``: server events (capability filtering, mailbox and
  status-text rewriting, continuations, tagged answers and the state they change);
* ``inflight.py``  ``InFlight``: commands in flight by tag, duplicate tags, the proxy's own
  answers ordered behind forwarded commands; what the session reads from LOGIN/SELECT;
* ``held.py``      held commands and ``ReleaseQueue`` (segments waiting for the upstream's
  ``+``, what is queued behind them);
* ``login.py``     ``UpstreamLogin``: greeting, STARTTLS/COMPRESS, login observation (the
  seam for a pre-authentication phase, see ``Session``).

Couplings between directions, all resolved here:

* A paused client parser (sync literal, AUTHENTICATE, IDLE; see ``wire.client``) resumes on
  the server's ``+`` or the tagged answer; buffered client bytes are then parsed at once.
* Held commands (``held.py``): a command a rule needs the arguments of is collected, judged,
  then released; its sync literals need the upstream's ``+`` each, consumed, not relayed;
  client bytes that follow are queued behind so nothing overtakes it.
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
* Bounded backlog: bytes queued behind a held command and proxy answers waiting for their
  turn count in ``backlog``; at ``backlog_limit`` (``max_line``) the session stops parsing
  and reports ``client_paused``, so the driver stops reading the client.
* Long lines stream as pieces; one whose arguments a rule or the session needs (held,
  observed: LOGIN, SELECT, EXAMINE, AUTHENTICATE) is answered ``BAD [TOOBIG]`` and skipped.

Always:

* Answer order: the proxy's own tagged answers (blocks, BAD, ...) wait until every command
  forwarded before them has its server answer, so the client sees answers in order.
* STARTTLS is answered after the commands before it, and only before login (``BAD``
  once authenticated, RFC 9051 6.2.1); between its OK and the handshake ``client_paused``.

Pre-authentication phase (per-user routing, next). Today the upstream greets and
authenticates the client and ``Session.login`` (``UpstreamLogin``, ``login.py``) only looks
on; every not-authenticated-state decision already goes through it (greeting, STARTTLS,
COMPRESS, SASL lines, login outcome). The phase in which the proxy greets and
authenticates the client itself, then picks the upstream, is a second class with the
same role installed as ``Session.login`` while ``user`` is None: ``ClientCommands.command``
hands it every command before login (where it now hands it STARTTLS and AUTHENTICATE),
it answers them locally, and once the user is known it asks the driver for that
upstream (a new ``Output`` action) and consumes the upstream's greeting and login
answer (``ServerResponses._untagged``'s greeting branch). The in-flight table, held
commands and response rewriting are unchanged by it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from imapproxy.session.commands import MAX_CONSECUTIVE_BAD, ClientCommands
from imapproxy.session.held import ReleaseQueue
from imapproxy.session.inflight import InFlight
from imapproxy.session.login import UpstreamLogin
from imapproxy.session.output import CommandDone, Output, ProtocolIssue
from imapproxy.session.responses import ServerResponses
from imapproxy.session.settings import PolicyLike, SessionFacts, SessionSettings
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
    ProtocolError,
    Response,
    ResponsePart,
    SaslResponse,
    ServerParser,
)
from imapproxy.wire.capabilities import CapabilityFilter, shared_filter

__all__ = ["MAX_CONSECUTIVE_BAD", "STATE_CHANGING", "Session", "SessionSettings"]

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

# Client commands looked at for an ``ID`` (RFC 2971) before the session stops looking (most
# clients send ID first or right after logging in).
ID_WINDOW = 8


class Session:
    """One client connection and its upstream, as a state machine (module docstring).

    The driver feeds bytes with ``client_data``/``server_data`` (and ``client_tls_started``
    after a STARTTLS handshake), performs each returned ``Output``, and reads
    ``client_paused`` (stop reading the client) and ``closed`` (the session is over) after
    each call. No method blocks or performs I/O; none raises on hostile input (protocol
    errors become answers, notes and, when fatal, ``Output.close``).

    Read by the driver and tests: ``closed`` (None while the session runs, else why it
    ended; set in the same call whose ``Output.close`` says so), ``user`` (the logged-in user
    once the upstream accepted a login, ``"(preauth)"`` after a PREAUTH greeting, else None),
    ``selected`` (the mailbox the upstream has selected, client-side name, or None),
    ``client_paused``, ``backlog``, ``settings``, ``client_id`` (the raw line of the
    client's ``ID`` command if it was among its first ``ID_WINDOW`` commands, ``b""`` if that
    ID had a literal; else None: what the inspector names the client software by).

    Attributes the handlers share (not for the driver): ``out`` (the ``Output`` being
    built), ``client``/``server`` (the parsers), ``inflight``, ``release_queue``, ``login``
    (the seam for a pre-authentication phase, module docstring), ``caps``, ``commands``,
    ``responses``, ``clock``, ``tls_starting``.
    """

    def __init__(self, settings: SessionSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.client = ClientParser(settings.max_line)
        self.server = ServerParser(settings.max_line)
        self.user: str | None = None
        self.selected: str | None = None
        # The server enabled UTF8=ACCEPT (RFC 6855): mailbox names on the wire are UTF-8.
        self.utf8 = False
        self.client_tls = settings.client_tls_active
        self.closed: str | None = None  # why the session ended; None while it runs
        self.out = Output()
        self.inflight = InFlight()
        self.release_queue = ReleaseQueue()
        self.login = UpstreamLogin(self)
        self.commands = ClientCommands(self)
        self.responses = ServerResponses(self)
        self.tls_starting = False  # STARTTLS answered OK; the handshake is the driver's
        self.caps = self._capability_filter()
        self._stalled = False  # parsing stopped on the backlog; resume when it drains
        self.client_id: bytes | None = None
        self._id_window = ID_WINDOW  # client commands still looked at for an ID
        # Observers' line tap (direction, parser event), set by the driver only while one
        # wants lines: None costs one attribute test per event.
        self.tap: Callable[[str, object], None] | None = None

    # === public API ====================================================================
    @property
    def policy(self) -> PolicyLike | None:
        """The policy in force now (a reload applies from the next command on)."""
        source = self.settings.policy_source
        return source() if source is not None else self.settings.policy

    @property
    def backlog_limit(self) -> int:
        """``backlog`` at which the session stops parsing client bytes."""
        return self.settings.max_line

    @property
    def client_paused(self) -> bool:
        """The driver must not read the client socket: the parser waits for the server, or
        the bytes queued behind a held command reached ``backlog_limit`` (TCP backpressure
        then holds the client; memory per session stays bounded), or a STARTTLS handshake
        is due (no plaintext may be read before it)."""
        if self.tls_starting:
            return True
        backlog = self.release_queue.queued_bytes + self.inflight.queued_bytes
        return self.client.paused or backlog >= self.settings.max_line

    @property
    def backlog(self) -> int:
        """Client bytes (and proxy answers) queued inside the session, not yet sent."""
        return self.release_queue.queued_bytes + self.inflight.queued_bytes

    def client_data(self, data: bytes | bytearray) -> Output:
        """Feed bytes read from the client (``b""``: the client closed); what to do.

        Parses as far as the bytes, ``client_paused`` and the backlog allow; bytes not
        parsed yet stay buffered and are parsed on later calls (any of the four)."""
        self.client.receive_data(data)
        self._drain_client()
        return self._take()

    def server_data(self, data: bytes | bytearray) -> Output:
        """Feed bytes read from the upstream (``b""``: the upstream closed); what to do.

        Answers may resume the client parser: buffered client bytes are then parsed in the
        same call, so the ``Output`` can hold bytes for both sides."""
        self.server.receive_data(data)
        self._drain_server()
        return self._take()

    def client_tls_started(self) -> Output:
        """The driver finished the client-side TLS handshake the last ``Output`` asked for
        (``start_client_tls``); client bytes after it are parsed from here on."""
        self.client_tls = True
        self.tls_starting = False
        self.caps = self._capability_filter()
        self._drain_client()
        return self._take()

    def abandon(self) -> list[CommandDone]:
        """The session ends: commands still in flight, as observations (status ``none``);
        the in-flight table is empty afterwards."""
        now = self.clock()
        user, selected = self.user, self.selected
        return [c.done("none", None, now, user, selected) for c in self.inflight.abandon()]

    # === the two drain loops: parser events to handlers ================================
    def _drain_client(self) -> None:
        parser = self.client
        # Confirmed literals (module docstring) while rules are in force; pure pass-through
        # stays byte-exact.
        confirm = self.settings.confirm_literals
        ruled = self.policy is not None
        parser.confirm_literals = ruled if confirm is None else confirm
        parser.barrier_commands = STATE_CHANGING if ruled else _NO_BARRIER
        limit = self.backlog_limit
        commands = self.commands
        release, inflight = self.release_queue, self.inflight
        while self.closed is None:
            if release.queued_bytes + inflight.queued_bytes >= limit:
                self._stalled = True  # the rest stays in the framer until the queue drains
                return
            try:
                ev = parser.next_event()
            except ProtocolError as exc:
                commands.error(exc)
                continue
            if ev is NEED_DATA or ev is PAUSED:
                return
            if ev is CLOSED:
                self.close("client closed the connection")
                return
            if self.tap is not None:
                self.tap("client", ev)
            match ev:
                case Command():
                    if self._id_window:
                        self._look_for_id(ev)
                    commands.command(ev)
                case CommandPart():
                    commands.part(ev)
                case LiteralData():
                    commands.payload(ev.data)
                case SaslResponse():
                    self.login.sasl(ev.raw)
                case IdleDone() | EmptyLine():
                    self.to_upstream(ev.raw)

    def _drain_server(self) -> None:
        parser = self.server
        responses = self.responses
        resumed = False
        while self.closed is None:
            try:
                ev = parser.next_event()
            except ProtocolError as exc:
                self.out.notes.append(ProtocolIssue("upstream", exc.reason, True))
                self.fatal("upstream", exc.reason)
                return
            if ev is NEED_DATA:
                break
            if ev is CLOSED:
                if not self.login.server_bye:
                    self.out.to_client.append(
                        b"* BYE [UNAVAILABLE] The mail server closed the connection\r\n"
                    )
                self.close("upstream closed the connection")
                return
            if self.tap is not None:
                self.tap("server", ev)
            match ev:
                case Response():
                    responses.response_bytes += len(ev.raw)
                    resumed |= responses.on_response(ev)
                case LiteralData(data=raw) | ResponsePart(raw=raw):
                    responses.response_bytes += len(raw)
                    if responses.held is not None:
                        responses.held_part(raw, ev)
                    else:
                        self.out.to_client.append(raw)
        if resumed or self._stalled:
            if self.client_paused:
                self._stalled = True  # parse on once the backlog drains
            else:
                self._stalled = False
                self._drain_client()

    # === shared by the handlers ========================================================
    def to_upstream(self, data: bytes) -> None:
        """Client bytes for the upstream, queued behind waiting held segments if any."""
        release = self.release_queue
        if release.waiting:
            release.queue(data)
        else:
            self.out.to_upstream.append(data)

    def facts(self) -> SessionFacts:
        """What the policy judges this session's next command or response by, now."""
        return self.make_facts(self.user, self.selected)

    def make_facts(self, user: str | None, selected: str | None) -> SessionFacts:
        return self.settings.facts(self.settings.client_ip, user, selected, self.utf8)

    def fatal(self, side: str, reason: str) -> None:
        """A protocol error ``side`` cannot recover from: BYE to the client, session over."""
        if side == "client":
            self.out.to_client.append(b"* BYE " + reason.encode("ascii", "replace") + b"\r\n")
        else:
            self.out.to_client.append(b"* BYE [UNAVAILABLE] Mail server protocol error\r\n")
        self.close(f"{side} protocol error: {reason}")

    def close(self, reason: str) -> None:
        """End the session (the first reason wins); the current ``Output`` carries it."""
        if self.closed is None:
            self.closed = reason
            self.out.close = reason

    def _look_for_id(self, ev: Command) -> None:
        # Kept here, not in an observer's line tap: a tap on every session's first commands
        # costs a call per parser event both ways, and its partial ~250 bytes per session.
        self._id_window -= 1
        if ev.name == "ID":
            self.client_id = ev.raw if ev.literal is None else b""
            self._id_window = 0

    def _capability_filter(self) -> CapabilityFilter:
        s = self.settings
        add: list[bytes] = []
        if s.offer_starttls and not self.client_tls:
            add.append(b"STARTTLS")
        if s.require_tls and not self.client_tls:
            add.append(b"LOGINDISABLED")
        return shared_filter(s.hide_capabilities, tuple(add))

    def _take(self) -> Output:
        out = self.out
        self.out = Output()
        return out
