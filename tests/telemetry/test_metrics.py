"""imapproxy.metrics: names, exact deltas, bounded labels, histogram semantics, the exporter."""

from __future__ import annotations

import math
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Histogram

from imapproxy import __version__
from imapproxy.telemetry.metrics import (
    COMMAND_BUCKETS,
    DIRECTIONS,
    UPSTREAM_ERROR_REASONS,
    Metrics,
    command_label,
    mechanism_label,
)
from imapproxy.wire.commands import KNOWN_COMMANDS

# The names issue 5 asks for, as exported (counters with _total).
EXPECTED_FAMILIES = {
    "imapproxy_sessions_active",
    "imapproxy_sessions_total",
    "imapproxy_session_duration_seconds",
    "imapproxy_commands_total",
    "imapproxy_command_duration_seconds",
    "imapproxy_bytes_total",
    "imapproxy_logins_total",
    "imapproxy_rule_matches_total",
    "imapproxy_blocked_commands_total",
    "imapproxy_upstream_connect_seconds",
    "imapproxy_upstream_errors_total",
    "imapproxy_protocol_errors_total",
    "imapproxy_tls_handshakes_total",
    "imapproxy_build_info",
    "imapproxy_config_reloads_total",
    "imapproxy_sessions_kicked_total",
    "imapproxy_config_last_reload_success_timestamp_seconds",
    "imapproxy_accept_errors_total",  # issue 12: out of descriptors
    "imapproxy_limit_hits_total",
}


@pytest.fixture
def m() -> Metrics:
    return Metrics(CollectorRegistry(), process_metrics=False)


def value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    assert v is not None, f"no sample {name}{labels}"
    return v


def family_names(m: Metrics) -> set[str]:
    names = set()
    for fam in m.registry.collect():
        names.add(fam.name + "_total" if fam.type == "counter" else fam.name)
    return names


def test_all_issue_metric_names_are_registered(m: Metrics) -> None:
    names = {n for n in family_names(m) if n.startswith("imapproxy_")}
    assert names == EXPECTED_FAMILIES


def test_process_metrics_are_optional() -> None:
    with_proc = Metrics(CollectorRegistry())
    assert "process_resident_memory_bytes" in {
        s.name for fam in with_proc.registry.collect() for s in fam.samples
    }


def test_known_session_gives_exact_deltas(m: Metrics) -> None:
    """The issue's reference session: 1 LOGIN OK, 3 FETCH OK, 1 blocked DELETE."""
    m.session_opened("plain")
    assert value(m, "imapproxy_sessions_active") == 1
    m.upstream_connected(0.004)
    m.login("LOGIN", "ok")
    m.command_completed("LOGIN", "OK", 0.02)
    for _ in range(3):
        m.command_completed("FETCH", "OK", 0.003)
    m.rule_matched("no-mailbox-deletion", "block")
    m.command_blocked("no-mailbox-deletion", "delete")
    m.command_completed("DELETE", "NO", 0.0)
    m.bytes_forwarded("client_to_upstream", 120)
    m.bytes_forwarded("upstream_to_client", 5000)
    m.bytes_forwarded("upstream_to_client", 17)
    m.session_closed(12.5)

    assert value(m, "imapproxy_sessions_total", listener="plain") == 1
    assert value(m, "imapproxy_sessions_total", listener="tls") == 0
    assert value(m, "imapproxy_sessions_active") == 0
    assert value(m, "imapproxy_session_duration_seconds_count") == 1
    assert value(m, "imapproxy_session_duration_seconds_sum") == 12.5
    assert value(m, "imapproxy_session_duration_seconds_bucket", le="15.0") == 1
    assert value(m, "imapproxy_session_duration_seconds_bucket", le="5.0") == 0
    assert value(m, "imapproxy_logins_total", mechanism="LOGIN", result="ok") == 1
    assert value(m, "imapproxy_logins_total", mechanism="LOGIN", result="failed") == 0
    assert value(m, "imapproxy_commands_total", command="FETCH", status="OK") == 3
    assert value(m, "imapproxy_commands_total", command="FETCH", status="NO") == 0
    assert value(m, "imapproxy_commands_total", command="LOGIN", status="OK") == 1
    assert value(m, "imapproxy_commands_total", command="DELETE", status="NO") == 1
    assert value(m, "imapproxy_command_duration_seconds_count", command="FETCH") == 3
    assert value(m, "imapproxy_command_duration_seconds_sum", command="FETCH") == pytest.approx(
        0.009
    )
    assert value(m, "imapproxy_command_duration_seconds_bucket", command="FETCH", le="0.005") == 3
    assert value(m, "imapproxy_command_duration_seconds_bucket", command="FETCH", le="0.0025") == 0
    assert value(m, "imapproxy_rule_matches_total", rule="no-mailbox-deletion", action="block") == 1
    assert (
        value(m, "imapproxy_blocked_commands_total", rule="no-mailbox-deletion", command="DELETE")
        == 1
    )
    assert value(m, "imapproxy_bytes_total", direction="client_to_upstream") == 120
    assert value(m, "imapproxy_bytes_total", direction="upstream_to_client") == 5017
    assert value(m, "imapproxy_upstream_connect_seconds_count") == 1
    assert value(m, "imapproxy_upstream_connect_seconds_bucket", le="0.005") == 1


