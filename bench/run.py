"""imapproxy benchmark: direct vs haproxy (TCP mode) vs imapproxy, interleaved, one Dovecot.

    python3 bench/run.py [--quick] [--modes bulk,steady,session,idle] [--rounds N]
                         [--json out.json] [--no-metrics-target] [--profile cprofile]

See bench/README.md for what each mode measures and why the targets are interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads
from targets import (
    Contention,
    Lab,
    raise_nofile,
    start_ceiling_server,
    stop_process,
)

MODES = ("bulk", "steady", "session", "idle")
RELAYS = ("haproxy", "imapproxy", "imapproxy+metrics")


@dataclass
class Plan:
    rounds: int
    bulk_fetches: int
    steady_seconds: float
    session_seconds: float
    idle_sessions: int
    idle_rounds: int
    idle_concurrency: int = 50
    idle_timeout: float = 180.0  # for opening all idle sessions


FULL = Plan(
    rounds=7,
    bulk_fetches=8,
    steady_seconds=2.0,
    session_seconds=3.0,
    idle_sessions=1000,
    idle_rounds=1,
)
QUICK = Plan(
    idle_timeout=30.0,
    rounds=2,
    bulk_fetches=3,
    steady_seconds=0.5,
    session_seconds=0.7,
    idle_sessions=200,
    idle_rounds=1,
)


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    extras: list[dict[str, float]] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)

    def add(self, t: workloads.Trial) -> None:
        self.values.append(t.value)
        self.extras.append(t.extra)
        self.latencies_ns.extend(t.latencies_ns)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def extra_median(self, key: str) -> float | None:
        vals = [e[key] for e in self.extras if key in e]
        return statistics.median(vals) if vals else None

    def spread(self) -> float:
        """(max - min) / median over rounds: how noisy this cell was."""
        if len(self.values) < 2 or not self.median:
            return 0.0
        return (max(self.values) - min(self.values)) / self.median

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_ns:
            return None
        lat = sorted(self.latencies_ns)
        idx = min(len(lat) - 1, max(0, round(q * (len(lat) - 1))))
        return lat[idx] / 1e6


# --- running -------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class QuietGate:
    """Before a trial, wait (briefly, within a budget) until other processes calm down.

    The machine is shared: when something else takes more than ``threshold`` of all CPUs,
    wait up to ``per_trial`` seconds, at most ``budget`` seconds over the whole run. It only
    lowers the noise; the load seen during each trial is recorded either way.
    """

    def __init__(self, threshold: float, per_trial: float, budget: float) -> None:
        self.threshold = threshold
        self.per_trial = per_trial
        self.budget = budget
        self.waited = 0.0

    def wait(self) -> None:
        if self.threshold >= 1.0 or self.waited >= self.budget:
            return
        start = time.monotonic()
        while True:
            probe = Contention()
            time.sleep(0.2)
            spent = time.monotonic() - start
            if probe.foreign() <= self.threshold:
                break
            if spent >= self.per_trial or self.waited + spent >= self.budget:
                break
        self.waited += time.monotonic() - start


GATE = QuietGate(1.0, 0.0, 0.0)


def interleave(
    name: str,
    targets: list[str],
    rounds: int,
    trial: Callable[[str], workloads.Trial],
    warmup: bool = True,
) -> dict[str, Cell]:
    """A B C A B C ...: every round runs each target once, in the same order."""
    cells = {t: Cell() for t in targets}
    if warmup:
        for t in targets:
            trial(t)
    for r in range(rounds):
        for t in targets:
            GATE.wait()
            cells[t].add(trial(t))
        summary = "  ".join(f"{t}={cells[t].values[-1]:.1f}" for t in targets)
        log(f"{name} round {r + 1}/{rounds}: {summary}")
    return cells


def run(args: argparse.Namespace) -> dict[str, object]:
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan.rounds = args.rounds
    if args.idle_sessions:
        plan.idle_sessions = args.idle_sessions
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
    nofile = raise_nofile(max(65536, plan.idle_sessions * 4))
    global GATE
    GATE = QuietGate(
        args.quiet_threshold,
        args.quiet_wait if args.quiet_wait is not None else (1.0 if args.quick else 3.0),
        args.quiet_budget if args.quiet_budget is not None else (10.0 if args.quick else 90.0),
    )

    workdir = Path(tempfile.mkdtemp(prefix="imapproxy-bench-"))
    lab = Lab(
        workdir,
        metrics_target="imapproxy+metrics" in targets,
        profile=args.profile,
        haproxy_threads=args.haproxy_threads,
        custom=custom,
    )
    results: dict[str, dict[str, Cell]] = {}
    notes: dict[str, object] = {}
    errors: dict[str, str] = {}
    notes["errors"] = errors
    t_start = time.monotonic()
    try:
        log(f"starting Dovecot, relays ({', '.join(targets)}) in {workdir}")
        lab.start(targets)
        box = lab.mailbox
        assert box is not None
        assert lab.dovecot is not None
        workloads.DOVECOT_PID = lab.dovecot.pid
        for t in targets:
            workloads.verify_bulk(lab.targets[t].address, box)
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
            "idle": lambda: interleave(
                "idle",
                [t for t in targets if t != "direct"],
                plan.idle_rounds,
                lambda t: workloads.idle(
                    addr[t],
                    pid[t] or 0,
                    plan.idle_sessions,
                    plan.idle_concurrency,
                    timeout=plan.idle_timeout,
                ),
                warmup=False,
            ),
        }
        for mode in MODES:
            if mode not in modes:
                continue
            try:
                results[mode] = runners[mode]()
            except Exception as exc:  # one failing mode must not lose the others' figures
                log(f"{mode} failed: {exc!r}")
                errors[mode] = repr(exc)
        for t in targets:
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
            "quiet_wait_s": round(GATE.waited, 1),
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


# --- reporting -------------------------------------------------------------------------------
@dataclass
class Row:
    mode: str
    metric: str
    values: dict[str, float | None]
    higher_is_better: bool
    spreads: dict[str, float] = field(default_factory=dict)


def rows_of(results: dict[str, dict[str, Cell]]) -> list[Row]:
    rows: list[Row] = []

    def med(mode: str, key: str | None = None) -> dict[str, float | None]:
        cells = results[mode]
        return {t: (c.median if key is None else c.extra_median(key)) for t, c in cells.items()}

    def spreads(mode: str) -> dict[str, float]:
        return {t: c.spread() for t, c in results[mode].items()}

    def cpu_row(mode: str, unit: str) -> None:
        if mode in results:
            v = med(mode, "relay_cpu_us_per_unit")
            if any(x is not None for x in v.values()):
                rows.append(Row(mode, f"relay CPU µs/{unit}", v, False))

    if "bulk" in results:
        rows.append(Row("bulk", "MB/s", med("bulk"), True, spreads("bulk")))
        cpu_row("bulk", "MB")
    if "steady" in results:
        cells = results["steady"]
        rows.append(Row("steady", "commands/s", med("steady"), True, spreads("steady")))
        rows.append(
            Row("steady", "p50 ms", {t: c.percentile_ms(0.50) for t, c in cells.items()}, False)
        )
        rows.append(
            Row("steady", "p99 ms", {t: c.percentile_ms(0.99) for t, c in cells.items()}, False)
        )
        cpu_row("steady", "command")
    if "session" in results:
        rows.append(Row("session", "sessions/s", med("session"), True, spreads("session")))
        cpu_row("session", "session")
    if "idle" in results:
        rows.append(Row("idle", "KiB/session (RSS)", med("idle"), False))
        rows.append(Row("idle", "KiB/session (PSS)", med("idle", "pss_per_session_kib"), False))
    return rows


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def main_table(rows: list[Row]) -> str:
    head = (
        "| mode | metric | direct | haproxy | imapproxy | imapproxy/haproxy "
        "| imapproxy/direct | haproxy/direct |"
    )
    out = [head, "|" + "---|" * 8]
    for r in rows:
        v = r.values
        d, h, i = v.get("direct"), v.get("haproxy"), v.get("imapproxy")
        out.append(
            f"| {r.mode} | {r.metric} | {fmt(d)} | {fmt(h)} | {fmt(i)} | {ratio(i, h)} "
            f"| {ratio(i, d)} | {ratio(h, d)} |"
        )
    return "\n".join(out)


def extra_table(rows: list[Row], targets: list[str]) -> str | None:
    """Targets beyond the main three (imapproxy with metrics on, baseline relays)."""
    extra = [t for t in targets if t not in ("direct", "haproxy", "imapproxy")]
    if not extra:
        return None
    head = "| mode | metric | imapproxy |" + "".join(
        f" {t} | {t}/haproxy | {t}/imapproxy |" for t in extra
    )
    out = [head, "|" + "---|" * (3 + 3 * len(extra))]
    for r in rows:
        v = r.values
        i, h = v.get("imapproxy"), v.get("haproxy")
        cells = "".join(
            f" {fmt(v.get(t))} | {ratio(v.get(t), h)} | {ratio(v.get(t), i)} |" for t in extra
        )
        out.append(f"| {r.mode} | {r.metric} | {fmt(i)} |{cells}")
    return "\n".join(out)


def detail_lines(results: dict[str, dict[str, Cell]], notes: dict[str, object]) -> list[str]:
    lines: list[str] = []
    if "client_ceiling_MBps" in notes:
        lines.append(
            f"- client ceiling (same client, canned 10 MB answers, no IMAP server): "
            f"{notes['client_ceiling_MBps']} MB/s at "
            f"{float(notes['client_ceiling_cpu']):.0%} client CPU"
        )
    for mode in ("bulk", "steady", "session"):
        if mode not in results:
            continue
        parts = []
        for t, c in results[mode].items():
            pc, cc = c.extra_median("proxy_cpu"), c.extra_median("client_cpu")
            dc = c.extra_median("dovecot_cpu")
            cpu = f", relay CPU {pc:.0%}" if pc is not None else ""
            cpu += f", Dovecot CPU {dc:.0%}" if dc is not None else ""
            parts.append(f"{t}: spread {c.spread():.0%}, client CPU {cc or 0:.0%}{cpu}")
        foreign = [e.get("foreign_cpu", 0.0) for c in results[mode].values() for e in c.extras]
        lines.append(
            f"- {mode}: "
            + "; ".join(parts)
            + f"; other processes used {statistics.median(foreign):.0%} of the machine "
            f"(max {max(foreign):.0%})"
        )
    for mode in ("bulk", "steady", "session"):
        cells = results.get(mode, {})
        if "haproxy" in cells and "imapproxy" in cells:
            pairs = [
                i / h
                for i, h in zip(cells["imapproxy"].values, cells["haproxy"].values, strict=True)
                if h
            ]
            if pairs:
                lines.append(
                    f"- {mode}: imapproxy/haproxy paired by round: median "
                    f"{statistics.median(pairs):.2f} (min {min(pairs):.2f}, max {max(pairs):.2f})"
                )
    if "steady" in results:
        tails = []
        for t, c in results["steady"].items():
            lat = c.latencies_ns
            slow = sum(1 for x in lat if x >= 40_000_000)
            worst = max(lat, default=0) / 1e6
            tails.append(
                f"{t}: p99.9 {c.percentile_ms(0.999) or 0:.2f}, max {worst:.1f}, "
                f"{slow} of {len(lat)} >= 40 ms"
            )
        lines.append("- steady latency tail (ms): " + "; ".join(tails))
        for t, c in results["steady"].items():
            kinds = ", ".join(
                f"{k} {c.extra_median('p50_ms ' + k):.3f}"
                for k in workloads.STEADY_KINDS
                if c.extra_median("p50_ms " + k) is not None
            )
            lines.append(f"- steady p50 ms by command, {t}: {kinds}")
    if "idle" in results:
        for t, c in results["idle"].items():
            e = c.extras[-1]
            lines.append(
                f"- idle {t}: RSS {e['rss_before_kib']:.0f} -> {e['rss_after_kib']:.0f} KiB "
                f"with sessions open, {e['rss_closed_kib']:.0f} KiB after closing them "
                f"({e.get('sessions_opened', 0):.0f} sessions opened in {e['open_seconds']:.1f} s, "
                f"{e.get('open_errors', 0):.0f} errors)"
            )
    return lines


TARGETS_SPEC = (
    ("bulk", "MB/s", "ratio", 0.85),
    ("steady", "commands/s", "ratio", 0.85),
    ("session", "sessions/s", "ratio", 0.85),
    ("steady", "p99 ms", "plus_ms", 2.0),
    ("idle", "KiB/session (RSS)", "max", 24.0),
)


def verdicts(rows: list[Row]) -> list[str]:
    by_key = {(r.mode, r.metric): r for r in rows}
    out = []
    for mode, metric, kind, limit in TARGETS_SPEC:
        r = by_key.get((mode, metric))
        if r is None:
            continue
        i, h = r.values.get("imapproxy"), r.values.get("haproxy")
        if i is None or (h is None and kind != "max"):
            continue
        if kind == "ratio":
            assert h is not None
            ok, text = i / h >= limit, f"{i / h:.2f} of haproxy (target >= {limit})"
        elif kind == "plus_ms":
            assert h is not None
            ok, text = i <= h + limit, f"{i:.2f} ms vs haproxy {h:.2f} ms (target <= +{limit} ms)"
        else:
            ok, text = i <= limit, f"{i:.1f} KiB (target <= {limit})"
        out.append(f"- {'PASS' if ok else 'MISS'} {mode} {metric}: {text}")
    return out


def to_json(report: dict[str, object], rows: list[Row]) -> dict[str, object]:
    results = report["results"]
    assert isinstance(results, dict)
    raw = {
        mode: {
            t: {
                "values": c.values,
                "median": c.median,
                "spread": c.spread(),
                "p50_ms": c.percentile_ms(0.5),
                "p99_ms": c.percentile_ms(0.99),
                "p999_ms": c.percentile_ms(0.999),
                "max_ms": max(c.latencies_ns) / 1e6 if c.latencies_ns else None,
                "extras": c.extras,
            }
            for t, c in cells.items()
        }
        for mode, cells in results.items()
    }
    table = [{"mode": r.mode, "metric": r.metric, **r.values} for r in rows]
    return {**{k: v for k, v in report.items() if k != "results"}, "table": table, "rounds": raw}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run, < 60 s")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ",".join(MODES))
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
    p.add_argument("--rounds", type=int, help="interleaved rounds per mode")
    p.add_argument("--idle-sessions", type=int, help="idle sessions to open (default 1000)")
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
    report = run(args)
    results = report["results"]
    assert isinstance(results, dict)
    rows = rows_of(results)
    print()
    print(main_table(rows))
    mt = extra_table(rows, report["targets"])  # type: ignore[arg-type]
    if mt:
        print()
        print(mt)
    print()
    notes = report["notes"]
    assert isinstance(notes, dict)
    for mode, err in notes.get("errors", {}).items():  # type: ignore[union-attr]
        print(f"- {mode} FAILED: {err}")
    for line in [*verdicts(rows), *detail_lines(results, notes)]:
        print(line)
    env = report["env"]
    assert isinstance(env, dict)
    plan = report["plan"]
    print(
        f"- {plan['rounds']} interleaved rounds per mode; {env['cpus']} CPUs; "
        f"Python {env['python']}; {env['elapsed_s']} s in all, of which "
        f"{env['quiet_wait_s']} s waiting for other processes to calm down; "
        f"code: {env['code']}"
    )
    if "profiles" in notes:
        files = ", ".join(notes["profiles"])  # type: ignore[arg-type]
        print(f"- profiles (summarise with bench/profile_top.py FILE): {files}")
    if args.json:
        args.json.write_text(json.dumps(to_json(report, rows), indent=1, default=str))
        print(f"- JSON: {args.json}")
    return 1 if notes.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
