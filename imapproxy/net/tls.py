"""TLS on both legs: contexts, client STARTTLS and implicit TLS, upstream STARTTLS/implicit.

Client side: the pure session decides STARTTLS; this module only supplies the handshake
(``client_starttls``) and the implicit-TLS listener (``TLSListener``). Contexts are built
once per config (building one costs ~0.2 s with the system CA store) and rebuilt on SIGHUP,
so a renewed certificate applies to the next handshake.

Upstream STARTTLS happens before the session sees a byte: the connector reads the greeting,
makes sure STARTTLS is offered, upgrades, asks CAPABILITY again over TLS and hands the
session a stream that starts with a synthesized greeting carrying the post-TLS
capabilities. Nothing read in plaintext except the greeting's human text reaches the
client, and a byte after the tagged OK to STARTTLS fails the session (CVE-2011-0411 class):
it can only be an injection. There is no fallback to plaintext.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from imapproxy.net.streams import ClientTLSStarter, UpstreamSetupError, UpstreamTLSError
from imapproxy.telemetry.logs import log_event
from imapproxy.wire import (
    CLOSED,
    NEED_DATA,
    LiteralData,
    ProtocolError,
    Response,
    ResponseKind,
    ResponsePart,
    ServerParser,
)
from imapproxy.wire.capabilities import capability_words

if TYPE_CHECKING:
    from imapproxy.config.loader import ClientTLS, TLSListen, Upstream
    from imapproxy.telemetry.recorder import Telemetry

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "ClientSideTLS",
    "Greeted",
    "Negotiation",
    "TLSListener",
    "TLSSetupError",
    "UpstreamTLSStream",
    "accept_handshake",
    "client_side_tls",
    "client_starttls",
    "server_context",
    "starttls_upstream",
    "tls_listeners",
    "tls_upgrader",
    "upstream_context",
]

log = logging.getLogger("imapproxy.tls")

HANDSHAKE_TIMEOUT = 10.0  # a client that does not finish a handshake in this time is dropped
# "* OK [CODE ...] " before a greeting's human text.
_GREETING_TEXT = re.compile(rb"\A\* OK (\[[^\]\r\n]*\] ?)?", re.IGNORECASE)
MAX_NEGOTIATION_LINE = 64 * 1024  # capability lines are a few hundred bytes
_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

_S = TypeVar("_S", bound=trio.abc.Stream)


class TLSSetupError(OSError):
    """A certificate, key or CA file could not be used. Raised when serving starts (and
    caught by a reload): an OSError, so it takes the start-up path of a port that cannot
    be bound."""


# --- contexts ----------------------------------------------------------------------------
def server_context(
    cert: Path, key: Path, min_version: str = "TLSv1.2", ciphers: str | None = None
) -> ssl.SSLContext:
    """The client-facing context: TLS 1.2+ unless configured otherwise."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[min_version]
    # Client-initiated renegotiation only costs the server CPU; IMAP never needs it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(f"cannot use certificate {cert} with key {key}: {exc}") from exc
    return ctx


