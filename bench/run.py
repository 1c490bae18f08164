"""imapproxy benchmark: direct vs haproxy (TCP mode) vs imapproxy, interleaved, one Dovecot.

    python3 bench/run.py [--quick] [--modes bulk,steady,session,concurrent,idle] [--rounds N]
                         [--json out.json] [--no-metrics-target] [--profile cprofile]
    python3 bench/run.py --quick --modes capacity,tls,slowreader     # the opt-in modes
    python3 bench/run.py --modes idle --idle-sessions 1000,10000 --targets haproxy,imapproxy

See bench/README.md for what each mode measures and why the targets are interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadmodes
import report
import trials
import workloads
from ceiling import start_ceiling_server
from measure import raise_nofile, sessions_within_fd_limit
from targets import Lab, stop_process
from trials import FULL, QUICK, Cell, QuietGate, interleave, log

from imapproxy import compiled

# The order a run goes through them (the idle mode's thousands of sessions come late).
MODES = ("bulk", "steady", "session", "concurrent", "capacity", "tls", "idle", "slowreader")
DEFAULT_MODES = ("bulk", "steady", "session", "concurrent", "idle")


def run(args: argparse.Namespace) -> dict[str, object]:
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan.rounds = args.rounds
    idle_sizes = [plan.idle_sessions]
    if args.idle_sessions:
        idle_sizes = sorted({int(n) for n in args.idle_sessions.split(",") if n})
        plan.idle_sessions = idle_sizes[-1]
    modes = [m for m in args.modes.split(",") if m]
    bad = set(modes) - set(MODES)
    if bad:
        raise SystemExit(f"unknown modes: {', '.join(sorted(bad))}")
    targets = [t for t in args.targets.split(",") if t]
    if args.no_metrics_target and "imapproxy+metrics" in targets:
        targets.remove("imapproxy+metrics")
    custom: dict[str, str] = {}
    for spec in args.custom or []:
        name, sep, cmd = spec.partition("=")
        if not sep or not name or not cmd:
            raise SystemExit(f"--custom wants NAME=COMMAND, got {spec!r}")
        custom[name] = cmd
        if name not in targets:
            targets.append(name)
    # The idle mode's client holds one descriptor per session: up to the hard limit.
    nofile = raise_nofile(max(65536, plan.idle_sessions * 4))
    notes: dict[str, object] = {}
    fit = sessions_within_fd_limit() - 100  # the relays' warm-up sessions, headroom
    if "idle" in modes and plan.idle_sessions > fit:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        notes["idle_capped"] = (
            f"idle: {plan.idle_sessions:,} sessions asked, {fit:,} measured: the hard file "
            f"limit here is {hard:,} (this process cannot raise it: setrlimit needs "
            f"CAP_SYS_RESOURCE), inherited by every relay, and a relay holds two descriptors "
            f"per session (client and upstream socket) plus its own"
        )
        log(str(notes["idle_capped"]))
        plan.idle_sessions = fit
        idle_sizes = sorted({min(n, fit) for n in idle_sizes})
    plan.idle_timeout = max(plan.idle_timeout, plan.idle_sessions / 40)
    trials.GATE = QuietGate(
        args.quiet_threshold,
        args.quiet_wait if args.quiet_wait is not None else (1.0 if args.quick else 3.0),
        args.quiet_budget if args.quiet_budget is not None else (10.0 if args.quick else 90.0),
    )

    core_tree = None
    if args.core_tree:
        core_tree = Path(args.core_tree).resolve()
        core = compiled.status(core_tree / "imapproxy")
        if core != "compiled":
            raise SystemExit(f"--core-tree {core_tree}: its core is {core}, not compiled")
        notes["core_tree"] = str(core_tree)
    workdir = Path(tempfile.mkdtemp(prefix="imapproxy-bench-"))
    lab = Lab(
        workdir,
        metrics_target="imapproxy+metrics" in targets,
        profile=args.profile,
        haproxy_threads=args.haproxy_threads,
        custom=custom,
        idle_sessions=plan.idle_sessions if "idle" in modes else 0,
        core_tree=core_tree,
    )
    extra = [t for t in loadmodes.extra_targets(modes) if t not in targets]
    results: dict[str, dict[str, Cell]] = {}
    errors: dict[str, str] = {}
    notes["errors"] = errors
    t_start = time.monotonic()
    try:
        log(f"starting Dovecot, relays ({', '.join(targets + extra)}) in {workdir}")
        lab.start(targets + extra)
        box = lab.mailbox
        assert box is not None
        assert lab.dovecot is not None
        workloads.DOVECOT_PID = lab.dovecot.pid
        for t in targets + extra:
            tt = lab.targets[t]
            ctx = lab.client_context() if tt.client_tls else None
            workloads.verify_bulk(tt.address, box, ctx, tt.client_tls == "starttls")
        log("seeded and verified: bulk and 2 KB bodies arrive byte-identical on every target")
        addr = {t: lab.targets[t].address for t in targets}
        pid = {t: lab.targets[t].pid for t in targets}

        def run_bulk() -> dict[str, Cell]:
            proc, ceiling_addr = start_ceiling_server(len(box.bulk))
            try:
                c = workloads.ceiling(ceiling_addr, len(box.bulk), max(plan.bulk_fetches, 5))
            finally:
                stop_process(proc)
            notes["client_ceiling_MBps"] = round(c.value, 1)
            notes["client_ceiling_cpu"] = round(c.extra["client_cpu"], 2)
            log(f"client ceiling (no server cost): {c.value:.0f} MB/s")
            return interleave(
                "bulk",
                targets,
                plan.rounds,
                lambda t: workloads.bulk(addr[t], box, plan.bulk_fetches, pid[t]),
            )

        runners: dict[str, Callable[[], dict[str, Cell]]] = {
            "bulk": run_bulk,
            "steady": lambda: interleave(
                "steady",
                targets,
                plan.rounds,
                lambda t: workloads.steady(addr[t], box, plan.steady_seconds, 200_000, pid[t]),
            ),
            "session": lambda: interleave(
                "session",
                targets,
                plan.rounds,
                lambda t: workloads.session(addr[t], box, plan.session_seconds, 20_000, pid[t]),
            ),
        }

        def run_idle(n: int) -> dict[str, Cell]:
            return interleave(
                f"idle ({n:,} sessions)",
                [t for t in targets if t != "direct"],
                plan.idle_rounds,
                lambda t: workloads.idle(
                    addr[t], pid[t] or 0, n, plan.idle_concurrency, timeout=plan.idle_timeout
                ),
                warmup=False,
            )

        # The largest size is "idle" (the verdicts' figure), the others "idle@N".
        for n in idle_sizes[:-1]:
            runners[f"idle@{n}"] = lambda n=n: run_idle(n)  # type: ignore[misc]
        runners["idle"] = lambda: run_idle(idle_sizes[-1])
        load = loadmodes.LoadModes(lab, plan, targets)
        for mode in MODES:
            if mode not in modes:
                continue
            try:
                if mode in loadmodes.EXTRA_MODES:
                    results.update(load.run(mode))
                    continue
                if mode == "idle":
                    for key in [k for k in runners if k.startswith("idle@")]:
                        results[key] = runners[key]()
                results[mode] = runners[mode]()
            except Exception as exc:  # one failing mode must not lose the others' figures
                log(f"{mode} failed: {exc!r}")
                errors[mode] = repr(exc)
        for t in targets + extra:
            if lab.targets[t].notes:
                notes[t] = lab.targets[t].notes
    finally:
        lab.stop()
    elapsed = time.monotonic() - t_start
    if args.profile:
        found = [*workdir.glob("*.pstats"), *workdir.glob("*.pyspy.txt")]
        found += workdir.glob("*.perf.data")
        notes["profiles"] = sorted(str(p) for p in found)
    elif not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "targets": targets,
        "plan": plan.__dict__,
        "results": results,
        "notes": notes,
        "env": {
            "code": _code_version(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "nofile": nofile,
            "quiet_wait_s": round(trials.GATE.waited, 1),
            "elapsed_s": round(elapsed, 1),
            "workdir": str(workdir),
        },
    }


def _code_version() -> str:
    """The commit measured, marked dirty when imapproxy/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "imapproxy"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes in imapproxy/' if dirty else ''}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run, < 60 s")
    p.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated, of: {','.join(MODES)} (default {','.join(DEFAULT_MODES)})",
    )
    p.add_argument(
        "--targets",
        default="direct,haproxy,imapproxy,imapproxy+metrics",
        help="comma-separated, in interleaving order",
    )
    p.add_argument(
        "--no-metrics-target", action="store_true", help="skip the imapproxy-with-metrics target"
    )
    p.add_argument(
        "--custom",
        action="append",
        metavar="NAME=COMMAND",
        help="an extra relay target, e.g. another checkout: 'branch=env -C ../b "
        "python3 -m imapproxy --listen {listen} --upstream {upstream} --metrics off'",
    )
    p.add_argument(
        "--core-tree",
        metavar="DIR",
        help="run the imapproxy targets from this checkout, compiled ('python3 -m imapproxy "
        "compile' in it); compare with the pure tree as a --custom target",
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds per mode")
    p.add_argument(
        "--idle-sessions",
        help="idle sessions to open (default 1000), or several sizes, e.g. 1000,10000",
    )
    p.add_argument("--haproxy-threads", type=int, help="haproxy nbthread (default: all CPUs)")
    p.add_argument(
        "--profile",
        choices=["cprofile", "py-spy", "perf"],
        help="profile imapproxy (cProfile wrapper, or py-spy record on its PID); "
        "the files land in the work dir, py-spy's are summarised",
    )
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.3,
        help="before each trial, wait while other processes use more than this share of all "
        "CPUs (1 = never wait)",
    )
    p.add_argument("--quiet-wait", type=float, help="max wait per trial, s (3; quick 1)")
    p.add_argument("--quiet-budget", type=float, help="max wait per run, s (90; quick 10)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (Dovecot, logs)")
    p.add_argument("--json", type=Path, help="write all figures (every round) here")
    args = p.parse_args(argv)

    def stop_on_term(signum: int, frame: object) -> None:
        # e.g. `timeout 60 bench/run.py --quick`: unwind so every child is stopped by PID.
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_term)
    rep = run(args)
    results = rep["results"]
    assert isinstance(results, dict)
    rows = report.rows_of(results) + loadmodes.rows(results)
    own = [r for r in rows if r.mode not in loadmodes.MODE_TABLES]
    targets = rep["targets"]
    assert isinstance(targets, list)
    own_tables = [report.main_table(own), report.extra_table(own, targets)] if own else []
    for table in [*own_tables, *loadmodes.tables(rows)]:
        if table:
            print()
            print(table)
    print()
    notes = rep["notes"]
    assert isinstance(notes, dict)
    for mode, err in notes.get("errors", {}).items():
        print(f"- {mode} FAILED: {err}")
    if "idle_capped" in notes:
        print(f"- {notes['idle_capped']}")
    if "core_tree" in notes:
        print(f"- imapproxy targets ran the compiled core of {notes['core_tree']}")
    lines = [*report.verdicts(rows), *loadmodes.verdicts(rows)]
    lines += [*report.detail_lines(results, notes), *loadmodes.details(results)]
    for line in lines:
        print(line)
    env = rep["env"]
    assert isinstance(env, dict)
    plan = rep["plan"]
    assert isinstance(plan, dict)
    print(
        f"- {plan['rounds']} interleaved rounds per mode; {env['cpus']} CPUs; "
        f"Python {env['python']}; {env['elapsed_s']} s in all, of which "
        f"{env['quiet_wait_s']} s waiting for other processes to calm down; "
        f"code: {env['code']}"
    )
    if "profiles" in notes:
        files = ", ".join(notes["profiles"])
        print(f"- profiles (summarise with bench/profile_top.py FILE): {files}")
    if args.json:
        args.json.write_text(json.dumps(report.to_json(rep, rows), indent=1, default=str))
        print(f"- JSON: {args.json}")
    return 1 if notes.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
