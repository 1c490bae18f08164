"""Abuse limits as pure bookkeeping: sessions per client IP and per user, failed logins.

No sockets, no trio, the clock injected: tests step time by hand. The driver side
(``server.guard``) asks this module three questions and reports two facts:

* ``open_session(ip)``: may this address open one more session? (``limits.max_sessions_per_ip``)
* ``check_login(ip, user)``: may a LOGIN/AUTHENTICATE naming ``user`` (None: not known yet)
  go to the server? The answer carries a refusal reason (or None) and a delay the proxy
  waits before acting on it. Allowed attempts stay *in flight* until ``login_finished``
  (bookkeeping for a worker that dies mid-login). Concurrent logins from one address (a NAT
  of many users) are not failures; a guesser pipelining LOGINs in one session is bounded by
  ``SessionGuard`` (one login in flight per session), and parallel sessions by
  ``max_sessions_per_ip``.
* ``login_finished(ip, user, result)``: ``ok`` counts a session for the user
  (``limits.max_sessions_per_user``), ``failed`` records a failure for the address and the
  user, anything else just ends the in-flight attempt.
* ``close_session(ip, user)``: the session ended (``user``: the one it logged in as).

Failed logins use a sliding window (``limits.login_failures.window`` seconds): each failure
is a timestamp; those older than the window fall out. While fewer than the limit are in the
window, a new attempt is let through after a delay that doubles with every failure
(``BASE_DELAY``, 2x, 4x, ... capped at a tenth of the window, at most ``MAX_DELAY``), which
slows a guesser without locking anybody out. At the limit, attempts are refused with that
delay until enough failures have left the window. Refused attempts never reach the server,
so they are not failures: the block lifts a window after the last real failure, whatever
the guesser does meanwhile. A user is judged by name, case-folded (Dovecot folds by default
and a guesser must not get a fresh budget per spelling).

Memory is bounded: at most ``MAX_KEYS`` addresses/users are tracked for failures; past that
the oldest entries are dropped first (a flood of distinct names cannot grow the table).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BASE_DELAY",
    "MAX_DELAY",
    "MAX_KEYS",
    "LimitValues",
    "Limiter",
    "LoginVerdict",
]

BASE_DELAY = 0.25
MAX_DELAY = 10.0
MAX_KEYS = 100_000

# Reasons (the ``reason`` label of ``imapproxy_limit_hits_total``).
SESSIONS_PER_IP = "sessions_per_ip"
SESSIONS_PER_USER = "sessions_per_user"
FAILURES_IP = "login_failures_ip"
FAILURES_USER = "login_failures_user"


@dataclass(frozen=True, slots=True)
class LimitValues:
    """The numbers this module enforces; 0 switches a limit off."""

    max_sessions_per_ip: int = 50
    max_sessions_per_user: int = 20
    failures_per_ip: int = 10
    failures_per_user: int = 5
    window: float = 300.0


@dataclass(frozen=True, slots=True)
class LoginVerdict:
    refused: str | None  # a reason above, or None: let it through
    delay: float  # seconds to wait before forwarding or refusing


_ALLOW = LoginVerdict(None, 0.0)


class _Failures:
    """Failure timestamps of one address or user, plus attempts in flight."""

    __slots__ = ("inflight", "strikes", "times")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.inflight = 0
        self.strikes = 0  # refusals since the key went over its limit (grows the delay)


class Limiter:
    def __init__(self, values: LimitValues, clock: Callable[[], float] = time.monotonic) -> None:
        self.values = values
        self._clock = clock
        self._ip_sessions: dict[str, int] = {}
        self._user_sessions: dict[str, int] = {}
        self._failures: dict[str, _Failures] = {}

    def update(self, values: LimitValues) -> None:
        """New numbers (a reload); what is counted so far stays."""
        self.values = values

    # --- sessions ----------------------------------------------------------------------
    def open_session(self, ip: str) -> str | None:
        """Count a session for ``ip``; a reason (and nothing counted) if it is over."""
        limit = self.values.max_sessions_per_ip
        count = self._ip_sessions.get(ip, 0)
        if limit and count >= limit:
            return SESSIONS_PER_IP
        self._ip_sessions[ip] = count + 1
        return None

    def close_session(self, ip: str, user: str | None) -> None:
        _decrement(self._ip_sessions, ip)
        if user is not None:
            _decrement(self._user_sessions, user.casefold())

    def sessions_of(self, ip: str) -> int:
        return self._ip_sessions.get(ip, 0)

    def failure_keys(self) -> int:
        """Addresses and users with failures in the window or a login in flight."""
        return len(self._failures)

    # --- logins ------------------------------------------------------------------------
    def check_login(self, ip: str, user: str | None) -> LoginVerdict:
        v = self.values
        now = self._clock()
        keys = [("ip:" + ip, v.failures_per_ip, FAILURES_IP)]
        if user is not None:
            keys.append(("user:" + user.casefold(), v.failures_per_user, FAILURES_USER))
        delay = 0.0
        for key, limit, reason in keys:
            entry = self._entry(key, now) if limit else None
            if entry is None:
                continue
            failed = len(entry.times)
            if failed >= limit:
                entry.strikes += 1
                return LoginVerdict(reason, self._delay(failed + entry.strikes - 1))
            entry.strikes = 0
            if failed:
                delay = max(delay, self._delay(failed - 1))
        folded = user.casefold() if user is not None else None
        per_user = v.max_sessions_per_user
        if folded is not None and per_user and self._user_sessions.get(folded, 0) >= per_user:
            return LoginVerdict(SESSIONS_PER_USER, 0.0)
        for key, limit, _ in keys:
            if limit:
                self._entry(key, now, create=True).inflight += 1  # type: ignore[union-attr]
        return _ALLOW if not delay else LoginVerdict(None, delay)

    def login_finished(self, ip: str, user: str | None, result: str) -> None:
        """End an attempt ``check_login`` let through: ``ok``, ``failed`` or ``abandoned``."""
        now = self._clock()
        keys = ["ip:" + ip]
        if user is not None:
            keys.append("user:" + user.casefold())
        for key in keys:
            entry = self._failures.get(key)
            if entry is not None and entry.inflight:
                entry.inflight -= 1
            if result == "failed":
                self._entry(key, now, create=True).times.append(now)  # type: ignore[union-attr]
            elif entry is not None and not entry.inflight and not entry.times:
                # Settled with nothing to remember: dropped now, not at the key's next
                # lookup (which a user who logged in once may never have). Otherwise every
                # logged-in user and address would keep an entry (~700 bytes with its deque)
                # until MAX_KEYS.
                del self._failures[key]
        if result == "ok" and user is not None:
            folded = user.casefold()
            self._user_sessions[folded] = self._user_sessions.get(folded, 0) + 1

    # --- internals ---------------------------------------------------------------------
    def _delay(self, step: int) -> float:
        cap = min(MAX_DELAY, max(BASE_DELAY, self.values.window / 10))
        return min(cap, BASE_DELAY * 2.0 ** min(step, 30))

    def _entry(self, key: str, now: float, create: bool = False) -> _Failures | None:
        entry = self._failures.get(key)
        if entry is None:
            if not create:
                return None
            if len(self._failures) >= MAX_KEYS:
                self._prune(now)
            entry = self._failures[key] = _Failures()
            return entry
        horizon = now - self.values.window
        times = entry.times
        while times and times[0] <= horizon:
            times.popleft()
        if not times and not entry.inflight and not create:
            del self._failures[key]
            return None
        return entry

    def _prune(self, now: float) -> None:
        horizon = now - self.values.window
        for key in [k for k, e in self._failures.items() if not e.inflight and
                    (not e.times or e.times[-1] <= horizon)]:  # fmt: skip
            del self._failures[key]
        while len(self._failures) >= MAX_KEYS:  # all recent: drop the oldest-inserted
            del self._failures[next(iter(self._failures))]


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
