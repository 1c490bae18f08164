"""Held commands: collected for a rule's verdict, then released upstream in step.

Glossary (these words are used with these meanings throughout ``imapproxy.session``):

held command
    A command a rule needs the arguments of. The proxy collects its bytes (answering the
    client's synchronising literals itself, up to ``max_line`` of payload) until it is
    complete or a large literal starts; the verdict then blocks it or releases it.
release
    Sending a held command (maybe rewritten) upstream. Its bytes are cut after each
    synchronising literal announcement (``wire.literals.split_at_literals``): the server
    must see the ``+`` dialogue it expects.
segments waiting for ``+``
    The released command's segments after the first: each goes upstream on the upstream's
    next continuation request, which the proxy consumes (the client already had its ``+``
    from the proxy). The code called this "the dance".
queued behind
    Client bytes read meanwhile, and further released held commands, wait behind those
    segments so nothing overtakes the held command. They count in the session's backlog,
    which is bounded (``Session.client_paused``).

A tagged answer to the released command while segments still wait (the upstream refused it
mid-way) drops them and lets the queue move.
"""

from __future__ import annotations

from imapproxy.wire import LiteralHeader
from imapproxy.wire.grammar import SPACED_LITERAL_AT_END_RE
from imapproxy.wire.tokens import TokenError, parse_command


class HeldCommand:
    """The bytes of one held command collected so far, and how much literal payload."""

    __slots__ = ("parts", "payload")

    def __init__(self, first_line: bytes) -> None:
        self.parts = [first_line]
        self.payload = 0  # literal payload announced so far (the collection bound)

    def add_line(self, raw: bytes) -> None:
        """A further line of the command (after a literal)."""
        self.parts.append(raw)
        self.payload += len(raw)

    def announce(self, literal: LiteralHeader, max_payload: int) -> bool:
        """Count a literal about to start; True if it is too large to hold."""
        self.payload += literal.size
        return self.payload > max_payload

    def append_target_known(self, name: str) -> bool:
        """APPEND's first argument is the mailbox; every later literal is message data, so
        the verdict need not wait for it."""
        if name != "APPEND":
            return False
        head = SPACED_LITERAL_AT_END_RE.sub(b"", b"".join(self.parts))  # the message's announcement
        try:
            return len(parse_command(head + b"\r\n").args) >= 1
        except TokenError:
            return False


_Queued = bytes | tuple[bytes, list[bytes]]  # client bytes, or (tag, segments) released


class ReleaseQueue:
    """Segments of a released held command waiting for the upstream's ``+``, and what is
    queued behind them (see the module glossary). ``waiting`` is truthy while any wait."""

    __slots__ = ("behind", "queued_bytes", "waiting", "waiting_tag")

    def __init__(self) -> None:
        # Both lists exist only while something waits (almost never): a session keeps no
        # empty containers (no 600-byte deque, not even a 56-byte list).
        self.waiting: list[bytes] | None = None
        self.waiting_tag = b""  # the tag of the command whose segments wait
        self.behind: list[_Queued] | None = None
        self.queued_bytes = 0

    def queue(self, data: bytes) -> None:
        """Client bytes that must wait behind the waiting segments."""
        if self.behind is None:
            self.behind = []
        self.behind.append(data)
        self.queued_bytes += len(data)

    def release(self, tag: bytes, segments: list[bytes], to_upstream: list[bytes]) -> None:
        """Send a released command's first segment now (or queue it whole, behind another
        command's waiting segments); the rest wait for one ``+`` each."""
        if self.waiting:
            if self.behind is None:
                self.behind = []
            self.behind.append((tag, segments))
            self.queued_bytes += sum(len(x) for x in segments)
            return
        to_upstream.append(segments[0])
        if len(segments) > 1:
            self.waiting = segments[1:]
            self.waiting_tag = tag

    def continuation(self, to_upstream: list[bytes]) -> None:
        """The upstream's ``+`` while segments wait: send the next one (``+`` consumed)."""
        assert self.waiting, "continuation() only while segments wait"
        to_upstream.append(self.waiting.pop(0))
        if not self.waiting:
            self._flush(to_upstream)

    def abort(self, to_upstream: list[bytes]) -> None:
        """The command whose segments wait got its tagged answer (``waiting_tag``): the
        upstream refused it mid-way. Drop its segments; the queue behind moves on."""
        self._flush(to_upstream)

    def _flush(self, to_upstream: list[bytes]) -> None:
        """The waiting segments are done with: send what queued behind, up to the next
        released command that has segments of its own to wait with."""
        self.waiting = None
        queued, self.behind = self.behind or [], None
        for i, item in enumerate(queued):
            if not isinstance(item, tuple):
                to_upstream.append(item)
                self.queued_bytes -= len(item)
                continue
            tag, segments = item
            self.queued_bytes -= sum(len(x) for x in segments)
            to_upstream.append(segments[0])
            if len(segments) > 1:  # its own segments wait; what follows queues behind again
                self.waiting = segments[1:]
                self.waiting_tag = tag
                self.behind = queued[i + 1 :] or None
                return
