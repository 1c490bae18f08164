"""Many concurrent IMAP clients from one process: one epoll loop over non-blocking sockets.

Each client has at most one command in flight (like a real client waiting for its answer);
N clients keep N commands in flight against the relay. One thread drives them all, so the
client costs a few µs per command (no GIL hand-offs between threads); its CPU share is
recorded with every trial (``client_cpu``) to show it is not the bottleneck.

A reply is complete when the last line received is the tagged line of the command in flight
(one command at a time per client: nothing follows the tagged line). Only the unfinished last
line is kept between reads, so the buffer stays small. The workloads here send no command
whose answer carries a literal, so a literal can never be mistaken for a tagged line.

* ``steady``: every client logs in and SELECTs (blocking, before timing; TLS or STARTTLS if
  asked), then loops small commands until the deadline;
* ``sessions``: every client loops whole sessions: connect, greeting, LOGIN, SELECT, a dozen
  FETCH FLAGS / NOOP, LOGOUT, close (plaintext only);
* ``bulk``: a few clients FETCHing the 10 MB message at once (a thread each, blocking).

Every loop is bounded by the deadline; the drain after it by ``DRAIN_SECONDS``.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator

from measure import Probe
from messages import PASSWORD, USER
from rawimap import Conn, IMAPError, open_session
from workloads import Address, Trial

DRAIN_SECONDS = 10.0
SESSION_COMMANDS = 12  # FETCH n FLAGS / NOOP, alternating, between SELECT and LOGOUT
_WANT = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Client:
    __slots__ = ("born_ns", "buf", "left", "n", "sent_ns", "sock", "tag", "tls")

    def __init__(self, sock: socket.socket, left: list[bytes] | None = None) -> None:
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.buf = bytearray()
        self.tag = b"* "  # what the last line must start with; "* OK" for the greeting
        self.n = 0
        self.sent_ns = 0
        self.left = left  # sessions: the commands still to send, in order
        self.born_ns = time.perf_counter_ns()

    def send(self, text: bytes) -> None:
        self.n += 1
        tag = b"q%d" % self.n
        self.tag = tag + b" "
        data = tag + b" " + text + b"\r\n"
        self.sent_ns = time.perf_counter_ns()
        try:
            sent = self.sock.send(data)
        except _WANT:
            sent = 0
        if sent < len(data):  # never for a short command on an idle socket; be correct anyway
            self.sock.setblocking(True)
            try:
                self.sock.sendall(data[sent:])
            finally:
                self.sock.setblocking(False)

    def receive(self) -> bytes | None:
        """Read what is there; the status (b"OK", ...) once the awaited tagged line is in."""
        buf = self.buf
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    raise IMAPError("connection closed by the relay")
                buf += data
                if not self.tls:  # level-triggered: the rest comes with the next event
                    break
        except _WANT:  # TLS: read until the record layer has nothing left
            pass
        if not buf.endswith(b"\n"):
            cut = buf.rfind(b"\n")
            if cut >= 0:
                del buf[: cut + 1]
            return None
        start = buf.rfind(b"\n", 0, len(buf) - 1) + 1
        done = buf.startswith(self.tag, start)
        status = bytes(buf[start + len(self.tag) : start + len(self.tag) + 2]) if done else None
        buf.clear()
        return status


def _small_commands(count: int) -> Iterator[bytes]:
    """NOOP and FETCH n FLAGS, n cycling over the mailbox."""
    for seq in itertools.cycle(range(1, count + 1)):
        yield b"NOOP"
        yield b"FETCH %d FLAGS" % seq


def _session_commands(count: int, i: int) -> list[bytes]:
    cmds = [b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()), b"SELECT INBOX"]
    for k in range(SESSION_COMMANDS):
        cmds.append(b"NOOP" if k % 2 else b"FETCH %d FLAGS" % (1 + (i + k) % count))
    return [*cmds, b"LOGOUT"]


def _connect(address: Address) -> _Client:
    """A new plaintext session's socket: connect blocking (on loopback that returns as soon
    as the handshake is done, before the greeting), then non-blocking."""
    sock = socket.create_connection(address, timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return _Client(sock)


def steady(
    address: Address,
    clients: int,
    seconds: float,
    mailbox_count: int,
    pid: int | None,
    *,
    dovecot_pid: int | None = None,
    tree: bool = False,
    tls: ssl.SSLContext | None = None,
    starttls: bool = False,
) -> Trial:
    """``clients`` logged-in sessions looping NOOP / FETCH n FLAGS: commands/s overall."""
    conns: list[Conn] = []
    try:
        for _ in range(clients):
            conns.append(open_session(address, USER, PASSWORD, tls=tls, starttls=starttls))
        return _run_steady(conns, seconds, mailbox_count, Probe(pid, dovecot_pid, tree=tree))
    finally:
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.setblocking(True)
                c.sock.settimeout(5.0)
                c.logout()


def _run_steady(conns: list[Conn], seconds: float, count: int, probe: Probe) -> Trial:
    ep = select.epoll()
    try:
        by_fd: dict[int, _Client] = {}
        cmds = _small_commands(count)
        for conn in conns:
            conn.sock.setblocking(False)
            c = _Client(conn.sock)
            by_fd[conn.sock.fileno()] = c
            ep.register(conn.sock.fileno(), select.EPOLLIN)
        probe.t0 = time.perf_counter()  # the logins above are not part of the trial
        for c in by_fd.values():
            c.send(next(cmds))
        lat: list[int] = []
        deadline = time.perf_counter() + seconds
        busy = len(by_fd)
        stopping = False
        extra: dict[str, float] = {}
        elapsed = seconds
        stop_at = deadline + DRAIN_SECONDS
        while busy and time.perf_counter() < stop_at:
            for fd, _ in ep.poll(0.5):
                c = by_fd[fd]
                status = c.receive()
                if status is None:
                    continue
                if status != b"OK":
                    raise IMAPError(f"steady: {status!r} from the relay")
                now = time.perf_counter_ns()
                if stopping:
                    busy -= 1
                    continue
                lat.append(now - c.sent_ns)
                if now / 1e9 >= deadline:
                    # Stop the clock; the commands still in flight are drained, not counted.
                    stopping = True
                    elapsed = probe.finish(len(lat), extra)
                    busy -= 1
                    continue
                c.send(next(cmds))
        if not stopping:
            raise IMAPError("steady: no answer before the deadline")
        extra["commands"] = len(lat)
        extra["clients"] = len(by_fd)
        return Trial(len(lat) / elapsed, extra, lat)
    finally:
        ep.close()


def sessions(
    address: Address,
    clients: int,
    seconds: float,
    mailbox_count: int,
    pid: int | None,
    *,
    dovecot_pid: int | None = None,
    tree: bool = False,
) -> Trial:
    """``clients`` slots, each running whole sessions back to back: sessions/s overall."""
    ep = select.epoll()
    by_fd: dict[int, _Client] = {}
    n_started = 0

    def start() -> None:
        nonlocal n_started
        c = _connect(address)
        c.left = _session_commands(mailbox_count, n_started)
        n_started += 1
        by_fd[c.sock.fileno()] = c
        ep.register(c.sock.fileno(), select.EPOLLIN)

    def finish(fd: int) -> None:
        c = by_fd.pop(fd)
        ep.unregister(fd)
        c.sock.close()

    try:
        extra: dict[str, float] = {}
        probe = Probe(pid, dovecot_pid, tree=tree)
        deadline = time.perf_counter() + seconds
        stop_at = deadline + DRAIN_SECONDS
        for _ in range(clients):
            start()
        done = 0
        commands = 0
        lat: list[int] = []
        stopping = False
        elapsed = seconds
        while by_fd and time.perf_counter() < stop_at:
            for fd, _ in ep.poll(0.5):
                c = by_fd[fd]
                status = c.receive()
                if status is None:
                    continue
                if status != b"OK":
                    raise IMAPError(f"session: {status!r} from the relay")
                assert c.left is not None
                if c.left:
                    c.send(c.left.pop(0))
                    continue
                finish(fd)  # the LOGOUT was answered
                if stopping:
                    continue
                done += 1
                commands += c.n
                lat.append(time.perf_counter_ns() - c.born_ns)
                if time.perf_counter() >= deadline:
                    # Stop the clock. The sessions still running did part of their work
                    # inside it: count each as the share of its commands answered.
                    stopping = True
                    per = SESSION_COMMANDS + 3
                    partial = sum(min(o.n, per) / (per + 1) for o in by_fd.values())
                    elapsed = probe.finish(done + partial, extra)
                    extra["sessions_partial"] = partial
                else:
                    start()
        if not stopping:
            raise IMAPError("session: no session finished before the deadline")
        extra["sessions"] = done
        extra["commands_per_session"] = commands / done if done else 0.0
        return Trial((done + extra["sessions_partial"]) / elapsed, extra, lat)
    finally:
        for c in by_fd.values():
            c.sock.close()
        ep.close()


def bulk(
    address: Address,
    clients: int,
    seq: int,
    size: int,
    fetches: int,
    pid: int | None,
    *,
    dovecot_pid: int | None = None,
    tls: ssl.SSLContext | None = None,
    starttls: bool = False,
) -> Trial:
    """``clients`` sessions at once, each FETCHing message ``seq`` (``size`` bytes)
    ``fetches`` times: MB/s of literal payload overall. One thread per client: the socket
    reads (and TLS decryption) release the GIL, so the threads do not queue behind it."""
    conns = [open_session(address, USER, PASSWORD, tls=tls, starttls=starttls)]
    try:
        while len(conns) < clients:
            conns.append(open_session(address, USER, PASSWORD, tls=tls, starttls=starttls))
        totals = [0] * clients
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for k in range(fetches):
                    reply = conns[i].command(b"B%d" % k, b"FETCH %d BODY.PEEK[]" % seq)
                    totals[i] += reply.literal_bytes
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        extra: dict[str, float] = {}
        probe = Probe(pid, dovecot_pid)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300.0)
        if errors:
            raise errors[0]
        total = sum(totals)
        elapsed = probe.finish(total / 1e6, extra)
        if total != clients * fetches * size:
            raise IMAPError(f"bulk: {total} payload bytes, expected {clients * fetches * size}")
        extra["clients"] = clients
        return Trial(total / elapsed / 1e6, extra)
    finally:
        for c in conns:
            with contextlib.suppress(OSError, IMAPError):
                c.logout()
