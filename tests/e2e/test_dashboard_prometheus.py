"""Every query of grafana/imapproxy-dashboard.json, evaluated by a real Prometheus.

This test drives a `Metrics` instance directly (a stand-in for the proxy) while a real
Prometheus (Debian package `prometheus`, see tests/prometheus.py) scrapes its exporter every
second; then each panel target, with Grafana's template variables substituted, goes through
`/api/v1/query` and must return at least one series with a finite value. A renamed metric, a
renamed label or a PromQL syntax error fails it.

The lead adds a second test here that drives real IMAP traffic through the proxy against
Dovecot (fixture `proxy_factory` in tests/e2e/conftest.py) and runs the same check via
`assert_every_panel_has_data`.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imapproxy.telemetry.metrics import Metrics
from tests.support.prometheus import PrometheusError, PrometheusServer, prometheus_binary

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "imapproxy-dashboard.json"

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None and not os.environ.get("CI"),
    reason="prometheus not installed (apt-get install prometheus); required when CI is set",
)

# What Grafana would put in: all instances, and a range long enough for rate() at a 1 s scrape.
SUBSTITUTIONS = {
    "${instance}": ".*",
    "$instance": ".*",
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1m",
}


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, expr with variables substituted) for every target."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in SUBSTITUTIONS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']}: {expr}"
            out.append((f"{panel['title']} / {target['refId']}", expr))
    return out


def assert_every_panel_has_data(prom: PrometheusServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    failures = []
    for where, expr in panel_queries(dashboard):
        try:
            series = prom.query(expr)
        except PrometheusError as err:  # bad PromQL: report it with the others
            failures.append(f"{where}: {err}")
            continue
        values = [float(s["value"][1]) for s in series]
        if not any(math.isfinite(v) for v in values):
            failures.append(f"{where}: {len(series)} series, values {values[:5]}\n    {expr}")
    assert not failures, "panels without data:\n" + "\n".join(failures)

    # The instance variable's query, as Prometheus sees it.
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "instance")
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
    assert match, variable["definition"]
    assert prom.query(f"group by ({match[2]}) ({match[1]})")


class Simulator:
    """Plays sessions into a Metrics from one thread, as the trio loop would (the hot-path
    methods are single-writer), until stopped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-simulator", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Simulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            i = 0
            while not self._stop.wait(0.05):
                self._session(i)
                i += 1
        except BaseException as err:  # surfaced in __exit__
            self.error = err

    def _session(self, i: int) -> None:
        m = self.metrics
        listener = "tls" if i % 3 == 0 else "plain"
        m.session_opened(listener)
        m.upstream_connected(0.002 + (i % 7) * 0.003)
        m.tls_handshake("upstream", "ok")
        if listener == "tls":
            m.tls_handshake("client", "ok" if i % 6 else "failed")
        m.login("LOGIN" if i % 2 else "XOAUTH2", ("ok", "ok", "failed", "blocked")[i % 4])
        m.command_completed("LOGIN", "OK", 0.015)
        m.command_completed("SELECT", "OK", 0.004)
        for n in range(3):
            m.command_completed("FETCH", "OK", 0.001 * (n + 1))
        m.command_completed("FETCH", "NO", 0.002)
        m.command_completed("XYZZY", "BAD", 0.0003)
        m.command_completed("IDLE", "OK", 120.0)
        m.rule_matched("audit-everything", "log")
        m.rule_matched("no-mailbox-deletion", "block")
        m.command_blocked("no-mailbox-deletion", "DELETE")
        m.command_completed("DELETE", "NO", 0.0)
        m.bytes_forwarded("client_to_upstream", 200 + i)
        m.bytes_forwarded("upstream_to_client", 40_000 + i)
        if i % 5 == 0:
            m.upstream_error(("connect_refused", "connect_timeout", "tls", "closed")[i % 4])
            m.protocol_error("client")
        if i % 10 == 0:
            m.config_reloaded(ok=i % 20 == 0)
        m.session_closed(0.5 + i % 40)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    m.serve("127.0.0.1", 0)
    yield m
    m.stop()


def test_every_panel_query_returns_data(metrics: Metrics, tmp_path: Path) -> None:
    target = f"127.0.0.1:{metrics.bound_port}"
    with Simulator(metrics), PrometheusServer.start([target], tmp_path / "prometheus") as prom:
        # rate() needs two scrapes that saw a change; this one is nonzero only then.
        prom.wait_for_series('sum(rate(imapproxy_commands_total{status="NO"}[1m])) > 0', timeout=25)
        assert_every_panel_has_data(prom)

        # The check has teeth: a renamed metric yields no series.
        (_, expr), *_ = panel_queries(json.loads(DASHBOARD.read_text()))
        assert prom.query(expr.replace("imapproxy_", "imapproxy_renamed_")) == []
