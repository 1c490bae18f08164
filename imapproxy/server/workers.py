"""``--workers N``: a supervising parent and N worker processes sharing the listening ports.

Parent (``supervise``): binds nothing it accepts on. It reserves each listen address with a
bound, non-listening ``SO_REUSEPORT`` socket (a busy port fails here, once, before any
worker starts; port 0 is resolved once, so every worker and every restart uses the same
port), then starts the workers: ``python -m imapproxy`` with the same arguments, the
concrete ``--listen``, one end of a socketpair in ``IMAPPROXY_WORKER_FD`` and the shared
``PROMETHEUS_MULTIPROC_DIR``. Each worker binds its own ``SO_REUSEPORT`` listeners and runs the
normal ``Proxy`` (``server.worker``, ``server.reuseport``); the kernel spreads new
connections over them.

The parent restarts a worker that dies (backoff 0.1 s doubling to 5 s, reset after a worker
ran 30 s), forwards SIGHUP to every worker (each reloads its config; sessions stay up) and
SIGTERM/SIGINT (each drains for ``limits.grace_period``), and speaks sd_notify: READY=1 once
every worker is listening, RELOADING=1 ... READY=1 around a reload (when every worker has
answered), STOPPING=1.

Shared limits. Per-IP and per-user limits must hold across workers, so the bookkeeping
(``server.limits.Limiter``) lives in the parent and the workers ask it over their socketpair
(``worker.SharedLimits``): one JSON line per question, one line back; notifications (a session
closed, a login finished) get no answer. Through the parent rather than in shared memory:
the counts stay exact (no hashing of addresses into fixed slots), the Limiter stays plain
Python, and when a worker dies the parent releases exactly what that worker held (its
``_Ledger``), which shared memory could not know. The cost is one local round trip on accept
and on login (measured 150-500 us each on a loaded 2-core machine), never on the per-command
path. The worker asks with a
blocking call from the trio thread (the gate is synchronous, inside the pure session); if the
parent does not answer within a second the worker falls back to its own local Limiter and
logs it once, rather than stall.

Metrics: the parent serves one ``/metrics`` from prometheus_client's multiprocess mode (see
``telemetry.metrics.serve_multiprocess``); workers record into the shared directory and the
parent calls ``mark_process_dead`` when one exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from imapproxy.config.loader import Config
from imapproxy.server import sdnotify
from imapproxy.server.guard import limit_values
from imapproxy.server.limits import Limiter, LimitValues
from imapproxy.server.reuseport import reserve
from imapproxy.server.worker import WORKER_FD_ENV
from imapproxy.telemetry import logs
from imapproxy.telemetry.logs import log_event

__all__ = ["Supervisor", "strip_workers", "supervise"]

log = logging.getLogger("imapproxy")

_READY_TIMEOUT = 60.0  # a loaded machine starts Python slowly
_RELOAD_TIMEOUT = 30.0


# --- the parent ---------------------------------------------------------------------
class _Ledger:
    """What one worker holds in the shared Limiter, released when the worker dies."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.ips: Counter[str] = Counter()
        self.users: Counter[str] = Counter()
        self.inflight: list[tuple[str, str | None]] = []

    def handle(self, msg: dict[str, Any]) -> Any:
        lim, op = self.limiter, msg.get("op")
        if op == "open_session":
            refused = lim.open_session(msg["ip"])
            if refused is None:
                self.ips[msg["ip"]] += 1
            return refused
        if op == "check_login":
            verdict = lim.check_login(msg["ip"], msg["user"])
            if verdict.refused is None:
                self.inflight.append((msg["ip"], msg["user"]))
            return [verdict.refused, verdict.delay]
        if op == "close_session":
            lim.close_session(msg["ip"], msg["user"])
            self.ips[msg["ip"]] -= 1
            if msg["user"] is not None:
                self.users[msg["user"]] -= 1
        elif op == "login_finished":
            lim.login_finished(msg["ip"], msg["user"], msg["result"])
            for entry in ((msg["ip"], msg["user"]), (msg["ip"], None)):  # None: name unknown
                if entry in self.inflight:
                    self.inflight.remove(entry)
                    break
            if msg["result"] == "ok" and msg["user"] is not None:
                self.users[msg["user"]] += 1
        elif op == "update":
            lim.update(LimitValues(**msg["values"]))
        return None

    def release(self) -> None:
        for ip, user in self.inflight:
            self.limiter.login_finished(ip, user, "abandoned")
        for ip, n in self.ips.items():
            for _ in range(max(0, n)):
                self.limiter.close_session(ip, None)
        for user, n in self.users.items():
            for _ in range(max(0, n)):
                self.limiter.close_session("", user)
        self.inflight.clear()
        self.ips.clear()
        self.users.clear()


class _Worker:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: trio.Process | None = None
        self.ready = trio.Event()
        self.reloaded: trio.Event | None = None
        self.reload_when_ready = False  # a SIGHUP came while it was starting


