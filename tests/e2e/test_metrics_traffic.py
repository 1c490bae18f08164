"""Metrics from real traffic through the proxy to Dovecot: exact counter deltas for a known
session, and every dashboard panel query answered by a real Prometheus."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from imapproxy.config.loader import Address, Config, Upstream, load_config
from imapproxy.demo.dovecot import Dovecot
from imapproxy.telemetry.metrics import Metrics
from imapproxy.telemetry.recorder import Telemetry
from tests.support.accounts import Account, new_account
from tests.support.prometheus import PrometheusServer, prometheus_binary

from .conftest import ProxyFactory
from .test_dashboard_prometheus import assert_every_panel_has_data

RULES = """
rules:
  - name: no-delete
    action: block
    when: {command: [DELETE]}
    message: "Deleting folders is disabled by policy"
  - name: audit
    action: log
"""


class CountingClient:
    """A raw client that counts every byte it sends and receives."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=15)
        self.sent = 0
        self.received = 0
        self._buf = b""
        self.greeting = self._line()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            assert chunk, "closed"
            self.received += len(chunk)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def command(self, tag: str, text: str) -> bytes:
        data = f"{tag} {text}\r\n".encode()
        self.sock.sendall(data)
        self.sent += len(data)
        for _ in range(100_000):
            line = self._line()
            if line.startswith(tag.encode() + b" "):
                return line
        raise AssertionError("no tagged answer")

    def close(self) -> None:
        self.sock.close()


def _config(tmp_path: Path, dovecot: Dovecot) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(f'upstream: {{address: "{dovecot.host}:{dovecot.port}"}}\n' + RULES)
    return load_config(path)


def _known_session(address: tuple[str, int], account: Account) -> tuple[int, int, int]:
    c = CountingClient(address)
    assert c.command("a1", f"LOGIN {account.name} {account.password}").startswith(b"a1 OK")
    assert c.command("a2", "SELECT INBOX").startswith(b"a2 OK")
    for i in range(3):
        assert c.command(f"f{i}", "FETCH 1 (FLAGS BODY.PEEK[])").startswith(f"f{i} OK".encode())
    before_delete = c.sent
    assert c.command("d1", "DELETE Trash").startswith(b"d1 NO [no-delete]")
    blocked_bytes = c.sent - before_delete
    assert c.command("z1", "LOGOUT").startswith(b"z1 OK")
    c.close()
    return c.sent, c.received, blocked_bytes


async def _wait_idle(metrics: Metrics) -> None:
    with trio.fail_after(10):
        while metrics.registry.get_sample_value("imapproxy_sessions_active") != 0:
            await trio.sleep(0.02)


async def test_exact_counter_deltas_after_a_known_session(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    metrics = Metrics()
    proxy = await proxy_factory(_config(tmp_path, dovecot), telemetry=Telemetry(metrics))
    account = new_account(dovecot)
    dovecot.deliver(account.name, b"Subject: hi\r\n\r\nhello\r\n")
    sent, received, blocked = await trio.to_thread.run_sync(_known_session, proxy.address, account)
    await _wait_idle(metrics)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("imapproxy_sessions_total", listener="plain") == 1
    assert value("imapproxy_commands_total", command="LOGIN", status="OK") == 1
    assert value("imapproxy_commands_total", command="SELECT", status="OK") == 1
    assert value("imapproxy_commands_total", command="FETCH", status="OK") == 3
    assert value("imapproxy_commands_total", command="DELETE", status="NO") == 1
    assert value("imapproxy_commands_total", command="LOGOUT", status="OK") == 1
    assert value("imapproxy_command_duration_seconds_count", command="FETCH") == 3
    assert value("imapproxy_logins_total", mechanism="LOGIN", result="ok") == 1
    assert value("imapproxy_blocked_commands_total", rule="no-delete", command="DELETE") == 1
    assert value("imapproxy_rule_matches_total", rule="no-delete", action="block") == 1
    # The blocked DELETE never reached the upstream; everything the client got came through us.
    assert value("imapproxy_bytes_total", direction="client_to_upstream") == sent - blocked
    assert value("imapproxy_bytes_total", direction="upstream_to_client") == received
    assert value("imapproxy_protocol_errors_total", side="client") == 0


@pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed")
async def test_every_dashboard_panel_has_data_from_real_traffic(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    metrics = Metrics()
    metrics.serve("127.0.0.1", 0)
    telemetry = Telemetry(metrics)
    proxy = await proxy_factory(_config(tmp_path, dovecot), telemetry=telemetry)
    # An unreachable upstream, same process and metrics: upstream errors are real too.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = await proxy_factory(
        Config(upstream=Upstream(address=Address("127.0.0.1", dead_port))), telemetry=telemetry
    )
    account = new_account(dovecot)
    dovecot.deliver(account.name, b"Subject: hi\r\n\r\nhello\r\n")

    def traffic() -> None:
        _known_session(proxy.address, account)
        c = CountingClient(proxy.address)
        assert c.command("b1", "LOGIN nobody wrong-password").startswith(b"b1 NO")
        assert c.command("b2", "FROBNICATE").startswith(b"b2 BAD")
        c.close()
        with socket.create_connection(dead.address, timeout=10) as s:
            assert s.recv(4096).startswith(b"* BYE [UNAVAILABLE]")

    try:
        with PrometheusServer.start([f"127.0.0.1:{metrics.bound_port}"], tmp_path / "prom") as prom:
            # rate() needs two scrapes around the traffic: keep it flowing until it shows.
            with trio.fail_after(40):
                while True:
                    await trio.to_thread.run_sync(traffic)
                    await _wait_idle(metrics)
                    found = await trio.to_thread.run_sync(
                        prom.query, 'sum(rate(imapproxy_commands_total{status="NO"}[1m])) > 0'
                    )
                    if found:
                        break
                    await trio.sleep(0.5)
            await trio.to_thread.run_sync(assert_every_panel_has_data, prom)
    finally:
        metrics.stop()
