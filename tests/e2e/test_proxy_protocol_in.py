"""PROXY protocol on the proxy's listeners, against the real Dovecot: the carried address is
the client for rules and logs; untrusted peers, missing, malformed, truncated and slow
headers are closed with one log line and no traceback."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from imapproxy.config.loader import (
    Address,
    Config,
    Limits,
    Listen,
    MetricsConfig,
    TLSListen,
    Upstream,
    load_config,
)
from imapproxy.demo.dovecot import Dovecot
from imapproxy.server.listener import Proxy
from imapproxy.telemetry.recorder import Telemetry
from imapproxy.wire.proxy_protocol import V2_SIGNATURE, encode_v2
from tests.support.accounts import Account, new_account
from tests.support.rawimap import RawIMAP
from tests.support.tls import (  # noqa: F401 - the *_fixture imports register the fixtures
    PKI,
    Events,
    events_fixture,
    pki_fixture,
)

from .conftest import ProxyFactory, RunningProxy

IP = ipaddress.ip_address
TRUSTED = (ipaddress.ip_network("127.0.0.1/32"),)

RULES = """
listen: {proxy_protocol: true, trusted_networks: ["127.0.0.1/32"]}
rules:
  - name: audit
    action: log
  - name: no-login-from-blocked-net
    action: block
    when: {command: [LOGIN], client: ["192.0.2.0/24"]}
    message: "Not from there"
