"""What one session costs the proxy: Python heap and RSS per idle session, CPU per new session.

    python3 bench/memprof.py idle [--sessions 200] [--top 25] [--frames 1] [--no-trace]
    python3 bench/memprof.py cpu [--sessions 1000] [--profile] [--top 30]

The proxy (``server.listener.Proxy``, the bench's config: no per-IP / per-user limits, metrics
off, control socket off) runs in this process in front of a throwaway Dovecot; the clients run
in a child process (this script with ``client``), so none of their allocations or CPU is
counted.

``idle``: after 20 warm-up sessions (imports, caches), ``--sessions`` logged-in idle sessions
are opened; the tracemalloc snapshots before and after are compared by line (``--frames 1``)
or by traceback, and the live objects per type (``gc``) are counted. Prints bytes per session
per allocation site, objects per session per type, and RSS per session (tracemalloc's own
bookkeeping inflates RSS: use ``--no-trace`` for the RSS figure alone).

``cpu``: the child runs connect, greeting, LOGIN, LOGOUT ``--sessions`` times one after
another; prints this process's CPU (``time.process_time``: the proxy only) per session, best
of ``--rounds``. ``--profile`` runs one more round under cProfile and prints the top functions
by own time and the Python calls per session; ``--sample`` one more with a stack sampler
(inclusive share per imapproxy function, which cProfile cannot give for trio tasks).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

USER, PASSWORD = "bench", "bench-pw"
DOVECOT_EXTRA = "service imap {\n  service_count = 0\n  process_min_avail = 4\n}\n"


# --- the client (child process) -----------------------------------------------------------
def _read_tagged(sock: socket.socket, tag: bytes) -> None:
    """Read until the complete line tagged ``tag`` (b"" for the greeting line)."""
    buf = bytearray(b"\r\n")
    marker = b"\r\n" + tag
    while True:
        at = buf.find(marker)
        if at >= 0 and buf.find(b"\r\n", at + 2) >= 0:
            return
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        buf += chunk


def _open(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _read_tagged(sock, b"* OK")
    sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (USER.encode(), PASSWORD.encode()))
    _read_tagged(sock, b"a OK")
    return sock


def _logout(sock: socket.socket) -> None:
    sock.sendall(b"z LOGOUT\r\n")
    _read_tagged(sock, b"z OK")
    sock.close()


def client_main(host: str, port: int, mode: str, n: int) -> None:
    """Opens sessions as told on stdin lines: ``warm``, ``open``, ``close``, ``run``."""
    address = (host, port)
    held: list[socket.socket] = []
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "warm":
            for _ in range(20):
                _logout(_open(address))
        elif cmd == "open":
            held = [_open(address) for _ in range(n)]
        elif cmd == "close":
            for s in held:
                _logout(s)
            held = []
        elif cmd == "run":
            for _ in range(n):
                _logout(_open(address))
        else:
            return
        print("done", flush=True)


# --- the proxy side -------------------------------------------------------------------------
def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _type_counts() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__qualname__ for o in gc.get_objects())


class Child:
    def __init__(self, address: tuple[str, int], mode: str, n: int) -> None:
        argv = [sys.executable, __file__, "client", address[0], str(address[1]), mode, str(n)]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    async def ask(self, cmd: str) -> None:
        import trio

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = await trio.to_thread.run_sync(self.proc.stdout.readline)
        if line.strip() != "done":
            raise RuntimeError(f"client failed on {cmd!r}")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


async def _measure(args: argparse.Namespace, upstream: tuple[str, int]) -> None:
    import trio

    try:
        from imapproxy.config.loader import Address, Config, Limits, MetricsConfig, Upstream
        from imapproxy.server.listener import Proxy
        from imapproxy.telemetry.recorder import Telemetry
    except ImportError:  # an older checkout (--tree): the flat layout of before the split
        from imapproxy.listener import Proxy  # type: ignore[no-redef]

        from imapproxy.config import (  # type: ignore[no-redef]
            Address,
            Config,
            Limits,
            MetricsConfig,
            Upstream,
        )
        from imapproxy.telemetry import Telemetry  # type: ignore[no-redef]

    extra = {k: float(v) for k, v in (kv.split("=") for kv in args.limit)}
    known = {f.name for f in dataclasses.fields(Limits)}
    extra.update({k: 0 for k in ("max_sessions_per_ip", "max_sessions_per_user") if k in known})
    cfg = Config(
        limits=Limits(**extra),
        upstream=Upstream(address=Address(*upstream)),
        metrics=MetricsConfig(address=None),
    )
    here = Address("127.0.0.1", 0)
    old = not hasattr(cfg.listen, "address")  # before the split, listen was an Address
    listen = here if old else dataclasses.replace(cfg.listen, address=here)
    cfg = dataclasses.replace(cfg, listen=listen)
    proxy = Proxy(cfg, Telemetry(None))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(proxy.serve)
        child = Child(bound[0], args.mode, args.sessions)
        try:
            await child.ask("warm")
            if args.mode == "idle":
                await _idle(args, child, proxy)
            else:
                await _cpu(args, child)
        finally:
            child.stop()
            proxy.stop()


async def _idle(args: argparse.Namespace, child: Child, proxy: object) -> None:
    import trio

    n = args.sessions
    await trio.sleep(0.5)
    gc.collect()
    types0 = _type_counts()
    if not args.no_trace:
        tracemalloc.start(args.frames)
    gc.collect()
    snap0 = tracemalloc.take_snapshot() if not args.no_trace else None
    rss0 = _rss_kib()
    await child.ask("open")
    await trio.sleep(1.0)
    gc.collect()
    rss1 = _rss_kib()
    active = proxy.active  # type: ignore[attr-defined]
    if snap0 is not None:
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        key = "lineno" if args.frames == 1 else "traceback"
        stats = snap1.compare_to(snap0, key)
        total = sum(s.size_diff for s in stats)
        print(f"\ntracemalloc: {total / n:.0f} bytes per session ({n} sessions)")
        if args.owner:
            _by_owner(stats, n, args.top)
        else:
            for s in stats[: args.top]:
                if abs(s.size_diff) < n * 16:
                    continue
                where = "\n      ".join(s.traceback.format()[-2 * args.frames :])
                print(f"{s.size_diff / n:8.0f} B {s.count_diff / n:6.2f} blk  {where}")
    types1 = _type_counts()
    print(f"\nlive objects per session by type ({active} sessions active):")
    diff = Counter({k: types1[k] - types0.get(k, 0) for k in types1})
    for name, count in diff.most_common(args.top):
        if count >= n // 5:
            print(f"{count / n:6.2f}  {name}")
    for name in args.holders:
        _holders(name)
    print(
        f"\nRSS: {rss0} -> {rss1} KiB: {(rss1 - rss0) / n:.1f} KiB per session"
        f"{' (tracemalloc on)' if snap0 is not None else ''}"
    )
    await child.ask("close")


def _holders(type_name: str, limit: int = 3) -> None:
    """Who refers to a few objects of ``type_name`` (new since the first snapshot or not)."""
    objs = [o for o in gc.get_objects() if type(o).__qualname__ == type_name][-limit:]
    print(f"\nholders of {type_name}:")
    for obj in objs:
        print(f"  {_describe(obj)}")
        for ref in gc.get_referrers(obj):
            if ref is objs:
                continue
            print(f"     <- {_describe(ref)}")


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        return f"dict keys={list(obj)[:8]}"
    if isinstance(obj, list | tuple):
        return f"{type(obj).__name__}[{len(obj)}] {[type(x).__name__ for x in obj[:6]]}"
    text = repr(obj)
    return f"{type(obj).__qualname__}: {text[:150]}"


def _by_owner(stats: list[tracemalloc.StatisticDiff], n: int, top: int) -> None:
    """Each allocation charged to the innermost imapproxy line on its traceback (trio's and
    the stdlib's allocations made on behalf of a line of ours count for that line)."""
    owners: Counter[str] = Counter()
    for s in stats:
        owner = "(no imapproxy frame)"
        for frame in reversed(s.traceback):
            if "/imapproxy/" in frame.filename:
                owner = f"{frame.filename.split('/imapproxy/')[-1]}:{frame.lineno}"
                break
        owners[owner] += s.size_diff
    print("by innermost imapproxy line (bytes per session):")
    for owner, size in owners.most_common(top):
        print(f"{size / n:8.0f} B  {owner}")


class Sampler:
    """Samples the main thread's stack every ``interval`` seconds from a thread: each sample
    counts once for every imapproxy function on the stack (inclusive time), and once for
    the innermost imapproxy function (or the trio scheduler when no task runs)."""

    def __init__(self, interval: float = 0.0005) -> None:
        import threading

        self.interval = interval
        self.samples = 0
        self.inclusive: Counter[str] = Counter()
        self.innermost: Counter[str] = Counter()
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        # The sampler needs the GIL to look: a short switch interval, or the samples fall
        # only where the main thread waits in a system call.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(self.interval / 10)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._switch)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._main)
            seen: set[str] = set()
            inner = None
            while frame is not None:
                path = frame.f_code.co_filename
                if "/imapproxy/" in path:
                    name = f"{path.split('/imapproxy/')[-1]}:{frame.f_code.co_name}"
                    inner = inner or name
                    seen.add(name)
                frame = frame.f_back
            self.samples += 1
            self.innermost[inner or "(trio scheduler, epoll, no imapproxy frame)"] += 1
            self.inclusive.update(seen)

    def report(self, top: int, per_session_us: float) -> None:
        n = max(1, self.samples)
        print(f"\nsampled stacks ({self.samples} samples); share of the proxy's time, and µs")
        print("per session at the measured CPU per session:")
        for title, counts in (("inclusive", self.inclusive), ("innermost", self.innermost)):
            print(f"  {title}:")
            for name, k in counts.most_common(top):
                print(f"    {100 * k / n:5.1f}%  {per_session_us * k / n:6.0f} µs  {name}")


async def _cpu(args: argparse.Namespace, child: Child) -> None:
    best = float("inf")
    for _ in range(args.rounds):
        t0 = time.process_time()
        await child.ask("run")
        best = min(best, time.process_time() - t0)
    print(
        f"proxy CPU per session (connect, LOGIN, LOGOUT): {best / args.sessions * 1e6:.0f} µs "
        f"(best of {args.rounds} x {args.sessions})"
    )
    if args.sample:
        with Sampler() as sampler:
            await child.ask("run")
        sampler.report(args.top, best / args.sessions * 1e6)
    if args.profile:
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        await child.ask("run")
        prof.disable()
        stats = pstats.Stats(prof)
        calls = stats.total_calls  # type: ignore[attr-defined]
        print(f"{calls / args.sessions:.0f} Python function calls per session (deterministic)")
        stats.sort_stats(args.sort).print_stats(args.top)
        if args.callers:
            stats.print_callers(args.callers)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        _, _, host, port, mode, n = sys.argv
        client_main(host, int(port), mode, int(n))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("idle", "cpu"))
    p.add_argument("--sessions", type=int)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--no-trace", action="store_true")
    p.add_argument(
        "--owner", action="store_true", help="charge to the innermost imapproxy line (--frames 30)"
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--sample", action="store_true", help="cpu: sampled stacks (inclusive)")
    p.add_argument("--holders", action="append", default=[], help="idle: who holds TYPE")
    p.add_argument("--tree", help="measure the imapproxy of another checkout (a git worktree)")
    p.add_argument(
        "--limit", action="append", default=[], help="a limits field, e.g. auth_timeout=0"
    )
    p.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    p.add_argument("--callers", help="with --profile: print the callers of functions matching")
    args = p.parse_args()
    args.sessions = args.sessions or (200 if args.mode == "idle" else 1000)
    if args.owner and args.frames == 1:
        args.frames = 30
    sys.path.insert(0, str(Path(args.tree or Path(__file__).resolve().parent.parent).resolve()))

    import trio

    try:
        from imapproxy.demo.dovecot import Dovecot
    except ImportError:
        from imapproxy.dovecot import Dovecot  # type: ignore[no-redef]

    work = Path(tempfile.mkdtemp(prefix="imapproxy-memprof-"))
    dovecot = Dovecot(work / "dovecot", {USER: PASSWORD}, extra_config=DOVECOT_EXTRA)
    dovecot.start()
    try:
        trio.run(_measure, args, dovecot.address)
    finally:
        dovecot.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
