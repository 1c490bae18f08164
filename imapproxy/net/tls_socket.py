"""A TLS stream that OpenSSL drives on the socket itself: a non-blocking ``ssl.SSLSocket``.

``trio.SSLStream`` runs TLS through an ``ssl.MemoryBIO``: every record crosses Python twice
(socket -> BIO, BIO -> SSL object) and every call goes through trio's stream machinery. Here
OpenSSL reads and writes the descriptor itself; Python only waits for readiness when OpenSSL
says it must (``SSLWantReadError``/``SSLWantWriteError``). Semantics follow ``trio.SSLStream``
(``https_compatible=False``): the handshake runs implicitly on the first read or write, a
clean ``close_notify`` reads as EOF (``b""``), an EOF without it (and any TLS or socket
error) raises ``BrokenResourceError``, a send cancelled half-way leaves the stream broken,
and ``aclose`` sends ``close_notify`` if it can without waiting.

The stream takes over the descriptor of the ``trio.SocketStream`` it is built on when the
handshake starts (``detach``: one descriptor, one owner); until then that stream is
``transport_stream``, so admission can read a PROXY header from it first. From then on
``transport_stream``'s socket is closed and only this stream may close the descriptor.

Once the handshake is done the stream lends its ``ssl.SSLSocket`` (``hub_socket``) to the
readiness hub, which reads and writes it without waiting (``net.receiver``, ``net.fastio``)
and reports what it saw fail with ``mark_broken``: the stream's own calls and ``aclose`` then
behave as if their own operation had failed. Both may use the socket in turn (the hub hands a
session over to the pumps, which use the stream), never at once.

``tls_stream`` picks this stream for a ``trio.SocketStream`` and ``trio.SSLStream`` for
anything else (in-memory streams in tests).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from typing import Any, NoReturn

import trio

__all__ = ["SocketTLSStream", "TLSLeg", "tls_stream"]

_CHECKPOINT_EVERY = 16  # operations that did not wait, between two forced checkpoints
_CHUNK = 1 << 16  # a read's size when the caller names none; the drain's unit
_MIN_CONTINUE = 4096  # a record this big may have others queued behind it (bulk): read on
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)  # OpenSSL waits for the socket


class SocketTLSStream(trio.abc.Stream):
    """TLS over a non-blocking ``ssl.SSLSocket`` on ``transport``'s descriptor.

    One task may receive while another sends (as with any trio stream); two concurrent
    receives or sends raise ``trio.BusyResourceError``.
    """

    def __init__(
        self,
        transport: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport
        self._context = context
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._sock: ssl.SSLSocket | None = None
        self._handshook = False
        self._broken: BaseException | None = None
        self._closed = False
        self._receiving = False
        self._sending = False
        self._ops = 0

    # --- what the logs and the driver read ---------------------------------------------
    def version(self) -> str | None:
        return None if self._sock is None else self._sock.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return None if self._sock is None else self._sock.cipher()

    def selected_alpn_protocol(self) -> str | None:
        return None if self._sock is None else self._sock.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False) -> Any:
        return None if self._sock is None else self._sock.getpeercert(binary_form)

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    # --- driven by the readiness hub (net.fastio) -------------------------------------
    def hub_socket(self) -> ssl.SSLSocket | None:
        """The SSL socket for a caller that reads and writes it itself without waiting (the
        hub): only once the handshake is done, while the stream is neither broken nor
        closed. Whoever uses it reports its failures with ``mark_broken``."""
        healthy = self._handshook and self._broken is None and not self._closed
        return self._sock if healthy else None

    def mark_broken(self, exc: BaseException) -> None:
        """A read or write on ``hub_socket`` failed (or a write was left half-done): the
        stream is broken from now on, as if its own operation had failed."""
        if self._broken is None:
            self._broken = exc

    # --- handshake ----------------------------------------------------------------------
    def _take_socket(self) -> ssl.SSLSocket:
        if self._sock is not None:
            return self._sock
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")
        fd = self.transport_stream.socket.detach()
        if fd < 0:
            raise trio.ClosedResourceError("the transport's socket is closed")
        self._sock = _wrap(fd, self._context, self._server_side, self._server_hostname)
        return self._sock

    async def do_handshake(self) -> None:
        """Run the handshake now (otherwise the first read or write runs it); the caller
        bounds its time. Failure: ``BrokenResourceError`` from the ssl error."""
        self._check()
        if self._handshook:
            await trio.lowlevel.checkpoint()
            return
        try:
            sock = self._take_socket()
        except ssl.SSLError as exc:  # e.g. a bad server_hostname
            self._fail(exc)
        await trio.lowlevel.checkpoint_if_cancelled()
        for _ in range(10_000):  # a handshake is a few round trips; bounded all the same
            try:
                sock.do_handshake()
            except _WANT as exc:
                readable = isinstance(exc, ssl.SSLWantReadError)
            except (ssl.SSLError, OSError) as exc:
                self._fail(exc)
            else:
                self._handshook = True
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            try:
                await self._wait(readable)
            except BaseException as exc:
                self._broken = exc  # cancelled half-way: unusable, as with trio.SSLStream
                raise
        self._broken = trio.BrokenResourceError("TLS handshake without end")
        raise self._broken

    # --- data ---------------------------------------------------------------------------
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            sock = await self._usable_socket()
            want = _CHUNK if max_bytes is None else max_bytes
            if want < 1:
                raise ValueError("max_bytes must be >= 1")
            waited = False
            while True:
                try:
                    data = sock.recv(want)
                    break
                except _WANT as exc:
                    waited = True
                    await self._wait(readable=isinstance(exc, ssl.SSLWantReadError))
                except (ssl.SSLError, OSError) as exc:
                    self._fail(exc)
            if len(data) >= _MIN_CONTINUE and len(data) < want:
                data = _read_more(sock, data, want)
            await self._maybe_checkpoint(waited)
            return data
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            sock = await self._usable_socket()
            view = memoryview(data)
            waited = False
            # SSL_write without partial writes: a retry after WantWrite passes the same
            # bytes (the ssl module sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
            while view:
                try:
                    sent = sock.send(view)
                except _WANT as exc:
                    waited = True
                    await self._wait_in_send(readable=isinstance(exc, ssl.SSLWantReadError))
                    continue
                except (ssl.SSLError, OSError) as exc:
                    self._fail(exc)
                view = view[sent:]
            await self._maybe_checkpoint(waited)
        finally:
            self._sending = False

    async def _usable_socket(self) -> ssl.SSLSocket:
        """The SSL socket for a read or a write: handshaken (now, if nobody asked before),
        not closed, not broken."""
        if not self._handshook:
            await self.do_handshake()
        self._check()
        assert self._sock is not None
        return self._sock

    def _fail(self, exc: BaseException) -> NoReturn:
        """An ssl or socket error: the stream is broken from now on."""
        self._broken = exc
        raise trio.BrokenResourceError(str(exc)) from exc

    async def _wait_in_send(self, readable: bool) -> None:
        try:
            await self._wait(readable)
        except BaseException as exc:
            # OpenSSL holds part of the write; other bytes next time would be a bad retry.
            self._broken = exc
            raise

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._check()
        if self._sock is None:
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.wait_writable(self._sock)

    async def _wait(self, readable: bool) -> None:
        sock = self._sock
        assert sock is not None
        try:
            if readable:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.wait_writable(sock)
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("the TLS stream was closed") from None
        self._ops = 0

    async def _maybe_checkpoint(self, waited: bool) -> None:
        # A wait was a checkpoint; otherwise yield every few calls, as fastio's direct path
        # does, so a busy stream cannot starve the other tasks.
        if waited:
            return
        self._ops += 1
        if self._ops >= _CHECKPOINT_EVERY:
            self._ops = 0
            await trio.lowlevel.checkpoint()

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("the TLS stream is broken") from self._broken

    def give_back(self) -> None:
        """After a failed handshake: hand the descriptor back to ``transport_stream`` (what
        the peer sent past the failure is read away first), and close this stream. For a
        STARTTLS upgrade, whose caller still holds the plain stream (and objects on its
        descriptor number) and closes it: the number must stay this connection's until then."""
        sock, self._sock, self._closed = self._sock, None, True
        if sock is None:
            return
        _drain(sock.fileno())
        raw = socket.socket(fileno=sock.detach())
        self.transport_stream.socket = trio.socket.from_stdlib_socket(raw)

    # --- close --------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Send ``close_notify`` if the stream is healthy and the socket takes it at once
        (never waits for the peer's), then close the descriptor."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        sock = self._sock
        if sock is None:  # never shook hands: the transport still owns the descriptor
            await self.transport_stream.aclose()
            return
        try:
            if self._handshook and self._broken is None:
                # SSL_shutdown: close_notify; the peer's is not awaited (WantRead, ignored).
                with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                    sock.unwrap()
            else:
                _drain(sock.fileno())
            trio.lowlevel.notify_closing(sock)
        finally:
            sock.close()
        await trio.lowlevel.checkpoint()


def _wrap(
    fd: int, context: ssl.SSLContext, server_side: bool, server_hostname: str | None
) -> ssl.SSLSocket:
    raw = socket.socket(fileno=fd)
    raw.setblocking(False)
    try:
        return context.wrap_socket(
            raw,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=False,
        )
    except BaseException:
        raw.close()  # nothing else owns the descriptor any more
        raise


def _read_more(sock: ssl.SSLSocket, first: bytes, want: int) -> bytes:
    # Records already in the socket are decrypted now rather than one per call: a bulk
    # FETCH arrives as 4-16 KiB records. Errors are left for the next call to report.
    parts = [first]
    n = len(first)
    for _ in range(64):
        try:
            more = sock.recv(want - n)
        except (ssl.SSLError, OSError):
            break
        if not more:
            break
        parts.append(more)
        n += len(more)
        if n >= want or len(more) < _MIN_CONTINUE:
            break
    return b"".join(parts)


def _drain(fd: int) -> None:
    # A failed handshake leaves the rest of what the peer sent in the socket (OpenSSL read
    # only the record header): closing with unread data would reset the connection and
    # lose the alert. trio.SSLStream had read it all into its BIO; read it away likewise.
    for _ in range(4):
        try:
            if len(os.read(fd, _CHUNK)) < _CHUNK:
                return
        except OSError:  # BlockingIOError: nothing left
            return


TLSLeg = SocketTLSStream | trio.SSLStream[Any]


def tls_stream(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
) -> TLSLeg:
    """TLS over ``stream``: a ``SocketTLSStream`` on a plain socket stream, else an SSLStream."""
    if isinstance(stream, trio.SocketStream):
        return SocketTLSStream(
            stream, context, server_side=server_side, server_hostname=server_hostname
        )
    return trio.SSLStream(stream, context, server_side=server_side, server_hostname=server_hostname)
