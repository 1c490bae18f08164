"""The inspector's observer: live sessions registry, and the source of tail and trace records.

``Inspector`` is one observer on the session stream (``telemetry.observer``). For each live
session it keeps a ``Track`` (row facts for ``sessions``, and while tail or trace needs lines
a ``Transcriber``). Line events reach it only while it asks for them (``wants_lines``): while
a tail reader is attached, and while a trace rule records or may still record the session.
Otherwise it costs a dictionary entry per session and one counter increment per command. The
client software a row shows comes from the session's ``client_id`` (its ``ID`` command, see
``Session``), parsed when a row first shows it.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from collections.abc import Sequence
from typing import Any

import trio

from imapproxy.inspect.tail import Reader, TailHub
from imapproxy.inspect.trace import PENDING_LIMIT, TraceFile, TraceRecorder
from imapproxy.inspect.transcript import Record, Transcriber
from imapproxy.policy.matchers import Matcher
from imapproxy.policy.model import Rule
from imapproxy.session.output import CommandDone, LoginDone, Note
from imapproxy.telemetry.observer import BaseObserver, SessionView
from imapproxy.wire.tokens import TokenError, TokenKind, parse_command


def software_from_id(raw: bytes) -> str | None:
    """``name version`` from an ``ID ("name" "x" "version" "y" ...)`` command."""
    try:
        args = parse_command(raw).args
    except TokenError:
        return None
    if not args or args[0].kind is not TokenKind.LIST:
        return None
    items = args[0].items
    fields = {
        items[i].value.decode("utf-8", "replace").lower(): items[i + 1].value.decode(
            "utf-8", "replace"
        )
        for i in range(0, len(items) - 1, 2)
    }
    name = fields.get("name")
    if not name:
        return None
    version = fields.get("version")
    return f"{name} {version}" if version else name


_NO_CANDIDATES: tuple[tuple[Matcher, Rule], ...] = ()
_UNPARSED = object()


class Track:
    """What the inspector keeps per live session. Per-session memory: nothing it can do
    without is made up front (the address object is parsed when a tail filter or a kick
    first asks; no candidate list unless trace rules gave some)."""

    __slots__ = (
        "_client_ip",
        "candidates",
        "commands",
        "pending",
        "software",
        "started",
        "started_mono",
        "trace",
        "transcriber",
        "user",
        "view",
    )

    def __init__(self, view: SessionView) -> None:
        self.view = view
        self.started = time.time()
        self.started_mono = trio.current_time()
        self.commands = 0
        self.software: object = _UNPARSED  # from the session's client_id, on first use
        self.transcriber: Transcriber | None = None
        self.user: str | None = None  # named by LOGIN/AUTHENTICATE, even before it succeeds
        self._client_ip: object = _UNPARSED
        self.trace: TraceFile | None = None
        # Trace rules that may still match.
        self.candidates: Sequence[tuple[Matcher, Rule]] = _NO_CANDIDATES
        self.pending: list[Record] | None = None  # records kept until the login decides

    @property
    def client_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The client's address (None if ``peer`` is not one), parsed on first use."""
        ip = self._client_ip
        if ip is _UNPARSED:
            ip = self._client_ip = _ip(self.view.peer)
        return ip  # type: ignore[return-value]


