"""Turns session observations into metric updates; a no-op when metrics are disabled.

The session and driver speak in ``actions.Note`` objects; only this adapter knows the
``Metrics`` API, and only ``metrics.py`` and the helper modules its docstring lists know
prometheus_client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imapproxy.session.output import (
    CommandBlocked,
    CommandDone,
    LoginDone,
    Note,
    ProtocolIssue,
    RuleHit,
)
from imapproxy.telemetry.observer import BaseObserver, SessionView

if TYPE_CHECKING:
    from imapproxy.telemetry.metrics import Metrics


class Telemetry:
    __slots__ = ("_m",)

    def __init__(self, metrics: Metrics | None) -> None:
        self._m = metrics

    def session_opened(self, listener: str) -> None:
        if self._m is not None:
            self._m.session_opened(listener)

    def session_closed(self, duration: float) -> None:
        if self._m is not None:
            self._m.session_closed(duration)

    def command_done(self, note: CommandDone) -> None:
        if self._m is not None:
            self._m.command_completed(note.command, note.status, note.duration)

    def bytes_forwarded(self, direction: str, n: int) -> None:
        if self._m is not None:
            self._m.bytes_forwarded(direction, n)

    def login(self, note: LoginDone) -> None:
        if self._m is not None:
            self._m.login(note.mechanism, note.result)

    def rule_matched(self, note: RuleHit) -> None:
        if self._m is not None:
            self._m.rule_matched(note.rule, note.action)

    def command_blocked(self, note: CommandBlocked) -> None:
        if self._m is not None:
            self._m.command_blocked(note.rule, note.command)

    def upstream_connected(self, seconds: float) -> None:
        if self._m is not None:
            self._m.upstream_connected(seconds)

    def upstream_error(self, reason: str) -> None:
        if self._m is not None:
            self._m.upstream_error(reason)

    def protocol_error(self, side: str) -> None:
        if self._m is not None:
            self._m.protocol_error(side)

    def accept_error(self, leg: str, reason: str) -> None:
        """A connection not taken on for lack of resources (leg: client | upstream)."""
        if self._m is not None:
            self._m.accept_error(leg, reason)

    def tls_handshake(self, side: str, result: str) -> None:
        if self._m is not None:
            self._m.tls_handshake(side, result)

    def config_reloaded(self, ok: bool) -> None:
        if self._m is not None:
            self._m.config_reloaded(ok)

    def limit_hit(self, reason: str) -> None:
        if self._m is not None:
            self._m.limit_hit(reason)

    def session_kicked(self) -> None:
        if self._m is not None:
            self._m.session_kicked()


class MetricsObserver(BaseObserver):
    """Metrics as an observer of the session stream (see ``telemetry.observer``)."""

    __slots__ = ("_tel",)

    def __init__(self, telemetry: Telemetry) -> None:
        self._tel = telemetry

    def session_opened(self, view: SessionView) -> None:
        self._tel.session_opened(view.listener)

    def upstream_connected(self, view: SessionView, seconds: float) -> None:
        self._tel.upstream_connected(seconds)

    def upstream_failed(self, view: SessionView, reason: str, detail: str) -> None:
        self._tel.upstream_error(reason)

    def note(self, view: SessionView, note: Note) -> None:
        tel = self._tel
        if isinstance(note, CommandDone):
            tel.command_done(note)
        elif isinstance(note, LoginDone):
            tel.login(note)
        elif isinstance(note, RuleHit):
            tel.rule_matched(note)
        elif isinstance(note, CommandBlocked):
            tel.command_blocked(note)
        elif isinstance(note, ProtocolIssue):
            tel.protocol_error(note.side)

    def session_closed(self, view: SessionView, duration: float) -> None:
        self._tel.session_closed(duration)
