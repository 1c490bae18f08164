"""The load modes: many clients at once (``concurrent``, ``capacity``), TLS on the client
leg (``tls``) and a client that never reads (``slowreader``). See bench/README.md.

Each mode interleaves its own targets round by round like the others (``trials.interleave``)
and returns one or more result sets keyed by name; ``rows``, ``tables`` and ``verdicts`` turn
them into the report.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import loadgen
import workloads
from measure import memory
from messages import PASSWORD, USER, big_message
from rawimap import IMAPError, open_session
from report import Row, cpu_shares, fmt, ratio
from targets import Lab
from trials import Cell, Plan, interleave, log

EXTRA_MODES = ("concurrent", "capacity", "tls", "slowreader")
CAPACITY_TARGETS = ("direct", "haproxy-1t", "imapproxy", "imapproxy-w2")
TLS_TARGETS = ("haproxy-tls", "imapproxy-tls", "imapproxy-starttls")
SLOWREADER_TARGETS = ("haproxy", "imapproxy")
TLS_BULK_CLIENTS = 2

Results = dict[str, dict[str, Cell]]


def extra_targets(modes: list[str]) -> list[str]:
    """The targets these modes need beyond the run's own (started with them)."""
    out: list[str] = []
    if "capacity" in modes:
        out += CAPACITY_TARGETS
    if "tls" in modes:
        out += TLS_TARGETS
    if "slowreader" in modes:
        out += SLOWREADER_TARGETS
    return list(dict.fromkeys(out))


class LoadModes:
    def __init__(self, lab: Lab, plan: Plan, targets: list[str]) -> None:
        self.lab = lab
        self.plan = plan
        self.targets = targets  # the run's own (concurrent mode)
        assert lab.mailbox is not None
        self.count = lab.mailbox.count

    def run(self, mode: str) -> Results:
        runner: dict[str, Callable[[], Results]] = {
            "concurrent": self.concurrent,
            "capacity": self.capacity,
            "tls": self.tls,
            "slowreader": self.slowreader,
        }
        return runner[mode]()

    def _steady(self, clients: int) -> Callable[[str], workloads.Trial]:
        def trial(name: str) -> workloads.Trial:
            t = self.lab.targets[name]
            return loadgen.steady(
                t.address,
                clients,
                self.plan.load_seconds,
                self.count,
                t.pid,
                dovecot_pid=workloads.DOVECOT_PID,
                tree=t.tree,
                tls=self.lab.client_context() if t.client_tls else None,
                starttls=t.client_tls == "starttls",
            )

        return trial

    def concurrent(self) -> Results:
        clients = self.plan.concurrent_clients

        def sessions(name: str) -> workloads.Trial:
            t = self.lab.targets[name]
            return loadgen.sessions(
                t.address,
                clients,
                self.plan.load_session_seconds,
                self.count,
                t.pid,
                dovecot_pid=workloads.DOVECOT_PID,
                tree=t.tree,
            )

        rounds = self.plan.rounds
        return {
            "concurrent": interleave("concurrent", self.targets, rounds, self._steady(clients)),
            "concurrent-session": interleave("concurrent-session", self.targets, rounds, sessions),
        }

    def capacity(self) -> Results:
        steady = self._steady(self.plan.capacity_clients)
        return {
            "capacity": interleave("capacity", list(CAPACITY_TARGETS), self.plan.rounds, steady)
        }

    def tls(self) -> Results:
        box = self.lab.mailbox
        assert box is not None

        def bulk(name: str) -> workloads.Trial:
            t = self.lab.targets[name]
            return loadgen.bulk(
                t.address,
                TLS_BULK_CLIENTS,
                box.bulk_seq,
                len(box.bulk),
                self.plan.bulk_fetches,
                t.pid,
                dovecot_pid=workloads.DOVECOT_PID,
                tls=self.lab.client_context(),
                starttls=t.client_tls == "starttls",
            )

        names = list(TLS_TARGETS)
        steady = self._steady(self.plan.concurrent_clients)
        return {
            "tls": interleave("tls", names, self.plan.rounds, steady),
            "tls-bulk": interleave("tls-bulk", names, self.plan.rounds, bulk),
        }

    def slowreader(self) -> Results:
        """Deliver one big message (100 MiB by default), then per relay: a client FETCHes it
        and reads nothing while the relay's RSS is sampled and another client times NOOPs."""
        lab = self.lab
        assert lab.dovecot is not None
        size = self.plan.slowreader_size
        t0 = time.monotonic()
        lab.dovecot.deliver(USER, big_message(size), flags="S")
        conn = open_session(lab.dovecot.address, USER, PASSWORD)
        try:
            reply = conn.command(b"F", b"FETCH 1:* (RFC822.SIZE)", collect=True)
        finally:
            conn.logout()
        seq = next(
            int(line.split()[1]) for line in reply.untagged if b"RFC822.SIZE %d)" % size in line
        )
        log(
            f"slowreader: {size >> 20} MiB message delivered as {seq} "
            f"in {time.monotonic() - t0:.1f} s"
        )

        def trial(name: str) -> workloads.Trial:
            t = lab.targets[name]
            assert t.pid is not None
            return slow_reader(t.address, t.pid, seq, size, self.plan.slowreader_seconds)

        names = list(SLOWREADER_TARGETS)
        return {"slowreader": interleave("slowreader", names, 1, trial, warmup=False)}


