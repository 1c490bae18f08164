"""Several workers (server.workers): the hot families copied into prometheus_client's
multiprocess files, which the parent's /metrics sums (``metrics_exporter.serve_multiprocess``).

A worker's ``Metrics.flush_hot`` calls ``MultiprocessMirror.flush`` about once a second and
at exit, so the hot path keeps its cost; the ordinary (rarer) metrics write their files
themselves.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from imapproxy.telemetry.hot_metrics import HotCollector
from imapproxy.telemetry.metric_labels import COMMAND_BUCKETS

__all__ = ["MultiprocessMirror", "mark_process_dead"]


class MultiprocessMirror:
    """Delta copies of ``HotCollector`` numbers into ordinary (file-backed) metrics.

    The histogram's per-bucket values are bumped directly (``_buckets``/``_sum`` are
    prometheus_client internals, stable since 0.4): ``observe`` could only add single
    observations, and the buckets here are already counted."""

    def __init__(self) -> None:
        families = HotCollector.families()
        self.commands = Counter(
            "imapproxy_commands", families[0].documentation, ["command", "status"], registry=None
        )
        self.bytes = Counter(
            "imapproxy_bytes", families[1].documentation, ["direction"], registry=None
        )
        self.duration = Histogram(
            "imapproxy_command_duration_seconds",
            families[2].documentation,
            ["command"],
            buckets=COMMAND_BUCKETS,
            registry=None,
        )
        self.done: dict[tuple[str, ...], float] = {}

    def _delta(self, key: tuple[str, ...], now: float) -> float:
        delta = now - self.done.get(key, 0)
        self.done[key] = now
        return delta

    def flush(self, hot: HotCollector) -> None:
        for label, cells in list(hot.commands.items()):
            for status, cell in cells.counts.items():
                if delta := self._delta(("c", label, status), cell[0]):
                    self.commands.labels(label, status).inc(delta)
            child = self.duration.labels(label)
            for i, n in enumerate(list(cells.buckets)):
                if delta := self._delta(("h", label, str(i)), n):
                    child._buckets[i].inc(delta)
            if delta := self._delta(("s", label), cells.sum[0]):
                child._sum.inc(delta)
        for direction, cell in hot.bytes.items():
            if delta := self._delta(("b", direction), cell[0]):
                self.bytes.labels(direction).inc(delta)


def mark_process_dead(pid: int, path: str) -> None:
    """A worker exited: drop its live gauges (its counters keep counting in the sum)."""
    from prometheus_client.multiprocess import mark_process_dead as mark

    mark(pid, path)  # type: ignore[no-untyped-call]
