"""How a session ends other than by EOF, and the ``* BYE`` line the client hears then.

Glossary: a driver's *BYE* (``SessionDriver.send_bye``) is the last line the client gets,
queued after whatever is already queued for it; a client that is gone is no error.

- shutdown (``server.shutdown``): ``SHUTDOWN_BYE`` once the grace period is over;
- idle: ``IDLE_BYE`` after ``limits.idle_timeout`` without traffic either way;
- no login within ``limits.auth_timeout``: ``AUTH_TIMEOUT_BYE`` (``auth_deadline``);
- an administrator's kick (the inspector): ``* BYE [UNAVAILABLE]`` and ``kick_text(reason)``;
- the upstream leg cannot be opened: see ``server.upstream_leg``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, NoReturn

import trio

from imapproxy.net.streams import CONNECTION_ERRORS

if TYPE_CHECKING:
    from imapproxy.server.driver import SessionDriver

__all__ = [
    "AUTH_TIMEOUT_BYE",
    "IDLE_BYE",
    "SHUTDOWN_BYE",
    "SessionOver",
    "auth_deadline",
    "auth_expired",
    "close_legs",
    "close_plain_legs",
]

SHUTDOWN_BYE = b"* BYE [UNAVAILABLE] Proxy shutting down\r\n"
IDLE_BYE = b"* BYE Idle timeout\r\n"
AUTH_TIMEOUT_BYE = b"* BYE Authentication timeout\r\n"


class SessionOver(Exception):
    """Raised in a pump (or a deadline task) when the session is over: the session's
    nursery then cancels the other tasks. ``close_reason`` is set before."""


async def auth_deadline(driver: SessionDriver, deadline: float) -> None:
    """``limits.auth_timeout``: a session not logged in by ``deadline`` (``trio.current_time``)
    is told so and closed (``auth_expired``)."""
    with trio.CancelScope() as scope:
        driver.auth_scope = scope  # the driver cancels it at login
        await trio.sleep_until(deadline)
    driver.auth_scope = None
    if scope.cancelled_caught or driver.session.user is not None:
        return
    await auth_expired(driver)


async def auth_expired(driver: SessionDriver) -> NoReturn:
    """The auth deadline passed without a login: count it, say BYE, end the session."""
    if driver.ctx.guard is not None:
        driver.ctx.guard.hit("auth_timeout")
    driver.close_reason = "auth timeout"
    await driver.send_bye(AUTH_TIMEOUT_BYE, 2)
    raise SessionOver


def kick_text(reason: str) -> bytes:
    """What a kick's BYE says: ``reason`` on one line of at most 200 ASCII characters."""
    return " ".join(reason.split()).encode("ascii", "replace")[:200] or b"Session ended"


def close_plain_legs(driver: SessionDriver) -> bool:
    """The session's last step when both legs are plain TCP: let go of the raw sockets
    (``net.fastio``: before trio closes the descriptors) and close both, synchronously (a
    plain ``SocketStream.aclose`` is that close and a checkpoint). False, and nothing done,
    when a leg is anything else: ``close_legs`` then."""
    client, upstream = driver.client, driver.upstream
    if type(client) is not trio.SocketStream or (
        upstream is not None and type(upstream) is not trio.SocketStream
    ):
        return False
    _let_go(driver)
    client.socket.close()
    if upstream is not None:
        upstream.socket.close()
    return True


async def close_legs(driver: SessionDriver) -> None:
    """The session's last step: let go of the raw sockets (``net.fastio``: before trio closes
    the descriptors), then close both streams, within two seconds in all."""
    _let_go(driver)
    # One deadline for both (a cancel scope per stream is a measurable share of a short
    # session): a cancelled aclose still closes its stream (trio's contract), ungracefully.
    with trio.move_on_after(2):
        for stream in (driver.client, driver.upstream):
            if stream is not None:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await stream.aclose()


def _let_go(driver: SessionDriver) -> None:
    driver._to_client.close()
    driver._from_client.close()
    if driver._from_upstream is not None:
        driver._from_upstream.close()
    if driver._to_upstream is not None:
        driver._to_upstream.close()
