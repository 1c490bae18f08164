"""Listeners: binding them, and the accept loops (``trio.serve_listeners``).

``open_all`` binds the plaintext listener(s) of ``listen`` and, with ``listen_tls``, the
implicit-TLS ones. ``serve`` runs ``trio.serve_listeners`` over them, starting each handler
in the sessions' nursery, so stopping the accept loops (cancelling them closes the listeners)
leaves the sessions running for the grace period.

Running out of descriptors: trio's loop already backs off 100 ms on EMFILE/ENFILE/ENOMEM/
ENOBUFS, but logs every failure with a traceback (ten a second while the process is full) and
counts nothing. So each listener is wrapped in ``_BackOff``, whose ``accept`` takes those
errors itself: it counts them (``imapproxy_accept_errors_total{side="client"}``), logs through
the process's ``capacity_log`` (one line, then at most one a minute) and sleeps trio's back-off
before trying again. trio's loop never sees them; any other error still ends the process.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import trio

from imapproxy.config.loader import Config
from imapproxy.net.tls import TLSListener, tls_listeners
from imapproxy.server.admission import ClientStream
from imapproxy.server.capacity import capacity_log, resource_error
from imapproxy.telemetry.recorder import Telemetry

__all__ = ["ACCEPT_BACKOFF", "NamedListener", "OpenListeners", "open_all", "serve", "sockname"]

ACCEPT_BACKOFF = 0.1  # seconds, after accept() ran out of resources (trio.serve_listeners')

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
            nursery.start_soon(
                functools.partial(
                    trio.serve_listeners,
                    functools.partial(handler, listener=name),
                    [_BackOff(lst, name, telemetry, active)],
                    handler_nursery=sessions,
                )
            )


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

    async def accept(self) -> _S:
        while True:
            try:
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

    async def aclose(self) -> None:
        await self.inner.aclose()


def sockname(listener: AnyListener) -> tuple[str, int]:
    name = listener.socket.getsockname()
    return str(name[0]), int(name[1])