def test_zero_series_exist_before_any_event(m: Metrics) -> None:
    assert value(m, "imapproxy_sessions_active") == 0
    for d in DIRECTIONS:
        assert value(m, "imapproxy_bytes_total", direction=d) == 0
    for reason in UPSTREAM_ERROR_REASONS:
        assert value(m, "imapproxy_upstream_errors_total", reason=reason) == 0
    for side in ("client", "upstream"):
        assert value(m, "imapproxy_protocol_errors_total", side=side) == 0
        for res in ("ok", "failed"):
            assert value(m, "imapproxy_tls_handshakes_total", side=side, result=res) == 0
    for res in ("ok", "failed", "blocked"):
        assert value(m, "imapproxy_logins_total", mechanism="LOGIN", result=res) == 0
    assert value(m, "imapproxy_config_reloads_total", result="failed") == 0


def test_first_use_of_a_command_creates_all_its_statuses(m: Metrics) -> None:
    m.command_completed("SELECT", "OK", 0.01)
    for st in ("NO", "BAD", "none"):
        assert value(m, "imapproxy_commands_total", command="SELECT", status=st) == 0


def test_command_label() -> None:
    assert command_label("fetch") == "FETCH"
    assert command_label("uid  fetch") == "UID FETCH"
    assert command_label("XYZZY") == "other"
    assert command_label("UID LOGIN") == "other"
    assert all(command_label(c) == c for c in KNOWN_COMMANDS)
    assert mechanism_label("xoauth2") == "XOAUTH2"
    assert mechanism_label("X-MADE-UP") == "other"


def test_client_chosen_names_do_not_grow_series_or_caches(m: Metrics) -> None:
    for i in range(6000):
        m.command_completed(f"X{i}", "BAD", 0.001)
        m.command_blocked("r", f"X{i}")
        m.login(f"MECH{i}", "failed")
    assert value(m, "imapproxy_commands_total", command="other", status="BAD") == 6000
    assert value(m, "imapproxy_blocked_commands_total", rule="r", command="other") == 6000
    assert value(m, "imapproxy_logins_total", mechanism="other", result="failed") == 6000
    labels = {
        s.labels.get("command")
        for fam in m.registry.collect()
        for s in fam.samples
        if s.name.startswith("imapproxy_command")
    }
    assert labels == {"other"}
    assert len(m._command_cache) <= 4096
    assert len(m._blocked_cache) <= 4096
    assert len(m._login_cache) <= 4096


def test_command_histogram_matches_prometheus_client_semantics(m: Metrics) -> None:
    """The plain-number histogram must bucket exactly like prometheus_client's (le: <=)."""
    reference = Histogram("ref", "ref", buckets=COMMAND_BUCKETS, registry=CollectorRegistry())
    samples = [*COMMAND_BUCKETS, 0.0, 0.0004, 0.0006, 0.3, 59.9, 60.0001, 1800.0, math.inf]
    for v in samples:
        m.command_completed("NOOP", "OK", v)
        reference.observe(v)
    ours = {
        s.labels["le"]: s.value
        for fam in m.registry.collect()
        for s in fam.samples
        if s.name == "imapproxy_command_duration_seconds_bucket"
    }
    theirs = {
        s.labels["le"]: s.value
        for fam in reference.collect()
        for s in fam.samples
        if s.name == "ref_bucket"
    }
    assert ours == theirs
    assert value(m, "imapproxy_command_duration_seconds_count", command="NOOP") == len(samples)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("command_completed", ("FETCH", "ok", 0.1)),  # statuses are upper case, as on the wire
        ("bytes_forwarded", ("up", 1)),
        ("session_opened", ("imaps",)),
        ("login", ("LOGIN", "success")),
        ("upstream_error", ("dns",)),
        ("protocol_error", ("server",)),
        ("tls_handshake", ("client", "error")),
    ],
)
def test_out_of_set_label_values_are_rejected(m: Metrics, method: str, args: tuple[object]) -> None:
    with pytest.raises(ValueError):
        getattr(m, method)(*args)


