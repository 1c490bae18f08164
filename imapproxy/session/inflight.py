"""The commands in flight, and the proxy's own answers that wait their turn.

Servers answer a connection's commands in the order they were sent; the client must see
the same from the proxy. The proxy answers some commands itself (blocked, refused,
malformed): such an answer may reach the client only once the server has answered every
command forwarded before it. ``InFlight`` keeps both halves of that bookkeeping:

* the table of commands forwarded upstream and not yet answered, keyed by tag, in
  forwarding order (each carries its forwarding sequence number, ``seq``);
* the queue of local answers, each tagged with the last ``seq`` it must wait for. Releasing
  is O(1) per tagged answer: the oldest unanswered ``seq`` is the table's first entry.

Queued answers count in ``queued_bytes`` (part of the session's backlog) and their tags in
the duplicate-tag check (a tag is in flight until the client has its answer).

``observe_arguments`` reads the facts the session tracks from an observed command's bytes
(``OBSERVED``: LOGIN's user, SELECT/EXAMINE's mailbox) once the command is complete.
"""

from __future__ import annotations

from imapproxy.session.output import CommandDone
from imapproxy.wire.grammar import decode_mailbox
from imapproxy.wire.sasl import login_user
from imapproxy.wire.tokens import TokenError, parse_command

LOGINS = ("LOGIN", "AUTHENTICATE")
# Commands whose arguments the session reads for itself (user, selected mailbox): their
# bytes are kept in ``InFlightCommand.capture`` while small, then ``observe_arguments``.
OBSERVED = frozenset({"LOGIN", "SELECT", "EXAMINE"})


class InFlightCommand:
    """One command read from the client and not yet answered to it."""

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
        self.seq = 0  # forwarding order (0: never forwarded)

    def done(
        self, status: str, code: str | None, now: float, user: str | None, selected: str | None
    ) -> CommandDone:
        """The observation for this command's end; ``user``/``selected``: the session's."""
        return CommandDone(
            tag=self.tag.decode("ascii", "replace"),
            command=self.name,
            status=status,
            code=code,
            duration=now - self.start,
            mailbox=self.mailbox if self.mailbox is not None else selected,
            user=user if user is not None else self.user,
            log=self.log,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )


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


class InFlight:
    """Forwarded commands by tag, and local answers queued behind them.

    ``pending`` is public for reading (iteration in forwarding order, ``pop`` on a tagged
    answer); add to it only through ``track``.
    """

    __slots__ = ("_queue", "_queued_tags", "pending", "queued_bytes", "seq")

    def __init__(self) -> None:
        self.pending: dict[bytes, InFlightCommand] = {}
        self.seq = 0  # commands forwarded so far
        # (last forwarded seq it waits for, tag, line); the tags counted in _queued_tags.
        # Both None while no local answer waits (almost always): an idle session keeps no
        # empty containers (a list is 56 bytes, a dict 64).
        self._queue: list[tuple[int, bytes, bytes]] | None = None
        self._queued_tags: dict[bytes, int] | None = None
        self.queued_bytes = 0

    def track(self, cmd: InFlightCommand) -> None:
        """``cmd`` goes upstream: in flight until its tagged answer."""
        self.seq += 1
        cmd.seq = self.seq
        self.pending.pop(cmd.tag, None)  # (a duplicate without rules) keep forwarding order
        self.pending[cmd.tag] = cmd

    def take(self, tag: bytes) -> InFlightCommand | None:
        """The tagged answer to ``tag`` came: its command leaves the table (None: not in
        it)."""
        pending = self.pending
        cmd = pending.pop(tag, None)
        if not pending:
            # An emptied dict keeps its hash table (224 bytes for a session that waits for
            # the next command, idle for hours); clear() gives it back.
            pending.clear()
        return cmd

    def tag_in_flight(self, tag: bytes) -> bool:
        """True while a command with ``tag`` is forwarded or its local answer is queued."""
        tags = self._queued_tags
        return tag in self.pending or (tags is not None and tag in tags)

    def oldest(self) -> int:
        """The ``seq`` of the oldest unanswered forwarded command (next one if none)."""
        # pending keeps forwarding order: its first entry is the oldest unanswered.
        return next(iter(self.pending.values())).seq if self.pending else self.seq + 1

    def answer_in_order(self, tag: bytes, line: bytes, after: int, to_client: list[bytes]) -> None:
        """Send a local answer (to ``to_client``) once the server has answered every
        command forwarded up to number ``after``; queue it until then."""
        if self._queue or self.oldest() <= after:
            if self._queue is None or self._queued_tags is None:
                self._queue, self._queued_tags = [], {}
            self._queue.append((after, tag, line))
            self._queued_tags[tag] = self._queued_tags.get(tag, 0) + 1
            self.queued_bytes += len(line)
        else:
            to_client.append(line)

    def release_answers(self, to_client: list[bytes]) -> None:
        """After a tagged answer: send the queued local answers whose turn has come."""
        queue, tags = self._queue, self._queued_tags
        if not queue or tags is None:
            return
        oldest = self.oldest()
        while queue and queue[0][0] < oldest:
            _, tag, line = queue.pop(0)
            left = tags[tag] - 1
            if left:
                tags[tag] = left
            else:
                del tags[tag]
            self.queued_bytes -= len(line)
            to_client.append(line)
        if not queue:
            self._queue = self._queued_tags = None

    def abandon(self) -> list[InFlightCommand]:
        """Forget every forwarded command (the session ended); return them."""
        left = list(self.pending.values())
        self.pending.clear()
        return left
