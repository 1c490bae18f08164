"""TLS sessions served by the readiness hub (``server.hub_pump`` over ``net.receiver`` and
``net.fastio`` on the legs' ``ssl.SSLSocket``), through the real Dovecot: the implicit-TLS
listener, client STARTTLS (back to the hub after the handshake), upstream TLS; pipelined
commands one byte per TLS record, a large FETCH through a slow TLS reader, close_notify
against an abrupt close, and the rare cases the hub leaves to the pumps. (A TLS 1.3 key
update is not tested: Python's ssl module cannot send one.)"""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
from pathlib import Path

import pytest
import trio

from imapproxy.config.loader import (
    Address,
    ClientTLS,
    Config,
    Limits,
    MetricsConfig,
    TLSListen,
    Upstream,
)
from imapproxy.demo.dovecot import Dovecot
from imapproxy.net.hub import IN, Hub
from imapproxy.net.tls_socket import SocketTLSStream
from imapproxy.server.driver import SessionDriver
from imapproxy.server.listener import Proxy
from imapproxy.telemetry.recorder import Telemetry
from tests.conftest import SeedMessage
from tests.support.accounts import Account, new_account
from tests.support.hub_checks import all_tasks, assert_a_slow_reader_stops_upstream_reads
from tests.support.stream_client import StreamClient, tcp_connect
from tests.support.tls import (  # noqa: F401 - the *_fixture imports register the fixtures
    PKI,
    pki_fixture,
    tls_dovecot_fixture,
)

pytestmark = pytest.mark.usefixtures("hub_mode")  # each test in both modes (conftest.py)

_TAGGED = re.compile(rb"(?m)^(\w+) (OK|NO|BAD) ")


async def _start(nursery: trio.Nursery, pki: PKI, upstream: Upstream) -> Proxy:
    cfg = Config(limits=Limits(max_sessions_per_ip=0, max_sessions_per_user=0))
    cfg = dataclasses.replace(
        cfg,
        listen=dataclasses.replace(cfg.listen, address=Address("127.0.0.1", 0)),
        listen_tls=TLSListen(Address("127.0.0.1", 0), pki.cert, pki.key),
        client_tls=ClientTLS(pki.cert, pki.key),
        upstream=upstream,
        metrics=MetricsConfig(address=None),
    )
    proxy = Proxy(cfg, Telemetry(None))
    await nursery.start(proxy.serve)
    return proxy


@pytest.fixture
async def proxy(nursery: trio.Nursery, dovecot: Dovecot, pki: PKI) -> Proxy:
    return await _start(nursery, pki, Upstream(address=Address(*dovecot.address)))


