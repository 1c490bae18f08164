"""Listeners: binding them, and the accept loops.

``open_all`` binds the plaintext listener(s) of ``listen`` and, with ``listen_tls``, the
implicit-TLS ones. ``serve`` runs one accept loop per listener (``trio.serve_listeners``'
shape), starting each handler in the sessions' nursery, so stopping the accept loops
(cancelling them closes the listeners) leaves the sessions running for the grace period.

Two costs of ``trio.serve_listeners`` that every session paid are not paid here: its handler
task closes the stream again after the handler (``aclose_forcefully``: a cancelled checkpoint,
i.e. a ``Cancelled`` raised and caught, on a stream the session already closed), and trio's
``SocketListener.accept`` yields to the scheduler after every successful ``accept``. So the
handler task closes the stream only if the handler left it open, and a plain listener accepts
on a second socket object on its descriptor (as ``net.fastio`` reads and writes), waiting in
trio only when nothing is pending and checkpointing every ``_CHECKPOINT_EVERY`` connections
taken without a wait (a flood of connections still lets the sessions run).

Running out of descriptors: trio's loop already backs off 100 ms on EMFILE/ENFILE/ENOMEM/
ENOBUFS, but logs every failure with a traceback (ten a second while the process is full) and
counts nothing. So each listener is wrapped in ``_BackOff``, whose ``accept`` takes those
errors itself: it counts them (``imapproxy_accept_errors_total{side="client"}``), logs through
the process's ``capacity_log`` (one line, then at most one a minute) and sleeps trio's back-off
before trying again. trio's loop never sees them; any other error still ends the process.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar, cast

import trio

from imapproxy.config.loader import Config
from imapproxy.net.direct import socket_twin
from imapproxy.net.tls import TLSListener, tls_listeners
from imapproxy.server.admission import ClientStream
from imapproxy.server.capacity import capacity_log, resource_error
from imapproxy.telemetry.recorder import Telemetry

__all__ = ["ACCEPT_BACKOFF", "NamedListener", "OpenListeners", "open_all", "serve", "sockname"]

ACCEPT_BACKOFF = 0.1  # seconds, after accept() ran out of resources (trio.serve_listeners')
_CHECKPOINT_EVERY = 16  # connections accepted in a row without a wait, then a checkpoint
# What trio's SocketListener.accept treats so: a connection that died before it was taken
# (retry), and a listener closed under the loop.
_IGNORABLE = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)
_CLOSED = frozenset((errno.EBADF, errno.ENOTSOCK))
# The name trio.serve_listeners gave the task of each connection (tools look tasks up by it).
_HANDLER_TASK = "trio._highlevel_serve_listeners._run_handler"

AnyListener = trio.SocketListener | TLSListener
NamedListener = tuple[AnyListener, str]  # the name ("plain", "tls") labels metrics and logs
OpenListeners = Callable[..., Awaitable[list[trio.SocketListener]]]


class Handler(Protocol):
    """What runs one accepted connection (``Proxy._handle``); it closes the stream."""

    async def __call__(self, stream: ClientStream, listener: str) -> None: ...


_S = TypeVar("_S", bound=trio.abc.AsyncResource)


async def open_all(
    config: Config, tls_context: ssl.SSLContext | None, open_listeners: OpenListeners
) -> list[NamedListener]:
    """Bind the config's listeners (an OSError, such as a busy port, ends the start)."""
    address = config.listen.address
    named: list[NamedListener] = [
        (lst, "plain") for lst in await open_listeners(address.port, host=address.host)
    ]
    if config.listen_tls is not None and tls_context is not None:
        tls = await tls_listeners(config.listen_tls, tls_context, open_listeners)
        named += [(lst, "tls") for lst in tls]
    return named


