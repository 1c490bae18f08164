"""Byte-level work on literal announcements in command bytes (no parsing state)."""

from __future__ import annotations

import re

from .framing import literal_at_end

_NONSYNC_END = re.compile(rb"\+\}(\r?\n)\Z")


def split_at_literals(raw: bytes, *, confirm: bool) -> list[bytes]:
    """Cut command bytes after every synchronising literal announcement; with ``confirm``
    after every announcement, ``{n+}`` forwarded as ``{n}`` (confirmed literals)."""
    segments: list[bytes] = []
    current: list[bytes] = []
    pos = 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            break
        end = nl + 1
        line = raw[pos:end]
        literal = literal_at_end(line)
        pos = end
        if literal is None:
            current.append(line)
            continue
        if literal.sync or confirm:
            current.append(line if literal.sync else as_sync(line))
            segments.append(b"".join(current))
            current = []
        else:
            current.append(line)
        current.append(raw[end : end + literal.size])
        pos = end + literal.size
    current.append(raw[pos:])
    segments.append(b"".join(current))
    return segments


def as_sync(line: bytes) -> bytes:
    """``... {n+}`` CRLF as ``... {n}`` CRLF."""
    return _NONSYNC_END.sub(rb"}\1", line)
