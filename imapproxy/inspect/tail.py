"""Live tail: records fanned out to attached readers, each with its filter and own queue.

Publishing never blocks and never does I/O: a record that passes a reader's filter is cut
to the reader's ``bodies`` and appended to its queue; when the queue holds ``QUEUE_LIMIT``
records, further ones are counted instead, and the reader's writer task sends a ``dropped``
record with the count once it catches up. A session's ``open`` and ``close`` records have
``LIFECYCLE_RESERVE`` more places: a reader that fell behind still learns which sessions
ended, however the session's other records and the writer's progress happen to interleave.
A reader that never reads costs its queue and nothing else. JSON encoding happens in the
writer task, off the session's path.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from imapproxy.inspect.transcript import Record
from imapproxy.policy.matchers import NetworkSet, compile_globs
from imapproxy.wire.commands import normalise_command_name

QUEUE_LIMIT = 1000
LIFECYCLE_RESERVE = 100  # extra places for "open" and "close" records in a full queue
_LIFECYCLE = frozenset({"open", "close"})
COALESCE_SECONDS = 0.05  # a tail reader's records are written at most this late


def iso_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def encode(rec: Record) -> bytes:
    """One JSON line (``time`` as ISO-8601 UTC); private keys (``_data``) are left out."""
    doc = {"time": iso_time(rec["time"])}
    doc.update((k, v) for k, v in rec.items() if k != "time" and not k.startswith("_"))
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def cut(rec: Record, bodies: int | None) -> Record | None:
    """``rec`` as a consumer with ``bodies`` (bytes of payload per literal; None: all) may
    keep it; None when a literal piece lies wholly past what it shows."""
    if rec["event"] != "literal":
        return rec
    data = rec.get("_data")
    offset = rec["offset"]
    if offset > 0 and (bodies is not None and offset >= bodies):
        return None
    out = {k: v for k, v in rec.items() if k != "_data"}
    if data is not None and (bodies is None or bodies > 0):
        keep = data if bodies is None else data[: max(0, bodies - offset)]
        out["payload"] = bytes(keep).decode("utf-8", "backslashreplace")
    return out


@dataclass(frozen=True)
class TailFilter:
    """What a reader asked for; every given condition must hold (AND)."""

    users: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    session: int | None = None
    clients: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TailFilter:
        """Raises ValueError with a one-line reason."""
        session = doc.get("session")
        if session is not None and (not isinstance(session, int) or isinstance(session, bool)):
            raise ValueError("session must be a number")
        lists = {}
        for key in ("user", "command", "client"):
            value = doc.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} must be a list of strings")
            lists[key] = value
        for cidr in lists["client"]:
            ipaddress.ip_network(cidr, strict=False)
        return cls(
            users=tuple(lists["user"]),
            commands=tuple(normalise_command_name(c) for c in lists["command"]),
            session=session,
            clients=tuple(lists["client"]),
        )


class _Matcher:
    def __init__(self, f: TailFilter) -> None:
        self.users = compile_globs(f.users, ignore_case=True)
        self.commands = frozenset(f.commands) or None
        self.session = f.session
        nets = [ipaddress.ip_network(c, strict=False) for c in f.clients]
        self.clients = NetworkSet(nets) if nets else None

    def session_ok(self, session_id: int, client_ip: Any) -> bool:
        if self.session is not None and session_id != self.session:
            return False
        return self.clients is None or (client_ip is not None and client_ip in self.clients)

    def record_ok(self, rec: Record) -> bool:
        if self.users is not None:
            user = rec.get("user")
            if user is None or self.users.match(user) is None:
                return False
        if self.commands is not None:
            return rec.get("command") in self.commands
        return True


class Reader:
    """One attached ``tail``: filter, bodies, bounded queue, and the count of drops."""

    def __init__(self, flt: TailFilter, bodies: int) -> None:
        self._match = _Matcher(flt)
        self._everything = flt == TailFilter()  # no condition: skip the checks
        self.bodies = bodies
        self.queue: deque[Record] = deque()
        self.dropped = 0
        self._wake = trio.Event()

    def offer(self, session_id: int, client_ip: Any, rec: Record) -> None:
        if not self._everything:
            m = self._match
            if not m.session_ok(session_id, client_ip) or not m.record_ok(rec):
                return
        queued = len(self.queue)
        if queued >= QUEUE_LIMIT and (
            queued >= QUEUE_LIMIT + LIFECYCLE_RESERVE or rec.get("event") not in _LIFECYCLE
        ):
            self.dropped += 1
            return
        kept = cut(rec, self.bodies)
        if kept is not None:
            queue = self.queue
            if not queue:
                self._wake.set()  # the writer waits only once it has emptied the queue
            queue.append(kept)

    async def write_to(self, send: Callable[[bytes], Any]) -> None:
        """Send queued records until the connection fails (the caller's ``send`` raises)."""
        while True:
            await self._wake.wait()
            # Gather what comes in the next moment: one write (and one wake-up of this
            # task) per batch rather than per record keeps a busy session's cost down.
            await trio.sleep(COALESCE_SECONDS)
            self._wake = trio.Event()
            while self.queue or self.dropped:
                queue = self.queue
                batch = [encode(queue.popleft()) for _ in range(min(len(queue), 500))]
                if not self.queue and self.dropped:
                    count, self.dropped = self.dropped, 0
                    batch.append(encode({"time": time.time(), "event": "dropped", "count": count}))
                await send(b"".join(batch))


class TailHub:
    """The attached readers; ``on_change`` runs when the first attaches or the last leaves
    (the inspector then installs or removes the sessions' line taps)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.readers: list[Reader] = []
        self._on_change = on_change

    @property
    def active(self) -> bool:
        return bool(self.readers)

    def attach(self, reader: Reader) -> None:
        self.readers.append(reader)
        if len(self.readers) == 1:
            self._on_change()

    def detach(self, reader: Reader) -> None:
        if reader in self.readers:
            self.readers.remove(reader)
            if not self.readers:
                self._on_change()

    def publish(self, session_id: int, client_ip: Any, rec: Record) -> None:
        for reader in self.readers:
            reader.offer(session_id, client_ip, rec)
