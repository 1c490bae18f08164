"""Prometheus metrics: the only module that imports prometheus_client.

One `Metrics` instance per process, on its own `CollectorRegistry` (never the global default,
so tests can build as many as they like). The proxy core calls the small methods below.

Cost: the two per-command / per-chunk families (`imapproxy_commands_total`,
`imapproxy_command_duration_seconds`, `imapproxy_bytes_total`) are kept in plain Python numbers
by `_HotCollector` and turned into metric families only when scraped. prometheus_client's own
children take a lock per value and walk the buckets linearly: bench/metrics_cost.py measured
~3.6 us per `command_completed` with them against ~0.6 us this way. Everything rarer (per
session, per login, per error) uses ordinary prometheus_client metrics with cached children.

Threading: the hot-path methods must be called from one thread (the trio run thread). The
exporter thread only reads, so a scrape sees each number either before or after an update and
never loses one.

Label values are bounded: commands outside the known IMAP set become "other", SASL mechanisms
outside a known set become "other", and enumerated labels (status, direction, reason, side,
result) are validated. No per-user or per-mailbox labels exist.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import accumulate
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from imapproxy import __version__
from imapproxy.wire.commands import KNOWN_COMMANDS, normalise_command_name

__all__ = [
    "COMMAND_BUCKETS",
    "COMMAND_STATUSES",
    "DIRECTIONS",
    "LIMIT_REASONS",
    "LISTENERS",
    "LOGIN_RESULTS",
    "MECHANISMS",
    "UPSTREAM_ERROR_REASONS",
    "Metrics",
    "command_label",
    "mechanism_label",
]

LISTENERS = ("plain", "tls")
COMMAND_STATUSES = ("OK", "NO", "BAD", "none")
DIRECTIONS = ("client_to_upstream", "upstream_to_client")
LOGIN_RESULTS = ("ok", "failed", "blocked")
# SASL mechanisms seen from real clients; "LOGIN" also stands for the LOGIN command.
MECHANISMS = frozenset(
    {
        "LOGIN", "PLAIN", "XOAUTH2", "OAUTHBEARER", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1",
        "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "EXTERNAL", "ANONYMOUS",
        "GSSAPI", "NTLM",
    }
)  # fmt: skip
UPSTREAM_ERROR_REASONS = (
    "connect_refused", "connect_timeout", "tls", "closed", "protocol", "other",
)  # fmt: skip
SIDES = ("client", "upstream")
# Out of resources: the errno, lower case (imapproxy.server.capacity.RESOURCE_ERRNOS).
RESOURCE_REASONS = ("emfile", "enfile", "enomem", "enobufs")
TLS_RESULTS = ("ok", "failed")
RELOAD_RESULTS = ("ok", "failed")
# Abuse limits (server/limits.py, server/guard.py): what was refused or ended.
LIMIT_REASONS = (
    "sessions", "sessions_per_ip", "sessions_per_user", "login_failures_ip",
    "login_failures_user", "auth_timeout", "pipelined",
)  # fmt: skip

# Seconds to hours: sessions range from a quick poll to an all-day IDLE client.
SESSION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
                   28800.0, 86400.0)  # fmt: skip
# 0.5 ms (a cached NOOP on loopback) to 60 s (a huge SEARCH or APPEND); IDLE lands in +Inf.
COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)  # fmt: skip
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)  # fmt: skip

# Callers passing arbitrary raw names must not grow the fast-path caches without limit; past
# this size lookups still work, they just take the slow path.
_CACHE_LIMIT = 4096

_Inc = Callable[[], None]


def command_label(name: str) -> str:
    """The `command` label value: the normalised name if it is a known IMAP command, else
    "other" (client-chosen names must not create new series)."""
    normalised = normalise_command_name(name)
    return normalised if normalised in KNOWN_COMMANDS else "other"


def mechanism_label(name: str) -> str:
    """The `mechanism` label value: a known SASL mechanism (upper case) or "other"."""
    upper = name.upper()
    return upper if upper in MECHANISMS else "other"


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, not {value!r}")


class _CommandCells:
    """Plain-number state of one `command` label: a count cell per status and a histogram
    (one slot per bucket, the last being +Inf, plus a sum cell)."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self) -> None:
        # One-element lists are mutable cells the hot path can bump without a method call.
        self.counts: dict[str, list[int]] = {st: [0] for st in COMMAND_STATUSES}
        self.buckets: list[int] = [0] * (len(COMMAND_BUCKETS) + 1)
        self.sum: list[float] = [0.0]


