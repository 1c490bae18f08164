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
from collections.abc import Iterator
from contextlib import contextmanager

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

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """One connection counted for as long as the block runs."""
        self.count += 1
        if self.count == 1:
            self._idle = trio.Event()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    @contextmanager
    def running(self, driver: SessionDriver) -> Iterator[None]:
        """``driver`` is told about a shutdown while the block runs."""
        self.drivers.add(driver)
        try:
            yield
        finally:
            self.drivers.discard(driver)

    async def wind_down(self, grace_period: float, sessions: trio.CancelScope) -> None:
        """Wait up to ``grace_period`` for every session to end, then cancel ``sessions``
        (the scope they run in); each driver still running says BYE first."""
        log_event(log, "stopping", active_sessions=self.count, grace_period=grace_period)
        with trio.move_on_after(grace_period):
            await self._idle.wait()
        for driver in self.drivers:
            driver.shutting_down = True
        sessions.cancel()
