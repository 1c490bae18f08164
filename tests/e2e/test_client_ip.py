"""``upstream.client_ip``: Dovecot's login line shows the original client (``rip=``) with a
PROXY v2 header (``haproxy = yes`` listener) or an ID command (``login_trusted_networks``),
on plain, STARTTLS and implicit-TLS upstream legs. Client addresses are distinct loopback
addresses (127.0.0.x as the source of the client's socket)."""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Callable
from typing import Literal

import pytest
import trio

from imapproxy.config.loader import Address, Config, Listen, Upstream
from imapproxy.demo.dovecot import Dovecot
from imapproxy.wire.proxy_protocol import encode_v2
from tests.support.accounts import Account, new_account
from tests.support.rawimap import RawIMAP
from tests.support.tls import (  # noqa: F401 - the *_fixture imports register the fixtures
    PKI,
    Events,
    edge_dovecot_fixture,
    events_fixture,
    log_since,
    pki_fixture,
)

from .conftest import ProxyFactory

_sources = (f"127.0.0.{n}" for n in itertools.count(20))  # one fresh client address per use
Mode = Literal["proxy_v2", "id"]
TLSMode = Literal["none", "starttls", "implicit"]


def _upstream(server: Dovecot, mode: Mode | Literal["none"], tls: TLSMode, pki: PKI) -> Upstream:
    if tls == "implicit":
        address = server.tls_address
    else:
        address = server.haproxy_address if mode == "proxy_v2" else server.address
    assert address is not None
    if tls == "none":
        return Upstream(Address(*address), client_ip=mode)
    return Upstream(Address(*address), tls=tls, ca_file=pki.ca_file, client_ip=mode)


async def _login_line(log: Callable[[], str], user: str) -> str:
    with trio.fail_after(5):
        while True:
            for line in log().splitlines():
                if f"Login: user=<{user}>" in line:
                    return line
            await trio.sleep(0.02)


def _session(
    address: tuple[str, int], a: Account, source: str, *, preamble: bytes = b""
) -> list[bytes]:
    with RawIMAP(address, timeout=10, source=source, preamble=preamble) as c:
        out = [c.greeting]
        out += c.command(b"L", b"LOGIN %s %s" % (a.name.encode(), a.password.encode()))
        out += c.command(b"Z", b"LOGOUT")
        return out


@pytest.mark.parametrize(
    ("mode", "tls"),
    [
        ("proxy_v2", "none"),
        ("proxy_v2", "starttls"),
        ("id", "none"),
        ("id", "starttls"),
        ("id", "implicit"),
    ],
)
async def test_dovecot_sees_the_original_client(
    edge_dovecot: Dovecot, proxy_factory: ProxyFactory, pki: PKI, mode: Mode, tls: TLSMode
) -> None:
    a = new_account(edge_dovecot)
    log = log_since(edge_dovecot)
    running = await proxy_factory(Config(upstream=_upstream(edge_dovecot, mode, tls, pki)))
    source = next(_sources)
    out = await trio.to_thread.run_sync(_session, running.address, a, source)
    # the client sees the greeting and its own answers only: nothing of the proxy's ID
    assert out[0].startswith(b"* OK") and out[1].startswith(b"L OK"), out
    assert not any(b"imapproxy-id" in line or line.startswith(b"* ID") for line in out)
    line = await _login_line(log, a.name)
    assert f"rip={source}," in line, line
    assert "lip=127.0.0.1," in line
    assert (", TLS," in line) == (tls != "none"), line


async def test_without_client_ip_dovecot_sees_the_proxy(
    edge_dovecot: Dovecot, proxy_factory: ProxyFactory, pki: PKI
) -> None:
    a = new_account(edge_dovecot)
    log = log_since(edge_dovecot)
    running = await proxy_factory(Config(upstream=_upstream(edge_dovecot, "none", "none", pki)))
    out = await trio.to_thread.run_sync(_session, running.address, a, next(_sources))
    assert out[1].startswith(b"L OK")
    assert "rip=127.0.0.1," in await _login_line(log, a.name)