def test_errors_and_handshakes(m: Metrics) -> None:
    m.upstream_error("connect_refused")
    m.upstream_error("connect_refused")
    m.protocol_error("upstream")
    m.tls_handshake("upstream", "failed")
    assert value(m, "imapproxy_upstream_errors_total", reason="connect_refused") == 2
    assert value(m, "imapproxy_upstream_errors_total", reason="tls") == 0
    assert value(m, "imapproxy_protocol_errors_total", side="upstream") == 1
    assert value(m, "imapproxy_tls_handshakes_total", side="upstream", result="failed") == 1
    assert value(m, "imapproxy_tls_handshakes_total", side="client", result="failed") == 0


def test_config_reloads_and_timestamp(m: Metrics) -> None:
    at_start = value(m, "imapproxy_config_last_reload_success_timestamp_seconds")
    assert at_start > 1.6e9  # set at start-up: the initial load counts as a success
    m._config_last_success.set(1000.0)  # make the next change observable without sleeping
    m.config_reloaded(False)
    assert value(m, "imapproxy_config_reloads_total", result="failed") == 1
    assert value(m, "imapproxy_config_last_reload_success_timestamp_seconds") == 1000.0
    m.config_reloaded(True)
    assert value(m, "imapproxy_config_reloads_total", result="ok") == 1
    assert value(m, "imapproxy_config_last_reload_success_timestamp_seconds") >= at_start


def test_build_info(m: Metrics) -> None:
    infos = [
        s for fam in m.registry.collect() for s in fam.samples if s.name == "imapproxy_build_info"
    ]
    assert len(infos) == 1
    assert infos[0].value == 1
    assert infos[0].labels["version"] == __version__
    assert infos[0].labels["python"].startswith("3.")
    assert infos[0].labels["core"] == "python"
    [compiled] = [
        s
        for fam in Metrics(process_metrics=False, core="compiled").registry.collect()
        for s in fam.samples
        if s.name == "imapproxy_build_info"
    ]
    assert compiled.labels["core"] == "compiled"


def test_instances_are_independent_and_clashes_detected() -> None:
    a = Metrics(process_metrics=False)
    b = Metrics(process_metrics=False)
    assert a.registry is not b.registry
    a.bytes_forwarded("client_to_upstream", 5)
    assert (
        b.registry.get_sample_value("imapproxy_bytes_total", {"direction": "client_to_upstream"})
        == 0
    )
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(a.registry, process_metrics=False)  # describe() lets the registry see clashes


def test_exporter_serves_metrics_over_http(m: Metrics) -> None:
    m.command_completed("FETCH", "OK", 0.002)
    m.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{m.bound_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
            body = resp.read().decode()
        assert 'imapproxy_commands_total{command="FETCH",status="OK"} 1.0' in body
        assert "imapproxy_build_info{" in body
        assert "_created" not in body  # see the comment in Metrics.__init__
        with pytest.raises(RuntimeError):
            m.serve("127.0.0.1", 0)
    finally:
        m.stop()
    with pytest.raises(RuntimeError):
        _ = m.bound_port


def test_accept_errors_by_leg_and_reason(m: Metrics) -> None:
    assert value(m, "imapproxy_accept_errors_total", leg="client", reason="emfile") == 0
    m.accept_error("client", "emfile")
    m.accept_error("upstream", "enfile")
    assert value(m, "imapproxy_accept_errors_total", leg="client", reason="emfile") == 1
    assert value(m, "imapproxy_accept_errors_total", leg="upstream", reason="enfile") == 1
    with pytest.raises(ValueError):
        m.accept_error("client", "econnrefused")


def test_limit_hits_by_reason(m: Metrics) -> None:
    assert value(m, "imapproxy_limit_hits_total", reason="sessions_per_ip") == 0
    m.limit_hit("sessions_per_ip")
    m.limit_hit("pipelined")
    assert value(m, "imapproxy_limit_hits_total", reason="sessions_per_ip") == 1
    with pytest.raises(ValueError):
        m.limit_hit("made-up")
