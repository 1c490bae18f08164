"""Relay CPU of a session's setup and teardown, without the commands, A/B between relays.

    python3 bench/session_setup_cost.py [--sessions N] [--rounds R] [--custom NAME=COMMAND]

Sequential sessions from one client against each target in turn (interleaved rounds, as in
``bench/run.py``): ``bare`` is connect, greeting, ``LOGOUT`` (what a session costs beyond the
relaying of commands: accept, admission, driver, upstream connect, closing), ``full`` is
``bench/run.py``'s session mode (LOGIN, SELECT, three FETCHes, LOGOUT). The figure is the
relay's process CPU per session; the median and the minimum over rounds are printed (the
minimum is the least disturbed by other load on the machine). Targets are ``haproxy``,
``imapproxy`` (this checkout) and any ``--custom`` one (see ``bench/run.py``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import TICK, cpu_seconds
from rawimap import Conn
from targets import Lab
from workloads import one_session


def bare_session(address: tuple[str, int]) -> None:
    conn = Conn(address)
    try:
        conn.greeting()
        conn.command(b"f", b"LOGOUT")
    finally:
        conn.close()


def _user_system(pid: int) -> tuple[int, int]:
    """utime and stime of a process, in clock ticks (``measure.TICK`` seconds)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=300, help="per target, kind and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--targets", default="haproxy,imapproxy")
    p.add_argument("--kinds", default="bare,full")
    p.add_argument("--custom", action="append", default=[], metavar="NAME=COMMAND")
    p.add_argument(
        "--profile", choices=["py-spy", "perf"], help="record imapproxy (see bench/run.py)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (profiles, logs)")
    args = p.parse_args()
    custom = dict(c.split("=", 1) for c in args.custom)
    names = args.targets.split(",") + list(custom)
    workdir = Path(tempfile.mkdtemp(prefix="imapproxy-setup-cost-"))
    lab = Lab(
        workdir,
        metrics_target=False,
        profile=args.profile,
        haproxy_threads=None,
        custom=custom,
    )
    figures: dict[tuple[str, str], list[float]] = {}
    try:
        lab.start(names)
        box = lab.mailbox
        assert box is not None
        kinds = args.kinds.split(",")
        for r in range(args.rounds):
            for kind in kinds:
                for name in names:
                    target = lab.targets[name]
                    pid = target.pid
                    assert pid is not None
                    run = (
                        (lambda i, a=target.address: bare_session(a))
                        if kind == "bare"
                        else (lambda i, a=target.address: one_session(a, box, i))
                    )
                    run(0)  # warm
                    u0, s0 = _user_system(pid)
                    c0 = cpu_seconds(pid)
                    t0 = time.perf_counter()
                    for i in range(args.sessions):
                        run(i)
                    us = (cpu_seconds(pid) - c0) * 1e6 / args.sessions
                    rate = args.sessions / (time.perf_counter() - t0)
                    u1, s1 = _user_system(pid)
                    figures.setdefault((kind, name), []).append(us)
                    print(
                        f"round {r + 1} {kind:4} {name:12} {us:7.0f} µs/session {rate:6.0f}/s"
                        f" (user {(u1 - u0) * TICK * 1e6 / args.sessions:.0f},"
                        f" system {(s1 - s0) * TICK * 1e6 / args.sessions:.0f})"
                    )
    finally:
        lab.stop()
        if not args.keep and args.profile is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.profile is not None:
        print(f"profiles in {workdir} (summarise with bench/profile_top.py FILE)")
    print("\n| kind | target | median µs/session | min |\n|---|---|---|---|")
    for (kind, name), values in sorted(figures.items()):
        print(f"| {kind} | {name} | {statistics.median(values):,.0f} | {min(values):,.0f} |")


if __name__ == "__main__":
    main()
