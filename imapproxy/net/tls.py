"""TLS on both legs: contexts, handshakes, the implicit-TLS listener and the upstream TLS stream.

Client side: the pure session decides STARTTLS; this module only supplies the handshake
(``client_starttls``) and the implicit-TLS listener (``TLSListener``). Contexts are built
once per config (building one costs ~0.2 s with the system CA store) and rebuilt on SIGHUP,
so a renewed certificate applies to the next handshake.

Upstream side: the context (``upstream_context``), the counted handshake
(``handshake_upstream``) and the stream the session reads (``UpstreamTLSStream``). The IMAP
dialogue around them (greeting, STARTTLS, CAPABILITY, the ID step) is
``net.upstream_dialogue``; its names stay importable from here for older imports.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from imapproxy.net.streams import ClientTLSStarter, UpstreamTLSError
from imapproxy.net.tls_socket import SocketTLSStream, TLSLeg, tls_stream
from imapproxy.telemetry.logs import log_event

if TYPE_CHECKING:
    from imapproxy.config.loader import ClientTLS, TLSListen, Upstream
    from imapproxy.net.upstream_dialogue import (  # re-exported lazily, see __getattr__
        MAX_NEGOTIATION_LINE,
        Greeted,
        Negotiation,
        TLSUpgrader,
        after_greeting,
        starttls_upstream,
        tls_upgrader,
    )
    from imapproxy.telemetry.recorder import Telemetry

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_NEGOTIATION_LINE",
    "ClientSideTLS",
    "Greeted",
    "Negotiation",
    "TLSListener",
    "TLSSetupError",
    "TLSUpgrader",
    "UpstreamTLSStream",
    "accept_handshake",
    "after_greeting",
    "client_side_tls",
    "client_starttls",
    "handshake_upstream",
    "server_context",
    "starttls_upstream",
    "tls_listeners",
    "tls_upgrader",
    "upstream_context",
]

log = logging.getLogger("imapproxy.tls")

HANDSHAKE_TIMEOUT = 10.0  # a client that does not finish a handshake in this time is dropped
_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


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
        tls = tls_stream(stream, context, server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
        except BaseException:
            # The caller closes ``stream`` (after letting go of its own objects on the same
            # descriptor number): the descriptor goes back to it rather than being closed
            # here, where the number could be reused before those objects are gone.
            if isinstance(tls, SocketTLSStream):
                tls.give_back()
            raise
        return tls

    return start


class TLSListener(trio.abc.Listener[SocketTLSStream]):
    """Implicit TLS (port 993). ``accept`` returns at once; the session task runs the
    handshake (``accept_handshake``) so one slow client cannot stall the accept loop.
    ``context`` is replaced on SIGHUP: a stream takes the context in force when accepted."""

    def __init__(self, transport: trio.SocketListener, context: ssl.SSLContext) -> None:
        self.transport = transport
        self.context = context

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.transport.socket

    async def accept(self) -> SocketTLSStream:
        stream = await self.transport.accept()
        return SocketTLSStream(stream, self.context, server_side=True)

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


async def accept_handshake(stream: TLSLeg, telemetry: Telemetry, peer: str) -> bool:
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
async def handshake_upstream(tls: TLSLeg, telemetry: Telemetry) -> None:
    """Finish the upstream leg's handshake, counted; UpstreamTLSError on failure."""
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        telemetry.tls_handshake("upstream", "failed")
        raise UpstreamTLSError(f"TLS handshake failed: {_reason(exc)}") from exc
    telemetry.tls_handshake("upstream", "ok")


def _reason(exc: BaseException) -> str:
    # trio wraps the ssl module's error; its message says what failed (e.g. the verify error).
    cause = exc.__cause__
    if isinstance(exc, trio.TooSlowError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g}s"
    if isinstance(cause, ssl.SSLError) and cause.reason is not None:
        return f"{cause.reason}: {getattr(cause, 'verify_message', None) or cause}"
    return str(cause or exc) or type(exc).__name__


class UpstreamTLSStream(trio.abc.Stream):
    """The upstream TLS leg (a ``SocketTLSStream``, or an SSLStream over a stream that is
    not a socket's), after any bytes the connector produced or already read (the
    synthesized greeting), returning all received records per read.

    trio's SSLStream returns one TLS record per ``receive_some`` (at most 16 KiB; Dovecot
    writes 4 KiB records), so a bulk FETCH would cost the session one pass per record. The
    records already received are decrypted here without waiting: a 2x gain in bulk
    throughput. That reads trio's SSLObject directly (still synchronously, between trio's
    own operations, as trio does). A ``SocketTLSStream`` does the same itself.
    """

    def __init__(self, ssl_stream: TLSLeg, prefix: bytes = b"") -> None:
        self.ssl_stream = ssl_stream  # the driver logs its version and cipher
        self.prefix = prefix
        self._ssl_object: ssl.SSLObject | None = getattr(ssl_stream, "_ssl_object", None)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.prefix:
            await trio.lowlevel.checkpoint()
            n = len(self.prefix) if max_bytes is None else max_bytes
            chunk, self.prefix = self.prefix[:n], self.prefix[n:]
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


# The upstream dialogue moved to net.upstream_dialogue, which builds on this module; importing
# it here at the top would be circular, so its names are looked up on first use.
_DIALOGUE_NAMES = frozenset(
    {"Greeted", "MAX_NEGOTIATION_LINE", "Negotiation", "TLSUpgrader", "after_greeting",
     "starttls_upstream", "tls_upgrader"}
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _DIALOGUE_NAMES:
        from imapproxy.net import upstream_dialogue

        return getattr(upstream_dialogue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
