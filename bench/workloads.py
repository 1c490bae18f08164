"""One trial of each benchmark mode against one target address.

Each function is a single measurement (one "cell" of one round); ``run.py`` interleaves them
across targets. Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import ssl
import time
from dataclasses import dataclass, field

from measure import Probe, memory
from messages import PASSWORD, SEARCH_WORD, USER
from rawimap import Conn, IMAPError, open_session
from targets import Mailbox

Address = tuple[str, int]


@dataclass
class Trial:
    value: float  # the headline figure of the mode
    extra: dict[str, float] = field(default_factory=dict)
    latencies_ns: list[int] = field(default_factory=list)


DOVECOT_PID: int | None = None  # set by run.py: its CPU is recorded with every trial


def _probe(pid: int | None) -> Probe:
    return Probe(pid, DOVECOT_PID)


# --- bulk ------------------------------------------------------------------------------
def verify_bulk(
    address: Address, box: Mailbox, tls: ssl.SSLContext | None = None, starttls: bool = False
) -> None:
    """Fetch the big and the small message once, keeping the bytes: they must be exact."""
    conn = open_session(address, USER, PASSWORD, tls=tls, starttls=starttls)
    try:
        for seq, want in ((box.bulk_seq, box.bulk), (box.small_seq, box.small)):
            reply = conn.command(b"V", b"FETCH %d BODY.PEEK[]" % seq, keep_literals=True)
            got = b"".join(reply.literals)
            if got != want:
                raise IMAPError(f"{address}: message {seq} differs ({len(got)} != {len(want)})")
    finally:
        conn.logout()


def bulk(
    address: Address,
    box: Mailbox,
    fetches: int,
    pid: int | None = None,
    tls: ssl.SSLContext | None = None,
    starttls: bool = False,
) -> Trial:
    conn = open_session(address, USER, PASSWORD, tls=tls, starttls=starttls)
    try:
        cmd = b"FETCH %d BODY.PEEK[]" % box.bulk_seq
        total = 0
        extra: dict[str, float] = {}
        probe = _probe(pid)
        for i in range(fetches):
            reply = conn.command(b"B%d" % i, cmd)
            total += reply.literal_bytes
        elapsed = probe.finish(total / 1e6, extra)
    finally:
        conn.logout()
    if total != fetches * len(box.bulk):
        raise IMAPError(f"bulk: got {total} payload bytes, expected {fetches * len(box.bulk)}")
    return Trial(total / elapsed / 1e6, extra)


def ceiling(address: Address, size: int, fetches: int) -> Trial:
    """The same client loop against a server that costs nothing (see start_ceiling_server)."""
    conn = Conn(address)
    try:
        conn.login("x", "x")
        c0 = time.process_time()
        t0 = time.perf_counter()
        total = 0
        for i in range(fetches):
            total += conn.command(b"C%d" % i, b"FETCH 1 BODY.PEEK[]").literal_bytes
        elapsed = time.perf_counter() - t0
        extra = {"client_cpu": (time.process_time() - c0) / elapsed}
    finally:
        conn.logout()
    return Trial(total / elapsed / 1e6, extra)


# --- steady ----------------------------------------------------------------------------
STEADY_KINDS = ("NOOP", "FETCH FLAGS", "FETCH 2KB", "SEARCH")


def _steady_commands(box: Mailbox) -> itertools.cycle[tuple[int, bytes]]:
    seqs = itertools.cycle(range(1, box.count + 1))
    cmds: list[tuple[int, bytes]] = []
    for _ in range(box.count):
        cmds += [
            (0, b"NOOP"),
            (1, b"FETCH %d FLAGS" % next(seqs)),
            (2, b"FETCH %d BODY.PEEK[]" % box.small_seq),
            (3, b"SEARCH SUBJECT " + SEARCH_WORD.encode()),
        ]
    return itertools.cycle(cmds)


def steady(
    address: Address, box: Mailbox, seconds: float, max_commands: int, pid: int | None = None
) -> Trial:
    conn = open_session(address, USER, PASSWORD)
    try:
        cmds = _steady_commands(box)
        for i in range(8):  # warm: Dovecot's search cache, the relay's first-use paths
            conn.timed(b"W%d" % i, next(cmds)[1])
        by_kind: list[list[int]] = [[] for _ in STEADY_KINDS]
        lat: list[int] = []
        timed = conn.timed
        extra: dict[str, float] = {}
        probe = _probe(pid)
        deadline = time.perf_counter() + seconds
        n = 0
        while n < max_commands:
            kind, text = next(cmds)
            ns = timed(b"T%d" % n, text)
            lat.append(ns)
            by_kind[kind].append(ns)
            n += 1
            if n % 16 == 0 and time.perf_counter() > deadline:
                break
        elapsed = probe.finish(n, extra)
        extra["commands"] = n
        for name, values in zip(STEADY_KINDS, by_kind, strict=True):
            if values:
                values.sort()
                extra[f"p50_ms {name}"] = values[len(values) // 2] / 1e6
    finally:
        conn.logout()
    return Trial(n / elapsed, extra, lat)


# --- session ---------------------------------------------------------------------------
def one_session(address: Address, box: Mailbox, i: int) -> None:
    conn = Conn(address)
    try:
        conn.greeting()
        conn.command(b"a", b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
        conn.command(b"b", b"SELECT INBOX")
        conn.command(b"c", b"FETCH 1:10 (FLAGS)")
        conn.command(b"d", b"FETCH %d BODY.PEEK[]" % box.small_seq)
        seq = 1 + i % box.count
        conn.command(b"e", b"FETCH %d (UID RFC822.SIZE INTERNALDATE)" % seq)
        conn.command(b"f", b"LOGOUT")
    finally:
        conn.close()


def session(
    address: Address, box: Mailbox, seconds: float, max_sessions: int, pid: int | None = None
) -> Trial:
    one_session(address, box, 0)  # warm
    lat: list[int] = []
    extra: dict[str, float] = {}
    probe = _probe(pid)
    deadline = time.perf_counter() + seconds
    n = 0
    while n < max_sessions and time.perf_counter() < deadline:
        s0 = time.perf_counter_ns()
        one_session(address, box, n)
        lat.append(time.perf_counter_ns() - s0)
        n += 1
    elapsed = probe.finish(n, extra)
    extra["sessions"] = n
    return Trial(n / elapsed, extra, lat)


# --- idle ------------------------------------------------------------------------------
def _open_idle(address: Address) -> Conn:
    # Small buffers: the client holds up to 10,000 of these at once.
    conn = Conn(address, timeout=60.0, recv_buffer=4096)
    try:
        conn.greeting()
        conn.command(b"a", b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
    except BaseException:
        conn.close()
        raise
    return conn


def idle(
    address: Address,
    pid: int,
    sessions: int,
    concurrency: int,
    settle: float = 1.0,
    timeout: float = 180.0,
) -> Trial:
    """RSS/PSS of the relay process before and after ``sessions`` idle logged-in sessions."""
    # Warm-up: first-session allocations (imports, caches) are not per-session cost.
    warm = [_open_idle(address) for _ in range(min(20, sessions))]
    for c in warm:
        c.close()
    time.sleep(settle)
    before = memory(pid)
    conns: list[Conn] = []
    errors: list[BaseException] = []
    t0 = time.perf_counter()
    try:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency)
        futures = [pool.submit(_open_idle, address) for _ in range(sessions)]
        concurrent.futures.wait(futures, timeout=timeout)
        # Past the deadline: drop what has not started; what runs ends within its socket
        # timeout. Every connection made is collected, so every one is closed below.
        pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures:
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is None:
                conns.append(fut.result())
            else:
                errors.append(exc)
        opened = time.perf_counter() - t0
        if len(conns) < sessions // 2:
            raise IMAPError(
                f"idle: only {len(conns)} of {sessions} sessions opened in {opened:.0f} s "
                f"({len(errors)} errors, first: {errors[0] if errors else None!r})"
            )
        time.sleep(settle)
        after = memory(pid)
        # Every session is still alive end to end: one NOOP on a sample of them.
        for c in conns[:: max(1, len(conns) // 20)]:
            c.command(b"n", b"NOOP")
    finally:
        for c in conns:
            c.close()
    time.sleep(settle * 2)
    closed = memory(pid)
    n = len(conns)
    extra: dict[str, float] = {
        "open_seconds": opened,
        "sessions_opened": n,
        "open_errors": len(errors),
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
        "rss_closed_kib": closed.rss_kib,
    }
    if before.pss_kib is not None and after.pss_kib is not None:
        extra["pss_per_session_kib"] = (after.pss_kib - before.pss_kib) / n
    return Trial((after.rss_kib - before.rss_kib) / n, extra)
