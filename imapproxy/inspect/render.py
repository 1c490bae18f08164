"""Rendering records and session rows for people: aligned, coloured when on a terminal.

``format_record`` turns one record (``tail --json`` / trace format) into one line::

    21:40:01.123 #3   alice        C> a1 LOGIN alice ***
    21:40:01.130 #3   alice        S< a1 OK Logged in                            6.9 ms

``C>`` is what the client sent, ``S<`` what the server sent; ``+`` continuations, literal
sizes (``{1234 bytes}``), and session open/close lines (``==``) are marked the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

_RESET = "\x1b[0m"
_COLOURS = {
    "client": "\x1b[36m",  # cyan
    "server": "\x1b[32m",  # green
    "meta": "\x1b[33m",  # yellow
    "bad": "\x1b[31m",  # red
    "dim": "\x1b[2m",
}
_LINE_WIDTH = 100


def _clock(iso: str) -> str:
    return iso[11:23] if len(iso) >= 23 else iso


def _paint(text: str, colour: str, on: bool) -> str:
    return f"{_COLOURS[colour]}{text}{_RESET}" if on else text


def format_record(rec: dict[str, Any], *, colour: bool) -> str:
    event = rec.get("event")
    head = f"{_clock(str(rec.get('time', '')))} #{rec.get('session', '-')!s:<4} "
    head += f"{(rec.get('user') or '-')[:20]:<20} "
    if event == "open":
        body = _paint(f"== open  {rec.get('client')} ({rec.get('listener')})", "meta", colour)
        return head + body
    if event == "close":
        text = (
            f"== close {rec.get('reason')}  in {rec.get('bytes_in')} B, "
            f"out {rec.get('bytes_out')} B, {rec.get('duration')} s"
        )
        return head + _paint(text, "meta", colour)
    if event == "dropped":
        return head + _paint(
            f"!! {rec.get('count')} events dropped (reader too slow)", "bad", colour
        )
    if event == "truncated":
        return head + _paint("!! trace truncated (size cap)", "bad", colour)
    direction = rec.get("direction")
    arrow = "C>" if direction == "client" else "S<"
    if event == "literal":
        size = rec.get("size")
        what = f"{{{size} bytes}}" if size is not None else "{literal}"
        if rec.get("offset"):
            what = f"{{... at {rec.get('offset')}}}"
        if rec.get("redacted"):
            what += " ***"
        payload = rec.get("payload")
        text = what if payload is None else f"{what} {payload!r}"
        return head + _paint(f"{arrow} {text}", "dim", colour)
    line = str(rec.get("line", ""))
    status = rec.get("status")
    shown = line if len(line) <= _LINE_WIDTH else line[: _LINE_WIDTH - 3] + "..."
    painted = _paint(
        f"{arrow} {shown}",
        "bad" if status in ("NO", "BAD") else ("client" if direction == "client" else "server"),
        colour,
    )
    duration = rec.get("duration")
    if duration is not None:
        pad = " " * max(1, _LINE_WIDTH + 3 - len(shown) - 3)
        painted += pad + f"{duration * 1000:8.1f} ms"
    return head + painted


SESSION_COLUMNS = (
    ("ID", "id"),
    ("CLIENT", "client"),
    ("USER", "user"),
    ("STATE", "state"),
    ("MAILBOX", "mailbox"),
    ("STARTED", "started"),
    ("IDLE", "idle_seconds"),
    ("CMDS", "commands"),
    ("IN", "bytes_in"),
    ("OUT", "bytes_out"),
    ("TLS", "tls"),
    ("SOFTWARE", "software"),
)


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row.get(key)
    if key == "tls":
        tls = value or {}
        return f"{tls.get('client') or '-'}/{tls.get('upstream') or '-'}"
    if key == "idle_seconds":
        return f"{float(value or 0):.0f}s"
    if key == "started":
        return str(value)[11:19] if value else "-"
    if key in ("bytes_in", "bytes_out"):
        return _bytes(int(value or 0))
    return "-" if value is None else str(value)


def _bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def format_sessions(rows: Sequence[dict[str, Any]]) -> str:
    """A table like ``doveadm who``; one line per session, columns aligned."""
    table = [[title for title, _ in SESSION_COLUMNS]]
    table += [[_cell(key, row) for _, key in SESSION_COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(SESSION_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.append(f"{len(rows)} session{'s' if len(rows) != 1 else ''}")
    return "\n".join(lines)


def now_stamp() -> str:
    return time.strftime("%H:%M:%S")