def upstream_context(upstream: Upstream) -> ssl.SSLContext:
    """Verifying by default: system CAs plus ``ca_file``; ``verify: false`` warns."""
    try:
        ctx = ssl.create_default_context()
        if upstream.ca_file is not None:
            ctx.load_verify_locations(cafile=upstream.ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(f"cannot load upstream.ca_file {upstream.ca_file}: {exc}") from exc
    if not upstream.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log_event(
            log,
            "upstream_verify_disabled",
            upstream=str(upstream.address),
            detail="upstream.verify is false: the mail server's certificate is not checked, "
            "anyone on the path can read the traffic",
            level=logging.WARNING,
        )
    return ctx


@dataclass(frozen=True, slots=True)
class ClientSideTLS:
    """The client-facing TLS of one config (STARTTLS starter, implicit-TLS context)."""

    start_tls: ClientTLSStarter | None = None
    listen_context: ssl.SSLContext | None = None


def client_side_tls(client_tls: ClientTLS | None, listen_tls: TLSListen | None) -> ClientSideTLS:
    """Build (or, on SIGHUP, rebuild) the client-facing contexts. The implicit listener
    takes its cert/key from ``listen_tls`` and version/ciphers from ``client_tls``."""
    version = client_tls.min_version if client_tls is not None else "TLSv1.2"
    ciphers = client_tls.ciphers if client_tls is not None else None
    start = None
    if client_tls is not None:
        start = client_starttls(server_context(client_tls.cert, client_tls.key, version, ciphers))
    listen_ctx = None
    if listen_tls is not None:
        listen_ctx = server_context(listen_tls.cert, listen_tls.key, version, ciphers)
    return ClientSideTLS(start, listen_ctx)


# --- client side -------------------------------------------------------------------------
def client_starttls(context: ssl.SSLContext) -> ClientTLSStarter:
    """The driver's STARTTLS step: wrap the client stream and finish the handshake in time."""

    async def start(stream: trio.abc.Stream) -> trio.abc.Stream:
        tls = trio.SSLStream(stream, context, server_side=True)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await tls.do_handshake()
        return tls

    return start


class TLSListener(trio.abc.Listener[trio.SSLStream[trio.SocketStream]]):
    """Implicit TLS (port 993). ``accept`` returns at once; the session task runs the
    handshake (``accept_handshake``) so one slow client cannot stall the accept loop.
    ``context`` is replaced on SIGHUP."""

    def __init__(self, transport: trio.SocketListener, context: ssl.SSLContext) -> None:
        self.transport = transport
        self.context = context

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.transport.socket

    async def accept(self) -> trio.SSLStream[trio.SocketStream]:
        stream = await self.transport.accept()
        return trio.SSLStream(stream, self.context, server_side=True)

    async def aclose(self) -> None:
        await self.transport.aclose()


async def tls_listeners(
    listen_tls: TLSListen,
    context: ssl.SSLContext,
    open_listeners: Callable[..., Awaitable[list[trio.SocketListener]]] = trio.open_tcp_listeners,
) -> list[TLSListener]:
    address = listen_tls.address
    transports = await open_listeners(address.port, host=address.host)
    return [TLSListener(t, context) for t in transports]


async def accept_handshake(
    stream: trio.SSLStream[trio.SocketStream], telemetry: Telemetry, peer: str
) -> bool:
    """Handshake with a client of the implicit listener; False (stream closed) on failure."""
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        telemetry.tls_handshake("client", "failed")
        log_event(log, "client_tls_failed", client=peer, error=_reason(exc))
        await trio.aclose_forcefully(stream)
        return False
    telemetry.tls_handshake("client", "ok")
    return True


# --- upstream side -----------------------------------------------------------------------
# The connector's own step once the server has greeted (over TLS where TLS is configured):
# the client-IP ID exchange. It gets the negotiation, whose parser keeps any later bytes.
Greeted = Callable[["Negotiation"], Awaitable[None]]
TLSUpgrader = Callable[[trio.abc.Stream, Greeted | None], Awaitable[trio.abc.Stream]]


def tls_upgrader(upstream: Upstream, telemetry: Telemetry) -> TLSUpgrader:
    """Secure a fresh TCP connection for ``tls: implicit`` or ``tls: starttls`` (the caller
    closes it on failure); builds the context now, once per config."""
    context = upstream_context(upstream)
    server_name = upstream.server_name or upstream.address.host
    implicit = upstream.tls == "implicit"

    async def upgrade(tcp: trio.abc.Stream, greeted: Greeted | None) -> trio.abc.Stream:
        if not implicit:
            return await starttls_upstream(tcp, context, server_name, telemetry, greeted)
        tls = trio.SSLStream(tcp, context, server_hostname=server_name)
        await _handshake(tls, telemetry)
        if greeted is None:
            return UpstreamTLSStream(tls)
        lines = Negotiation(tls, "ID", UpstreamSetupError)
        return UpstreamTLSStream(tls, await after_greeting(lines, greeted))

    return upgrade


async def after_greeting(lines: Negotiation, greeted: Greeted) -> bytes:
    """Read the greeting, run ``greeted`` if it is ``* OK`` (a BYE or PREAUTH greeting is
    the session's business), and return the bytes the session must see first."""
    head, greeting = await lines.response()
    if head.kind is ResponseKind.UNTAGGED and head.word == "OK":
        await greeted(lines)
    return greeting + lines.parser.take_rest()


async def starttls_upstream(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    server_name: str,
    telemetry: Telemetry,
    greeted: Greeted | None = None,
) -> trio.abc.Stream:
    """Upgrade a fresh plaintext upstream connection; raise UpstreamTLSError on anything
    but a clean upgrade. Returns the TLS stream behind a synthesized greeting; ``greeted``
    runs over TLS, after the capabilities are re-read."""
    plain = Negotiation(stream)
    head, greeting = await plain.response()
    if head.kind is not ResponseKind.UNTAGGED or head.word != "OK":
        raise UpstreamTLSError(f"upstream greeting is not '* OK': {_show(greeting)}")
    caps = capability_words(greeting)
    if caps is None:
        caps = await _command(plain, b"tls1", b"CAPABILITY", "CAPABILITY")
    if b"STARTTLS" not in (c.upper() for c in caps):
        raise UpstreamTLSError("upstream does not offer STARTTLS")
    await _command(plain, b"tls2", b"STARTTLS", "STARTTLS")
    try:
        # Bytes after the OK were sent in plaintext but would be read as if they came
        # over TLS: an injection (CVE-2011-0411 class). Never interpret them.
        plain.parser.start_tls()
    except ProtocolError as exc:
        raise UpstreamTLSError(
            f"upstream sent {plain.parser.buffered} bytes after the STARTTLS OK"
        ) from exc
    tls = trio.SSLStream(stream, context, server_hostname=server_name)
    await _handshake(tls, telemetry)
    secure = Negotiation(tls)
    caps = await _command(secure, b"tls3", b"CAPABILITY", "CAPABILITY after STARTTLS")
    if greeted is not None:
        secure.phase, secure.error = "ID", UpstreamSetupError
        await greeted(secure)
    code_part = b"[CAPABILITY " + b" ".join(caps) + b"] " if caps else b""
    text = _GREETING_TEXT.sub(b"", greeting.rstrip(b"\r\n"))
    synthesized = b"* OK " + code_part + (_printable(text) or b"ready") + b"\r\n"
    return UpstreamTLSStream(tls, synthesized + secure.parser.take_rest())


async def _handshake(tls: trio.SSLStream[_S], telemetry: Telemetry) -> None:
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        telemetry.tls_handshake("upstream", "failed")
        raise UpstreamTLSError(f"TLS handshake failed: {_reason(exc)}") from exc
    telemetry.tls_handshake("upstream", "ok")


async def _command(lines: Negotiation, tag: bytes, command: bytes, what: str) -> list[bytes]:
    """Send ``tag command``; once it is answered OK, return the capabilities seen."""
    await lines.send(tag + b" " + command + b"\r\n")
    caps: list[bytes] | None = None
    while True:
        head, line = await lines.response()
        if head.kind is ResponseKind.UNTAGGED:
            if head.word == "CAPABILITY":
                caps = capability_words(line)
            elif head.word == "BYE":
                raise UpstreamTLSError(f"upstream said BYE during {what}: {_show(line)}")
            continue
        if head.kind is not ResponseKind.TAGGED or head.tag != tag:
            raise UpstreamTLSError(f"unexpected answer to {what}: {_show(line)}")
        if head.word != "OK":
            raise UpstreamTLSError(f"upstream refused {what}: {_show(line)}")
        return caps or capability_words(line) or []


def _printable(text: bytes) -> bytes:
    return bytes(c if 0x20 <= c < 0x7F else 0x3F for c in text[:200]).strip()


def _show(line: bytes) -> str:
    return line[:120].rstrip(b"\r\n").decode("ascii", "backslashreplace")


def _reason(exc: BaseException) -> str:
    # trio wraps the ssl module's error; its message says what failed (e.g. the verify error).
    cause = exc.__cause__
    if isinstance(exc, trio.TooSlowError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g}s"
    if isinstance(cause, ssl.SSLError) and cause.reason is not None:
        return f"{cause.reason}: {getattr(cause, 'verify_message', None) or cause}"
    return str(cause or exc) or type(exc).__name__


class Negotiation:
    """The proxy's own short exchange with the upstream, framed by the project's
    ``ServerParser`` (literals included), which also keeps what arrived past the last
    response: the injection check and the hand-over to the session use it. ``phase``
    names the exchange in errors, which are ``error`` instances."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        phase: str = "STARTTLS",
        error: type[UpstreamSetupError] = UpstreamTLSError,
    ) -> None:
        self.stream = stream
        self.parser = ServerParser(MAX_NEGOTIATION_LINE)
        self.phase = phase
        self.error = error

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self.error(f"upstream connection lost during {self.phase}: {exc}") from exc

    async def response(self) -> tuple[Response, bytes]:
        """The next whole response: its first line's event, and all its bytes."""
        head: Response | None = None
        parts: list[bytes] = []
        for _ in range(1_000_000):
            try:
                ev = self.parser.next_event()
            except ProtocolError as exc:
                raise self.error(f"upstream broke IMAP framing: {exc.reason}") from exc
            if ev is NEED_DATA:
                await self._receive()
            elif ev is CLOSED:
                raise self.error(f"upstream closed the connection during {self.phase}")
            elif isinstance(ev, LiteralData):
                parts.append(ev.data)
            elif isinstance(ev, Response | ResponsePart):
                head = ev if isinstance(ev, Response) and head is None else head
                parts.append(ev.raw)
                if ev.literal is None and not ev.partial and head is not None:
                    return head, b"".join(parts)
            if sum(map(len, parts)) > MAX_NEGOTIATION_LINE:  # the parser streams long lines
                raise self.error(f"upstream sent an over-long line during {self.phase}")
        raise self.error(f"upstream response without end during {self.phase}")

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError as exc:
            raise self.error(f"upstream connection lost during {self.phase}: {exc}") from exc
        self.parser.receive_data(data)  # b"": end of stream, reported as CLOSED


class UpstreamTLSStream(trio.abc.Stream):
    """The upstream TLS leg: an SSLStream, after any bytes the connector produced or already
    read (the synthesized greeting), returning all received records per read.

    trio's SSLStream returns one TLS record per ``receive_some`` (at most 16 KiB; Dovecot
    writes 4 KiB records), so a bulk FETCH would cost the session one pass per record. The
    records already received are decrypted here without waiting: a 2x gain in bulk
    throughput. That reads trio's SSLObject directly (still synchronously, between trio's
    own operations, as trio does); without it, one record per call.
    """

    def __init__(self, ssl_stream: trio.SSLStream[_S], prefix: bytes = b"") -> None:
        self.ssl_stream = ssl_stream  # the driver logs its version and cipher
        self._prefix = prefix
        self._ssl_object: ssl.SSLObject | None = getattr(ssl_stream, "_ssl_object", None)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            n = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:n], self._prefix[n:]
            return chunk
        data = await self.ssl_stream.receive_some(max_bytes)
        if self._ssl_object is None or not data or max_bytes is None:
            return data
        parts: list[bytes | bytearray] = [data]
        n = len(data)
        while n < max_bytes:
            try:
                more = self._ssl_object.read(max_bytes - n)
            except ssl.SSLError:  # WantRead: no whole record buffered; anything else: the
                break  # next trio call meets the same state and reports it properly
            if not more:
                break
            parts.append(more)
            n += len(more)
        return data if len(parts) == 1 else b"".join(parts)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.ssl_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.ssl_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.ssl_stream.aclose()
