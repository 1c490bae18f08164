"""grafana/: the dashboard is importable, every panel is complete, and every query names only
metrics that `Metrics` exports and filters by `$instance`. The provisioning files fit it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from imapproxy.telemetry.metrics import Metrics

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARD = GRAFANA / "imapproxy-dashboard.json"
METRIC_NAME = re.compile(r"imapproxy_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return list(load()["panels"])


def exported_names() -> tuple[set[str], set[str]]:
    """(every sample name the registry exports, names of histogram families)."""
    m = Metrics(CollectorRegistry(), process_metrics=False)
    m.command_completed("FETCH", "OK", 0.01)  # command series exist only after first use
    m.rule_matched("r", "block")
    m.command_blocked("r", "DELETE")
    samples: set[str] = set()
    histograms: set[str] = set()
    for fam in m.registry.collect():
        if fam.type == "histogram":
            histograms.add(fam.name)
        samples.update(s.name for s in fam.samples)
    return samples, histograms


def test_dashboard_is_importable() -> None:
    d = load()
    assert d["uid"] == "imapproxy"
    assert d["title"]
    assert d["id"] is None  # Grafana assigns ids on import
    assert isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))


def test_no_hard_coded_datasource() -> None:
    text = DASHBOARD.read_text()
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # The only datasource uids anywhere are the variable and Grafana's built-in annotations.
    uids = set(re.findall(r'"uid": "([^"]*)"', text)) - {load()["uid"]}
    assert uids <= {"${datasource}", "-- Grafana --"}


def test_template_variables() -> None:
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    inst = variables["instance"]
    assert inst["type"] == "query"
    assert inst["datasource"]["uid"] == "${datasource}"
    assert inst["definition"] == "label_values(imapproxy_build_info, instance)"
    assert inst["query"]["query"] == inst["definition"]
    assert inst["includeAll"] and inst["allValue"] == ".*"


@pytest.mark.parametrize("panel", panels(), ids=lambda p: str(p["title"]))
def test_panel_is_complete(panel: dict[str, Any]) -> None:
    assert panel["title"].strip()
    assert panel["fieldConfig"]["defaults"]["unit"]
    assert panel["targets"]
    for target in panel["targets"]:
        assert target["expr"].strip()
        assert target["refId"]
    refs = [t["refId"] for t in panel["targets"]]
    assert len(refs) == len(set(refs))


def test_every_query_uses_known_metrics_and_instance_filter() -> None:
    samples, histograms = exported_names()
    unknown, unfiltered = [], []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            if '{instance=~"$instance"' not in expr:
                unfiltered.append(f"{panel['title']}: {expr}")
            # Every metric selector must carry the filter, not just one of them.
            if len(METRIC_NAME.findall(expr)) != expr.count('instance=~"$instance"'):
                unfiltered.append(f"{panel['title']} (some selectors): {expr}")
            for name in METRIC_NAME.findall(expr):
                base = name
                for suffix in HISTOGRAM_SUFFIXES:
                    if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
                        base = name.removesuffix(suffix)
                if name not in samples and base not in histograms:
                    unknown.append(f"{panel['title']}: {name}")
    assert not unknown, unknown
    assert not unfiltered, unfiltered


def test_units_fit_the_queries() -> None:
    for panel in panels():
        unit = panel["fieldConfig"]["defaults"]["unit"]
        exprs = " ".join(t["expr"] for t in panel["targets"])
        if "histogram_quantile" in exprs or "time() -" in exprs:
            assert unit == "s", panel["title"]
        elif "imapproxy_bytes_total" in exprs:
            assert unit == "Bps", panel["title"]
        elif " / " in exprs:
            assert unit == "percentunit", panel["title"]
        elif "rate(" in exprs:
            assert unit == "ops", panel["title"]


def test_issue_panels_are_present() -> None:
    exprs = " ".join(t["expr"] for p in panels() for t in p["targets"])
    for needle in (
        "imapproxy_sessions_active",
        "rate(imapproxy_sessions_total",
        "sum by (command) (rate(imapproxy_commands_total",
        'status=~"NO|BAD"',
        "histogram_quantile(0.5, sum by (command, le) (rate(imapproxy_command_duration_seconds",
        "histogram_quantile(0.95, sum by (command, le)",
        "histogram_quantile(0.99, sum by (command, le)",
        "sum by (direction) (rate(imapproxy_bytes_total",
        "sum by (result) (rate(imapproxy_logins_total",
        "sum by (rule) (rate(imapproxy_blocked_commands_total",
        "sum by (reason) (rate(imapproxy_upstream_errors_total",
        "sum by (side, result) (rate(imapproxy_tls_handshakes_total",
        "imapproxy_config_reloads_total",
    ):
        assert needle in exprs, needle


def test_layout_has_no_overlaps() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels():
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_provisioning_files() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "${PROMETHEUS_URL}"
    provider_text = (GRAFANA / "provisioning/dashboards/imapproxy.yaml").read_text()
    (provider,) = yaml.safe_load(provider_text)["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path == "/var/lib/grafana/dashboards"
    # The documented docker run line mounts both things where the provider looks.
    assert "docker run" in provider_text
    assert "grafana/provisioning:/etc/grafana/provisioning" in provider_text
    assert f"grafana/imapproxy-dashboard.json:{path}/imapproxy-dashboard.json" in provider_text
    assert 'PROMETHEUS_URL="${PROMETHEUS_URL:-http://localhost:9090}"' in provider_text