@pytest.mark.parametrize("tls", ["none", "starttls"])
async def test_client_id_is_relayed_and_cannot_override_the_address(
    edge_dovecot: Dovecot, proxy_factory: ProxyFactory, pki: PKI, tls: TLSMode
) -> None:
    a = new_account(edge_dovecot)
    log = log_since(edge_dovecot)
    running = await proxy_factory(Config(upstream=_upstream(edge_dovecot, "id", tls, pki)))
    source = next(_sources)

    # the client's own ID, claiming another address, pipelined with LOGIN before the
    # greeting: both wait in the socket until the proxy's ID exchange is over
    early = b'i ID ("name" "attacker" "x-originating-ip" "10.6.6.6")\r\nL LOGIN %s %s\r\n' % (
        a.name.encode(),
        a.password.encode(),
    )

    def run() -> list[bytes]:
        with RawIMAP(running.address, timeout=10, source=source, preamble=early) as c:
            return [c.greeting, *c.until_tagged(b"i"), *c.until_tagged(b"L")]

    out = await trio.to_thread.run_sync(run)
    assert out[0].startswith(b"* OK") and b"Dovecot" in out[0], out
    assert out[1].startswith(b'* ID ("name" "Dovecot")') and out[2].startswith(b"i OK"), out
    assert out[-1].startswith(b"L OK")
    line = await _login_line(log, a.name)
    assert f"rip={source}," in line and "10.6.6.6" not in line


async def test_proxy_protocol_in_and_out_carries_the_balancer_client(
    edge_dovecot: Dovecot, proxy_factory: ProxyFactory, pki: PKI, events: Events
) -> None:
    """A balancer (us, from 127.0.0.1) says the client is 127.0.0.77; the proxy passes that
    on, not the balancer's address."""
    a = new_account(edge_dovecot)
    log = log_since(edge_dovecot)
    config = Config(
        listen=Listen(Address("127.0.0.1", 0), True, (ipaddress.ip_network("127.0.0.1/32"),)),
        upstream=_upstream(edge_dovecot, "proxy_v2", "none", pki),
    )
    running = await proxy_factory(config)
    ip = ipaddress.ip_address
    header = encode_v2((ip("127.0.0.77"), 41000), (ip("127.0.0.1"), 143))
    out = await trio.to_thread.run_sync(
        lambda: _session(running.address, a, "127.0.0.1", preamble=header)
    )
    assert out[1].startswith(b"L OK")
    assert "rip=127.0.0.77," in await _login_line(log, a.name)
    (closed,) = await events.wait_for("session_closed")
    assert closed["client"] == "127.0.0.77:41000"


async def test_upstream_bye_during_id_is_an_upstream_error(
    proxy_factory: ProxyFactory, nursery: trio.Nursery, events: Events
) -> None:
    """A scripted server (Dovecot never says BYE to ID): greeting, then BYE to the ID."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    seen: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        await stream.send_all(b"* OK fake ready\r\n")
        seen.append(await stream.receive_some(4096))
        await stream.send_all(b"* BYE go away\r\n")
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, serve, listeners)
    port = listeners[0].socket.getsockname()[1]
    running = await proxy_factory(
        Config(upstream=Upstream(Address("127.0.0.1", port), client_ip="id"))
    )
    stream = await trio.open_tcp_stream(*running.address)
    with trio.fail_after(5):
        said = b""
        while chunk := await stream.receive_some(4096):
            said += chunk
    assert said == b"* BYE [UNAVAILABLE] Mail server unavailable\r\n"
    assert re.match(
        rb'imapproxy-id ID \("x-originating-ip" "127\.0\.0\.1" "x-originating-port" "\d+" '
        rb'"x-connected-ip" "127\.0\.0\.1" "x-connected-port" "\d+"\)\r\n\Z',
        seen[0],
    ), seen
    (unavailable,) = await events.wait_for("upstream_unavailable")
    assert unavailable["reason"] == "setup" and "BYE" in unavailable["detail"]