class Inspector(BaseObserver):
    def __init__(self, trace: TraceRecorder | None = None) -> None:
        self.tracks: dict[int, Track] = {}
        self.hub = TailHub(self._retap_all)
        self.trace = trace

    # --- observer ------------------------------------------------------------------------
    def session_opened(self, view: SessionView) -> None:
        track = self.tracks[view.id] = Track(view)
        if self.trace is not None and self.trace.rules:
            track.candidates = self.trace.candidates(view.peer)
            rule = self.trace.decide(track.candidates, view.peer, None)
            if rule is not None:
                track.trace = self.trace.open(view.id, None, rule)
                track.candidates = _NO_CANDIDATES
            elif track.candidates:
                track.pending = []
        if self._transcribing(track):  # else nobody would read the record
            self._emit(track, {"event": "open", "client": view.peer, "listener": view.listener})

    def note(self, view: SessionView, note: Note) -> None:
        if isinstance(note, CommandDone):
            track = self.tracks.get(view.id)
            if track is not None:
                track.commands += 1
        elif isinstance(note, LoginDone) and note.result == "ok":
            track = self.tracks.get(view.id)
            if track is not None:
                track.user = note.user
                if track.pending is not None:
                    self._login_decides(track, note.user)

    def wants_lines(self, view: SessionView) -> bool:
        track = self.tracks.get(view.id)
        if track is None:
            return False
        return self._transcribing(track)

    def line(self, view: SessionView, direction: str, event: object) -> None:
        track = self.tracks.get(view.id)
        if track is None:
            return
        transcriber = track.transcriber
        if transcriber is None:
            if not self._transcribing(track):
                return
            transcriber = track.transcriber = Transcriber()
        rec = transcriber.feed(direction, event)
        if rec is None:
            return
        named = rec.pop("_user", None)  # the user a LOGIN/AUTHENTICATE names
        if named is not None and view.session.user is None:
            track.user = named
        self._emit(track, rec)

    def session_closed(self, view: SessionView, duration: float) -> None:
        track = self.tracks.pop(view.id, None)
        if track is None:
            return
        if self._transcribing(track):
            self._emit(
                track,
                {
                    "event": "close",
                    "reason": view.close_reason,
                    "bytes_in": view.bytes_up,
                    "bytes_out": view.bytes_down,
                    "duration": round(duration, 3),
                },
            )
        if track.trace is not None:
            track.trace.close()
        track.pending = None

    # --- records -------------------------------------------------------------------------
    def _transcribing(self, track: Track) -> bool:
        return self.hub.active or track.trace is not None or track.pending is not None

    def _emit(self, track: Track, rec: Record) -> None:
        """Hand ``rec`` to the tail readers, the trace file, or the records pending a login
        (callers that build a record only for this check ``_transcribing`` first)."""
        rec["time"] = time.time()
        rec["session"] = track.view.id
        user = track.user or track.view.session.user
        if user is not None:
            rec["user"] = user
        if self.hub.active:
            self.hub.publish(track.view.id, track.client_ip, rec)
        if track.trace is not None:
            track.trace.write(rec)
        elif track.pending is not None and len(track.pending) < PENDING_LIMIT:
            track.pending.append(dict(rec))  # the payload is cut when written

    def _login_decides(self, track: Track, user: str | None) -> None:
        pending, track.pending = track.pending, None
        recorder = self.trace  # None when a reload removed every trace rule meanwhile
        rule = None
        if recorder is not None:
            rule = recorder.decide(track.candidates, track.view.peer, user)
        track.candidates = _NO_CANDIDATES
        if recorder is not None and rule is not None:
            track.trace = recorder.open(track.view.id, user, rule)
            if track.trace is not None:
                for rec in pending or ():
                    rec.setdefault("user", user)
                    track.trace.write(rec)
        if track.trace is None and not self.hub.active:
            track.transcriber = None
        track.view.update_tap()

    def _retap_all(self) -> None:
        for track in self.tracks.values():
            if not self._transcribing(track):
                track.transcriber = None  # a later start must not trust stale state
            track.view.update_tap()

    # --- control requests ----------------------------------------------------------------
    def attach(self, reader: Reader) -> None:
        self.hub.attach(reader)

    def detach(self, reader: Reader) -> None:
        self.hub.detach(reader)

    def rows(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [self._row(t, now) for t in sorted(self.tracks.values(), key=lambda t: t.view.id)]

    def _row(self, track: Track, now: float) -> dict[str, Any]:
        view = track.view
        session = view.session
        tls = view.tls
        idle = now - max(view.last_activity, track.started_mono)
        return {
            "id": view.id,
            "client": view.peer,
            "user": session.user,
            "state": _state(view),
            "mailbox": session.selected,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(track.started)),
            "idle_seconds": round(max(0.0, idle), 1),
            "commands": track.commands,
            "bytes_in": view.bytes_up,
            "bytes_out": view.bytes_down,
            "tls": {
                "client": tls.get("tls_version"),
                "upstream": tls.get("upstream_tls_version"),
            },
            "software": _software(track),
        }

    def kick(
        self,
        *,
        session: int | None = None,
        user: str | None = None,
        client: str | None = None,
        reason: str = "Session ended by an administrator",
    ) -> int:
        """End every live session matching all given conditions; returns how many."""
        net = ipaddress.ip_network(client, strict=False) if client is not None else None
        ended = 0
        for track in list(self.tracks.values()):
            view = track.view
            if session is not None and view.id != session:
                continue
            current = view.session.user
            if user is not None and (
                current is None or not fnmatch.fnmatch(current.lower(), user.lower())
            ):
                continue
            if net is not None and (track.client_ip is None or track.client_ip not in net):
                continue
            view.kick(reason)
            ended += 1
        return ended


def _software(track: Track) -> str | None:
    """``name version`` of the client's ID, parsed once it is there."""
    software = track.software
    if software is _UNPARSED:
        raw = track.view.session.client_id
        if raw is None:
            return None  # no ID yet (it may still come)
        software = track.software = software_from_id(raw) if raw else None
    return software  # type: ignore[return-value]


def _state(view: SessionView) -> str:
    session: Any = view.session
    parser = getattr(session, "client", None)
    if getattr(parser, "idling", False):
        return "idling"
    if getattr(parser, "last_command", "") == "LOGOUT":
        return "logging out"
    if session.user is None:
        return "not authenticated"
    return "selected" if session.selected is not None else "authenticated"


def _ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = peer.rsplit(":", 1)[0].strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


__all__: Sequence[str] = ("Inspector", "Track", "software_from_id")
