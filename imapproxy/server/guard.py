"""Abuse limits for one session: the bridge between ``Limiter`` bookkeeping and the driver.

``Proxy`` makes one ``SessionGuard`` per accepted connection (after ``open_session`` said
yes) and the driver reports to it: ``gate`` is the session's ``login_gate`` (see
``SessionSettings``), ``login_done`` takes the session's ``LoginDone`` notes, ``take_delay``
is the time the driver waits before acting on the output that contains a gated login, and
``close`` releases what the session held. Every limit hit is counted
(``imapproxy_limit_hits_total{reason}``) and logged once per session and reason.

The bookkeeping behind it is a ``LimitBackend``: the in-process ``Limiter`` with one worker,
or ``worker.SharedLimits``, which asks the supervising parent, with several.
"""

from __future__ import annotations

import logging
from typing import Protocol

from imapproxy.config.loader import Limits
from imapproxy.server.limits import (
    FAILURES_IP,
    FAILURES_USER,
    SESSIONS_PER_USER,
    LimitValues,
    LoginVerdict,
)
from imapproxy.session.output import LoginDone
from imapproxy.telemetry.logs import log_event
from imapproxy.telemetry.recorder import Telemetry

__all__ = ["LimitBackend", "SessionGuard", "limit_values"]

log = logging.getLogger("imapproxy")

_REFUSALS = {
    FAILURES_IP: b"NO [UNAVAILABLE] Too many failed logins, try later",
    FAILURES_USER: b"NO [UNAVAILABLE] Too many failed logins, try later",
    SESSIONS_PER_USER: b"NO [LIMIT] Too many sessions for this user",
}


_ONE_AT_A_TIME = b"NO [LIMIT] One login at a time"


class LimitBackend(Protocol):
    """What ``server.limits.Limiter`` offers (and the cross-worker client mirrors)."""

    def update(self, values: LimitValues) -> None: ...
    def open_session(self, ip: str) -> str | None: ...
    def close_session(self, ip: str, user: str | None) -> None: ...
    def check_login(self, ip: str, user: str | None) -> LoginVerdict: ...
    def login_finished(self, ip: str, user: str | None, result: str) -> None: ...


def limit_values(limits: Limits) -> LimitValues:
    """The ``Limiter`` numbers of the config's ``limits`` section."""
    failures = limits.login_failures
    return LimitValues(
        max_sessions_per_ip=limits.max_sessions_per_ip,
        max_sessions_per_user=limits.max_sessions_per_user,
        failures_per_ip=failures.per_ip,
        failures_per_user=failures.per_user,
        window=failures.window,
    )


def report_hit(telemetry: Telemetry, reason: str, client: str, user: str | None = None) -> None:
    """One limit hit: the metric and its log line."""
    telemetry.limit_hit(reason)
    log_event(log, "limit", reason=reason, client=client, user=user, level=logging.WARNING)


class SessionGuard:
    __slots__ = ("_backend", "_hits", "_inflight", "_ip", "_telemetry", "delay", "peer", "user")

    def __init__(self, backend: LimitBackend, ip: str, peer: str, telemetry: Telemetry) -> None:
        self._backend = backend
        self._ip = ip
        self.peer = peer
        self._telemetry = telemetry
        # Users of logins let through, unanswered (at most one: see ``gate``), and the
        # reasons already logged. Made on first use: most sessions never hit a limit, and an
        # empty set is 216 bytes.
        self._inflight: list[str | None] | None = None
        self._hits: set[str] | None = None
        self.delay = 0.0
        self.user: str | None = None  # the user this session counts for, once logged in

    def gate(self, user: str | None) -> bytes | None:
        if self._inflight:
            # One login in flight per session: a guesser pipelining LOGINs in one write
            # would otherwise have them all at the server before the first failure counts.
            self.hit("pipelined", user)
            return _ONE_AT_A_TIME
        verdict = self._backend.check_login(self._ip, user)
        # Pipelined attempts add up: each one waits its own delay.
        if verdict.delay:
            self.delay += verdict.delay
        if verdict.refused is None:
            self._inflight = [user]  # empty before (checked above)
            return None
        self.hit(verdict.refused, user)
        return _REFUSALS[verdict.refused]

    def take_delay(self) -> float:
        delay, self.delay = self.delay, 0.0
        return delay

    def login_done(self, note: LoginDone) -> None:
        if note.result == "blocked":
            return  # a rule or the gate answered it: it never counted as in flight
        users = self._inflight or []
        user = note.user if note.user in users else (users[0] if users else note.user)
        if user in users:
            users.remove(user)
            if not users:
                self._inflight = None  # the logged-in session keeps no empty list
        elif not users:
            return  # not one the gate let through (no gate then): nothing to settle
        # The note knows the user even when the gate did not (a LOGIN with a literal name):
        # the failure, or the session, counts for that user too.
        user = note.user if note.user is not None else user
        self._backend.login_finished(self._ip, user, note.result)
        if note.result == "ok" and user is not None:
            self.user = user

    def hit(self, reason: str, user: str | None = None) -> None:
        """Count a limit hit; its log line once per session and reason (a client
        pipelining thousands of commands over a bound must not flood the log)."""
        if self._hits is None:
            self._hits = set()
        elif reason in self._hits:
            self._telemetry.limit_hit(reason)
            return
        self._hits.add(reason)
        report_hit(self._telemetry, reason, self.peer, user)

    def close(self) -> None:
        for user in self._inflight or ():
            self._backend.login_finished(self._ip, user, "abandoned")
        self._inflight = None
        self._backend.close_session(self._ip, self.user)