"""


def v1(src: str, sport: int) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    dst = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {src} {dst} {sport} 143\r\n".encode()


def v2(src: str, sport: int) -> bytes:
    dst = "::1" if ":" in src else "127.0.0.1"
    return encode_v2((IP(src), sport), (IP(dst), 143))


@pytest.fixture
async def behind_balancer(proxy_factory: ProxyFactory, tmp_path: Path) -> RunningProxy:
    path = tmp_path / "c.yaml"
    path.write_text(RULES)
    return await proxy_factory(load_config(path))


def _login_line(a: Account) -> bytes:
    return b"L LOGIN %s %s\r\n" % (a.name.encode(), a.password.encode())


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (v1("198.51.100.7", 40001), "198.51.100.7:40001"),
        (v2("198.51.100.8", 40002), "198.51.100.8:40002"),
        (v1("2001:db8::8", 40003), "[2001:db8::8]:40003"),
        (v2("2001:db8::9", 40004), "[2001:db8::9]:40004"),
    ],
)
async def test_carried_address_is_the_client_in_logs(
    dovecot: Dovecot,
    behind_balancer: RunningProxy,
    events: Events,
    header: bytes,
    client: str,
) -> None:
    a = new_account(dovecot)

    def run() -> None:
        # header and the first command in one write: the command is not lost with the header
        with RawIMAP(behind_balancer.address, preamble=header + _login_line(a)) as c:
            assert c.greeting.startswith(b"* OK")
            assert c.until_tagged(b"L")[-1].startswith(b"L OK")
            assert c.command(b"Z", b"LOGOUT")[-1].startswith(b"Z OK")

    await trio.to_thread.run_sync(run)
    (closed,) = await events.wait_for("session_closed")
    assert closed["client"] == client and closed["user"] == a.name
    assert [e["client"] for e in events.named("session_opened")] == [client]
    assert {e["client"] for e in events.named("command")} == {client}


@pytest.mark.parametrize("make", [v1, v2])
async def test_rules_match_the_carried_address_header_byte_by_byte(
    dovecot: Dovecot, behind_balancer: RunningProxy, make: Callable[[str, int], bytes]
) -> None:
    a = new_account(dovecot)

    def session(header: bytes) -> bytes:
        with socket.create_connection(behind_balancer.address, timeout=10) as s:
            for i in range(len(header)):  # one byte per write
                s.sendall(header[i : i + 1])
            greeting = s.recv(4096)
            assert greeting.startswith(b"* OK"), greeting
            s.sendall(_login_line(a))
            return _read_tagged(s, b"L")

    blocked = await trio.to_thread.run_sync(session, make("192.0.2.44", 5000))
    assert blocked == b"L NO [no-login-from-blocked-net] Not from there"
    allowed = await trio.to_thread.run_sync(session, make("203.0.113.44", 5001))
    assert allowed.startswith(b"L OK")


def _read_tagged(s: socket.socket, tag: bytes) -> bytes:
    buf = b""
    while not any(line.startswith(tag + b" ") for line in buf.split(b"\r\n")):
        chunk = s.recv(65536)
        assert chunk, buf
        buf += chunk
    return next(line for line in buf.split(b"\r\n") if line.startswith(tag + b" "))


def _what_the_proxy_says(
    address: tuple[str, int], send: bytes, *, source: str = "127.0.0.1", close: bool = False
) -> bytes:
    """Everything the proxy sends until it closes the connection (it should send nothing).
    Closing with our bytes unread makes the kernel answer with a reset: closed too."""
    with socket.create_connection(address, timeout=10, source_address=(source, 0)) as s:
        s.sendall(send)
        if close:
            s.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        return got


def _no_tracebacks(events: Events) -> None:
    assert not [r for r in events.records if r.exc_info], "a refusal logged a traceback"
    assert not [r for r in events.records if r.levelno >= logging.ERROR]


async def test_header_from_untrusted_peer_is_refused(
    behind_balancer: RunningProxy, events: Events
) -> None:
    said = await trio.to_thread.run_sync(
        functools.partial(
            _what_the_proxy_says, behind_balancer.address, v2("192.0.2.1", 1), source="127.0.0.2"
        )
    )
    assert said == b""
    (refusal,) = await events.wait_for("proxy_header_refused")
    assert refusal["client"].startswith("127.0.0.2:")
    assert refusal["reason"] == "peer not in trusted_networks"
    assert refusal["level"] == "WARNING"
    assert not events.named("session_opened")
    _no_tracebacks(events)


MALFORMED = {
    "no header at all": (b"a1 LOGIN user pass\r\n", "no PROXY header"),
    "TLS hello instead": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "no PROXY header"),
    "bad v1 address": (b"PROXY TCP4 300.1.1.1 127.0.0.1 1 2\r\n", "invalid address"),
    "v1 without end": (b"PROXY UNKNOWN " + b"x" * 200, "without end"),
    "v2 bad version": (
        V2_SIGNATURE + b"\x11\x11" + struct.pack("!H", 12) + b"\0" * 12,
        "unsupported version",
    ),
    "v2 too long": (V2_SIGNATURE + b"\x21\x11\xff\xff", "at most"),
    "v2 TLV overrun": (
        V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 15) + b"\0" * 12 + b"\x01\x00\x09",
        "runs past",
    ),
    "truncated v1, then closed": (v1("198.51.100.1", 1)[:20], "closed before"),
    "truncated v2, then closed": (v2("198.51.100.1", 1)[:20], "closed before"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_and_truncated_headers_close_with_one_line(
    behind_balancer: RunningProxy, events: Events, case: str
) -> None:
    data, reason = MALFORMED[case]

    run = functools.partial(
        _what_the_proxy_says, behind_balancer.address, data, close="then closed" in case
    )
    assert await trio.to_thread.run_sync(run) == b""
    (refusal,) = await events.wait_for("proxy_header_refused")
    assert reason in refusal["reason"]
    assert refusal["client"].startswith("127.0.0.1:")
    assert not events.named("session_opened")
    _no_tracebacks(events)


async def test_header_that_never_completes_times_out(
    proxy_factory: ProxyFactory, events: Events
) -> None:
    config = Config(
        listen=Listen(Address("127.0.0.1", 0), True, TRUSTED),
        limits=Limits(proxy_header_timeout=0.3),
    )
    proxy = await proxy_factory(config)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(*proxy.address)
        await stream.send_all(v2("198.51.100.1", 1)[:17])  # and then nothing
        assert await stream.receive_some(100) == b""  # closed by the proxy
    await stream.aclose()
    (refusal,) = await events.wait_for("proxy_header_refused")
    assert refusal["reason"] == "no complete PROXY header within 0.3s"
    _no_tracebacks(events)


async def test_local_header_keeps_the_connection_address(
    dovecot: Dovecot, behind_balancer: RunningProxy, events: Events
) -> None:
    a = new_account(dovecot)
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"  # LOCAL: the balancer's own health check

    def run() -> None:
        with RawIMAP(behind_balancer.address, preamble=local) as c:
            assert c.command(b"L", _login_line(a)[2:-2])[-1].startswith(b"L OK")

    await trio.to_thread.run_sync(run)
    (closed,) = await events.wait_for("session_closed")
    assert closed["client"].startswith("127.0.0.1:") and closed["user"] == a.name


async def test_plain_listener_without_proxy_protocol_is_unchanged(
    dovecot: Dovecot, proxy: RunningProxy, events: Events
) -> None:
    # a client that happens to start with a PROXY line is relayed as IMAP (Dovecot says BAD)
    def run() -> list[bytes]:
        with RawIMAP(proxy.address) as c:
            return c.command(b"PROXY", b"TCP4 1.2.3.4 5.6.7.8 1 2")

    answer = await trio.to_thread.run_sync(run)
    assert answer[-1].startswith(b"PROXY BAD") or answer[-1].startswith(b"* BAD")
    assert not events.named("proxy_header_refused")


async def test_implicit_tls_listener_reads_the_header_before_the_handshake(
    dovecot: Dovecot, proxy_factory: ProxyFactory, pki: PKI, events: Events
) -> None:
    a = new_account(dovecot)
    config = Config(
        listen_tls=TLSListen(Address("127.0.0.1", 0), pki.cert, pki.key, True, TRUSTED),
    )
    running = await proxy_factory(config)
    tls_address = running.proxy.bound[1]
    header = v1("198.51.100.99", 45678)

    def run() -> None:
        ctx = pki.client_context()
        with socket.create_connection(tls_address, timeout=10) as raw:
            raw.sendall(header)
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(4096).startswith(b"* OK")
                tls.sendall(_login_line(a))
                assert _read_tagged(tls, b"L").startswith(b"L OK")
        # header and ClientHello in one segment: the hello must not be eaten with the header
        with socket.create_connection(tls_address, timeout=10) as raw:
            assert _tls_in_one_write(raw, ctx, header, _login_line(a)).startswith(b"L OK")
        # and without the header the handshake never starts: refused, no TLS alert
        with (
            socket.create_connection(tls_address, timeout=10) as raw,
            pytest.raises((ssl.SSLError, OSError)),
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.recv(10)

    await trio.to_thread.run_sync(run)
    with trio.fail_after(5):
        while len(events.named("session_closed")) < 2:
            await trio.sleep(0.01)
    for closed in events.named("session_closed"):
        assert closed["client"] == "198.51.100.99:45678" and "tls_version" in closed
    (refusal,) = events.named("proxy_header_refused")
    assert refusal["listener"] == "tls" and "no PROXY header" in refusal["reason"]
    _no_tracebacks(events)


def _tls_in_one_write(raw: socket.socket, ctx: ssl.SSLContext, header: bytes, line: bytes) -> bytes:
    """TLS by hand (memory BIOs), so that the PROXY header and the ClientHello go out in
    one ``sendall``; then ``line`` is sent and the first line of the answer returned."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    raw.sendall(header + outgoing.read())

    def pump() -> None:  # send what TLS produced, feed it what arrived
        if out := outgoing.read():
            raw.sendall(out)
        chunk = raw.recv(65536)
        assert chunk, "closed"
        incoming.write(chunk)

    for _ in range(20):
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump()
    received, sent = b"", False
    for _ in range(100):
        with contextlib.suppress(ssl.SSLWantReadError):
            received += tls.read(65536)
        if b"\r\n" in received and not sent:  # the greeting: now the command
            assert received.startswith(b"* OK"), received
            tls.write(line)
            received, sent = b"", True
        elif b"\r\n" in received:
            return received.split(b"\r\n")[0]
        pump()
    raise AssertionError("no answer")


