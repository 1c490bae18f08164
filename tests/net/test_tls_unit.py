"""imapproxy.tls without sockets: context settings, and the upstream STARTTLS negotiation
against a scripted server over an in-memory stream (real TLS, trustme certificates)."""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from imapproxy.config.loader import Address, Upstream
from imapproxy.net.streams import UpstreamTLSError, tls_details
from imapproxy.net.tls import (
    HANDSHAKE_TIMEOUT,
    TLSSetupError,
    accept_handshake,
    client_starttls,
    server_context,
    upstream_context,
)
from imapproxy.net.upstream_dialogue import starttls_upstream
from imapproxy.telemetry.recorder import Telemetry


class Recorder(Telemetry):
    def __init__(self) -> None:
        super().__init__(None)
        self.handshakes: list[tuple[str, str]] = []

    def tls_handshake(self, side: str, result: str) -> None:
        self.handshakes.append((side, result))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("tls-unit")
    leaf = ca.issue_cert("imap.test")
    cert, key = base / "cert.pem", base / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def warnings() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("imapproxy.tls")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# --- contexts ----------------------------------------------------------------------------
def test_server_context_defaults_to_tls12_and_takes_settings(files: tuple[Path, Path]) -> None:
    assert server_context(*files).minimum_version is ssl.TLSVersion.TLSv1_2
    strict = server_context(*files, min_version="TLSv1.3", ciphers="ECDHE+AESGCM")
    assert strict.minimum_version is ssl.TLSVersion.TLSv1_3
    tls12 = {c["name"] for c in strict.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all("GCM" in name and "ECDHE" in name for name in tls12)


def test_server_context_with_mismatched_key_is_a_one_line_setup_error(
    files: tuple[Path, Path], ca: trustme.CA, tmp_path: Path
) -> None:
    other_key = tmp_path / "other.pem"
    ca.issue_cert("x.test").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(TLSSetupError, match="cannot use certificate") as info:
        server_context(files[0], other_key)
    assert isinstance(info.value, OSError) and str(other_key) in str(info.value)


def test_upstream_context_verifies_unless_told_not_to(warnings: list[logging.LogRecord]) -> None:
    address = Address("mail.test", 143)
    strict = upstream_context(Upstream(address, tls="starttls"))
    assert strict.verify_mode is ssl.CERT_REQUIRED and strict.check_hostname
    assert warnings == []
    lax = upstream_context(Upstream(address, tls="starttls", verify=False))
    assert lax.verify_mode is ssl.CERT_NONE and not lax.check_hostname
    assert [r.getMessage() for r in warnings] == ["upstream_verify_disabled"]


def test_unreadable_ca_file_is_a_setup_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(TLSSetupError, match=r"upstream\.ca_file"):
        upstream_context(Upstream(Address("mail.test", 143), tls="starttls", ca_file=bad))


# --- upstream STARTTLS against a scripted server -----------------------------------------
Script = Callable[["Server"], Awaitable[None]]


class Server:
    """The server end of the in-memory connection, line by line, upgradable to TLS."""

    def __init__(self, stream: trio.abc.Stream, files: tuple[Path, Path]) -> None:
        self.stream = stream
        self.files = files
        self._buf = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes:
        while b"\n" not in self._buf:
            self._buf += await self.stream.receive_some(65536)
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    async def expect(self, line: bytes) -> None:
        assert await self.line() == line

    async def start_tls(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.files)
        self.stream = trio.SSLStream(self.stream, ctx, server_side=True)


@pytest.fixture
def negotiate(
    nursery: trio.Nursery, files: tuple[Path, Path], client_ctx: ssl.SSLContext
) -> Callable[..., Awaitable[trio.abc.Stream]]:
    """``await negotiate(script, telemetry=None, server_name="imap.test")``: run ``script``
    as the server (for the rest of the test) and the proxy's STARTTLS against it."""

    async def run(
        script: Script, telemetry: Telemetry | None = None, server_name: str = "imap.test"
    ) -> trio.abc.Stream:
        proxy_end, server_end = trio.testing.memory_stream_pair()
        nursery.start_soon(script, Server(server_end, files))
        with trio.fail_after(5):
            return await starttls_upstream(
                proxy_end, client_ctx, server_name, telemetry or Telemetry(None)
            )

    return run


Negotiate = Callable[..., Awaitable[trio.abc.Stream]]


async def read_all(stream: trio.abc.Stream, size: int) -> bytes:
    data = b""
    with trio.fail_after(5):
        while len(data) < size:
            data += await stream.receive_some(size - len(data))
    return data


async def test_upgrade_asks_capability_when_the_greeting_has_none(
    negotiate: Negotiate,
) -> None:
    telemetry = Recorder()

    async def script(s: Server) -> None:
        await s.send(b"* OK Example\x01 IMAP ready\r\n")
        await s.expect(b"tls1 CAPABILITY\r\n")
        await s.send(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\ntls1 OK done\r\n")
        await s.expect(b"tls2 STARTTLS\r\n")
        await s.send(b"tls2 OK Begin TLS\r\n")
        await s.start_tls()
        await s.expect(b"tls3 CAPABILITY\r\n")
        # Bytes after the tagged OK came over TLS: they are kept, after the greeting.
        await s.send(b"* CAPABILITY IMAP4rev1  AUTH=PLAIN\r\ntls3 OK done\r\n* 1 EXISTS\r\n")
        await s.expect(b"a NOOP\r\n")
        await s.send(b"a OK noop\r\n")
        await trio.sleep_forever()

    stream = await negotiate(script, telemetry)
    greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Example? IMAP ready\r\n"
    assert await stream.receive_some(10) == greeting[:10]  # max_bytes is honoured
    assert await read_all(stream, len(greeting) - 10 + 12) == greeting[10:] + b"* 1 EXISTS\r\n"
    await stream.send_all(b"a NOOP\r\n")
    assert await read_all(stream, 11) == b"a OK noop\r\n"
    assert telemetry.handshakes == [("upstream", "ok")]
    assert tls_details(stream, "upstream_")["upstream_tls_version"] == "TLSv1.3"


async def test_capabilities_from_the_tagged_ok_code_are_used(
    negotiate: Negotiate,
) -> None:
    async def script(s: Server) -> None:
        await s.send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] \r\n")
        await s.expect(b"tls2 STARTTLS\r\n")
        await s.send(b"tls2 OK go\r\n")
        await s.start_tls()
        await s.expect(b"tls3 CAPABILITY\r\n")
        await s.send(b"tls3 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] done\r\n")
        await trio.sleep_forever()

    stream = await negotiate(script)
    expected = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"
    assert await read_all(stream, len(expected)) == expected


async def test_records_already_received_come_in_one_read(negotiate: Negotiate) -> None:
    sent = trio.Event()

    async def script(s: Server) -> None:
        await s.send(b"* OK [CAPABILITY STARTTLS] hi\r\n")
        await s.line()
        await s.send(b"tls2 OK go\r\n")
        await s.start_tls()
        await s.line()
        await s.send(b"* CAPABILITY IMAP4rev1\r\ntls3 OK done\r\n")
        for i in range(4):  # four writes, four TLS records of 4 KiB (as Dovecot sends)
            await s.send(bytes([65 + i]) * 4096)
        sent.set()
        await trio.sleep_forever()

    stream = await negotiate(script)
    await stream.receive_some(65536)  # the synthesized greeting
    await sent.wait()
    assert await stream.receive_some(65536) == b"A" * 4096 + b"B" * 4096 + b"C" * 4096 + b"D" * 4096


def _greets(greeting: bytes, *then: bytes) -> Script:
    """A server that greets, then answers each command line with the next reply."""

    async def script(s: Server) -> None:
        await s.send(greeting)
        for reply in then:
            tag = (await s.line()).split(b" ")[0]
            await s.send(reply.replace(b"TAG", tag))
        await trio.sleep_forever()

    return script


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (_greets(b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n"), "not '* OK'"),
        (_greets(b"* BYE too busy\r\n"), "not '* OK'"),
        (_greets(b"* OK " + b"x" * 70_000), "over-long line"),
        (_greets(b"* OK [CAPABILITY IMAP4rev1] hi\r\n"), "does not offer STARTTLS"),
        (
            _greets(b"* OK hi\r\n", b"* BYE shutting down\r\n"),
            "upstream said BYE during CAPABILITY",
        ),
        (
            _greets(b"* OK [CAPABILITY STARTTLS] hi\r\n", b"TAG BAD no\r\n"),
            "upstream refused STARTTLS",
        ),
        (
            _greets(b"* OK [CAPABILITY STARTTLS] hi\r\n", b"TAG OK go\r\n* OK injected\r\n"),
            "15 bytes after the STARTTLS OK",
        ),
        (
            _greets(b"* OK [CAPABILITY STARTTLS] hi\r\n", b"+ what\r\n"),
            "unexpected answer to STARTTLS",
        ),
    ],
    ids=["preauth", "bye", "long-line", "no-starttls", "bye-later", "refused", "inject", "cont"],
)
async def test_negotiation_failures(script: Script, message: str, negotiate: Negotiate) -> None:
    with pytest.raises(UpstreamTLSError, match=re.escape(message)):
        await negotiate(script)


async def test_server_closing_mid_negotiation(
    negotiate: Negotiate,
) -> None:
    async def script(s: Server) -> None:
        await s.send(b"* OK [CAPABILITY STARTTLS] hi\r\n")
        await s.line()
        await s.stream.aclose()

    with pytest.raises(UpstreamTLSError, match="closed the connection during STARTTLS"):
        await negotiate(script)


async def test_certificate_for_another_name_fails_the_handshake(
    negotiate: Negotiate,
) -> None:
    telemetry = Recorder()

    async def script(s: Server) -> None:
        await s.send(b"* OK [CAPABILITY STARTTLS] hi\r\n")
        await s.line()
        await s.send(b"tls2 OK go\r\n")
        await s.start_tls()
        await s.line()

    with pytest.raises(UpstreamTLSError, match=r"TLS handshake failed: .*Hostname mismatch"):
        await negotiate(script, telemetry, server_name="other.test")
    assert telemetry.handshakes == [("upstream", "failed")]


# --- client side -------------------------------------------------------------------------
async def test_client_handshake_times_out(
    files: tuple[Path, Path], autojump_clock: trio.testing.MockClock
) -> None:
    proxy_end, _silent_client = trio.testing.memory_stream_pair()
    start = client_starttls(server_context(*files))
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await start(proxy_end)
    assert trio.current_time() - t0 == pytest.approx(HANDSHAKE_TIMEOUT)


async def test_accept_handshake_rejects_a_plaintext_client(files: tuple[Path, Path]) -> None:
    proxy_end, client_end = trio.testing.memory_stream_pair()
    telemetry = Recorder()
    tls = trio.SSLStream(proxy_end, server_context(*files), server_side=True)
    await client_end.send_all(b"a LOGIN user secret\r\n")
    assert not await accept_handshake(tls, telemetry, "127.0.0.1:1")  # type: ignore[arg-type]
    assert telemetry.handshakes == [("client", "failed")]
