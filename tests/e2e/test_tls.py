"""TLS on both legs against real Dovecot (trustme certificates), plus scripted fake servers
only for what Dovecot cannot be made to do: withhold or refuse STARTTLS, inject bytes."""

from __future__ import annotations

import base64
import functools
import imaplib
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
import trio

from imapproxy.config.loader import (
    Address,
    ClientTLS,
    Config,
    Listen,
    MetricsConfig,
    TLSListen,
    Upstream,
)
from imapproxy.demo.dovecot import Dovecot
from imapproxy.server.listener import Proxy
from imapproxy.telemetry.metrics import Metrics
from imapproxy.telemetry.recorder import Telemetry
from tests.support.accounts import Account, new_account
from tests.support.messages import make_message
from tests.support.rawimap import RawIMAP
from tests.support.tls import (  # noqa: F401 - the *_fixture imports register the fixtures
    PKI,
    Events,
    events_fixture,
    log_since,
    pki_fixture,
    tls_dovecot_fixture,
)

from .conftest import ProxyFactory, RunningProxy

MBSYNC = shutil.which("mbsync")
_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE)
BYE_UNAVAILABLE = b"* BYE [UNAVAILABLE] Mail server unavailable\r\n"
TLSMode = Literal["starttls", "implicit"]


def _upstream(server: Dovecot, mode: TLSMode, ca_file: Path, **kw: object) -> Upstream:
    address = server.address if mode == "starttls" else server.tls_address
    assert address is not None
    return Upstream(Address(*address), tls=mode, ca_file=ca_file, **kw)  # type: ignore[arg-type]


def _listen_tls(pki: PKI) -> TLSListen:
    return TLSListen(Address("127.0.0.1", 0), pki.cert, pki.key)


def _tls_address(proxy: RunningProxy) -> tuple[str, int]:
    return proxy.proxy.bound[1]  # bound[0] is the plaintext listener


async def _until_closed(address: tuple[str, int], send: bytes = b"") -> bytes:
    stream = await trio.open_tcp_stream(*address)
    data = bytearray()
    with trio.fail_after(10):
        if send:
            await stream.send_all(send)
        while chunk := await stream.receive_some(65536):
            data += chunk
    await stream.aclose()
    return bytes(data)


async def _dovecot_login_line(log: Callable[[], str], user: str) -> str:
    with trio.fail_after(5):
        while True:
            for line in log().splitlines():
                if f"Login: user=<{user}>" in line:
                    return line
            await trio.sleep(0.02)


def _fetch_session(m: imaplib.IMAP4, account: Account, body: bytes) -> None:
    assert m.login(account.name, account.password)[0] == "OK"
    assert m.select("INBOX") == ("OK", [b"1"])
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and isinstance(data[0], tuple) and data[0][1] == body
    assert m.logout()[0] == "BYE"


