"""Prometheus metrics: the ``Metrics`` API the proxy core calls (through ``Telemetry``).

One `Metrics` instance per process, on its own `CollectorRegistry` (never the global default,
so tests can build as many as they like). The telemetry/metric*.py modules are the only
prometheus_client importers:

- ``metric_labels``: the bounded label vocabularies and histogram buckets (no per-user or
  per-mailbox labels exist; enumerated labels are validated);
- ``hot_metrics``: the per-command / per-chunk families (`imapproxy_commands_total`,
  `imapproxy_command_duration_seconds`, `imapproxy_bytes_total`) as plain Python numbers,
  turned into metric families only when scraped (~0.6 us per `command_completed` against
  ~3.6 us with prometheus_client's own children, bench/metrics_cost.py);
- ``metric_families``: every rarer family (per session, per login, per error), declared once;
  this class caches their children's bound methods;
- ``multiprocess_metrics``: a worker's copy of the hot numbers into the multiprocess files;
- ``metrics_exporter``: the HTTP side.

Every name those modules define that callers imported from here stays importable from here.

Threading: the hot-path methods must be called from one thread (the trio run thread). The
exporter thread only reads, so a scrape sees each number either before or after an update and
never loses one.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from imapproxy import __version__
from imapproxy.telemetry.hot_metrics import CACHE_LIMIT, HotCollector, HotEntry
from imapproxy.telemetry.metric_families import declare_families
from imapproxy.telemetry.metric_labels import (
    COMMAND_BUCKETS,
    COMMAND_STATUSES,
    CONNECT_BUCKETS,
    DIRECTIONS,
    LIMIT_REASONS,
    LISTENERS,
    LOGIN_RESULTS,
    MECHANISMS,
    RELOAD_RESULTS,
    RESOURCE_REASONS,
    SESSION_BUCKETS,
    SIDES,
    TLS_RESULTS,
    UPSTREAM_ERROR_REASONS,
    check_label,
    command_label,
    mechanism_label,
)
from imapproxy.telemetry.metrics_exporter import Exporter, serve_multiprocess
from imapproxy.telemetry.multiprocess_metrics import mark_process_dead

if TYPE_CHECKING:
    from imapproxy.telemetry.multiprocess_metrics import MultiprocessMirror

__all__ = [
    "COMMAND_BUCKETS",
    "COMMAND_STATUSES",
    "CONNECT_BUCKETS",
    "DIRECTIONS",
    "LIMIT_REASONS",
    "LISTENERS",
    "LOGIN_RESULTS",
    "MECHANISMS",
    "RELOAD_RESULTS",
    "RESOURCE_REASONS",
    "SESSION_BUCKETS",
    "SIDES",
    "TLS_RESULTS",
    "UPSTREAM_ERROR_REASONS",
    "Metrics",
    "command_label",
    "mark_process_dead",
    "mechanism_label",
    "serve_multiprocess",
]

_Inc = Callable[[], None]


class Metrics:
    """All imapproxy metrics, registered on one registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        process_metrics: bool = True,
        core: str = "python",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Without this every counter also exports a `<name>_created` gauge, and series such as
        # `imapproxy_sessions_created` read like a count. Process-wide, but only these
        # modules use prometheus_client.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        if process_metrics:
            # The usual process_*/python_* series (RSS, open fds, GC), on our registry.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._exporter = Exporter(r)
        self._hot = HotCollector()
        r.register(self._hot)
        f = declare_families(r)
        self._logins = f.logins
        self._rule_matches = f.rule_matches
        self._blocked = f.blocked
        self._sessions_kicked = f.sessions_kicked
        self._config_last_success = f.config_last_success

        f.build_info.labels(__version__, platform.python_version(), core).set(1)
        # The process loads its configuration before building Metrics, so start-up counts as
        # the first successful load (what Prometheus does for its own config).
        self._config_last_success.set(time.time())

        # Cached bound `inc`/`observe` methods of labelled children. Creating every child of a
        # small enumerated label set here also exports its zero series, so dashboards show 0
        # instead of "no data" before the first event.
        self._session_inc = {v: f.sessions_total.labels(v).inc for v in LISTENERS}
        self._upstream_error_inc = {
            v: f.upstream_errors.labels(v).inc for v in UPSTREAM_ERROR_REASONS
        }
        self._protocol_error_inc = {v: f.protocol_errors.labels(v).inc for v in SIDES}
        self._tls_inc = {
            (s, res): f.tls_handshakes.labels(s, res).inc for s in SIDES for res in TLS_RESULTS
        }
        self._reload_inc = {v: f.config_reloads.labels(v).inc for v in RELOAD_RESULTS}
        self._accept_error_inc = {
            (leg, why): f.accept_errors.labels(leg, why).inc
            for leg in SIDES
            for why in RESOURCE_REASONS
        }
        self._limit_inc = {v: f.limit_hits.labels(v).inc for v in LIMIT_REASONS}
        for res in LOGIN_RESULTS:  # the common mechanism, so the logins panel starts at 0
            self._logins.labels("LOGIN", res)
        # Keyed by the caller's raw values (label normalisation happens once, on a miss).
        self._command_cache: dict[tuple[str, str], HotEntry] = self._hot.entry_cache
        self._login_cache: dict[tuple[str, str], _Inc] = {}
        self._rule_cache: dict[tuple[str, str], _Inc] = {}
        self._blocked_cache: dict[tuple[str, str], _Inc] = {}
        self._bytes_cells = self._hot.bytes
        self._mirror: MultiprocessMirror | None = None
        self._sessions_active_inc = f.sessions_active.inc
        self._sessions_active_dec = f.sessions_active.dec
        self._session_observe = f.session_duration.observe
        self._connect_observe = f.upstream_connect.observe

    # -- hot path: per command and per forwarded chunk ---------------------------------------

    def command_completed(self, command: str, status: str, duration_s: float) -> None:
        """A command got its tagged reply (`status` OK/NO/BAD), or the session ended first
        ("none"). `command` is normalised with `command_label`."""
        try:
            count, buckets, total = self._command_cache[command, status]
        except KeyError:
            count, buckets, total = self._hot.entry(command, status)
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
            check_label(result, LOGIN_RESULTS, "login result")
            label = mechanism_label(mechanism)
            for res in LOGIN_RESULTS:  # all results at once: "failed" reads 0, not missing
                self._logins.labels(label, res)
            inc = self._logins.labels(label, result).inc
            if len(self._login_cache) < CACHE_LIMIT:
                self._login_cache[mechanism, result] = inc
        inc()

    def rule_matched(self, rule: str, action: str) -> None:
        # Rule names and actions come from the operator's config, so they are bounded.
        try:
            inc = self._rule_cache[rule, action]
        except KeyError:
            inc = self._rule_matches.labels(rule, action).inc
            if len(self._rule_cache) < CACHE_LIMIT:
                self._rule_cache[rule, action] = inc
        inc()

    def command_blocked(self, rule: str, command: str) -> None:
        try:
            inc = self._blocked_cache[rule, command]
        except KeyError:
            inc = self._blocked.labels(rule, command_label(command)).inc
            if len(self._blocked_cache) < CACHE_LIMIT:
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
            from imapproxy.telemetry.multiprocess_metrics import MultiprocessMirror

            self._mirror = MultiprocessMirror()
        self._mirror.flush(self._hot)

    # -- exporter (metrics_exporter.Exporter) ----------------------------------------------

    def serve(self, host: str, port: int) -> None:
        """Serve this registry over HTTP on host:port (path /metrics; prometheus_client answers
        any path) from a daemon thread. Port 0 picks a free port: read it from `bound_port`."""
        self._exporter.serve(host, port)

    @property
    def bound_port(self) -> int:
        return self._exporter.bound_port

    def stop(self) -> None:
        """Stop the exporter and close its socket (the daemon thread otherwise lives as long as
        the process; tests and a clean shutdown call this)."""
        self._exporter.stop()
