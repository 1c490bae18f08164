"""The proxy's own IMAP dialogue with the upstream, before the session sees a byte.

Upstream STARTTLS (``starttls_upstream``): read the greeting, make sure STARTTLS is offered,
upgrade, ask CAPABILITY again over TLS and hand the session a stream that starts with a
synthesized greeting carrying the post-TLS capabilities. Nothing read in plaintext except the
greeting's human text reaches the client, and a byte after the tagged OK to STARTTLS fails
the session (CVE-2011-0411 class): it can only be an injection. There is no fallback to
plaintext.

After the greeting (over TLS where TLS is configured) the connector may run its own step, the
client-IP ID exchange (``Greeted``, see ``net.client_ip``); ``Negotiation`` frames all of it.

The TLS pieces (contexts, handshakes, the upstream TLS stream) are ``net.tls``'s; this module
only speaks IMAP around them.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from imapproxy.net.streams import UpstreamSetupError, UpstreamTLSError
from imapproxy.net.tls import UpstreamTLSStream, handshake_upstream, upstream_context
from imapproxy.net.tls_socket import SocketTLSStream, TLSLeg, tls_stream
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
    from imapproxy.config.loader import Upstream
    from imapproxy.telemetry.recorder import Telemetry

__all__ = [
    "MAX_NEGOTIATION_LINE",
    "Greeted",
    "Negotiation",
    "TLSUpgrader",
    "after_greeting",
    "starttls_upstream",
    "tls_upgrader",
]

# "* OK [CODE ...] " before a greeting's human text.
_GREETING_TEXT = re.compile(rb"\A\* OK (\[[^\]\r\n]*\] ?)?", re.IGNORECASE)
MAX_NEGOTIATION_LINE = 64 * 1024  # capability lines are a few hundred bytes

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
        tls = tls_stream(tcp, context, server_hostname=server_name)
        async with _owned_on_failure(tls):
            await handshake_upstream(tls, telemetry)
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
    tls = tls_stream(stream, context, server_hostname=server_name)
    async with _owned_on_failure(tls):
        await handshake_upstream(tls, telemetry)
        secure = Negotiation(tls)
        caps = await _command(secure, b"tls3", b"CAPABILITY", "CAPABILITY after STARTTLS")
        if greeted is not None:
            secure.phase, secure.error = "ID", UpstreamSetupError
            await greeted(secure)
    code_part = b"[CAPABILITY " + b" ".join(caps) + b"] " if caps else b""
    text = _GREETING_TEXT.sub(b"", greeting.rstrip(b"\r\n"))
    synthesized = b"* OK " + code_part + (_printable(text) or b"ready") + b"\r\n"
    return UpstreamTLSStream(tls, synthesized + secure.parser.take_rest())


@contextlib.asynccontextmanager
async def _owned_on_failure(tls: TLSLeg) -> AsyncIterator[None]:
    """A ``SocketTLSStream`` owns the descriptor once its handshake starts: the caller's
    close of the TCP stream would not close it, so a failure here must."""
    try:
        yield
    except BaseException:
        if isinstance(tls, SocketTLSStream):
            await trio.aclose_forcefully(tls)
        raise


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
