"""Running out of descriptors: the file limit at start-up, and what to do when it is reached.

A plain session holds two descriptors (the client's socket and the upstream's; fastio adds
none), a TLS session the same. The process itself needs a few dozen more (listeners, the
metrics exporter, epoll, logs). ``raise_fd_limit`` lifts the soft ``RLIMIT_NOFILE`` to the hard
limit at start-up, as servers usually do, and says once if even that is short of what
``limits.max_sessions`` needs.

When the limit is reached anyway, ``accept`` and the upstream ``connect`` fail with EMFILE
(or ENFILE for the whole system). That is "the proxy is full", not "the mail server is down":
the accept loop backs off and retries, and a client whose upstream leg cannot be opened hears
``* BYE [UNAVAILABLE] Proxy at capacity``. Both are logged through ``RateLimitedLog``: once,
then at most one line per interval with the count of the ones left out, never a traceback.
"""

from __future__ import annotations

import logging
import resource
import time

from imapproxy.net.streams import RESOURCE_ERRNOS, resource_error
from imapproxy.telemetry.logs import log_event

__all__ = ["RESOURCE_ERRNOS", "RateLimitedLog", "capacity_log", "raise_fd_limit", "resource_error"]

DESCRIPTORS_PER_SESSION = 2
PROCESS_RESERVE = 64  # listeners, exporter, epoll, wakeup pipes, log files, headroom

log = logging.getLogger("imapproxy")


def raise_fd_limit(max_sessions: int) -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    Logs one warning when it cannot, or when the limit holds fewer sessions than
    ``max_sessions`` (then ``LimitNOFILE=`` in the unit, or ``ulimit -n``, is the fix)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    problem = None
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            problem = f"cannot raise the file limit from {soft} to {hard}: {exc}"
    needed = max_sessions * DESCRIPTORS_PER_SESSION + PROCESS_RESERVE
    if problem is None and soft != resource.RLIM_INFINITY and soft < needed:
        problem = (
            f"the file limit ({soft}) holds about {sessions_within(soft)} sessions, "
            f"limits.max_sessions is {max_sessions}; raise LimitNOFILE= (or ulimit -n) "
            f"to at least {needed}"
        )
    if problem is not None:
        log_event(log, "fd_limit", soft=soft, hard=hard, detail=problem, level=logging.WARNING)
    return int(soft)


def sessions_within(fd_limit: int) -> int:
    return max(0, (fd_limit - PROCESS_RESERVE) // DESCRIPTORS_PER_SESSION)


class RateLimitedLog:
    """One log line per event name now, then at most one per ``interval`` seconds carrying
    how many were left out in between."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def event(self, name: str, *, level: int = logging.WARNING, **fields: object) -> bool:
        """Log ``name`` unless one was logged within the interval; True if it was logged."""
        now = time.monotonic()
        last = self._last.get(name)
        if last is not None and now - last < self.interval:
            self._suppressed[name] = self._suppressed.get(name, 0) + 1
            return False
        self._last[name] = now
        left_out = self._suppressed.pop(name, 0)
        log_event(log, name, suppressed_since_last=left_out, **fields, level=level)
        return True


# Process-wide: every accept loop and session of the process shares the budget.
capacity_log = RateLimitedLog()
