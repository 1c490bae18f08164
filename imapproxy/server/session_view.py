"""The driver's side of ``telemetry.observer.SessionView`` that observers act through.

The inspector reads a session's TLS facts and last activity, asks for its parser events
(``update_tap``) and ends it (``kick``). ``SessionDriver`` inherits these from
``ObservedDriver``; the attributes below are set by ``SessionDriver.__init__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from imapproxy.server.endings import kick_text

if TYPE_CHECKING:
    from imapproxy.server.driver import SessionContext
    from imapproxy.session.core import Session
    from imapproxy.telemetry.observer import Observers

__all__ = ["ObservedDriver"]


class ObservedDriver:
    id: int
    peer: str
    listener: str
    bytes_up: int
    bytes_down: int
    ctx: SessionContext
    session: Session
    observers: Observers
    close_reason: str
    _kicked: bytes | None  # the BYE line of an administrator's kick
    _tls_info: dict[str, Any]
    _touched: float
    _idle_scope: trio.CancelScope

    @property
    def tls(self) -> dict[str, Any]:
        """TLS facts of both legs (``tls_version``, ``upstream_tls_version``, ...)."""
        return self._tls_info

    @property
    def last_activity(self) -> float:
        """``trio.current_time()`` of the last traffic either way (to within a second)."""
        return self._touched

    def update_tap(self) -> None:
        self.session.tap = self.observers.line_tap(self)

    def kick(self, reason: str) -> None:
        """End the session now: the client reads ``* BYE [UNAVAILABLE] reason``, the
        upstream connection is closed (FIN, no command in the middle of its stream)."""
        if self._kicked is not None or self.close_reason != "unknown":
            return
        text = kick_text(reason)
        self._kicked = b"* BYE [UNAVAILABLE] " + text + b"\r\n"
        self.close_reason = "kicked: " + text.decode()
        self.ctx.telemetry.session_kicked()
        self._idle_scope.cancel()
