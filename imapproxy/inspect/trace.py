"""Trace files: one JSON-lines file per session a ``trace`` rule matched, disk use capped.

A trace rule's ``when`` may name clients and users. Clients are known at once; a user only
after a successful login, so until then a session that may still match keeps its records
in memory (``PENDING_LIMIT``, pre-login traffic is a few lines) and they are written, or
forgotten, when the login decides. Files are created 0600 in ``trace.dir`` (0700), named
``<UTC time>-s<session>-<user>.jsonl``. ``max_file_bytes`` caps one file (a last
``truncated`` record says so); ``max_dir_bytes`` caps the directory: the oldest finished
files go first, and a file that would still not fit stops growing. Writes are buffered and
flushed when the buffer fills and when the session ends, so a busy traced session does not
make a system call per line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from imapproxy.inspect.tail import cut, encode
from imapproxy.inspect.transcript import Record
from imapproxy.policy.matchers import Matcher
from imapproxy.policy.model import Rule
from imapproxy.telemetry.logs import log_event

log = logging.getLogger("imapproxy.trace")

PENDING_LIMIT = 500
_FLUSH_AT = 64 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")
_TRUNCATED_RESERVE = 200


class TraceDir:
    """The directory and its byte budget (the sum of the trace files in it)."""

    def __init__(self, path: Path, max_file_bytes: int, max_dir_bytes: int) -> None:
        self.path = path
        self.max_file_bytes = max_file_bytes
        self.max_dir_bytes = max_dir_bytes
        self.used = 0
        # Files being written, with their size so far (part of it may still be buffered).
        self.open_files: dict[Path, TraceFile] = {}

    def rescan(self) -> None:
        """Recount from the disk (files may have been removed by hand), plus what open files
        hold in their buffers."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        closed = sum(p.stat().st_size for p in self._files() if p not in self.open_files)
        self.used = closed + sum(f.written for f in self.open_files.values())

    def _files(self) -> list[Path]:
        try:
            return [p for p in self.path.glob("*.jsonl") if p.is_file()]
        except OSError:
            return []

    def _oldest_closed(self) -> list[Path]:
        dated: list[tuple[float, Path]] = []
        for p in self._files():
            if p in self.open_files:
                continue
            try:
                dated.append((p.stat().st_mtime, p))
            except OSError:
                continue  # removed meanwhile
        return [p for _, p in sorted(dated)]

    def reserve(self, n: int) -> bool:
        """Account for ``n`` more bytes, removing the oldest finished files if need be."""
        if self.used + n <= self.max_dir_bytes:
            self.used += n
            return True
        for old in self._oldest_closed():
            try:
                size = old.stat().st_size
                old.unlink()
            except OSError:
                continue
            self.used -= size
            if self.used + n <= self.max_dir_bytes:
                break
        if self.used + n > self.max_dir_bytes:
            return False
        self.used += n
        return True


class TraceFile:
    def __init__(self, tdir: TraceDir, path: Path, bodies: int | None) -> None:
        self.tdir = tdir
        self.path = path
        self.bodies = bodies
        self.written = 0
        self.full = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        tdir.open_files[path] = self

    def write(self, rec: Record) -> None:
        if self.full:
            return
        kept = cut(rec, self.bodies)
        if kept is None:
            return
        line = encode(kept)
        limit = self.tdir.max_file_bytes - _TRUNCATED_RESERVE
        if self.written + len(line) > limit or not self.tdir.reserve(len(line)):
            self._stop(rec)
            return
        self.written += len(line)
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= _FLUSH_AT:
            self.flush()

    def _stop(self, rec: Record) -> None:
        self.full = True
        marker = encode({"time": rec["time"], "session": rec.get("session"), "event": "truncated"})
        if self.written + len(marker) <= self.tdir.max_file_bytes and self.tdir.reserve(
            len(marker)
        ):
            self._buffer.append(marker)
            self.written += len(marker)

    def flush(self) -> None:
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self.full = True
            log_event(log, "trace_failed", file=str(self.path), error=str(exc), level=logging.ERROR)

    def close(self) -> None:
        self.flush()
        os.close(self._fd)
        self.tdir.open_files.pop(self.path, None)
        if self.written == 0:  # not one record fitted the directory's budget: leave no husk
            with contextlib.suppress(OSError):
                self.path.unlink()


class TraceRecorder:
    """Decides which sessions are traced and owns their files."""

    def __init__(self, rules: Sequence[Rule], tdir: TraceDir) -> None:
        self.rules = [(Matcher.compile(r), r) for r in rules if r.action == "trace"]
        self.tdir = tdir

    def candidates(self, client: str) -> list[tuple[Matcher, Rule]]:
        """Rules that may still match a session from ``client`` (user not known yet)."""
        ip = _ip(client)
        if ip is None:
            return []
        return [(m, r) for m, r in self.rules if m.clients is None or ip in m.clients]

    def decide(
        self, candidates: Sequence[tuple[Matcher, Rule]], client: str, user: str | None
    ) -> Rule | None:
        ip = _ip(client)
        for matcher, rule in candidates:
            if ip is not None and matcher.users is None and user is None:
                return rule
            if ip is not None and user is not None and matcher.matches(ip, user, None):
                return rule
        return None

    def open(self, session_id: int, user: str | None, rule: Rule) -> TraceFile | None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{stamp}-s{session_id}-{_UNSAFE.sub('_', user or 'unknown')[:64]}.jsonl"
        try:
            self.tdir.rescan()
            return TraceFile(self.tdir, self.tdir.path / name, rule.bodies)
        except OSError as exc:
            log_event(log, "trace_failed", file=name, error=str(exc), level=logging.ERROR)
            return None


def _ip(client: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = client.rsplit(":", 1)[0].strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
