"""Opening a session's upstream leg, and what the client hears when it cannot be opened.

``open_upstream`` dials within ``connect_timeout``. On success the leg's TLS facts join the
session's (``upstream_tls_version``, ...) and observers see ``upstream_connected``. On failure
the session's ``close_reason`` says why and the client hears one ``* BYE [UNAVAILABLE]`` line:
"Mail server unavailable" when the server refused, did not answer or failed its STARTTLS / ID
step, "Proxy at capacity" when the proxy itself is out of descriptors (``server.capacity``:
counted, logged at most once a minute, no traceback; the mail server is fine).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from imapproxy.net.streams import UpstreamSetupError, tls_details
from imapproxy.server.capacity import capacity_log, resource_error

if TYPE_CHECKING:
    from imapproxy.server.driver import SessionDriver

__all__ = ["open_upstream"]

UNAVAILABLE_BYE = b"* BYE [UNAVAILABLE] Mail server unavailable\r\n"
AT_CAPACITY_BYE = b"* BYE [UNAVAILABLE] Proxy at capacity\r\n"


async def open_upstream(driver: SessionDriver) -> trio.abc.Stream | None:
    """The connected upstream stream, or None once the client was told why not."""
    ctx = driver.ctx
    t0 = time.monotonic()
    reason = "connect_timeout"
    with trio.move_on_after(ctx.connect_timeout):
        try:
            upstream = await ctx.connect_upstream()
        except OSError as exc:
            if (exhausted := resource_error(exc)) is not None:
                await _at_capacity(driver, exhausted, exc)
                return None
            reason = "connect_refused"
            detail = str(exc)
        except UpstreamSetupError as exc:  # STARTTLS, the client-IP ID exchange
            reason = exc.reason
            detail = str(exc)
        else:
            driver.tls.update(tls_details(upstream, "upstream_"))
            driver.observers.upstream_connected(driver, time.monotonic() - t0)
            return upstream
    if reason == "connect_timeout":
        detail = f"no answer within {ctx.connect_timeout:g}s"
    driver.close_reason = f"upstream unavailable: {reason}"
    driver.observers.upstream_failed(driver, reason, detail)
    await driver.send_bye(UNAVAILABLE_BYE)
    return None


async def _at_capacity(driver: SessionDriver, reason: str, exc: OSError) -> None:
    """The proxy itself ran out (descriptors): say so, the mail server is fine."""
    driver.ctx.telemetry.accept_error("upstream", reason)
    driver.close_reason = f"proxy at capacity: {reason}"
    capacity_log.event(
        "proxy_at_capacity",
        client=driver.peer,
        reason=reason,
        error=exc.strerror or str(exc),
        level=logging.ERROR,
    )
    await driver.send_bye(AT_CAPACITY_BYE)
