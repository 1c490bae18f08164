"""Session log lines as an observer of the session stream (see ``telemetry.observer``).

Emits ``session_opened``, ``upstream_unavailable``, ``command`` (for ``log`` rules),
``response`` (``detail: full``), ``protocol_error`` and ``session_closed``, with the fields
documented in the README. Notes carry no credentials, so neither do these lines.
"""

from __future__ import annotations

import logging
import math

from imapproxy.session.output import CommandDone, Note, ProtocolIssue, ResponseLogged
from imapproxy.telemetry.logs import log_event
from imapproxy.telemetry.observer import BaseObserver, SessionView

log = logging.getLogger("imapproxy.session")


class SessionLog(BaseObserver):
    __slots__ = ()

    def upstream_connected(self, view: SessionView, seconds: float) -> None:
        log_event(log, "session_opened", session=view.id, client=view.peer)

    def upstream_failed(self, view: SessionView, reason: str, detail: str) -> None:
        log_event(
            log,
            "upstream_unavailable",
            session=view.id,
            client=view.peer,
            reason=reason,
            detail=detail,
            level=logging.WARNING,
        )

    def note(self, view: SessionView, note: Note) -> None:
        if isinstance(note, CommandDone):
            # "none": cut off by the session's end (Session.abandon); only metrics count
            # those, as before the observer seam. Logging them too is a one-line change.
            if note.log is not None and note.status != "none":
                _log_command(view, note)
        elif isinstance(note, ProtocolIssue):
            log_event(
                log,
                "protocol_error",
                session=view.id,
                client=view.peer,
                side=note.side,
                reason=note.reason,
                fatal=note.fatal,
                level=logging.WARNING,
            )
        elif isinstance(note, ResponseLogged):
            log_event(log, "response", session=view.id, line=note.line)

    def session_closed(self, view: SessionView, duration: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return  # not even the fields are gathered (log_event would drop them)
        log_event(
            log,
            "session_closed",
            session=view.id,
            client=view.peer,
            user=view.session.user,
            bytes_in=view.bytes_up,
            bytes_out=view.bytes_down,
            duration=round(duration, 3),
            reason=view.close_reason,
            **view.tls,
        )


def _log_command(view: SessionView, note: CommandDone) -> None:
    log_event(
        log,
        "command",
        session=view.id,
        client=view.peer,
        user=note.user,
        tag=note.tag,
        command=note.command,
        mailbox=note.mailbox,
        status=note.status,
        code=note.code,
        bytes_in=note.bytes_in,
        bytes_out=note.bytes_out,
        duration=round(note.duration, 6) if math.isfinite(note.duration) else None,
    )