_HotEntry = tuple[list[int], list[int], list[float]]

# prometheus_client's own `le` formatting ("1.0", "0.0005"), so the strings match what its
# Histogram would emit; the alias gives the untyped helper a type for mypy.
_format_le: Callable[[float], str] = floatToGoString
_LE = [*(_format_le(b) for b in COMMAND_BUCKETS), "+Inf"]


class _HotCollector(Collector):
    """Exposes the per-command and per-chunk families from plain Python numbers."""

    def __init__(self) -> None:
        self.commands: dict[str, _CommandCells] = {}
        self.bytes: dict[str, list[int]] = {d: [0] for d in DIRECTIONS}

    def describe(self) -> Iterable[Metric]:
        # Lets the registry detect name clashes without calling collect().
        return self._families()

    def collect(self) -> Iterable[Metric]:
        commands, by_bytes, duration = self._families()
        # list() snapshots under the GIL: the hot path may add a command while we iterate.
        for label, cells in sorted(list(self.commands.items())):
            for status, cell in cells.counts.items():
                commands.add_metric([label, status], cell[0])
            cumulative = list(accumulate(list(cells.buckets)))
            duration.add_metric([label], list(zip(_LE, cumulative, strict=True)), cells.sum[0])
        for direction, cell in self.bytes.items():
            by_bytes.add_metric([direction], cell[0])
        return [commands, by_bytes, duration]

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                "imapproxy_commands",
                "Tagged commands completed, by command and tagged status "
                "(none: the session ended before a tagged reply).",
                labels=["command", "status"],
            ),
            CounterMetricFamily(
                "imapproxy_bytes", "Bytes forwarded, by direction.", labels=["direction"]
            ),
            HistogramMetricFamily(
                "imapproxy_command_duration_seconds",
                "Time from a command leaving the client to its tagged reply.",
                labels=["command"],
            ),
        )


