"""The sessions of the process, and how they end when it stops.

``LiveSessions`` counts the connections admitted and not yet finished (a session counts from
admission, through its TLS handshake, until its streams are closed) and knows their drivers.
On SIGTERM/SIGINT the proxy stops accepting, then ``wind_down`` waits up to
``limits.grace_period`` seconds for the sessions to end by themselves; those still open are
cancelled, and each tells its client ``* BYE [UNAVAILABLE] Proxy shutting down`` on the way
out (``SessionDriver.run``).
"""

from __future__ import annotations

import logging
from types import TracebackType

import trio

from imapproxy.server.driver import SessionDriver
from imapproxy.telemetry.logs import log_event

__all__ = ["LiveSessions"]

log = logging.getLogger("imapproxy")


class LiveSessions:
    def __init__(self) -> None:
        self.count = 0
        self.drivers: set[SessionDriver] = set()
        self._idle = trio.Event()
        self._idle.set()

    # Plain classes, not @contextmanager generators: a session holds both for its whole life,
    # and a suspended generator frame costs ~400 bytes and ~20 calls per session.
    def admitted(self) -> _Admitted:
        """One connection counted for as long as the ``with`` block runs."""
        return _Admitted(self)

    def running(self, driver: SessionDriver) -> _Running:
        """``driver`` is told about a shutdown while the ``with`` block runs."""
        return _Running(self, driver)

    async def wind_down(self, grace_period: float, sessions: trio.CancelScope) -> None:
        """Wait up to ``grace_period`` for every session to end, then cancel ``sessions``
        (the scope they run in); each driver still running says BYE first."""
        log_event(log, "stopping", active_sessions=self.count, grace_period=grace_period)
        with trio.move_on_after(grace_period):
            await self._idle.wait()
        for driver in self.drivers:
            driver.shutting_down = True
        sessions.cancel()


class _Admitted:
    __slots__ = ("_sessions",)

    def __init__(self, sessions: LiveSessions) -> None:
        self._sessions = sessions

    def __enter__(self) -> None:
        sessions = self._sessions
        sessions.count += 1
        if sessions.count == 1:
            sessions._idle = trio.Event()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        sessions = self._sessions
        sessions.count -= 1
        if sessions.count == 0:
            sessions._idle.set()


class _Running:
    __slots__ = ("_driver", "_sessions")

    def __init__(self, sessions: LiveSessions, driver: SessionDriver) -> None:
        self._sessions = sessions
        self._driver = driver

    def __enter__(self) -> None:
        self._sessions.drivers.add(self._driver)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._sessions.drivers.discard(self._driver)
