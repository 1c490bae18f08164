"""A mitmproxy-style playbook for the sans-I/O session: events in, every output asserted.

    assert (
        playbook
        >> server(b"* OK ready\\r\\n")
        << to_client(b"* OK ready\\r\\n")
        >> client(b"a NOOP\\r\\n")
        << to_upstream(b"a NOOP\\r\\n")
        >> server(b"a OK done\\r\\n")
        << to_client(b"a OK done\\r\\n")
        << Like(CommandDone, tag="a", status="OK")
    )

``>>`` queues an event for the session (bytes from the client or the upstream, the end of a
client TLS handshake, abandoning the session); ``<<`` an output expected from it. ``assert
playbook`` runs the events queued since the last assert and compares the whole expected
sequence with what the session did: every output must be expected, in order, and nothing
else may happen. Leftovers fail: the ``playbook`` fixture fails a test whose playbook has
events or expectations that were never asserted ("unfinished playbook").

One event's ``Output`` is flattened in the order the driver performs it: bytes to the
client, ``StartTLS``, bytes to the upstream, the notes in order, ``Close``; then ``Paused``
or ``Resumed`` when ``client_paused`` changed. Consecutive expected sends to the same side
are joined, as the driver joins them into one write. (``Output`` groups by destination, so
a send's order relative to the other side's within one event is the driver's convention;
once ``Output`` is an ordered action list, only ``_flatten`` changes.)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import pytest

from imapproxy.session.core import Session
from imapproxy.session.output import Note, Output
from imapproxy.session.settings import SessionSettings


# --- events (>>) ------------------------------------------------------------------------
@dataclass
class Event:
    def apply(self, session: Session) -> list[object]:
        raise NotImplementedError


@dataclass
class client(Event):
    """Bytes from the client (``b""``: it closed)."""

    data: bytes

    def apply(self, session: Session) -> list[object]:
        return _flatten(session.client_data(self.data))


@dataclass
class server(Event):
    """Bytes from the upstream (``b""``: it closed)."""

    data: bytes

    def apply(self, session: Session) -> list[object]:
        return _flatten(session.server_data(self.data))


@dataclass
class tls_started(Event):
    """The driver finished the client TLS handshake."""

    def apply(self, session: Session) -> list[object]:
        return _flatten(session.client_tls_started())


@dataclass
class abandon(Event):
    """The session ends: expect one ``CommandDone`` per command still in flight."""

    def apply(self, session: Session) -> list[object]:
        return list(session.abandon())


# --- outputs (<<) -----------------------------------------------------------------------
@dataclass
class to_client:
    data: bytes


@dataclass
class to_upstream:
    data: bytes


@dataclass
class StartTLS:
    pass


@dataclass
class Close:
    reason: str


@dataclass
class Paused:
    pass


@dataclass
class Resumed:
    pass


class Like:
    """An expected note of ``kind`` whose named fields equal these (others not compared)."""

    def __init__(self, kind: type[Note], **values: Any) -> None:
        names = {f.name for f in fields(kind)}
        assert set(values) <= names, f"{kind.__name__} has no {set(values) - names}"
        self.kind = kind
        self.values = values

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.kind) and all(
            getattr(other, k) == v for k, v in self.values.items()
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{self.kind.__name__}({args}, ...)"


def _flatten(out: Output) -> list[object]:
    actions: list[object] = []
    if out.to_client:
        actions.append(to_client(b"".join(out.to_client)))
    if out.start_client_tls:
        actions.append(StartTLS())
    if out.to_upstream:
        actions.append(to_upstream(b"".join(out.to_upstream)))
    actions += out.notes
    if out.close is not None:
        actions.append(Close(out.close))
    return actions


class Playbook:
    """A session and the expected dialogue with it (module docstring)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.expected: list[object] = []
        self.actual: list[object] = []
        self._ran = 0  # entries of ``expected`` already run (events) or compared
        self.asserted = True  # nothing queued since the last assert

    def __rshift__(self, event: Event) -> Playbook:
        assert isinstance(event, Event), event
        self.expected.append(event)
        self.asserted = False
        return self

    def __lshift__(self, output: object) -> Playbook:
        assert not isinstance(output, Event), f"{output} is an event: use >>"
        prev = self.expected[-1] if self.expected else None
        if isinstance(output, to_client | to_upstream) and type(prev) is type(output):
            prev.data += output.data  # type: ignore[union-attr]  # one write per side
        else:
            self.expected.append(output)
        self.asserted = False
        return self

    def __bool__(self) -> bool:
        for entry in self.expected[self._ran :]:
            if isinstance(entry, Event):
                self.actual.append(entry)
                paused = self.session.client_paused
                self.actual += entry.apply(self.session)
                if self.session.client_paused != paused:
                    self.actual.append(Paused() if not paused else Resumed())
        self._ran = len(self.expected)
        self.asserted = True
        if self.expected != self.actual:
            want = [_fmt(x) for x in self.expected]
            # An entry equal to the expected one at its place prints as expected (a Like
            # shows only the fields it compares), so the diff marks real differences only.
            got = [
                want[i] if i < len(want) and self.expected[i] == x else _fmt(x)
                for i, x in enumerate(self.actual)
            ]
            diff = "\n".join(difflib.ndiff(want, got))
            raise AssertionError(f"Playbook mismatch (- expected, + actual):\n{diff}")
        return True


def _fmt(entry: object) -> str:
    return f"{'>>' if isinstance(entry, Event) else '<<'} {entry!r}"


@pytest.fixture
def playbook() -> Any:
    """``playbook(**settings)`` -> a ``Playbook`` on a fresh session (clock fixed at 1000.0).

    At teardown, a playbook with events or expectations never asserted fails the test."""
    made: list[Playbook] = []

    def make(session: Session | None = None, **settings: Any) -> Playbook:
        if session is None:
            session = Session(SessionSettings(**settings), clock=lambda: 1000.0)
        pb = Playbook(session)
        made.append(pb)
        return pb

    yield make
    for pb in made:
        assert pb.asserted, "unfinished playbook: entries added after the last assert"


PlaybookFactory = Callable[..., Playbook]
