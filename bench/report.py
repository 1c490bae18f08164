"""The report of a run: rows of medians, the Markdown tables, PASS/MISS lines, JSON."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import workloads
from trials import Cell


def cpu_shares(mode: str, cells: dict[str, Cell], *, spread: bool = False) -> str:
    """One line for ``mode``: each target's client, relay and Dovecot CPU share (and the
    spread of its rounds), then what other processes used of the machine."""
    parts = []
    for t, c in cells.items():
        pc, cc = c.extra_median("proxy_cpu"), c.extra_median("client_cpu")
        dc = c.extra_median("dovecot_cpu")
        part = f"{t}: spread {c.spread():.0%}, " if spread else f"{t}: "
        part += f"client CPU {cc or 0:.0%}"
        part += f", relay CPU {pc:.0%}" if pc is not None else ""
        part += f", Dovecot CPU {dc:.0%}" if dc is not None else ""
        parts.append(part)
    foreign = [e.get("foreign_cpu", 0.0) for c in cells.values() for e in c.extras]
    return (
        f"- {mode}: " + "; ".join(parts) + f"; other processes used "
        f"{statistics.median(foreign):.0%} of the machine (max {max(foreign):.0%})"
    )


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
    for key in sorted((k for k in results if k.startswith("idle@")), key=lambda k: int(k[5:])):
        rows.append(Row("idle", f"KiB/session (RSS) at {int(key[5:]):,}", med(key), False))
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
            f"{float(str(notes['client_ceiling_cpu'])):.0%} client CPU"
        )
    for mode in ("bulk", "steady", "session"):
        if mode not in results:
            continue
        lines.append(cpu_shares(mode, results[mode], spread=True))
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
    for key in [k for k in results if k.startswith("idle")]:
        for t, c in results[key].items():
            e = c.extras[-1]
            lines.append(
                f"- {key} {t}: RSS {e['rss_before_kib']:.0f} -> {e['rss_after_kib']:.0f} KiB "
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
    ("idle", "KiB/session (RSS)", "max", 12.0),  # issue 12
    # issue 10 (hot path): the latency-bound modes near haproxy, and the CPU a relay costs
    ("bulk", "MB/s", "ratio", 1.0),
    ("steady", "commands/s", "ratio", 0.95),
    ("steady", "relay CPU µs/command", "max", 100.0),
    ("session", "relay CPU µs/session", "max", 1000.0),
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
            unit = "KiB" if metric.startswith("KiB") else metric.split()[-1]  # "µs/command"
            ok, text = i <= limit, f"{i:,.1f} {unit} (target <= {limit:,g})"
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