def _read_until(sock: socket.socket, token: bytes, buf: bytearray) -> None:
    deadline = time.monotonic() + 30.0
    while token not in buf:
        if time.monotonic() > deadline:
            raise IMAPError(f"slowreader: no {token!r} in 30 s")
        data = sock.recv(4096)
        if not data:
            raise IMAPError("slowreader: connection closed")
        buf += data


def slow_reader(
    address: workloads.Address, pid: int, seq: int, size: int, hold: float
) -> workloads.Trial:
    """Relay RSS growth (MB) while a client with a small receive buffer leaves a FETCH of a
    ``size``-byte message unread for ``hold`` seconds; meanwhile another session's NOOPs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: the window
    sock.settimeout(30.0)
    other = None
    try:
        sock.connect(address)
        buf = bytearray()
        _read_until(sock, b"\r\n", buf)
        sock.sendall(b'L LOGIN "%s" "%s"\r\n' % (USER.encode(), PASSWORD.encode()))
        _read_until(sock, b"L OK", buf)
        sock.sendall(b"S SELECT INBOX\r\n")
        _read_until(sock, b"S OK", buf)
        other = open_session(address, USER, PASSWORD)
        time.sleep(0.5)
        before = memory(pid).rss_kib
        sock.sendall(b"F FETCH %d BODY.PEEK[]\r\n" % seq)
        peak = before
        lat: list[int] = []
        deadline = time.monotonic() + hold
        i = 0
        while time.monotonic() < deadline:
            lat.append(other.timed(b"n%d" % i, b"NOOP"))
            i += 1
            if i % 10 == 0:
                peak = max(peak, memory(pid).rss_kib)
            time.sleep(0.01)
        peak = max(peak, memory(pid).rss_kib)
        # The answer was on its way (not stuck before the relay): its start is readable now.
        head = bytearray()
        _read_until(sock, b"BODY[] {", head)
        if b"* %d FETCH" % seq not in head:
            raise IMAPError(f"slowreader: unexpected answer {bytes(head[:60])!r}")
    finally:
        sock.close()
        if other is not None:
            other.logout()
    lat.sort()
    extra = {
        "rss_before_kib": float(before),
        "rss_peak_kib": float(peak),
        "message_mib": size / 2**20,
        "other_noop_p50_ms": lat[len(lat) // 2] / 1e6,
        "other_noop_max_ms": lat[-1] / 1e6,
    }
    return workloads.Trial((peak - before) / 1024, extra, lat)


# --- reporting ---------------------------------------------------------------------------
def rows(results: Results) -> list[Row]:
    """Rows of the load modes; the concurrent ones go into the main table."""
    out: list[Row] = []

    def med(key: str, extra: str | None = None) -> dict[str, float | None]:
        cells = results[key]
        return {t: c.median if extra is None else c.extra_median(extra) for t, c in cells.items()}

    def spreads(key: str) -> dict[str, float]:
        return {t: c.spread() for t, c in results[key].items()}

    cpu = "relay_cpu_us_per_unit"
    for key, mode, metric, unit in (
        ("concurrent", "concurrent", "commands/s (16 clients)", "command"),
        ("concurrent-session", "concurrent", "sessions/s (16 clients)", "session"),
        ("capacity", "capacity", "commands/s (32 clients)", "command"),
        ("tls", "tls", "commands/s (16 clients)", "command"),
        ("tls-bulk", "tls", "bulk MB/s (2 clients)", "MB"),
    ):
        if key not in results:
            continue
        out.append(Row(mode, metric, med(key), True, spreads(key)))
        if key in ("concurrent", "capacity", "tls"):
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                lat = {t: c.percentile_ms(q) for t, c in results[key].items()}
                out.append(Row(mode, f"{name} ms per command", lat, False))
        out.append(Row(mode, f"relay CPU µs/{unit}", med(key, cpu), False))
    if "slowreader" in results:
        out.append(Row("slowreader", "RSS growth MB", med("slowreader"), False))
        out.append(
            Row(
                "slowreader",
                "other session NOOP p50 ms",
                med("slowreader", "other_noop_p50_ms"),
                False,
            )
        )
    return out


MODE_TABLES = {
    "capacity": (CAPACITY_TARGETS, (("imapproxy-w2", "imapproxy"), ("imapproxy", "haproxy-1t"))),
    "tls": (TLS_TARGETS, (("imapproxy-tls", "haproxy-tls"), ("imapproxy-starttls", "haproxy-tls"))),
    "slowreader": (SLOWREADER_TARGETS, ()),
}


def tables(rows: list[Row]) -> list[str]:
    """One table per mode whose targets differ from the main three."""
    out = []
    for mode, (names, ratios) in MODE_TABLES.items():
        mine = [r for r in rows if r.mode == mode]
        if not mine:
            continue
        cols = [*names, *(f"{a}/{b}" for a, b in ratios)]
        lines = ["| mode | metric | " + " | ".join(cols) + " |", "|" + "---|" * (2 + len(cols))]
        for r in mine:
            v = r.values
            cells = [fmt(v.get(n)) for n in names]
            cells += [ratio(v.get(a), v.get(b)) for a, b in ratios]
            lines.append(f"| {r.mode} | {r.metric} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return out


# (mode, metric, numerator, denominator or None, kind, limit); kind: ratio >= / max <=
TARGETS_SPEC = (
    ("concurrent", "relay CPU µs/command", "imapproxy", None, "max", 100.0),
    ("concurrent", "relay CPU µs/session", "imapproxy", None, "max", 2000.0),
    ("concurrent", "commands/s (16 clients)", "imapproxy", "haproxy", "ratio", None),
    ("capacity", "commands/s (32 clients)", "imapproxy-w2", "imapproxy", "ratio", 1.6),
    ("capacity", "commands/s (32 clients)", "imapproxy", "haproxy-1t", "ratio", 0.6),
    ("tls", "relay CPU µs/command", "imapproxy-tls", None, "max", 150.0),
    ("tls", "relay CPU µs/command", "imapproxy-starttls", None, "max", 150.0),
    ("tls", "commands/s (16 clients)", "imapproxy-tls", "haproxy-tls", "ratio", 0.8),
    ("tls", "commands/s (16 clients)", "imapproxy-starttls", "haproxy-tls", "ratio", 0.8),
    ("tls", "bulk MB/s (2 clients)", "imapproxy-tls", "haproxy-tls", "ratio", 0.95),
    ("tls", "bulk MB/s (2 clients)", "imapproxy-starttls", "haproxy-tls", "ratio", 0.95),
    ("slowreader", "RSS growth MB", "imapproxy", None, "max", 10.0),
)


def verdicts(rows: list[Row]) -> list[str]:
    by_key = {(r.mode, r.metric): r for r in rows}
    out = []
    for mode, metric, num, den, kind, limit in TARGETS_SPEC:
        r = by_key.get((mode, metric))
        a = r.values.get(num) if r else None
        b = r.values.get(den) if r and den else None
        if a is None or (den is not None and not b):
            continue
        if limit is None:  # no target in the issues: shown for the reader
            assert b is not None
            out.append(f"- {mode} {metric}: {num}/{den} {a / b:.2f}")
        elif kind == "ratio":
            assert b is not None
            ok = a / b >= limit
            text = f"{num}/{den} {a / b:.2f} (target >= {limit})"
            out.append(f"- {'PASS' if ok else 'MISS'} {mode} {metric}: {text}")
        else:
            ok = a <= limit
            out.append(
                f"- {'PASS' if ok else 'MISS'} {mode} {metric}: {num} {fmt(a)} "
                f"(target <= {limit:g})"
            )
    return out


def details(results: Results) -> list[str]:
    """Client, relay and Dovecot CPU share per target, and what else ran on the machine."""
    lines = []
    for key in ("concurrent", "concurrent-session", "capacity", "tls", "tls-bulk"):
        if key not in results:
            continue
        lines.append(cpu_shares(key, results[key]))
    for t, c in results.get("slowreader", {}).items():
        e = c.extras[-1]
        lines.append(
            f"- slowreader {t}: RSS {e['rss_before_kib']:.0f} -> peak {e['rss_peak_kib']:.0f} KiB "
            f"while a {e['message_mib']:.0f} MiB FETCH sat unread; another session's NOOP p50 "
            f"{e['other_noop_p50_ms']:.2f} ms, max {e['other_noop_max_ms']:.1f} ms"
        )
    return lines
