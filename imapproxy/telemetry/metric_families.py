"""The ordinary (per session, per login, per error) metric families: names and help texts,
declared once.

These use prometheus_client's own metrics (its per-update lock is fine at this rate); the
per-command families are plain numbers instead (hot_metrics.py). ``multiprocess_mode`` says
how the parent of several workers (server.workers) sums a gauge; ignored in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from imapproxy.telemetry.metric_labels import CONNECT_BUCKETS, SESSION_BUCKETS

__all__ = ["Families", "declare_families"]


@dataclass(frozen=True, slots=True)
class Families:
    """Every ordinary family, registered on one registry."""

    sessions_active: Gauge
    sessions_total: Counter
    session_duration: Histogram
    logins: Counter
    rule_matches: Counter
    blocked: Counter
    upstream_connect: Histogram
    upstream_errors: Counter
    protocol_errors: Counter
    tls_handshakes: Counter
    accept_errors: Counter
    limit_hits: Counter
    build_info: Gauge
    sessions_kicked: Counter
    config_reloads: Counter
    config_last_success: Gauge


def declare_families(r: CollectorRegistry) -> Families:
    """Create and register the families on ``r`` (no child is created here)."""
    return Families(
        sessions_active=Gauge(
            "imapproxy_sessions_active",
            "Client sessions currently open.",
            registry=r,
            multiprocess_mode="livesum",
        ),
        sessions_total=Counter(
            "imapproxy_sessions", "Client sessions accepted, by listener.", ["listener"], registry=r
        ),
        session_duration=Histogram(
            "imapproxy_session_duration_seconds",
            "Client session lifetime, accept to close.",
            buckets=SESSION_BUCKETS,
            registry=r,
        ),
        logins=Counter(
            "imapproxy_logins",
            "Login attempts (LOGIN or AUTHENTICATE), by mechanism and result.",
            ["mechanism", "result"],
            registry=r,
        ),
        rule_matches=Counter(
            "imapproxy_rule_matches",
            "Rule matches, by rule and action.",
            ["rule", "action"],
            registry=r,
        ),
        blocked=Counter(
            "imapproxy_blocked_commands",
            "Commands answered NO by the proxy because a rule blocked them.",
            ["rule", "command"],
            registry=r,
        ),
        upstream_connect=Histogram(
            "imapproxy_upstream_connect_seconds",
            "Time to open the upstream connection (TCP, plus TLS for implicit TLS).",
            buckets=CONNECT_BUCKETS,
            registry=r,
        ),
        upstream_errors=Counter(
            "imapproxy_upstream_errors", "Upstream failures, by reason.", ["reason"], registry=r
        ),
        protocol_errors=Counter(
            "imapproxy_protocol_errors",
            "Unparseable IMAP traffic, by the side that sent it.",
            ["side"],
            registry=r,
        ),
        tls_handshakes=Counter(
            "imapproxy_tls_handshakes",
            "TLS handshakes, by leg (client or upstream) and result.",
            ["side", "result"],
            registry=r,
        ),
        accept_errors=Counter(
            "imapproxy_accept_errors",
            "Connections the proxy could not take on for lack of resources, by leg (client: "
            "accept() failed, the accept loop backs off; upstream: the upstream socket could "
            "not be opened, the client was told the proxy is at capacity) and errno.",
            ["leg", "reason"],
            registry=r,
        ),
        limit_hits=Counter(
            "imapproxy_limit_hits",
            "Clients refused or disconnected by an abuse limit, by limit.",
            ["reason"],
            registry=r,
        ),
        build_info=Gauge(
            "imapproxy_build_info",
            "Always 1; labels carry the imapproxy and Python versions and how the core runs "
            "(compiled by mypyc, or python).",
            ["version", "python", "core"],
            registry=r,
            multiprocess_mode="max",
        ),
        sessions_kicked=Counter(
            "imapproxy_sessions_kicked",
            "Sessions ended by an administrator (imapproxy kick).",
            registry=r,
        ),
        config_reloads=Counter(
            "imapproxy_config_reloads",
            "Configuration reloads (SIGHUP), by result.",
            ["result"],
            registry=r,
        ),
        config_last_success=Gauge(
            "imapproxy_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start-up or reload).",
            registry=r,
            multiprocess_mode="max",
        ),
    )
