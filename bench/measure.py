"""Measuring processes: CPU time (one process or a whole tree), memory, machine load.

Everything here reads /proc or the process CPU clocks; nothing starts or stops a process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import time
from dataclasses import dataclass

RELAY_FD_RESERVE = 64  # a relay's own descriptors: listeners, epoll, logs (as imapproxy's)


def sessions_within_fd_limit() -> int:
    """Sessions a relay started by this process can hold: two descriptors each (client and
    upstream socket) within the hard RLIMIT_NOFILE it inherits and cannot raise further
    without CAP_SYS_RESOURCE."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 1 << 30
    return max(0, (hard - RELAY_FD_RESERVE) // 2)


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (inherited by the children we start); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (want, hard):
        try:
            new_hard = max(hard, target) if hard != resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, new_hard))
            return target
        except (ValueError, OSError):
            continue
    return soft


@dataclass
class Memory:
    rss_kib: int
    pss_kib: int | None


def memory(pid: int) -> Memory:
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    pss = None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    return Memory(rss, pss)


_LIBC = ctypes.CDLL(None, use_errno=True)


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process, all threads, with ns resolution (the process CPU
    clock); /proc/PID/stat's 10 ms ticks are too coarse for a 0.2 s bulk trial."""
    clock = ctypes.c_int()
    if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
        with contextlib.suppress(OSError):
            return time.clock_gettime(clock.value)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_snapshot() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks incl. reaped children) for every process."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        stats[int(entry.name)] = (int(fields[1]), ticks)
    return stats


def tree_ticks(stats: dict[int, tuple[int, int]], root: int) -> int:
    """CPU ticks of ``root`` and all its descendants (dead ones through cutime/cstime)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def tree_pids(stats: dict[int, tuple[int, int]], root: int) -> list[int]:
    """``root`` and its descendants alive in ``stats``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # guest time is already inside user
    return total - idle, total


class Probe:
    """CPU accounting around one trial.

    * ``relay_cpu``: the relay process (all threads), per second of trial and per unit;
    * ``dovecot_cpu``: Dovecot's whole process tree (is the server the bottleneck?);
    * ``client_cpu``: this process;
    * ``foreign_cpu``: share of all CPUs used by processes outside this benchmark's tree
      (these boxes have 2 cores, shared with whatever else runs, e.g. others' test suites).
    """

    def __init__(
        self, relay_pid: int | None, dovecot_pid: int | None, *, tree: bool = False
    ) -> None:
        self.relay_pid = relay_pid
        self.dovecot_pid = dovecot_pid
        snap = proc_snapshot()
        # tree: the relay's whole process tree (a supervising parent and its workers), the
        # processes alive now; each read with the ns-resolution process clock.
        self.relay_pids = tree_pids(snap, relay_pid) if relay_pid and tree else [relay_pid]
        self.busy0, self.total0 = machine_ticks()
        self.ours0 = tree_ticks(snap, os.getpid())
        self.dovecot0 = tree_ticks(snap, dovecot_pid) if dovecot_pid else 0
        self.relay0 = self._relay_cpu() if relay_pid else 0.0
        self.client0 = time.process_time()
        self.t0 = time.perf_counter()

    def _relay_cpu(self) -> float:
        total = 0.0
        for pid in self.relay_pids:
            if pid:
                with contextlib.suppress(OSError):  # a worker that died meanwhile
                    total += cpu_seconds(pid)
        return total

    def finish(self, units: float, extra: dict[str, float]) -> float:
        """Record the figures into ``extra``; return the elapsed seconds."""
        elapsed = time.perf_counter() - self.t0
        client = time.process_time() - self.client0
        relay = self._relay_cpu() - self.relay0 if self.relay_pid else None
        snap = proc_snapshot()
        busy, total = machine_ticks()
        ours = tree_ticks(snap, os.getpid())
        extra["seconds"] = elapsed
        extra["client_cpu"] = client / elapsed
        if relay is not None:
            extra["proxy_cpu"] = relay / elapsed
            if units:
                extra["relay_cpu_us_per_unit"] = relay * 1e6 / units
        if self.dovecot_pid:
            dovecot = (tree_ticks(snap, self.dovecot_pid) - self.dovecot0) * TICK
            extra["dovecot_cpu"] = dovecot / elapsed
        dt = total - self.total0
        foreign = (busy - self.busy0) - (ours - self.ours0)
        extra["foreign_cpu"] = max(0.0, foreign / dt) if dt > 0 else 0.0
        return elapsed


class Contention:
    """Share of all CPUs used by processes outside this benchmark's tree since creation."""

    def __init__(self) -> None:
        self.busy0, self.total0 = machine_ticks()
        self.ours0 = tree_ticks(proc_snapshot(), os.getpid())

    def foreign(self) -> float:
        busy, total = machine_ticks()
        ours = tree_ticks(proc_snapshot(), os.getpid())
        dt = total - self.total0
        if dt <= 0:
            return 0.0
        return max(0.0, (busy - self.busy0) - (ours - self.ours0)) / dt
