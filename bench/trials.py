"""Trials and rounds: the plan of a run, one cell of figures, interleaving, the quiet gate.

``interleave`` runs A B C A B C ...: every round runs each target once, in the same order,
so drift on a shared machine hits every target alike.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import workloads
from measure import Contention


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
    concurrent_clients: int = 16
    capacity_clients: int = 32
    load_seconds: float = 2.0  # concurrent, capacity and tls: steady loops
    load_session_seconds: float = 3.0  # concurrent: session loops
    slowreader_seconds: float = 5.0  # how long the slow reader holds its FETCH unread
    slowreader_size: int = 100 * 1024 * 1024  # the message it FETCHes


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
    load_seconds=0.6,
    load_session_seconds=0.8,
    slowreader_seconds=2.0,
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