# --- upstream leg ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_plaintext_client_reaches_tls_only_dovecot(
    mode: TLSMode, tls_dovecot: Dovecot, pki: PKI, proxy_factory: ProxyFactory, events: Events
) -> None:
    account = new_account(tls_dovecot)
    body = make_message(40_000, subject=f"over {mode}")
    tls_dovecot.deliver(account.name, body)
    proxy = await proxy_factory(Config(upstream=_upstream(tls_dovecot, mode, pki.ca_file)))
    dovecot_log = log_since(tls_dovecot)

    def session() -> None:
        with imaplib.IMAP4(*proxy.address, timeout=10) as m:
            # Dovecot lists AUTH=PLAIN only over TLS: these are the post-TLS capabilities.
            assert "AUTH=PLAIN" in m.capabilities
            assert "STARTTLS" not in m.capabilities and "LOGINDISABLED" not in m.capabilities
            _fetch_session(m, account, body)

    await trio.to_thread.run_sync(session)
    login = await _dovecot_login_line(dovecot_log, account.name)
    assert ", TLS," in login, login
    (closed,) = await events.wait_for("session_closed")
    assert closed["upstream_tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert closed["upstream_tls_cipher"]
    assert "tls_version" not in closed  # the client leg was plaintext


async def test_same_dovecot_refuses_the_login_without_the_upgrade(
    tls_dovecot: Dovecot, proxy_factory: ProxyFactory
) -> None:
    # The control for the test above: only the upgrade lets this LOGIN through.
    account = new_account(tls_dovecot)
    proxy = await proxy_factory(Config(upstream=Upstream(Address(*tls_dovecot.address))))

    def session() -> None:
        with (
            imaplib.IMAP4(*proxy.address, timeout=10) as m,
            pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"),
        ):
            m.login(account.name, account.password)

    await trio.to_thread.run_sync(session)


@pytest.mark.parametrize(
    ("mode", "trust", "server_name", "expected"),
    [
        ("starttls", "other", None, "CERTIFICATE_VERIFY_FAILED"),
        ("implicit", "other", None, "CERTIFICATE_VERIFY_FAILED"),
        ("implicit", "test", "wrong.example", "Hostname mismatch"),
    ],
)
async def test_unverifiable_upstream_gets_bye_and_log_line(
    mode: TLSMode,
    trust: str,
    server_name: str | None,
    expected: str,
    tls_dovecot: Dovecot,
    pki: PKI,
    proxy_factory: ProxyFactory,
    events: Events,
) -> None:
    ca_file = pki.other_ca_file if trust == "other" else pki.ca_file
    upstream = _upstream(tls_dovecot, mode, ca_file, server_name=server_name)
    metrics = Metrics(process_metrics=False)
    proxy = await proxy_factory(Config(upstream=upstream), Telemetry(metrics))
    assert await _until_closed(proxy.address) == BYE_UNAVAILABLE
    (line,) = events.named("upstream_unavailable")
    assert line["level"] == "WARNING" and line["reason"] == "tls"
    assert expected in line["detail"], line["detail"]
    sample = metrics.registry.get_sample_value
    assert sample("imapproxy_upstream_errors_total", {"reason": "tls"}) == 1
    assert sample("imapproxy_tls_handshakes_total", {"side": "upstream", "result": "failed"}) == 1


async def test_verify_false_warns_at_start_and_connects(
    tls_dovecot: Dovecot, pki: PKI, proxy_factory: ProxyFactory, events: Events
) -> None:
    account = new_account(tls_dovecot)
    body = make_message(2_000, subject="unverified")
    tls_dovecot.deliver(account.name, body)
    upstream = _upstream(tls_dovecot, "starttls", pki.other_ca_file, verify=False)
    proxy = await proxy_factory(Config(upstream=upstream))
    (warning,) = events.named("upstream_verify_disabled")  # before any session
    assert warning["level"] == "WARNING"

    def session() -> None:
        with imaplib.IMAP4(*proxy.address, timeout=10) as m:
            _fetch_session(m, account, body)

    await trio.to_thread.run_sync(session)
    assert len(events.named("upstream_verify_disabled")) == 1  # once, not per session


# --- scripted upstreams for the STARTTLS faults Dovecot cannot produce --------------------
class FakeUpstream:
    """Greets, answers CAPABILITY and STARTTLS as scripted (``upgrade``: then really starts
    TLS), answers anything else OK, and records every byte it gets."""

    def __init__(
        self,
        pki: PKI,
        greeting: bytes,
        starttls_reply: bytes = b"",
        caps: bytes = b"",
        *,
        upgrade: bool = False,
    ) -> None:
        self.pki = pki
        self.greeting = greeting
        self.starttls_reply = starttls_reply  # b"%s" is replaced by the proxy's tag
        self.caps = caps
        self.upgrade = upgrade
        self.received = bytearray()
        self.plaintext = bytearray()  # what arrived before the upgrade
        self.done = trio.Event()

    async def serve(self, nursery: trio.Nursery) -> Address:
        serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
        listeners = await nursery.start(serve, self.handle, 0)
        return Address("127.0.0.1", listeners[0].socket.getsockname()[1])

    async def handle(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        try:
            await stream.send_all(self.greeting)
            buf = b""
            while chunk := await stream.receive_some(65536):
                self.received += chunk
                if stream is tcp:
                    self.plaintext += chunk
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    tag, _, command = line.strip().partition(b" ")
                    if command.upper() == b"CAPABILITY":
                        await stream.send_all(
                            b"* CAPABILITY %s\r\n%s OK done\r\n" % (self.caps, tag)
                        )
                    elif command.upper() == b"STARTTLS":
                        await stream.send_all(self.starttls_reply.replace(b"%s", tag))
                        if not self.upgrade:
                            continue
                        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                        ctx.load_cert_chain(self.pki.cert, self.pki.key)
                        stream = trio.SSLStream(stream, ctx, server_side=True)
                        self.caps = b"IMAP4rev1 AUTH=PLAIN"
                    else:
                        await stream.send_all(tag + b" OK fake\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.done.set()


STARTTLS_OK = b"%s OK Begin TLS\r\n"


@pytest.mark.parametrize(
    ("greeting", "starttls_reply", "caps", "detail"),
    [
        pytest.param(
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n",
            STARTTLS_OK,
            b"",
            "does not offer STARTTLS",
            id="greeting-without-starttls",
        ),
        pytest.param(
            b"* OK fake\r\n",
            STARTTLS_OK,
            b"IMAP4rev1",
            "does not offer STARTTLS",
            id="caps-without",
        ),
        pytest.param(
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake\r\n",
            b"%s NO not today\r\n",
            b"",
            "refused STARTTLS",
            id="starttls-refused",
        ),
        pytest.param(
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake\r\n",
            b"%s OK Begin TLS\r\n* OK injected\r\n",  # one write: the server-side injection
            b"",
            "bytes after the STARTTLS OK",
            id="injection",
        ),
    ],
)
async def test_upstream_starttls_faults_close_without_plaintext_fallback(
    greeting: bytes,
    starttls_reply: bytes,
    caps: bytes,
    detail: str,
    pki: PKI,
    proxy_factory: ProxyFactory,
    nursery: trio.Nursery,
    events: Events,
) -> None:
    fake = FakeUpstream(pki, greeting, starttls_reply, caps)
    upstream = Upstream(await fake.serve(nursery), tls="starttls", ca_file=pki.ca_file)
    proxy = await proxy_factory(Config(upstream=upstream))
    # No greeting, no plaintext session: the client only ever sees the BYE...
    assert await _until_closed(proxy.address) == BYE_UNAVAILABLE
    with trio.fail_after(5):
        await fake.done.wait()
    # ...and the server only the proxy's own negotiation.
    assert re.fullmatch(rb"(tls\d (CAPABILITY|STARTTLS)\r\n)*", fake.received), fake.received
    (line,) = events.named("upstream_unavailable")
    assert line["reason"] == "tls" and detail in line["detail"], line


async def test_fake_upstream_starttls_succeeds_when_nothing_is_injected(
    pki: PKI, proxy_factory: ProxyFactory, nursery: trio.Nursery
) -> None:
    # The positive control for the faults above: the same fake, upgraded properly.
    greeting = b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake\r\n"
    fake = FakeUpstream(pki, greeting, STARTTLS_OK, upgrade=True)
    upstream = Upstream(await fake.serve(nursery), tls="starttls", ca_file=pki.ca_file)
    proxy = await proxy_factory(Config(upstream=upstream))

    def session() -> None:
        with RawIMAP(proxy.address, timeout=10) as imap:
            assert imap.greeting == b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n"
            assert imap.command(b"a", b"LOGIN user secret") == [b"a OK fake\r\n"]

    await trio.to_thread.run_sync(session)
    assert fake.plaintext == b"tls2 STARTTLS\r\n"  # the greeting offered it: no CAPABILITY
    assert fake.received.endswith(b"tls3 CAPABILITY\r\na LOGIN user secret\r\n")


# --- client leg --------------------------------------------------------------------------
async def test_client_starttls_with_imaplib(
    dovecot: Dovecot, pki: PKI, proxy_factory: ProxyFactory, events: Events
) -> None:
    account = new_account(dovecot)
    body = make_message(30_000, subject="starttls client")
    dovecot.deliver(account.name, body)
    proxy = await proxy_factory(Config(client_tls=ClientTLS(pki.cert, pki.key)))

    def session() -> None:
        with imaplib.IMAP4(*proxy.address, timeout=10) as m:
            assert "STARTTLS" in m.capabilities and "LOGINDISABLED" not in m.capabilities
            assert m.starttls(ssl_context=pki.client_context())[0] == "OK"
            assert "STARTTLS" not in m.capabilities  # imaplib asked again, over TLS
            _fetch_session(m, account, body)

    await trio.to_thread.run_sync(session)
    (closed,) = await events.wait_for("session_closed")
    assert closed["tls_version"] == "TLSv1.3" and closed["tls_cipher"]


async def test_implicit_tls_listener_with_imaplib(
    dovecot: Dovecot, pki: PKI, proxy_factory: ProxyFactory, events: Events
) -> None:
    account = new_account(dovecot)
    body = make_message(30_000, subject="implicit client")
    dovecot.deliver(account.name, body)
    config = Config(
        client_tls=ClientTLS(pki.cert, pki.key, require=True), listen_tls=_listen_tls(pki)
    )
    proxy = await proxy_factory(config)
    address = _tls_address(proxy)

    def session() -> None:
        with imaplib.IMAP4_SSL(*address, ssl_context=pki.client_context(), timeout=10) as m:
            # Already TLS: neither STARTTLS nor LOGINDISABLED (require: true is satisfied).
            assert "STARTTLS" not in m.capabilities and "LOGINDISABLED" not in m.capabilities
            _fetch_session(m, account, body)

    await trio.to_thread.run_sync(session)
    (closed,) = await events.wait_for("session_closed")
    assert closed["tls_version"] == "TLSv1.3" and closed["tls_cipher"]


async def test_client_tls_min_version_is_enforced(
    dovecot: Dovecot, pki: PKI, proxy_factory: ProxyFactory, events: Events
) -> None:
    config = Config(
        client_tls=ClientTLS(pki.cert, pki.key, min_version="TLSv1.3"), listen_tls=_listen_tls(pki)
    )
    proxy = await proxy_factory(config)
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def connect() -> None:
        with pytest.raises(ssl.SSLError):
            imaplib.IMAP4_SSL(*_tls_address(proxy), ssl_context=ctx, timeout=10)
        imaplib.IMAP4_SSL(*_tls_address(proxy), ssl_context=pki.client_context()).logout()

    await trio.to_thread.run_sync(connect)
    (failed,) = events.named("client_tls_failed")
    assert "UNSUPPORTED_PROTOCOL" in failed["error"], failed


def _starttls(imap: RawIMAP, ctx: ssl.SSLContext, tag: bytes = b"s") -> None:
    imap.send(tag + b" STARTTLS\r\n")
    assert imap.until_tagged(tag)[-1].startswith(tag + b" OK ")
    assert not imap._buf  # nothing the proxy sent after the OK was read as plaintext
    imap.sock = ctx.wrap_socket(imap.sock, server_hostname="localhost")


async def test_require_tls_refuses_login_until_starttls(
    dovecot: Dovecot, pki: PKI, proxy_factory: ProxyFactory
) -> None:
    account = new_account(dovecot)
    proxy = await proxy_factory(Config(client_tls=ClientTLS(pki.cert, pki.key, require=True)))
    login = b"LOGIN %s %s\r\n" % (account.name.encode(), account.password.encode())
    plain = base64.b64encode(b"\0%s\0%s" % (account.name.encode(), account.password.encode()))

    def session() -> None:
        with RawIMAP(proxy.address, timeout=10) as imap:
            caps = imap.greeting.split(b"]")[0].split()
            assert b"STARTTLS" in caps and b"LOGINDISABLED" in caps
            imap.send(b"a " + login)
            assert imap.until_tagged(b"a") == [b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"]
            imap.send(b"b AUTHENTICATE PLAIN " + plain + b"\r\n")
            assert imap.until_tagged(b"b") == [b"b NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"]
            _starttls(imap, pki.client_context())
            imap.send(b"c CAPABILITY\r\n")
            untagged, tagged = imap.until_tagged(b"c")
            words = untagged.split()
            assert b"STARTTLS" not in words and b"LOGINDISABLED" not in words
            assert b"AUTH=PLAIN" in words and tagged.startswith(b"c OK")
            imap.send(b"d " + login)
            assert imap.until_tagged(b"d")[-1].startswith(b"d OK")

    await trio.to_thread.run_sync(session)


@pytest.mark.parametrize("same_write", [True, False], ids=["same-write", "after-the-ok"])
async def test_client_bytes_after_starttls_are_never_commands(
    same_write: bool,
    pki: PKI,
    proxy_factory: ProxyFactory,
    nursery: trio.Nursery,
    events: Events,
) -> None:
    fake = FakeUpstream(pki, b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake\r\n")
    upstream = Upstream(await fake.serve(nursery))
    proxy = await proxy_factory(Config(upstream=upstream, client_tls=ClientTLS(pki.cert, pki.key)))
    stream = await trio.open_tcp_stream(*proxy.address)
    injected = b"b LOGIN user secret\r\n"
    with trio.fail_after(10):
        assert (await stream.receive_some(4096)).startswith(b"* OK ")
        if same_write:
            await stream.send_all(b"a STARTTLS\r\n" + injected)
        else:
            await stream.send_all(b"a STARTTLS\r\n")
            assert await stream.receive_some(4096) == b"a OK Begin TLS negotiation now\r\n"
            await stream.send_all(injected)  # plaintext where the ClientHello belongs
        rest = bytearray()
        while chunk := await stream.receive_some(4096):
            rest += chunk
        await fake.done.wait()
    if same_write:
        assert rest == b"* BYE data pipelined after STARTTLS\r\n"
    else:
        assert not rest or rest[:1] == b"\x15"  # at most a TLS alert, no IMAP response
    assert b"LOGIN" not in fake.received
    (closed,) = await events.wait_for("session_closed")
    reason = "pipelined after STARTTLS" if same_write else "client TLS handshake failed"
    assert reason in closed["reason"]


async def test_no_plaintext_reaches_the_client_between_starttls_ok_and_handshake(
    pki: PKI, proxy_factory: ProxyFactory, nursery: trio.Nursery
) -> None:
    # A NOOP answered late must not be written in plaintext after "OK Begin TLS".
    class SlowNoop(FakeUpstream):
        async def handle(self, tcp: trio.SocketStream) -> None:
            await tcp.send_all(self.greeting)
            assert (await tcp.receive_some(4096)).startswith(b"n NOOP")
            await trio.sleep(0.2)  # the client is between the OK and its ClientHello
            await tcp.send_all(b"n OK late\r\n")
            await tcp.receive_some(4096)

    fake = SlowNoop(pki, b"* OK [CAPABILITY IMAP4rev1] fake\r\n")
    upstream = Upstream(await fake.serve(nursery))
    proxy = await proxy_factory(Config(upstream=upstream, client_tls=ClientTLS(pki.cert, pki.key)))

    def session() -> None:
        with RawIMAP(proxy.address, timeout=10) as imap:
            imap.send(b"n NOOP\r\n")
            imap.send(b"s STARTTLS\r\n")
            # STARTTLS is answered in order, after the command sent before it (issue 8)
            assert imap.until_tagged(b"s") == [
                b"n OK late\r\n",
                b"s OK Begin TLS negotiation now\r\n",
            ]
            imap.sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                imap.sock.recv(4096)  # nothing in plaintext after the OK
            imap.sock.settimeout(10)
            imap.sock = pki.client_context().wrap_socket(imap.sock, server_hostname="localhost")
            assert imap.sock.version() is not None

    await trio.to_thread.run_sync(session)


async def test_tls_client_and_upstream_closing_together_do_not_wedge_the_proxy(
    pki: PKI, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Both legs hit EOF in one scheduler batch: the upstream pump ends the session while the
    # client pump meets its broken SSLStream, which raises without a checkpoint. Looping on
    # that once spun for ever. In a child process: a wedged event loop would hang this one.
    conns: list[trio.SocketStream] = []

    async def keep(stream: trio.SocketStream) -> None:
        await stream.send_all(b"* OK fake\r\n")
        conns.append(stream)
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), keep, 0)
    upstream = listeners[0].socket.getsockname()[1]
    tls_port, plain_port = _free_port(), _free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{plain_port}"\n'
        f'listen_tls: {{address: "127.0.0.1:{tls_port}", cert: "{pki.cert}", key: "{pki.key}"}}\n'
        f'upstream: "127.0.0.1:{upstream}"\nmetrics: {{address: null}}\nlog: {{level: error}}\n'
        "limits: {grace_period: 0}\n"
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "imapproxy", "--config", str(config)], stderr=subprocess.DEVNULL
    )
    closing: list[trio.SocketStream] = []

    async def greeted() -> trio.SocketStream:
        with trio.fail_after(5):  # a wedged proxy never greets again
            while True:
                try:
                    tcp = await trio.open_tcp_stream("127.0.0.1", tls_port)
                    break
                except OSError:  # still starting
                    await trio.sleep(0.05)
            client = trio.SSLStream(tcp, pki.client_context(), server_hostname="localhost")
            assert (await client.receive_some(4096)).startswith(b"* OK")
            while not conns:
                await trio.sleep(0.001)
        return tcp

    try:
        for _ in range(60):
            tcp = await greeted()
            # Both legs end in one step: FIN without close_notify, so the proxy's SSLStream
            # breaks; shutdown rather than close, as unread data would make close an RST.
            conns.pop().socket.close()
            tcp.socket.shutdown(socket.SHUT_WR)
            closing.append(tcp)
        await greeted()
    finally:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        proc.kill()  # a wedged event loop never handles SIGTERM
        await proc.wait()
        for tcp in closing:
            tcp.socket.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates on SIGHUP ----------------------------------------------------------------
async def test_sighup_reload_serves_the_renewed_certificate(
    dovecot: Dovecot, pki: PKI, tmp_path: Path, nursery: trio.Nursery, events: Events
) -> None:
    cert, key = pki.issue(tmp_path / "live")
    config = Config(
        listen=Listen(Address("127.0.0.1", 0)),
        listen_tls=TLSListen(Address("127.0.0.1", 0), cert, key),
        client_tls=ClientTLS(cert, key),
        upstream=Upstream(Address(*dovecot.address)),
        metrics=MetricsConfig(address=None),
    )
    proxy = Proxy(config, Telemetry(None), reload_config=lambda: config)
    plain, implicit = await nursery.start(proxy.serve)

    def served_certs() -> tuple[bytes, bytes]:
        ctx = pki.client_context()
        with RawIMAP(plain, timeout=10) as imap:
            _starttls(imap, ctx)
            assert isinstance(imap.sock, ssl.SSLSocket)
            via_starttls = imap.sock.getpeercert(binary_form=True)
        with (
            socket.create_connection(implicit, timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            via_implicit = tls.getpeercert(binary_form=True)
        assert via_starttls is not None and via_implicit is not None
        return via_starttls, via_implicit

    before = await trio.to_thread.run_sync(served_certs)
    assert before[0] == before[1] == cert_der(cert)
    pki.issue(tmp_path / "live")  # renewed in place, as certbot does
    assert proxy.reload()
    after = await trio.to_thread.run_sync(served_certs)
    assert after[0] == after[1] == cert_der(cert) != before[0]

    key.write_text("not a key\n")  # a broken renewal keeps the working certificate
    assert not proxy.reload()
    (failed,) = events.named("reload_failed")
    assert str(key) in failed["error"]
    assert await trio.to_thread.run_sync(served_certs) == after
    proxy.stop()


def cert_der(path: Path) -> bytes:
    pem = path.read_text()
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return ssl.PEM_cert_to_DER_cert(first)


# --- a real client through the implicit-TLS listener ---------------------------------------
@pytest.mark.skipif(MBSYNC is None, reason="mbsync not installed (apt-get install isync)")
async def test_mbsync_through_implicit_tls_listener(
    dovecot: Dovecot, pki: PKI, proxy_factory: ProxyFactory, tmp_path: Path, events: Events
) -> None:
    account = new_account(dovecot)
    bodies = {make_message(3_000 + i * 700, subject=f"mbsync {i}") for i in range(4)}
    for body in bodies:
        dovecot.deliver(account.name, body)
    dovecot.deliver(account.name, make_message(5_000, subject="archived"), folder="Archive")
    proxy = await proxy_factory(Config(listen_tls=_listen_tls(pki)))
    port = _tls_address(proxy)[1]
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount acct\nHost localhost\nPort {port}\nUser {account.name}\n"
        f"Pass {account.password}\nSSLType IMAPS\nCertificateFile {pki.ca_file}\n"
        "SystemCertificates no\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount acct\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Near\nSync Pull\n"
        "SyncState *\n"
    )
    run = functools.partial(
        subprocess.run, [MBSYNC or "mbsync", "-c", str(rc), "-a"], capture_output=True, timeout=60
    )
    result = await trio.to_thread.run_sync(run)
    assert result.returncode == 0, result.stderr.decode()
    # mbsync stores LF line ends and adds an X-TUID header; the rest is the stored bytes.
    synced = {_TUID.sub(b"", p.read_bytes(), count=1) for p in (local / "INBOX").glob("*/*")}
    assert synced == {body.replace(b"\r\n", b"\n") for body in bodies}
    assert len(list((local / "Archive").glob("*/*"))) == 1
    closed = await events.wait_for("session_closed")
    assert closed and closed[0]["tls_version"] == "TLSv1.3"