class Supervisor:
    def __init__(self, cfg: Config, argv: Sequence[str], count: int, metrics_dir: str) -> None:
        self.cfg = cfg
        self.argv = list(argv)
        self.count = count
        self.metrics_dir = metrics_dir
        self.limiter = Limiter(limit_values(cfg.limits))
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self.failed = False
        self.listen = cfg.listen.address

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "imapproxy", *self.argv, "--listen", str(self.listen)]

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    nursery.start_soon(self._keep_running, worker)
                with trio.move_on_after(_READY_TIMEOUT):
                    for worker in self.workers:
                        await worker.ready.wait()
                if all(w.ready.is_set() for w in self.workers):
                    pids = [w.process.pid for w in self.workers if w.process is not None]
                    log_event(log, "workers_ready", workers=pids, listen=str(self.listen))
                    sdnotify.ready()
                else:  # a worker that cannot start will not start on the next try either
                    self.failed = True
                    log_event(
                        log, "fatal", error=f"workers not listening after {_READY_TIMEOUT:g}s",
                        level=logging.CRITICAL,
                    )  # fmt: skip
                async for signum in signals if not self.failed else _nothing():
                    if signum == signal.SIGHUP:
                        await self._reload()
                        continue
                    break
                self.stopping = True
                sdnotify.stopping()
                log_event(log, "stopping", workers=len(self.workers))
                self._signal_all(signal.SIGTERM)
                with trio.move_on_after(self.cfg.limits.grace_period + 15) as late:
                    while any(w.process is not None for w in self.workers):
                        await trio.sleep(0.05)
                if late.cancelled_caught:
                    self._signal_all(signal.SIGKILL)
                nursery.cancel_scope.cancel()
        log_event(log, "stopped")

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    async def _reload(self) -> None:
        sdnotify.reloading()
        logs.reopen()  # the parent's own log file, like a single process does
        # Only workers that are listening have their signal handlers (SIGHUP's default action
        # would kill one still starting); a starting one is told once it is ready.
        live = [w for w in self.workers if w.process is not None and w.ready.is_set()]
        for worker in self.workers:
            if worker not in live:
                worker.reload_when_ready = True
        for worker in live:
            worker.reloaded = trio.Event()
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGHUP)
        with trio.move_on_after(_RELOAD_TIMEOUT):
            for worker in live:
                assert worker.reloaded is not None
                await worker.reloaded.wait()
        log_event(log, "workers_reloaded", workers=len(live))
        sdnotify.ready()

    async def _keep_running(self, worker: _Worker) -> None:
        backoff = 0.1
        while not self.stopping:
            started = time.monotonic()
            code = await self._run_once(worker)
            if self.stopping:
                return
            backoff = 0.1 if time.monotonic() - started > 30 else min(backoff * 2, 5.0)
            log_event(
                log, "worker_exited", slot=worker.slot, code=code, restart_in=backoff,
                level=logging.ERROR,
            )  # fmt: skip
            await trio.sleep(backoff)

    async def _run_once(self, worker: _Worker) -> int:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env[WORKER_FD_ENV] = str(theirs.fileno())
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        env.pop("NOTIFY_SOCKET", None)  # only the main process notifies systemd
        ledger = _Ledger(self.limiter)
        if worker.ready.is_set():  # a restart: readiness is per process
            worker.ready = trio.Event()
        try:
            process = await trio.lowlevel.open_process(
                self._command(), env=env, pass_fds=(theirs.fileno(),)
            )
        finally:
            theirs.close()
        worker.process = process
        log_event(log, "worker_started", slot=worker.slot, pid=process.pid)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_link, worker, stream, ledger)
                code = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            worker.process = None
            ledger.release()
            _mark_dead(process.pid, self.metrics_dir)
            with trio.CancelScope(shield=True):
                await stream.aclose()
        return code

    async def _serve_link(
        self, worker: _Worker, stream: trio.SocketStream, ledger: _Ledger
    ) -> None:
        buf = b""
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            buf += data
            replies = []
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                op = msg.get("op")
                if op == "ready":
                    worker.ready.set()
                    if worker.reload_when_ready and worker.process is not None:
                        worker.reload_when_ready = False
                        worker.process.send_signal(signal.SIGHUP)
                elif op == "reloaded":
                    if worker.reloaded is not None:
                        worker.reloaded.set()
                elif op in ("open_session", "check_login"):
                    replies.append(json.dumps({"r": ledger.handle(msg)}).encode() + b"\n")
                else:
                    ledger.handle(msg)
            if replies:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(b"".join(replies))


async def _nothing() -> AsyncIterator[int]:
    return
    yield  # an empty async iterator


def _mark_dead(pid: int, path: str) -> None:
    from imapproxy.telemetry.metrics import mark_process_dead

    mark_process_dead(pid, path)


def strip_workers(argv: Sequence[str]) -> list[str]:
    """The command line without ``--workers N`` / ``--workers=N`` (and without ``--listen``,
    which the parent passes with the concrete port)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--listen"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--listen=")):
            continue
        out.append(arg)
    return out


def supervise(cfg: Config, argv: Sequence[str], count: int) -> int:
    """Run the parent of ``count`` workers until SIGTERM; the process exit code."""
    held: list[socket.socket] = []
    addresses = [cfg.listen.address] + (
        [cfg.listen_tls.address] if cfg.listen_tls is not None else []
    )
    try:
        if cfg.listen_tls is not None and cfg.listen_tls.address.port == 0:
            raise OSError("listen_tls needs a port with --workers (port 0 would differ per worker)")
        for address in addresses:
            reserved, sockets = reserve(address)
            held += sockets
            if address is cfg.listen.address:
                listen = reserved
    except OSError as exc:
        for sock in held:
            sock.close()
        log_event(log, "fatal", error=str(exc), level=logging.CRITICAL)
        print(f"imapproxy: {address}: {exc}", file=sys.stderr)
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="imapproxy-metrics-")
    server = None
    try:
        if cfg.metrics.address is not None:
            from imapproxy.telemetry.metrics import serve_multiprocess

            server = serve_multiprocess(
                cfg.metrics.address.host, cfg.metrics.address.port, metrics_dir
            )
        supervisor = Supervisor(cfg, strip_workers(argv), count, metrics_dir)
        supervisor.listen = listen
        trio.run(supervisor.run)
        return 1 if supervisor.failed else 0
    except OSError as exc:
        log_event(log, "fatal", error=str(exc), level=logging.CRITICAL)
        print(f"imapproxy: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for sock in held:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
