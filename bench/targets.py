"""The systems under test: one seeded Dovecot, and the relays in front of it.

Every process here is started by this module and stopped by the PID it started (SIGTERM,
then SIGKILL after a timeout); everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rawimap import open_session

from imapproxy.demo.dovecot import Dovecot

USER = "bench"
PASSWORD = "bench-pass"
BULK_SIZE = 10 * 1024 * 1024
SMALL_BODY_SIZE = 2048
SEARCH_MESSAGES = 200
SEARCH_WORD = "needle"  # in the Subject of every 10th small message

# Dovecot knobs for a benchmark (appended to the launcher's config):
# * imap processes are reused (service_count = 0) and a few are kept warm: otherwise every
#   session pays a fork+exec+init of an imap process, which dominates "session" mode and
#   hides the relays' cost;
# * no rawlog, no fsync (the launcher already sets mail_fsync = never).
DOVECOT_EXTRA = """\
service imap {
  service_count = 0
  process_min_avail = 4
}
"""


# --- messages ----------------------------------------------------------------------------
def _crlf(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def big_message(size: int = BULK_SIZE) -> bytes:
    """A MIME message of exactly ``size`` bytes: a base64-looking attachment, CRLF lines."""
    rnd = random.Random(1)
    head = _crlf(
        [
            "From: Bench <bench@example.test>",
            "To: Bench <bench@example.test>",
            "Subject: bulk attachment",
            "Date: Mon, 01 Jan 2024 00:00:00 +0000",
            "Message-ID: <bulk@example.test>",
            "MIME-Version: 1.0",
            "Content-Type: application/octet-stream",
            "Content-Transfer-Encoding: base64",
            "",
        ]
    )
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    line_len = 76
    pool = bytes(rnd.choice(alphabet) for _ in range(64 * 1024))
    out = bytearray(head)
    i = 0
    while len(out) + line_len + 2 <= size:
        start = (i * 131) % (len(pool) - line_len)
        out += pool[start : start + line_len] + b"\r\n"
        i += 1
    pad = size - len(out)
    if pad >= 2:
        out += b"A" * (pad - 2) + b"\r\n"
    elif pad == 1:
        out += b"\n"
    assert len(out) == size, (len(out), size)
    return bytes(out)


def small_message(i: int, size: int | None = None) -> bytes:
    subject = f"message {i}" + (f" {SEARCH_WORD}" if i % 10 == 0 else "")
    head = _crlf(
        [
            f"From: Sender {i} <s{i}@example.test>",
            "To: Bench <bench@example.test>",
            f"Subject: {subject}",
            "Date: Mon, 01 Jan 2024 00:00:00 +0000",
            f"Message-ID: <m{i}@example.test>",
            "",
        ]
    )
    body_line = f"line of message {i} ".ljust(70, ".") + "\r\n"
    target = size if size is not None else 300 + (i * 37) % 500
    body = (body_line * (target // len(body_line) + 1)).encode()
    msg = head + body
    if len(msg) > target:
        msg = msg[: target - 2] + b"\r\n"
    return msg


# --- processes -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    address: tuple[str, int],
    proc: subprocess.Popen[bytes] | None,
    timeout: float,
    greeting: bool = True,
) -> None:
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(address, timeout=2.0) as s:
                if greeting:
                    data = s.recv(256)
                    if not data.startswith(b"* OK"):
                        raise OSError(f"greeting {data[:60]!r}")
                return
        except OSError as exc:
            last = str(exc)
            time.sleep(0.05)
    raise RuntimeError(f"{address} not ready in {timeout}s: {last}")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10.0)


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

    def __init__(self, relay_pid: int | None, dovecot_pid: int | None) -> None:
        self.relay_pid = relay_pid
        self.dovecot_pid = dovecot_pid
        snap = proc_snapshot()
        self.busy0, self.total0 = machine_ticks()
        self.ours0 = tree_ticks(snap, os.getpid())
        self.dovecot0 = tree_ticks(snap, dovecot_pid) if dovecot_pid else 0
        self.relay0 = cpu_seconds(relay_pid) if relay_pid else 0.0
        self.client0 = time.process_time()
        self.t0 = time.perf_counter()

    def finish(self, units: float, extra: dict[str, float]) -> float:
        """Record the figures into ``extra``; return the elapsed seconds."""
        elapsed = time.perf_counter() - self.t0
        client = time.process_time() - self.client0
        relay = cpu_seconds(self.relay_pid) - self.relay0 if self.relay_pid else None
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


@dataclass
class Target:
    name: str
    address: tuple[str, int]
    proc: subprocess.Popen[bytes] | None = None  # None: Dovecot itself (direct)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT for imapproxy: a clean exit lets a cProfile wrapper write its file.
            sig = signal.SIGTERM if self.name in ("haproxy", "trio-relay") else signal.SIGINT
            stop_process(self.proc, sig)


@dataclass
class Mailbox:
    """What the workloads need to know about the seeded INBOX."""

    bulk_seq: int
    small_seq: int
    count: int
    bulk: bytes
    small: bytes


class Lab:
    """Dovecot + haproxy + imapproxy (+ imapproxy with metrics), all on loopback."""

    def __init__(
        self,
        workdir: Path,
        *,
        metrics_target: bool,
        profile: str | None,
        haproxy_threads: int | None,
        custom: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.metrics_target = metrics_target
        self.profile = profile
        self.haproxy_threads = haproxy_threads
        self.custom = dict(custom or {})
        self.dovecot: Dovecot | None = None
        self.targets: dict[str, Target] = {}
        self.mailbox: Mailbox | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._recorders: list[subprocess.Popen[bytes]] = []

    # -- setup ------------------------------------------------------------------------
    def start(self, names: list[str]) -> None:
        self._start_dovecot()
        assert self.dovecot is not None
        up = self.dovecot.address
        for name in names:
            if name == "direct":
                self.targets[name] = Target("direct", up)
            elif name == "haproxy":
                self.targets[name] = self._start_haproxy(up)
            elif name == "imapproxy":
                self.targets[name] = self._start_imapproxy(name, up, metrics=False)
            elif name == "imapproxy+metrics":
                self.targets[name] = self._start_imapproxy(name, up, metrics=True)
            elif name in ("trio-relay", "asyncio-relay"):
                self.targets[name] = self._start_baseline(name, up)
            elif name in self.custom:
                self.targets[name] = self._start_custom(name, self.custom[name], up)
            else:
                raise ValueError(f"unknown target {name!r}")

    def _start_dovecot(self) -> None:
        d = Dovecot(self.workdir / "dovecot", {USER: PASSWORD}, extra_config=DOVECOT_EXTRA)
        bulk = big_message()
        small = small_message(0, SMALL_BODY_SIZE)
        d.start()
        self.dovecot = d
        d.deliver(USER, bulk, flags="S")
        d.deliver(USER, small, flags="S")
        for i in range(1, SEARCH_MESSAGES + 1):
            d.deliver(USER, small_message(i), flags="S")
        # Find where Dovecot put them (sequence numbers follow its own ordering).
        conn = open_session(d.address, USER, PASSWORD)
        reply = conn.command(b"F", b"FETCH 1:* (RFC822.SIZE)", collect=True)
        conn.logout()
        sizes: dict[int, int] = {}
        for line in reply.untagged:
            parts = line.split()
            if len(parts) > 4 and parts[2] == b"FETCH":
                sizes[int(parts[1])] = int(parts[4].rstrip(b")"))
        bulk_seq = next(s for s, n in sizes.items() if n == len(bulk))
        small_seq = next(s for s, n in sizes.items() if n == len(small))
        self.mailbox = Mailbox(bulk_seq, small_seq, len(sizes), bulk, small)

    def _start_haproxy(self, up: tuple[str, int]) -> Target:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.access(binary, os.X_OK):
            raise RuntimeError("haproxy not found (apt-get install -y haproxy)")
        port = free_port()
        nbthread = f"    nbthread {self.haproxy_threads}\n" if self.haproxy_threads else ""
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(
            "# generated by bench/targets.py: a plain TCP relay, no logging\n"
            "global\n"
            "    maxconn 5000\n"
            f"{nbthread}"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 1h\n"
            "    timeout server 1h\n"
            "frontend imap_in\n"
            f"    bind 127.0.0.1:{port}\n"
            "    default_backend dovecot\n"
            "backend dovecot\n"
            f"    server d1 {up[0]}:{up[1]}\n"
        )
        err = open(self.workdir / "haproxy.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
        self._procs.append(proc)
        wait_port(("127.0.0.1", port), proc, 15.0)
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
        return Target(
            "haproxy",
            ("127.0.0.1", port),
            proc,
            {
                "version": version.splitlines()[0] if version else "?",
                "nbthread": self.haproxy_threads or "default (all CPUs)",
            },
        )

    def _start_imapproxy(self, name: str, up: tuple[str, int], *, metrics: bool) -> Target:
        port = free_port()
        metrics_arg = f"127.0.0.1:{free_port()}" if metrics else "off"
        argv = [sys.executable]
        slug = name.replace("+", "_")
        if self.profile == "cprofile":
            script = Path(__file__).resolve().parent / "cprofile_proxy.py"
            argv += [str(script), str(self.workdir / f"{slug}.pstats")]
        else:
            argv += ["-m", "imapproxy"]
        # Every benchmark session comes from 127.0.0.1 as one user: the per-address and
        # per-user abuse limits would turn most of them away.
        config = self.workdir / f"{slug}.yaml"
        config.write_text("limits: {max_sessions_per_ip: 0, max_sessions_per_user: 0}\n")
        argv += [
            "--config",
            str(config),
            "--control",
            "off",
            "--upstream",
            f"{up[0]}:{up[1]}",
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics",
            metrics_arg,
            "--log-level",
            "warning",
        ]
        err = open(self.workdir / f"{slug}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
        self._procs.append(proc)
        wait_port(("127.0.0.1", port), proc, 30.0)
        self._start_recorder(proc.pid, slug)
        return Target(name, ("127.0.0.1", port), proc, {"metrics": metrics_arg})

    def _start_baseline(self, name: str, up: tuple[str, int]) -> Target:
        port = free_port()
        script = Path(__file__).resolve().parent / "baseline_relay.py"
        err = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(script), name.split("-")[0], str(port), f"{up[0]}:{up[1]}"],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
        self._procs.append(proc)
        wait_port(("127.0.0.1", port), proc, 30.0)
        return Target(name, ("127.0.0.1", port), proc)

    def _start_custom(self, name: str, template: str, up: tuple[str, int]) -> Target:
        """Any relay given as a command line with {listen} and {upstream} placeholders, e.g.
        another checkout: ``env -C /path/to/branch python3 -m imapproxy --listen {listen}
        --upstream {upstream} --metrics off`` (run through /bin/sh, stopped with SIGINT).
        ``env -C``, not PYTHONPATH: ``-m`` puts the current directory (this repo) first on
        sys.path."""
        port = free_port()
        cmd = template.format(listen=f"127.0.0.1:{port}", upstream=f"{up[0]}:{up[1]}")
        err = open(self.workdir / f"custom-{len(self._procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {cmd}"],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
        self._procs.append(proc)
        wait_port(("127.0.0.1", port), proc, 30.0)
        self._start_recorder(proc.pid, name)
        return Target(name, ("127.0.0.1", port), proc, {"command": cmd})

    def _start_recorder(self, pid: int, slug: str) -> None:
        if self.profile == "py-spy":
            self._start_pyspy(pid, self.workdir / f"{slug}.pyspy.txt")
        elif self.profile == "perf":
            self._start_perf(pid, self.workdir / f"{slug}.perf.data")

    def _start_perf(self, pid: int, out: Path) -> None:
        """On-CPU samples only (cpu-clock), kernel and native frames: where the CPU goes
        between the kernel, the interpreter and C extensions (Python frames are not named)."""
        binary = shutil.which("perf")
        if binary is None:
            raise RuntimeError("perf not found (apt-get install linux-perf)")
        log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115
        rec = subprocess.Popen(
            [
                binary,
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "999",
                "-g",
                "-p",
                str(pid),
                "-o",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self._recorders.append(rec)
        time.sleep(0.5)

    def _start_pyspy(self, pid: int, out: Path) -> None:
        """Sample the proxy (collapsed stacks, 250 Hz, without pausing it) until stop()."""
        binary = shutil.which("py-spy")
        if binary is None:
            raise RuntimeError("py-spy not found (pip install py-spy; not a project dependency)")
        log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115
        rec = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self._recorders.append(rec)
        time.sleep(0.5)  # let it attach before the first trial

    def stop(self) -> None:
        for rec in self._recorders:  # first: SIGINT makes py-spy write its file
            with contextlib.suppress(Exception):
                stop_process(rec, signal.SIGINT)
        for t in self.targets.values():
            with contextlib.suppress(Exception):
                t.stop()
        for p in self._procs:
            with contextlib.suppress(Exception):
                stop_process(p)
        if self.dovecot is not None:
            self.dovecot.stop()
            self.dovecot = None


# --- the client ceiling ----------------------------------------------------------------
CEILING_SERVER = r"""
import socket, sys
size = int(sys.argv[1])
lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0)); lst.listen(4)
print(lst.getsockname()[1], flush=True)
lst.settimeout(120)
conn, _ = lst.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
conn.settimeout(120)
body = b"x" * (size - 2) + b"\r\n"
conn.sendall(b"* OK ceiling\r\n")
buf = b""
while True:
    data = conn.recv(65536)
    if not data:
        break
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        tag = line.split(b" ", 1)[0]
        if b"LOGIN" in line or b"SELECT" in line:
            conn.sendall(tag + b" OK done\r\n")
        elif b"LOGOUT" in line:
            conn.sendall(b"* BYE\r\n" + tag + b" OK done\r\n")
        else:
            conn.sendall(b"* 1 FETCH (BODY[] {%d}\r\n" % size)
            conn.sendall(body)
            conn.sendall(b")\r\n" + tag + b" OK done\r\n")
"""


def start_ceiling_server(size: int) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """A separate process that answers any FETCH with a canned literal from memory: the
    benchmark client alone, with no IMAP server cost, measures its own ceiling against it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CEILING_SERVER, str(size)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, ("127.0.0.1", port)