class Metrics:
    """All imapproxy metrics, registered on one registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Without this every counter also exports a `<name>_created` gauge, and series such as
        # `imapproxy_sessions_created` read like a count. Process-wide, but this module is the
        # only prometheus_client user.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        if process_metrics:
            # The usual process_*/python_* series (RSS, open fds, GC), on our registry.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._server: WSGIServer | None = None
        self._hot = _HotCollector()
        r.register(self._hot)

        # multiprocess_mode: how the parent of several workers (server.workers) sums a gauge;
        # ignored in a single process.
        self._sessions_active = Gauge(
            "imapproxy_sessions_active", "Client sessions currently open.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self._sessions_total = Counter(
            "imapproxy_sessions", "Client sessions accepted, by listener.", ["listener"], registry=r
        )
        self._session_duration = Histogram(
            "imapproxy_session_duration_seconds",
            "Client session lifetime, accept to close.",
            buckets=SESSION_BUCKETS,
            registry=r,
        )
        self._logins = Counter(
            "imapproxy_logins",
            "Login attempts (LOGIN or AUTHENTICATE), by mechanism and result.",
            ["mechanism", "result"],
            registry=r,
        )
        self._rule_matches = Counter(
            "imapproxy_rule_matches", "Rule matches, by rule and action.", ["rule", "action"],
            registry=r,
        )  # fmt: skip
        self._blocked = Counter(
            "imapproxy_blocked_commands",
            "Commands answered NO by the proxy because a rule blocked them.",
            ["rule", "command"],
            registry=r,
        )
        self._upstream_connect = Histogram(
            "imapproxy_upstream_connect_seconds",
            "Time to open the upstream connection (TCP, plus TLS for implicit TLS).",
            buckets=CONNECT_BUCKETS,
            registry=r,
        )
        self._upstream_errors = Counter(
            "imapproxy_upstream_errors", "Upstream failures, by reason.", ["reason"], registry=r
        )
        self._protocol_errors = Counter(
            "imapproxy_protocol_errors",
            "Unparseable IMAP traffic, by the side that sent it.",
            ["side"],
            registry=r,
        )
        self._tls_handshakes = Counter(
            "imapproxy_tls_handshakes",
            "TLS handshakes, by leg (client or upstream) and result.",
            ["side", "result"],
            registry=r,
        )
        self._accept_errors = Counter(
            "imapproxy_accept_errors",
            "Connections the proxy could not take on for lack of resources, by leg (client: "
            "accept() failed, the accept loop backs off; upstream: the upstream socket could "
            "not be opened, the client was told the proxy is at capacity) and errno.",
            ["leg", "reason"],
            registry=r,
        )
        self._limit_hits = Counter(
            "imapproxy_limit_hits",
            "Clients refused or disconnected by an abuse limit, by limit.",
            ["reason"],
            registry=r,
        )
        self._build_info = Gauge(
            "imapproxy_build_info",
            "Always 1; labels carry the imapproxy and Python versions.",
            ["version", "python"],
            registry=r,
            multiprocess_mode="max",
        )
        self._sessions_kicked = Counter(
            "imapproxy_sessions_kicked",
            "Sessions ended by an administrator (imapproxy kick).",
            registry=r,
        )
        self._config_reloads = Counter(
            "imapproxy_config_reloads", "Configuration reloads (SIGHUP), by result.", ["result"],
            registry=r,
        )  # fmt: skip
        self._config_last_success = Gauge(
            "imapproxy_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start-up or reload).",
            registry=r,
            multiprocess_mode="max",
        )

        self._build_info.labels(__version__, platform.python_version()).set(1)
        # The process loads its configuration before building Metrics, so start-up counts as
        # the first successful load (what Prometheus does for its own config).
        self._config_last_success.set(time.time())

        # Cached bound `inc`/`observe` methods of labelled children. Creating every child of a
        # small enumerated label set here also exports its zero series, so dashboards show 0
        # instead of "no data" before the first event.
        self._session_inc = {v: self._sessions_total.labels(v).inc for v in LISTENERS}
        self._upstream_error_inc = {
            v: self._upstream_errors.labels(v).inc for v in UPSTREAM_ERROR_REASONS
        }
        self._protocol_error_inc = {v: self._protocol_errors.labels(v).inc for v in SIDES}
        self._tls_inc = {
            (s, res): self._tls_handshakes.labels(s, res).inc for s in SIDES for res in TLS_RESULTS
        }
        self._reload_inc = {v: self._config_reloads.labels(v).inc for v in RELOAD_RESULTS}
        self._accept_error_inc = {
            (leg, why): self._accept_errors.labels(leg, why).inc
            for leg in SIDES
            for why in RESOURCE_REASONS
        }
        self._limit_inc = {v: self._limit_hits.labels(v).inc for v in LIMIT_REASONS}
        for res in LOGIN_RESULTS:  # the common mechanism, so the logins panel starts at 0
            self._logins.labels("LOGIN", res)
        # Keyed by the caller's raw values (label normalisation happens once, on a miss).
        self._command_cache: dict[tuple[str, str], _HotEntry] = {}
        self._login_cache: dict[tuple[str, str], _Inc] = {}
        self._rule_cache: dict[tuple[str, str], _Inc] = {}
        self._blocked_cache: dict[tuple[str, str], _Inc] = {}
        self._bytes_cells = self._hot.bytes
        self._mirror: _MultiprocessMirror | None = None
        self._sessions_active_inc = self._sessions_active.inc
        self._sessions_active_dec = self._sessions_active.dec
        self._session_observe = self._session_duration.observe
        self._connect_observe = self._upstream_connect.observe

    # -- hot path: per command and per forwarded chunk ---------------------------------------

    def command_completed(self, command: str, status: str, duration_s: float) -> None:
        """A command got its tagged reply (`status` OK/NO/BAD), or the session ended first
        ("none"). `command` is normalised with `command_label`."""
        try:
            count, buckets, total = self._command_cache[command, status]
        except KeyError:
            count, buckets, total = self._command_entry(command, status)
        count[0] += 1
        # bisect_left finds the first bound >= duration: Prometheus's `le` semantics.
        buckets[bisect_left(COMMAND_BUCKETS, duration_s)] += 1
        total[0] += duration_s

    def bytes_forwarded(self, direction: str, n: int) -> None:
        try:
            cell = self._bytes_cells[direction]
        except KeyError:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}") from None
        cell[0] += n

    # -- per session / rare events -----------------------------------------------------------

    def session_opened(self, listener: str) -> None:
        try:
            inc = self._session_inc[listener]
        except KeyError:
            raise ValueError(f"listener must be one of {LISTENERS}, not {listener!r}") from None
        inc()
        self._sessions_active_inc()

    def session_closed(self, duration_s: float) -> None:
        self._sessions_active_dec()
        self._session_observe(duration_s)

    def login(self, mechanism: str, result: str) -> None:
        try:
            inc = self._login_cache[mechanism, result]
        except KeyError:
            _check(result, LOGIN_RESULTS, "login result")
            label = mechanism_label(mechanism)
            for res in LOGIN_RESULTS:  # all results at once: "failed" reads 0, not missing
                self._logins.labels(label, res)
            inc = self._logins.labels(label, result).inc
            if len(self._login_cache) < _CACHE_LIMIT:
                self._login_cache[mechanism, result] = inc
        inc()

    def rule_matched(self, rule: str, action: str) -> None:
        # Rule names and actions come from the operator's config, so they are bounded.
        try:
            inc = self._rule_cache[rule, action]
        except KeyError:
            inc = self._rule_matches.labels(rule, action).inc
            if len(self._rule_cache) < _CACHE_LIMIT:
                self._rule_cache[rule, action] = inc
        inc()

    def command_blocked(self, rule: str, command: str) -> None:
        try:
            inc = self._blocked_cache[rule, command]
        except KeyError:
            inc = self._blocked.labels(rule, command_label(command)).inc
            if len(self._blocked_cache) < _CACHE_LIMIT:
                self._blocked_cache[rule, command] = inc
        inc()

    def upstream_connected(self, seconds: float) -> None:
        self._connect_observe(seconds)

    def upstream_error(self, reason: str) -> None:
        try:
            inc = self._upstream_error_inc[reason]
        except KeyError:
            raise ValueError(
                f"reason must be one of {UPSTREAM_ERROR_REASONS}, not {reason!r}"
            ) from None
        inc()

    def protocol_error(self, side: str) -> None:
        try:
            inc = self._protocol_error_inc[side]
        except KeyError:
            raise ValueError(f"side must be one of {SIDES}, not {side!r}") from None
        inc()

    def accept_error(self, leg: str, reason: str) -> None:
        try:
            inc = self._accept_error_inc[leg, reason]
        except KeyError:
            raise ValueError(
                f"leg/reason must be in {SIDES} x {RESOURCE_REASONS}, not {leg!r}/{reason!r}"
            ) from None
        inc()

    def tls_handshake(self, side: str, result: str) -> None:
        try:
            inc = self._tls_inc[side, result]
        except KeyError:
            raise ValueError(
                f"side/result must be in {SIDES} x {TLS_RESULTS}, not {side!r}/{result!r}"
            ) from None
        inc()

    def limit_hit(self, reason: str) -> None:
        try:
            inc = self._limit_inc[reason]
        except KeyError:
            raise ValueError(f"reason must be one of {LIMIT_REASONS}, not {reason!r}") from None
        inc()

    def session_kicked(self) -> None:
        self._sessions_kicked.inc()

    def config_reloaded(self, ok: bool) -> None:
        self._reload_inc["ok" if ok else "failed"]()
        if ok:
            self._config_last_success.set(time.time())

    def flush_hot(self) -> None:
        """Worker of several (server.workers): copy the plain-number hot families into
        prometheus_client's multiprocess files, which the parent's /metrics reads. Called
        about once a second and at exit, so the hot path keeps its cost."""
        if self._mirror is None:
            self._mirror = _MultiprocessMirror()
        self._mirror.flush(self._hot)

    # -- exporter ----------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        """Serve this registry over HTTP on host:port (path /metrics; prometheus_client answers
        any path) from a daemon thread. Port 0 picks a free port: read it from `bound_port`."""
        if self._server is not None:
            raise RuntimeError("metrics exporter already running")
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server

    @property
    def bound_port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics exporter not running")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop the exporter and close its socket (the daemon thread otherwise lives as long as
        the process; tests and a clean shutdown call this)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- internals ---------------------------------------------------------------------------

    def _command_entry(self, command: str, status: str) -> _HotEntry:
        _check(status, COMMAND_STATUSES, "command status")
        label = command_label(command)
        cells = self._hot.commands.get(label)
        if cells is None:
            # Build fully before publishing: the exporter thread may read it at once.
            cells = _CommandCells()
            self._hot.commands[label] = cells
        entry: _HotEntry = (cells.counts[status], cells.buckets, cells.sum)
        if len(self._command_cache) < _CACHE_LIMIT:
            self._command_cache[command, status] = entry
        return entry


class _MultiprocessMirror:
    """Delta copies of ``_HotCollector`` numbers into ordinary (file-backed) metrics.

    The histogram's per-bucket values are bumped directly (``_buckets``/``_sum`` are
    prometheus_client internals, stable since 0.4): ``observe`` could only add single
    observations, and the buckets here are already counted."""

    def __init__(self) -> None:
        families = _HotCollector._families()
        self.commands = Counter(
            "imapproxy_commands", families[0].documentation, ["command", "status"], registry=None
        )
        self.bytes = Counter(
            "imapproxy_bytes", families[1].documentation, ["direction"], registry=None
        )
        self.duration = Histogram(
            "imapproxy_command_duration_seconds",
            families[2].documentation,
            ["command"],
            buckets=COMMAND_BUCKETS,
            registry=None,
        )
        self.done: dict[tuple[str, ...], float] = {}

    def _delta(self, key: tuple[str, ...], now: float) -> float:
        delta = now - self.done.get(key, 0)
        self.done[key] = now
        return delta

    def flush(self, hot: _HotCollector) -> None:
        for label, cells in list(hot.commands.items()):
            for status, cell in cells.counts.items():
                if delta := self._delta(("c", label, status), cell[0]):
                    self.commands.labels(label, status).inc(delta)
            child = self.duration.labels(label)
            for i, n in enumerate(list(cells.buckets)):
                if delta := self._delta(("h", label, str(i)), n):
                    child._buckets[i].inc(delta)
            if delta := self._delta(("s", label), cells.sum[0]):
                child._sum.inc(delta)
        for direction, cell in hot.bytes.items():
            if delta := self._delta(("b", direction), cell[0]):
                self.bytes.labels(direction).inc(delta)


def serve_multiprocess(host: str, port: int, path: str) -> WSGIServer:
    """The parent of several workers: one /metrics summing every worker's files in ``path``
    (prometheus_client's multiprocess mode); the caller stops it with shutdown()."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def mark_process_dead(pid: int, path: str) -> None:
    """A worker exited: drop its live gauges (its counters keep counting in the sum)."""
    from prometheus_client.multiprocess import mark_process_dead as mark

    mark(pid, path)  # type: ignore[no-untyped-call]
