"""Per-call cost of the metrics hot path (issue 5: metrics must not become the hot-path cost).

    python bench/metrics_cost.py [--calls N]

Prints ns/call for `command_completed` and `bytes_forwarded` (the two calls made per command
and per forwarded chunk), measured on a fresh registry with warm caches, best of 5 runs, next
to the same updates done through prometheus_client's own labelled children.
"""

from __future__ import annotations

import argparse
import timeit

from prometheus_client import CollectorRegistry, Counter, Histogram

from imapproxy.telemetry.metrics import COMMAND_BUCKETS, Metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    m = Metrics(CollectorRegistry(), process_metrics=False)
    m.command_completed("FETCH", "OK", 0.003)  # warm the child cache, as a running proxy has
    # Reference: the same updates through prometheus_client's own labelled children.
    reg = CollectorRegistry()
    ref_inc = (
        Counter("ref_commands", "", ["command", "status"], registry=reg).labels("FETCH", "OK").inc
    )
    ref_observe = Histogram("ref_seconds", "", ["command"], buckets=COMMAND_BUCKETS, registry=reg)
    ref_obs = ref_observe.labels("FETCH").observe
    ref_bytes = Counter("ref_bytes", "", ["direction"], registry=reg).labels("up").inc

    def reference_command() -> None:
        ref_inc()
        ref_obs(0.003)

    cases = {
        "command_completed": lambda: m.command_completed("FETCH", "OK", 0.003),
        "bytes_forwarded": lambda: m.bytes_forwarded("upstream_to_client", 4096),
        "command_completed (unknown name)": lambda: m.command_completed("XFOO", "BAD", 0.0004),
        "reference: prometheus_client command": reference_command,
        "reference: prometheus_client bytes": lambda: ref_bytes(4096),
        "empty lambda (loop overhead)": lambda: None,
    }
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=args.calls, repeat=5))
        print(f"{name:38s} {best / args.calls * 1e9:8.0f} ns/call")


if __name__ == "__main__":
    main()
