"""The per-command and per-chunk metric families, kept in plain Python numbers.

``imapproxy_commands_total``, ``imapproxy_command_duration_seconds`` and
``imapproxy_bytes_total`` are updated for every command and every forwarded chunk, so
``HotCollector`` keeps them as one-element lists (mutable cells the caller bumps without a
method call) and turns them into metric families only when scraped. prometheus_client's own
children take a lock per value and walk the buckets linearly: bench/metrics_cost.py measured
~3.6 us per ``command_completed`` with them against ~0.6 us this way.

Threading: the cells are bumped from one thread (the trio run thread). The exporter thread
only reads, so a scrape sees each number either before or after an update and never loses
one. ``Metrics`` (telemetry/metrics.py) does the bumping; this module only holds and exposes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import accumulate

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from imapproxy.telemetry.metric_labels import (
    COMMAND_BUCKETS,
    COMMAND_STATUSES,
    DIRECTIONS,
    check_label,
    command_label,
)

__all__ = ["CACHE_LIMIT", "CommandCells", "HotCollector", "HotEntry"]

# Callers passing arbitrary raw names must not grow the fast-path caches without limit; past
# this size lookups still work, they just take the slow path.
CACHE_LIMIT = 4096


class CommandCells:
    """Plain-number state of one `command` label: a count cell per status and a histogram
    (one slot per bucket, the last being +Inf, plus a sum cell)."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self) -> None:
        # One-element lists are mutable cells the hot path can bump without a method call.
        self.counts: dict[str, list[int]] = {st: [0] for st in COMMAND_STATUSES}
        self.buckets: list[int] = [0] * (len(COMMAND_BUCKETS) + 1)
        self.sum: list[float] = [0.0]


# The cells one (command, status) pair bumps: its count, its label's buckets and sum.
HotEntry = tuple[list[int], list[int], list[float]]

# prometheus_client's own `le` formatting ("1.0", "0.0005"), so the strings match what its
# Histogram would emit; the alias gives the untyped helper a type for mypy.
_format_le: Callable[[float], str] = floatToGoString
_LE = [*(_format_le(b) for b in COMMAND_BUCKETS), "+Inf"]


class HotCollector(Collector):
    """Exposes the per-command and per-chunk families from plain Python numbers.

    ``entry_cache`` maps the caller's raw (command, status) to its ``HotEntry``; label
    normalisation happens once, on a miss (``entry``)."""

    def __init__(self) -> None:
        self.commands: dict[str, CommandCells] = {}
        self.bytes: dict[str, list[int]] = {d: [0] for d in DIRECTIONS}
        self.entry_cache: dict[tuple[str, str], HotEntry] = {}

    def entry(self, command: str, status: str) -> HotEntry:
        """The cells for a raw (command, status), created on first use and cached (up to
        ``CACHE_LIMIT`` raw pairs); ValueError for a status outside COMMAND_STATUSES."""
        check_label(status, COMMAND_STATUSES, "command status")
        label = command_label(command)
        cells = self.commands.get(label)
        if cells is None:
            # Build fully before publishing: the exporter thread may read it at once.
            cells = CommandCells()
            self.commands[label] = cells
        entry: HotEntry = (cells.counts[status], cells.buckets, cells.sum)
        if len(self.entry_cache) < CACHE_LIMIT:
            self.entry_cache[command, status] = entry
        return entry

    def describe(self) -> Iterable[Metric]:
        # Lets the registry detect name clashes without calling collect().
        return self.families()

    def collect(self) -> Iterable[Metric]:
        commands, by_bytes, duration = self.families()
        # list() snapshots under the GIL: the hot path may add a command while we iterate.
        for label, cells in sorted(list(self.commands.items())):
            for status, cell in cells.counts.items():
                commands.add_metric([label, status], cell[0])
            cumulative = list(accumulate(list(cells.buckets)))
            duration.add_metric([label], list(zip(_LE, cumulative, strict=True)), cells.sum[0])
        for direction, cell in self.bytes.items():
            by_bytes.add_metric([direction], cell[0])
        return [commands, by_bytes, duration]

    @staticmethod
    def families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        """Empty families with the exported names and help texts (commands, bytes,
        duration), filled by ``collect``."""
        return (
            CounterMetricFamily(
                "imapproxy_commands",
                "Tagged commands completed, by command and tagged status "
                "(none: the session ended before a tagged reply).",
                labels=["command", "status"],
            ),
            CounterMetricFamily(
                "imapproxy_bytes", "Bytes forwarded, by direction.", labels=["direction"]
            ),
            HistogramMetricFamily(
                "imapproxy_command_duration_seconds",
                "Time from a command leaving the client to its tagged reply.",
                labels=["command"],
            ),
        )
