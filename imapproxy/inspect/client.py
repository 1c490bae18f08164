"""The CLI side of the control socket: ``sessions``, ``kick``, ``tail`` and ``show``.

Plain blocking sockets (one request, one answer or a stream); a missing or refused socket
is one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from imapproxy.inspect.control import PROTOCOL
from imapproxy.inspect.render import format_record, format_sessions


class ControlError(Exception):
    """One line for the user."""


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise ControlError(
            f"cannot reach the proxy's control socket {path}: {exc.strerror or exc}"
        ) from None
    return sock


def _lines(sock: socket.socket) -> Iterator[bytes]:
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        *whole, buf = buf.split(b"\n")
        yield from whole


def _answer(line: bytes | None, path: Path) -> dict[str, Any]:
    if line is None:
        raise ControlError(f"the proxy closed the control socket {path} without an answer")
    doc = json.loads(line)
    if not doc.get("ok"):
        raise ControlError(f"the proxy refused: {doc.get('error')}")
    return dict(doc)


def _send(sock: socket.socket, req: dict[str, Any]) -> None:
    """Send a request; a proxy that refused the peer may have closed already, and its
    answer (still readable) says why, so a failed send is not the error to report."""
    with contextlib.suppress(OSError):
        sock.sendall(json.dumps({"v": PROTOCOL, **req}).encode() + b"\n")


def _first_line(lines: Iterator[bytes], path: Path) -> bytes | None:
    try:
        return next(lines, None)
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None


def request(path: Path, req: dict[str, Any]) -> dict[str, Any]:
    sock = _connect(path)
    with sock:
        _send(sock, req)
        return _answer(_first_line(_lines(sock), path), path)


def sessions(path: Path, *, as_json: bool, watch: bool, out: TextIO = sys.stdout) -> int:
    while True:
        rows = request(path, {"op": "sessions"})["sessions"]
        if as_json:
            out.write(json.dumps(rows) + "\n")
        else:
            if watch:
                out.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S") + "\n")
            out.write(format_sessions(rows) + "\n")
        out.flush()
        if not watch:
            return 0
        time.sleep(1)


def kick(path: Path, selector: dict[str, Any], reason: str | None) -> int:
    req: dict[str, Any] = {"op": "kick", **selector}
    if reason:
        req["reason"] = reason
    ended = int(request(path, req)["ended"])
    print(f"{ended} session{'' if ended == 1 else 's'} ended")
    return 0


def tail(
    path: Path, flt: dict[str, Any], bodies: int, *, as_json: bool, out: TextIO = sys.stdout
) -> int:
    sock = _connect(path)
    with sock:
        _send(sock, {"op": "tail", "filter": flt, "bodies": bodies})
        lines = _lines(sock)  # one generator: it buffers what follows the first line
        _answer(_first_line(lines, path), path)
        colour = not as_json and out.isatty()
        for line in lines:
            if as_json:
                out.write(line.decode() + "\n")
            else:
                out.write(format_record(json.loads(line), colour=colour) + "\n")
            out.flush()
    return 0


def show(trace: Path, *, out: TextIO = sys.stdout) -> int:
    try:
        handle = trace.open(encoding="utf-8")
    except OSError as exc:
        raise ControlError(f"cannot read {trace}: {exc.strerror or exc}") from None
    colour = out.isatty()
    with handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise ControlError(f"{trace}:{n}: not a trace record") from None
            out.write(format_record(rec, colour=colour) + "\n")
    return 0
