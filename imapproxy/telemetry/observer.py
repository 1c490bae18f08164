"""The observer seam: every observation of a session goes to one list of observers.

The driver reports a session's life (opened, upstream connected or failed, closed), each
``Note`` the session emits, and, only while some observer asks for them, the parser events
of both directions (``line``). Metrics (``MetricsObserver``), logs (``SessionLog``) and the
inspector (sessions registry, tail, traces) are observers of this one stream; nothing reaches
them another way.

Cost contract: ``Observers`` calls every observer for the session-level and note events (a
handful per command); line events are only produced while ``wants_lines`` is true for some
observer, because the driver installs the session's ``tap`` from ``line_tap`` and removes it
when no observer wants lines any more (an observer that changes its mind calls
``SessionView.update_tap``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from imapproxy.session.output import Note

# (direction, parser event): direction is the side that sent it, "client" or "server".
LineTap = Callable[[str, object], None]


class SessionState(Protocol):
    """What observers may read from the pure session (read-only)."""

    @property
    def user(self) -> str | None: ...

    @property
    def selected(self) -> str | None: ...

    @property
    def client_id(self) -> bytes | None: ...


class SessionView(Protocol):
    """What observers may read from a session's driver."""

    @property
    def id(self) -> int: ...

    @property
    def peer(self) -> str: ...

    @property
    def listener(self) -> str: ...

    @property
    def session(self) -> SessionState: ...

    @property
    def bytes_up(self) -> int: ...

    @property
    def bytes_down(self) -> int: ...

    @property
    def close_reason(self) -> str: ...

    @property
    def tls(self) -> dict[str, Any]: ...

    @property
    def last_activity(self) -> float: ...

    def update_tap(self) -> None:
        """Ask the observers again whether lines are wanted; (un)install the tap."""

    def kick(self, reason: str) -> None:
        """End the session: the client gets ``* BYE [UNAVAILABLE] reason``."""


class Observer(Protocol):
    def session_opened(self, view: SessionView) -> None: ...

    def upstream_connected(self, view: SessionView, seconds: float) -> None: ...

    def upstream_failed(self, view: SessionView, reason: str, detail: str) -> None: ...

    def note(self, view: SessionView, note: Note) -> None: ...

    def wants_lines(self, view: SessionView) -> bool: ...

    def line(self, view: SessionView, direction: str, event: object) -> None: ...

    def session_closed(self, view: SessionView, duration: float) -> None: ...


class BaseObserver:
    """No-op implementations, so an observer defines only what it needs."""

    def session_opened(self, view: SessionView) -> None:
        pass

    def upstream_connected(self, view: SessionView, seconds: float) -> None:
        pass

    def upstream_failed(self, view: SessionView, reason: str, detail: str) -> None:
        pass

    def note(self, view: SessionView, note: Note) -> None:
        pass

    def wants_lines(self, view: SessionView) -> bool:
        return False

    def line(self, view: SessionView, direction: str, event: object) -> None:
        pass

    def session_closed(self, view: SessionView, duration: float) -> None:
        pass


class Observers:
    """The fan-out: each call goes to every observer, in list order."""

    __slots__ = ("_all",)

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._all = tuple(observers)

    def session_opened(self, view: SessionView) -> None:
        for obs in self._all:
            obs.session_opened(view)

    def upstream_connected(self, view: SessionView, seconds: float) -> None:
        for obs in self._all:
            obs.upstream_connected(view, seconds)

    def upstream_failed(self, view: SessionView, reason: str, detail: str) -> None:
        for obs in self._all:
            obs.upstream_failed(view, reason, detail)

    def notes(self, view: SessionView, notes: Sequence[Note]) -> None:
        for note in notes:
            for obs in self._all:
                obs.note(view, note)

    def session_closed(self, view: SessionView, duration: float) -> None:
        for obs in self._all:
            obs.session_closed(view, duration)

    def line_tap(self, view: SessionView) -> LineTap | None:
        """The session's tap: None (zero cost) unless some observer wants lines now."""
        wanting = tuple(obs for obs in self._all if obs.wants_lines(view))
        if not wanting:
            return None
        if len(wanting) == 1:
            return functools.partial(wanting[0].line, view)  # no Python frame of ours

        def tap(direction: str, event: object) -> None:
            for obs in wanting:
                obs.line(view, direction, event)

        return tap