class Client(StreamClient):
    """An IMAP client over TLS (trio.SSLStream), implicit or after STARTTLS."""

    def __init__(self, tcp: trio.SocketStream, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.tcp = tcp

    @classmethod
    async def connect(
        cls, proxy: Proxy, pki: PKI, *, starttls: bool = False, rcvbuf: int | None = None
    ) -> Client:
        tcp = await tcp_connect(proxy.bound[0] if starttls else proxy.bound[1], rcvbuf)
        client = cls(tcp, tcp)
        if starttls:
            await client.until(b"\r\n")
            assert (await client.command(b"s", b"STARTTLS")).startswith(b"s OK")
            assert client.buf == b""
        ssl_stream = trio.SSLStream(tcp, pki.client_context(), server_hostname="localhost")
        await ssl_stream.do_handshake()
        client.stream = ssl_stream
        if not starttls:
            await client.until(b"\r\n")
        return client


def _driver(proxy: Proxy) -> SessionDriver:
    [driver] = proxy.sessions.drivers
    return driver


def _in_hub(driver: SessionDriver) -> bool:
    return driver._hub is not None and Hub.current().mask(driver._fds[0]) != 0


async def _ended(proxy: Proxy) -> None:
    with trio.fail_after(10):
        while proxy.active:
            await trio.sleep(0.01)


def _pump_tasks() -> list[str]:
    return [task.name for task in all_tasks() if "._pump" in task.name]


@pytest.mark.parametrize("starttls", [False, True], ids=["implicit", "starttls"])
async def test_tls_session_is_served_by_the_hub(
    proxy: Proxy, pki: PKI, imap_user: Account, starttls: bool
) -> None:
    client = await Client.connect(proxy, pki, starttls=starttls)
    await client.login(imap_user)
    driver = _driver(proxy)
    assert isinstance(driver.client, SocketTLSStream)
    hub = Hub.current()
    client_fd, upstream_fd = driver._fds
    assert client_fd == driver.client.fileno()
    assert hub.mask(client_fd) == IN and hub.mask(upstream_fd) == IN
    assert not _pump_tasks()
    passes = hub.passes
    for i in range(5):
        assert (await client.command(b"n%d" % i, b"NOOP")).startswith(b"n%d OK" % i)
    assert hub.passes > passes and not _pump_tasks() and _in_hub(driver)
    assert driver._tls_info["tls_version"] == "TLSv1.3"
    await client.stream.send_all(b"z LOGOUT\r\n")
    assert b"z OK" in await client.tagged(b"z")
    await _ended(proxy)
    assert driver.close_reason == "upstream closed the connection"
    assert hub.mask(client_fd) == 0 and hub.mask(upstream_fd) == 0


async def test_pipelined_commands_one_byte_per_tls_record(
    proxy: Proxy, pki: PKI, imap_user: Account, seed_message: SeedMessage
) -> None:
    messages = [seed_message(imap_user, size=5_000 + 997 * i) for i in range(3)]
    client = await Client.connect(proxy, pki)
    await client.login(imap_user)
    kinds = [b"NOOP", b"FETCH %d (BODY.PEEK[])", b"STATUS INBOX (MESSAGES)"]
    batch = b"".join(
        b"t%d %s\r\n" % (i, kinds[i % 3].replace(b"%d", b"%d" % (i // 3 % 3 + 1)))
        for i in range(30)
    )
    for i in range(len(batch)):  # one TLS record per byte: reads end anywhere
        await client.stream.send_all(batch[i : i + 1])
    got = b""
    for i in range(30):
        if not re.search(rb"(?m)^t%d " % i, got):
            got += await client.tagged(b"t%d" % i)
    assert sorted(m.group(1) for m in _TAGGED.finditer(got)) == sorted(
        b"t%d" % i for i in range(30)
    )
    fetched = [
        got.count(b"* %d FETCH (BODY[] {%d}\r\n%s)" % (n, len(message), message))
        for n, message in enumerate(messages, 1)
    ]
    assert fetched == [4, 3, 3]  # t1, t10, t19, t28 fetch 1; t4, t13, t22 fetch 2; ...
    assert _in_hub(_driver(proxy)) and not _pump_tasks()


async def test_large_fetch_through_a_slow_tls_reader(
    proxy: Proxy, pki: PKI, imap_user: Account, seed_message: SeedMessage
) -> None:
    size = 8 * 1024 * 1024
    message = seed_message(imap_user, size=size)
    client = await Client.connect(proxy, pki, rcvbuf=64 * 1024)
    await client.login(imap_user)
    driver = _driver(proxy)
    await assert_a_slow_reader_stops_upstream_reads(driver, client.stream, size)
    got = b""
    with trio.fail_after(30):  # a slow reader: small reads, with pauses
        while b"\r\nf OK" not in got[-200:]:
            chunk = await client.stream.receive_some(16384)
            assert chunk
            got += chunk
            if len(got) % 7 == 0:
                await trio.sleep(0.001)
    assert b"{%d}\r\n%s)" % (len(message), message) in got
    assert (await client.command(b"n", b"NOOP")).startswith(b"n OK")
    assert _in_hub(driver) and Hub.current().mask(driver._fds[1]) == IN and not _pump_tasks()


@pytest.mark.parametrize("close_notify", [True, False], ids=["close_notify", "abrupt"])
async def test_close_notify_and_abrupt_close_end_the_session(
    proxy: Proxy, pki: PKI, imap_user: Account, close_notify: bool
) -> None:
    client = await Client.connect(proxy, pki)
    await client.login(imap_user)
    driver = _driver(proxy)
    assert _in_hub(driver)
    tls = driver.client
    assert isinstance(tls, SocketTLSStream)
    if close_notify:
        await client.stream.aclose()  # trio sends close_notify, then closes
    else:
        client.tcp.socket.shutdown(socket.SHUT_WR)  # FIN without close_notify
    await _ended(proxy)
    if close_notify:
        assert driver.close_reason == "client closed the connection"
        assert tls._broken is None  # a clean end: the proxy answered with its close_notify
    else:
        assert driver.close_reason.startswith("client")
        assert isinstance(tls._broken, ssl.SSLError)  # what the hub saw, for aclose
        client.tcp.socket.close()
    assert driver._hub is None and tls._closed


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_upstream_tls_session_is_served_by_the_hub(
    nursery: trio.Nursery, tls_dovecot: Dovecot, pki: PKI, mode: str, tmp_path: Path
) -> None:
    address = tls_dovecot.address if mode == "starttls" else tls_dovecot.tls_address
    assert address is not None
    upstream = Upstream(Address(*address), tls=mode, ca_file=pki.ca_file)  # type: ignore[arg-type]
    proxy = await _start(nursery, pki, upstream)
    account = new_account(tls_dovecot)
    body = b"Subject: over upstream TLS\r\n\r\n" + b"x" * 300_000 + b"\r\n"
    tls_dovecot.deliver(account.name, body)
    client = await Client.connect(proxy, pki)
    driver = _driver(proxy)
    assert _in_hub(driver)  # the synthesized greeting went through the hub
    await client.login(account)
    got = await client.command(b"f", b"FETCH 1 (BODY.PEEK[])")
    assert b"{%d}\r\n%s)" % (len(body), body) in got
    assert _in_hub(driver) and not _pump_tasks()
    assert driver._tls_info["upstream_tls_version"] in ("TLSv1.2", "TLSv1.3")


class _WantsOnce:
    """A stand-in for a leg's SSLSocket whose next send or recv raises ``exc`` once (what a
    renegotiation would do), then the real socket's."""

    def __init__(self, sock: ssl.SSLSocket, exc: type[ssl.SSLError]) -> None:
        self.sock = sock
        self.exc: type[ssl.SSLError] | None = exc

    def _once(self) -> None:
        if self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc("simulated")

    def send(self, data: bytes) -> int:
        self._once()
        return self.sock.send(data)

    def recv(self, n: int) -> bytes:
        self._once()
        return self.sock.recv(n)

    def pending(self) -> int:
        return self.sock.pending()

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.mark.parametrize("side", ["write", "read"])
async def test_a_tls_leg_that_must_wait_the_other_way_goes_to_the_pumps(
    proxy: Proxy, pki: PKI, imap_user: Account, side: str
) -> None:
    """``SSLWantReadError`` on a write, ``SSLWantWriteError`` on a read: the hub hands the
    session to the pumps, which go on from there, nothing lost or repeated."""
    client = await Client.connect(proxy, pki)
    await client.login(imap_user)
    driver = _driver(proxy)
    assert _in_hub(driver)
    if side == "write":
        sock = driver._to_client._raw
        assert isinstance(sock, ssl.SSLSocket)
        driver._to_client._raw = _WantsOnce(sock, ssl.SSLWantReadError)  # type: ignore[assignment]
    else:
        sock = driver._from_client._sock
        assert isinstance(sock, ssl.SSLSocket)
        fake = _WantsOnce(sock, ssl.SSLWantWriteError)
        driver._from_client._sock = driver._from_client._ssl = fake  # type: ignore[assignment]
    assert (await client.command(b"n1", b"NOOP")).startswith(b"n1 OK")
    with trio.fail_after(5):
        while not _pump_tasks():
            await trio.sleep(0.01)
    assert driver._hub is None
    for i in range(2, 5):
        assert (await client.command(b"n%d" % i, b"NOOP")).startswith(b"n%d OK" % i)
    await client.stream.send_all(b"z LOGOUT\r\n")
    assert b"z OK" in await client.tagged(b"z")
    await _ended(proxy)