async def test_reload_applies_new_trusted_networks_to_new_connections(
    dovecot: Dovecot, nursery: trio.Nursery, events: Events
) -> None:
    def config(trusted: str) -> Config:
        return Config(
            listen=Listen(Address("127.0.0.1", 0), True, (ipaddress.ip_network(trusted),)),
            upstream=Upstream(Address(*dovecot.address)),
            metrics=MetricsConfig(address=None),
        )

    current = config("127.0.0.1/32")
    proxy = Proxy(current, Telemetry(None), reload_config=lambda: current)
    (address,) = await nursery.start(proxy.serve)
    header = v2("198.51.100.5", 7)

    def greeting(source: str) -> bytes:
        return _what_the_proxy_says(address, header + b"Z LOGOUT\r\n", source=source)[:4]

    assert await trio.to_thread.run_sync(greeting, "127.0.0.1") == b"* OK"
    assert await trio.to_thread.run_sync(greeting, "127.0.0.3") == b""
    current = config("127.0.0.3/32")
    assert proxy.reload()
    assert await trio.to_thread.run_sync(greeting, "127.0.0.3") == b"* OK"
    assert await trio.to_thread.run_sync(greeting, "127.0.0.1") == b""
    assert len(events.named("proxy_header_refused")) == 2
    assert proxy.bound == [address]  # the listener stayed where it was
    proxy.stop()