async def serve(
    named: list[NamedListener],
    handler: Handler,
    sessions: trio.Nursery,
    telemetry: Telemetry,
    active: Callable[[], int],
) -> None:
    """Accept on every listener until cancelled; ``handler(stream, name)`` runs in
    ``sessions`` for each connection. The listeners are closed on the way out."""
    async with trio.open_nursery() as nursery:
        for lst, name in named:
            backoff: _BackOff[ClientStream] = _BackOff(lst, name, telemetry, active)
            nursery.start_soon(
                _serve_one, backoff, functools.partial(handler, listener=name), sessions
            )


async def _serve_one(
    listener: trio.abc.Listener[ClientStream],
    handler: Callable[[ClientStream], Awaitable[None]],
    sessions: trio.Nursery,
) -> None:
    async with listener:
        while True:
            stream = await listener.accept()
            sessions.start_soon(_run_handler, stream, handler, name=_HANDLER_TASK)


async def _run_handler(
    stream: ClientStream, handler: Callable[[ClientStream], Awaitable[None]]
) -> None:
    """One connection's task: the handler, then the stream closed if the handler did not
    (``trio.serve_listeners`` closes it whatever the handler did)."""
    try:
        await handler(stream)
    finally:
        if not _closed(stream):
            await trio.aclose_forcefully(stream)


def _closed(stream: ClientStream) -> bool:
    """The stream's descriptor is closed (or handed on: STARTTLS, a TLS stream's transport)."""
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno() == -1
    return stream.fileno() == -1 and stream.transport_stream.socket.fileno() == -1


class _BackOff(trio.abc.Listener[_S], Generic[_S]):
    """A listener whose ``accept`` waits out resource exhaustion instead of raising."""

    def __init__(
        self,
        inner: trio.abc.Listener[_S],
        name: str,
        telemetry: Telemetry,
        active: Callable[[], int],
    ) -> None:
        self.inner = inner
        self.name = name
        self.telemetry = telemetry
        self.active = active
        self._raw = _listening_twin(inner)  # plain listeners: accepted on directly
        self._taken = 0  # connections accepted without a wait since the last checkpoint

    async def accept(self) -> _S:
        while True:
            try:
                if self._raw is not None:
                    return cast("_S", await self._accept_plain(self._raw))
                return await self.inner.accept()
            except OSError as exc:
                reason = resource_error(exc)
                if reason is None:
                    raise
                # Connections wait in the listen backlog until sessions close.
                self.telemetry.accept_error("client", reason)
                capacity_log.event(
                    "accept_failed",
                    listener=self.name,
                    reason=reason,
                    error=exc.strerror or str(exc),
                    active_sessions=self.active(),
                    level=logging.ERROR,
                )
                await trio.sleep(ACCEPT_BACKOFF)

    async def _accept_plain(self, raw: socket.socket) -> trio.SocketStream:
        """``trio.SocketListener.accept`` without its scheduler pass per connection."""
        while True:
            try:
                conn, _ = raw.accept()
            except BlockingIOError:
                self._taken = 0
                await trio.lowlevel.wait_readable(raw)
                continue
            except OSError as exc:
                if exc.errno in _CLOSED:
                    raise trio.ClosedResourceError from None
                if exc.errno in _IGNORABLE:
                    continue
                raise
            try:
                self._taken += 1
                if self._taken >= _CHECKPOINT_EVERY:
                    self._taken = 0
                    await trio.lowlevel.checkpoint()
                return trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            except BaseException:
                conn.close()
                raise

    async def aclose(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.detach()  # before trio closes the descriptor (its number is soon reused)
        await self.inner.aclose()

    def __del__(self) -> None:
        raw = getattr(self, "_raw", None)  # unset if __init__ failed before it
        if raw is not None:
            raw.detach()  # never close the listener's descriptor from here


def _listening_twin(listener: object) -> socket.socket | None:
    """A non-blocking stdlib socket on a plain listener's descriptor (``socket_twin``: it
    must be detached, never closed), or None for any other listener."""
    if not isinstance(listener, trio.SocketListener):
        return None
    return socket_twin(listener.socket)


def sockname(listener: AnyListener) -> tuple[str, int]:
    name = listener.socket.getsockname()
    return str(name[0]), int(name[1])
