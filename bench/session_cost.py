"""CPU cost of imapproxy's sans-I/O core per command, without sockets or trio.

    python3 bench/session_cost.py [--commands N] [--profile]

Records real Dovecot answers to the steady-mode commands (NOOP, FETCH n FLAGS, FETCH of the
2 KB body, SEARCH) and to one 10 MB FETCH, then replays them through ``Session`` the way
the driver does (``client_data`` with the command bytes, ``server_data`` with the answer as
it arrived, in reads of the sizes Dovecot's writes produced here). Prints µs per command and
µs per MB: the part of the proxy's CPU that is imapproxy's own parsing and state, as opposed
to the runtime (trio) and the kernel, measured in one process, so other load on the machine
disturbs it far less than the end-to-end bench. ``--profile`` adds a cProfile breakdown.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from messages import PASSWORD, SEARCH_WORD, USER
from rawimap import Conn
from targets import Lab

from imapproxy.session.core import Session, SessionSettings


class RecordingConn(Conn):
    """A Conn that keeps every chunk it receives, as received."""

    chunks: list[bytes]

    def start(self) -> None:
        self.chunks = []
        orig = self.sock.recv_into

        def recv_into(buf, nbytes=0):  # type: ignore[no-untyped-def]
            n = orig(buf, nbytes) if nbytes else orig(buf)
            self.chunks.append(bytes(memoryview(buf)[:n]))
            return n

        self._recv_into = recv_into

    def _fill(self) -> None:
        n = self._recv_into(self._rbuf)
        if n == 0:
            raise OSError("closed")
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += self._rmv[:n]

    def _literal(self, size: int, keep: bool) -> bytes | None:
        avail = len(self._buf) - self._pos
        take = min(avail, size)
        self._pos += take
        left = size - take
        if self._sink is None:  # the base class makes it at the first literal
            self._sink = memoryview(bytearray(1 << 20))
        while left:
            n = self._recv_into(self._sink[: min(left, len(self._sink))])
            left -= n
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        return None


def record(address: tuple[str, int], bulk_seq: int, small_seq: int) -> dict[str, object]:
    conn = RecordingConn(address)
    conn.start()
    greeting = conn.greeting()
    conn.chunks = []
    login = b'a LOGIN "%s" "%s"\r\n' % (USER.encode(), PASSWORD.encode())
    conn.sock.sendall(login)
    conn.read_reply(b"a")
    conn.sock.sendall(b"b SELECT INBOX\r\n")
    conn.read_reply(b"b")
    setup_server = b"".join(conn.chunks)
    steady: list[tuple[bytes, list[bytes]]] = []
    for tag, text in (
        (b"c1", b"NOOP"),
        (b"c2", b"FETCH 7 FLAGS"),
        (b"c3", b"FETCH %d BODY.PEEK[]" % small_seq),
        (b"c4", b"SEARCH SUBJECT " + SEARCH_WORD.encode()),
    ):
        conn.chunks = []
        line = tag + b" " + text + b"\r\n"
        conn.sock.sendall(line)
        conn.read_reply(tag)
        steady.append((line, conn.chunks))
    conn.chunks = []
    bulk_line = b"d FETCH %d BODY.PEEK[]\r\n" % bulk_seq
    conn.sock.sendall(bulk_line)
    conn.read_reply(b"d")
    bulk = conn.chunks
    conn.logout()
    return {
        "greeting": greeting,
        "setup_client": login + b"b SELECT INBOX\r\n",
        "setup_server": setup_server,
        "steady": steady,
        "bulk": (bulk_line, bulk),
    }


def new_session(rec: dict[str, object]) -> Session:
    s = Session(SessionSettings())
    s.server_data(rec["greeting"])  # type: ignore[arg-type]
    s.client_data(rec["setup_client"])  # type: ignore[arg-type]
    s.server_data(rec["setup_server"])  # type: ignore[arg-type]
    return s


def run_steady(s: Session, steady: list[tuple[bytes, list[bytes]]], n: int) -> None:
    client_data, server_data = s.client_data, s.server_data
    k = len(steady)
    for i in range(n):
        line, chunks = steady[i % k]
        client_data(line)
        for c in chunks:
            server_data(c)


def run_bulk(s: Session, bulk: tuple[bytes, list[bytes]], n: int) -> None:
    line, chunks = bulk
    for _ in range(n):
        s.client_data(line)
        for c in chunks:
            s.server_data(c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=40_000)
    p.add_argument("--fetches", type=int, default=50)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    lab = Lab(
        Path(tempfile.mkdtemp(prefix="imapproxy-session-cost-")),
        metrics_target=False,
        profile=None,
        haproxy_threads=None,
    )
    try:
        lab.start(["direct"])
        box = lab.mailbox
        assert box is not None
        rec = record(lab.targets["direct"].address, box.bulk_seq, box.small_seq)
    finally:
        lab.stop()
    steady = rec["steady"]
    bulk = rec["bulk"]
    assert isinstance(steady, list) and isinstance(bulk, tuple)
    reads = sum(len(c) for _, c in steady) / len(steady)
    print(
        f"steady transcript: {reads:.1f} server reads per command on average; "
        f"bulk: {len(bulk[1])} reads per 10 MB FETCH"
    )

    for name, fn, n, unit, per in (
        ("steady", run_steady, args.commands, "command", 1.0),
        ("bulk", run_bulk, args.fetches, "MB", sum(len(c) for c in bulk[1]) / 1e6),
    ):
        data = steady if name == "steady" else bulk
        best = float("inf")
        for _ in range(5):
            s = new_session(rec)
            t0 = time.process_time()
            fn(s, data, n)  # type: ignore[operator]
            best = min(best, time.process_time() - t0)
        print(f"{name}: {best / (n * per) * 1e6:.2f} µs CPU per {unit} (best of 5, {n} runs)")
        if args.profile:
            s = new_session(rec)
            prof = cProfile.Profile(time.process_time)
            prof.enable()
            fn(s, data, n)  # type: ignore[operator]
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
