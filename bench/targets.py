"""The systems under test: one seeded Dovecot, and the relays in front of it.

Every process here is started by this module and stopped by the PID it started (SIGTERM,
then SIGKILL after a timeout); everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import relays
from measure import sessions_within_fd_limit
from messages import PASSWORD, SEARCH_MESSAGES, SMALL_BODY_SIZE, USER, big_message, small_message
from rawimap import open_session

from imapproxy.demo.dovecot import Dovecot

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


@dataclass
class Target:
    name: str
    address: tuple[str, int]
    proc: subprocess.Popen[bytes] | None = None  # None: Dovecot itself (direct)
    notes: dict[str, object] = field(default_factory=dict)
    client_tls: str | None = None  # "implicit" | "starttls": the client leg speaks TLS
    tree: bool = False  # measure the relay's whole process tree (a parent and its workers)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT for imapproxy: a clean exit lets a cProfile wrapper write its file.
            haproxy = self.name.startswith("haproxy") or self.name == "trio-relay"
            stop_process(self.proc, signal.SIGTERM if haproxy else signal.SIGINT)


@dataclass
class Mailbox:
    """What the workloads need to know about the seeded INBOX."""

    bulk_seq: int
    small_seq: int
    count: int
    bulk: bytes
    small: bytes


def dovecot_extra(idle_sessions: int) -> str:
    """DOVECOT_EXTRA, plus room for ``idle_sessions`` logged-in sessions when that is more
    than the launcher's one-imap-process-per-session layout holds: imap processes then serve
    up to 1,000 sessions each (``client_limit``), so 10,000 sessions are ~10 processes, not
    10,000. Only then: with client_limit > 1 concurrent sessions may share one imap process,
    which would change what the other modes measure."""
    if idle_sessions <= 1500:
        return DOVECOT_EXTRA
    per_process = 1000
    procs = idle_sessions // per_process + 8
    return DOVECOT_EXTRA + (
        f"mail_max_userip_connections = {idle_sessions * 2}\n"
        "service imap {\n"
        f"  client_limit = {per_process}\n"
        f"  process_limit = {procs}\n"
        "  vsz_limit = 2G\n"
        "}\n"
        "service imap-login {\n"
        f"  process_limit = {procs}\n"
        "}\n"
    )


class Lab:
    """Dovecot and the relays in front of it (see ``relays.RELAYS``), all on loopback."""

    def __init__(
        self,
        workdir: Path,
        *,
        metrics_target: bool,
        profile: str | None,
        haproxy_threads: int | None,
        custom: dict[str, str] | None = None,
        idle_sessions: int = 1000,
        core_tree: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.core_tree = core_tree  # the imapproxy targets' checkout (compiled), or this one
        self.metrics_target = metrics_target
        self.profile = profile
        self.haproxy_threads = haproxy_threads
        self.custom = dict(custom or {})
        self.idle_sessions = idle_sessions
        self.dovecot: Dovecot | None = None
        self.targets: dict[str, Target] = {}
        self.mailbox: Mailbox | None = None
        self.certs: relays.Certs | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._recorders: list[subprocess.Popen[bytes]] = []

    @property
    def max_sessions(self) -> int:
        """What the relays are sized for: the idle sessions and some headroom, within what
        the file limit allows (haproxy refuses to start with a maxconn it cannot hold)."""
        return min(max(5000, self.idle_sessions + 1000), sessions_within_fd_limit())

    # -- setup ------------------------------------------------------------------------
    def start(self, names: list[str]) -> None:
        self._start_dovecot()
        assert self.dovecot is not None
        up = self.dovecot.address
        for name in names:
            spec = relays.RELAYS.get(name)
            if name == "direct":
                self.targets[name] = Target("direct", up)
            elif name in relays.SHARED_PROCESS:
                self._start_shared(name, up)
            elif spec is not None and spec.kind == "haproxy":
                self.targets[name] = self._start_haproxy(name, spec, up)
            elif spec is not None:
                self.targets[name] = self._start_imapproxy(name, spec, up)
            elif name in ("trio-relay", "asyncio-relay"):
                self.targets[name] = self._start_baseline(name, up)
            elif name in self.custom:
                self.targets[name] = self._start_custom(name, self.custom[name], up)
            else:
                raise ValueError(f"unknown target {name!r}")

    def client_context(self) -> ssl.SSLContext:
        """What a client of the TLS targets trusts (the run's throwaway CA)."""
        assert self.certs is not None
        return self.certs.client_context()

    def _certs(self) -> relays.Certs:
        if self.certs is None:
            self.certs = relays.make_certs(self.workdir)
        return self.certs

    def _start_dovecot(self) -> None:
        d = Dovecot(
            self.workdir / "dovecot",
            {USER: PASSWORD},
            extra_config=dovecot_extra(self.idle_sessions),
        )
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

    def _spawn(
        self, argv: list[str], log_name: str, tree: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``; with ``tree``, importing imapproxy from that checkout."""
        err = open(self.workdir / log_name, "wb")  # noqa: SIM115 - lives with the process
        env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
            cwd=tree,
            env=env,
        )
        self._procs.append(proc)
        return proc

    def _start_haproxy(self, name: str, spec: relays.Relay, up: tuple[str, int]) -> Target:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.access(binary, os.X_OK):
            raise RuntimeError("haproxy not found (apt-get install -y haproxy)")
        port = free_port()
        threads = spec.threads or self.haproxy_threads
        pem = self._certs().combined if spec.client_tls else None
        cfg = self.workdir / f"{name}.cfg"
        cfg.write_text(
            relays.haproxy_config(port, up, threads=threads, maxconn=self.max_sessions, pem=pem)
        )
        proc = self._spawn([binary, "-db", "-f", str(cfg)], f"{name}.log")
        wait_port(("127.0.0.1", port), proc, 15.0, greeting=pem is None)
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
        notes: dict[str, object] = {
            "version": version.splitlines()[0] if version else "?",
            "nbthread": threads or "default (all CPUs)",
        }
        return Target(name, ("127.0.0.1", port), proc, notes, client_tls=spec.client_tls)

    def _start_imapproxy(self, name: str, spec: relays.Relay, up: tuple[str, int]) -> Target:
        port = free_port()
        tls_port = free_port() if spec.client_tls else None
        metrics_arg = f"127.0.0.1:{free_port()}" if spec.metrics else "off"
        slug = name.replace("+", "_")
        config = self.workdir / f"{slug}.yaml"
        certs = self._certs() if spec.client_tls else None
        config.write_text(
            relays.imapproxy_config(max_sessions=self.max_sessions, tls_port=tls_port, certs=certs)
        )
        pstats = self.workdir / f"{slug}.pstats" if self.profile == "cprofile" else None
        argv = relays.imapproxy_argv(
            config=config,
            up=up,
            port=port,
            metrics=metrics_arg,
            workers=spec.workers,
            pstats=pstats if spec.workers == 1 else None,
        )
        proc = self._spawn(argv, f"{slug}.log", self.core_tree)
        wait_port(("127.0.0.1", port), proc, 30.0)
        if tls_port is not None:
            wait_port(("127.0.0.1", tls_port), proc, 30.0, greeting=False)
        self._start_recorder(proc.pid, slug)
        address = ("127.0.0.1", tls_port or port)
        notes: dict[str, object] = {"metrics": metrics_arg, "workers": spec.workers}
        target = Target(name, address, proc, notes, spec.client_tls, tree=spec.workers > 1)
        target.notes["plain_port"] = port
        return target

    def _start_shared(self, name: str, up: tuple[str, int]) -> None:
        """imapproxy-starttls: the plain port of the imapproxy-tls process."""
        owner = relays.SHARED_PROCESS[name]
        if owner not in self.targets:
            self.targets[owner] = self._start_imapproxy(owner, relays.RELAYS[owner], up)
        base = self.targets[owner]
        port = base.notes["plain_port"]
        assert isinstance(port, int)
        self.targets[name] = Target(
            name, ("127.0.0.1", port), base.proc, {"process of": owner}, "starttls"
        )

    def _start_baseline(self, name: str, up: tuple[str, int]) -> Target:
        port = free_port()
        script = Path(__file__).resolve().parent / "baseline_relay.py"
        argv = [sys.executable, str(script), name.split("-")[0], str(port), f"{up[0]}:{up[1]}"]
        proc = self._spawn(argv, f"{name}.log")
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
        proc = self._spawn(["/bin/sh", "-c", f"exec {cmd}"], f"custom-{len(self._procs)}.log")
        wait_port(("127.0.0.1", port), proc, 30.0)
        self._start_recorder(proc.pid, name)
        return Target(name, ("127.0.0.1", port), proc, {"command": cmd})

    def _start_recorder(self, pid: int, slug: str) -> None:
        if self.profile not in ("py-spy", "perf"):
            return
        tool = "py-spy" if self.profile == "py-spy" else "perf"
        binary = shutil.which(tool)
        if binary is None:
            hint = "pip install py-spy" if tool == "py-spy" else "apt-get install linux-perf"
            raise RuntimeError(f"{tool} not found ({hint}; not a project dependency)")
        if tool == "py-spy":
            out = self.workdir / f"{slug}.pyspy.txt"
            argv = relays.pyspy_argv(binary, pid, out)
        else:
            out = self.workdir / f"{slug}.perf.data"
            argv = relays.perf_argv(binary, pid, out)
        log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115
        rec = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
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
