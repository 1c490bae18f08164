"""The control socket: a Unix stream socket speaking line-delimited, versioned JSON.

Each connection sends one request line and reads the answer; ``tail`` keeps the connection
and streams records until the client goes away. Requests (``v`` is the protocol version,
``PROTOCOL``; another version is refused)::

    {"v": 1, "op": "sessions"}
        -> {"v": 1, "ok": true, "sessions": [ROW, ...]}
    {"v": 1, "op": "kick", "session": 3 | "user": "alice@*" | "client": "10.0.0.0/8",
     "reason": "text"}
        -> {"v": 1, "ok": true, "ended": N}
    {"v": 1, "op": "tail", "filter": {"user": [...], "command": [...], "session": N,
     "client": [...]}, "bodies": N}
        -> {"v": 1, "ok": true} then one record per line (see ``inspect.transcript``)
    errors: {"v": 1, "ok": false, "error": "one line"}

The socket is created mode 0600 (and its directory 0700 when the proxy creates it); on top
of the file mode, a peer whose uid (SO_PEERCRED) is neither the proxy's nor root's is
refused. There is no TCP admin port.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

import trio

from imapproxy.inspect.registry import Inspector
from imapproxy.inspect.tail import Reader, TailFilter
from imapproxy.net.streams import resource_error
from imapproxy.telemetry.logs import log_event

log = logging.getLogger("imapproxy.control")
ACCEPT_BACKOFF = 0.1  # seconds between accepts while the process is out of descriptors

PROTOCOL = 1
MAX_REQUEST = 64 * 1024


class ControlSocketError(OSError):
    """The control socket cannot be created (path in use by a live proxy, no permission)."""


def bind_control_socket(path: Path) -> trio.socket.SocketType:
    """Bind and listen on ``path`` (0600). A stale socket file is replaced; one a live
    process answers on is not (ControlSocketError)."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left over from a crash
        else:
            raise ControlSocketError(f"control socket {path} is in use by another process")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no moment where others could connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot create control socket {path}: {exc}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return trio.socket.from_stdlib_socket(sock)


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(self, inspector: Inspector, path: Path) -> None:
        self.inspector = inspector
        self.path = path
        self._sock: trio.socket.SocketType | None = None

    def bind(self) -> None:
        self._sock = bind_control_socket(self.path)

    async def serve(self) -> None:
        assert self._sock is not None
        listener = trio.SocketListener(self._sock)
        log_event(log, "control_listening", socket=str(self.path))
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    stream = await self._accept(listener)
                    nursery.start_soon(self._connection, stream)
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()
            await listener.aclose()

    async def _accept(self, listener: trio.SocketListener) -> trio.SocketStream:
        """The next connection; out of descriptors (a proxy full of sessions), wait and try
        again, as the IMAP listeners do, instead of ending the process. Logged once per
        spell (the sessions' own capacity log says the rest)."""
        logged = False
        while True:
            try:
                return await listener.accept()
            except OSError as exc:
                reason = resource_error(exc)
                if reason is None:
                    raise
                if not logged:
                    log_event(log, "control_accept_failed", reason=reason, level=logging.ERROR)
                    logged = True
                await trio.sleep(ACCEPT_BACKOFF)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                uid = peer_uid(stream.socket)
                if uid not in (os.geteuid(), 0):
                    log_event(log, "control_refused", uid=uid, level=logging.WARNING)
                    await _send(stream, {"ok": False, "error": "permission denied"})
                    return
                request = await _read_request(stream)
                if request is None:
                    return
                await self._dispatch(stream, request)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the client went away

    async def _dispatch(self, stream: trio.SocketStream, req: dict[str, Any]) -> None:
        if req.get("v") != PROTOCOL:
            await _send(
                stream, {"ok": False, "error": f"unsupported protocol version {req.get('v')!r}"}
            )
            return
        op = req.get("op")
        try:
            if op == "sessions":
                await _send(stream, {"ok": True, "sessions": self.inspector.rows()})
            elif op == "kick":
                ended = self._kick(req)
                await _send(stream, {"ok": True, "ended": ended})
            elif op == "tail":
                await self._tail(stream, req)
            else:
                await _send(stream, {"ok": False, "error": f"unknown op {op!r}"})
        except ValueError as exc:
            await _send(stream, {"ok": False, "error": str(exc)})

    def _kick(self, req: dict[str, Any]) -> int:
        session, user, client = req.get("session"), req.get("user"), req.get("client")
        if session is None and user is None and client is None:
            raise ValueError("kick needs a session, user or client")
        if session is not None and not isinstance(session, int):
            raise ValueError("session must be a number")
        reason = str(req.get("reason") or "Session ended by an administrator")
        return self.inspector.kick(session=session, user=user, client=client, reason=reason)

    async def _tail(self, stream: trio.SocketStream, req: dict[str, Any]) -> None:
        flt = TailFilter.from_json(req.get("filter") or {})
        bodies = req.get("bodies", 0)
        if not isinstance(bodies, int) or bodies < 0:
            raise ValueError("bodies must be a number >= 0")
        reader = Reader(flt, bodies)
        await _send(stream, {"ok": True})
        self.inspector.attach(reader)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_eof, stream, nursery.cancel_scope)
                await reader.write_to(stream.send_all)
        finally:
            self.inspector.detach(reader)


async def _wait_eof(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """A tail client that hangs up ends its reader, even while nothing is sent."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while await stream.receive_some(4096):
            pass
    scope.cancel()


async def _read_request(stream: trio.SocketStream) -> dict[str, Any] | None:
    data = b""
    with trio.move_on_after(10):
        while b"\n" not in data and len(data) < MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\n", 1)[0]
    try:
        req = json.loads(line)
    except ValueError:
        await _send(stream, {"ok": False, "error": "request is not a JSON line"})
        return None
    if not isinstance(req, dict):
        await _send(stream, {"ok": False, "error": "request must be a JSON object"})
        return None
    return req


async def _send(stream: trio.SocketStream, doc: dict[str, Any]) -> None:
    await stream.send_all(json.dumps({"v": PROTOCOL, **doc}).encode() + b"\n")
