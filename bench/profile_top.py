"""Summarise a proxy profile: top functions, and time grouped by where the code lives.

    python3 bench/profile_top.py FILE [--top N] [--per N]

FILE is a ``perf record`` file (``.perf.data``: on-CPU time by kernel/interpreter/symbol),
a cProfile ``.pstats`` file (bench/cprofile_proxy.py: CPU-time clock) or a
``py-spy record --format raw`` file (``.pyspy.txt``; py-spy drops idle samples unless told
otherwise, so shares are of on-CPU time). ``--per N`` also prints calls per unit of work
(e.g. the number of commands or MB the run carried).

Groups: ``imapproxy`` (the package), ``trio``/``outcome`` (the runtime), ``syscalls``
(socket send/recv, epoll), ``stdlib`` (contextlib, collections ... mostly called by trio).
"""

from __future__ import annotations

import argparse
import pstats
import re
import subprocess
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
_SYSCALL_NAMES = (
    "send",
    "recv",
    "recv_into",
    "poll",
    "sendall",
    "accept",
    "connect",
    "close",
    "epoll_ctl",
    "register",
    "modify",
    "unregister",
)


_REPO = str(Path(__file__).resolve().parents[1])


def _trim(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", f"{_REPO}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def group_of(location: str) -> str:
    if location.startswith("imapproxy/"):
        return "imapproxy"
    if location.startswith(("trio/", "outcome/", "<attrs generated methods")):
        return "trio (runtime)"
    if location.startswith(("<method", "<built-in", "{method", "{built-in")):
        if any(f"'{n}'" in location for n in _SYSCALL_NAMES):
            return "syscalls (socket, epoll)"
        return "builtins"
    return "stdlib/other"


# --- cProfile --------------------------------------------------------------------------------
def pstats_report(path: Path, top: int, per: float | None) -> str:
    st = pstats.Stats(str(path))
    stats = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    if per is None:  # default unit: client commands the proxy saw
        per = next(
            (
                float(v[1])
                for k, v in stats.items()
                if k[2] == "_on_command" and k[0].endswith("imapproxy/session/core.py")
            ),
            None,
        )
    rows = []
    groups: Counter[str] = Counter()
    for (file, _line, func), (_cc, nc, tt, ct, _callers) in stats.items():
        # builtins have file "~" and func "<method 'send' of '_socket.socket' objects>"
        loc = func if file == "~" else f"{_trim(file)}:{func}"
        rows.append((tt, ct, nc, loc))
        groups[group_of(loc)] += tt
    out = [
        f"{path.name}: {total:.3f} s of CPU in profiled code"
        + (
            f", {per:g} units (commands unless --per): {total / per * 1e6:.0f} us/unit"
            if per
            else ""
        ),
        "",
        "group | self %",
        "---|---",
    ]
    out += [f"{g} | {t / total:.1%}" for g, t in groups.most_common()]
    unit = f" | calls per unit (/{per:g})" if per else ""
    out += [
        "",
        f"self % | total % | calls{unit} | function",
        "---|---|---|---" + ("|---" if per else ""),
    ]
    for tt, ct, nc, loc in sorted(rows, reverse=True)[:top]:
        extra = f" | {nc / per:.1f}" if per else ""
        out.append(f"{tt / total:6.1%} | {ct / total:6.1%} | {nc}{extra} | {loc}")
    out += [
        "",
        "imapproxy functions by total (inclusive) time:",
        "",
        "total % | self % | function",
        "---|---|---",
    ]
    mine = sorted((r for r in rows if r[3].startswith("imapproxy/")), key=lambda r: -r[1])
    out += [f"{ct / total:6.1%} | {tt / total:6.1%} | {loc}" for tt, ct, _nc, loc in mine[:top]]
    return "\n".join(out)


# --- py-spy ----------------------------------------------------------------------------------
def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    return f"{_trim(m.group('file'))}:{m.group('func')}"


def pyspy_report(path: Path, top: int) -> str:
    total = 0
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        stack, n = m.group(1), int(m.group(2))
        frames = [
            _short(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return f"{path}: no samples"
    out = [
        f"{path.name}: {total} samples on CPU (time inside C calls, e.g. socket.send, "
        "counts as self time of the Python function calling them)",
        "",
        "self % | function",
        "---|---",
    ]
    out += [f"{n / total:6.1%} | {f}" for f, n in self_c.most_common(top)]
    out += ["", "total % | function (imapproxy and trio frames)", "---|---"]
    items = [
        (f, n)
        for f, n in incl.most_common()
        if f.startswith(("imapproxy/", "trio/")) and "unrolled_run" not in f
    ]
    out += [f"{n / total:6.1%} | {f}" for f, n in items[:top]]
    return "\n".join(out)


# --- perf ------------------------------------------------------------------------------------
def perf_report(path: Path, top: int) -> str:
    """On-CPU time by binary (kernel / interpreter / extension) and by native symbol."""
    out = [f"{path.name}: perf cpu-clock samples (on CPU only)"]
    for sort in ("dso", "dso,sym"):
        res = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                str(path),
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--percent-limit",
                "0.7",
                "--sort",
                sort,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        rows = [ln for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        out += ["", f"by {sort}:", *rows[:top]]
    return "\n".join(out)


def report(path: Path, top: int = 25, per: float | None = None) -> str:
    if path.name.endswith(".perf.data"):
        return perf_report(path, top)
    if path.suffix == ".pstats":
        return pstats_report(path, top, per)
    return pyspy_report(path, top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--per", type=float, help="units of work carried (for calls per unit)")
    a = p.parse_args()
    print(report(a.file, a.top, a.per))


if __name__ == "__main__":
    main()
