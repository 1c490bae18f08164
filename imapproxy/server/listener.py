"""The daemon: ``Proxy`` ties the runtime, the listeners, admission and shutdown together.

SIGTERM/SIGINT: stop accepting, let sessions finish for ``limits.grace_period`` seconds,
then cancel them (each says ``* BYE`` on the way out; ``server.shutdown``). SIGHUP: build a
new runtime from the config file (``server.runtime``: rules, certificates, dialer, limits) and
swap it in whole; a bad file keeps the old one.

The parts, each in its module: ``runtime`` (config -> policy, settings, TLS, dialer),
``accept`` (binding, the accept loops, the EMFILE back-off), ``admission`` (PROXY
header, session limits, turning away), ``shutdown`` (live sessions, grace period),
``driver`` (one session's I/O), ``sdnotify`` (systemd).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

import trio

from imapproxy.config.loader import Config, ConfigError
from imapproxy.inspect.control import ControlServer, ControlSocketError
from imapproxy.inspect.registry import Inspector
from imapproxy.net.hub import Hub
from imapproxy.net.streams import CONNECTION_ERRORS
from imapproxy.net.tls import TLSListener, TLSSetupError, accept_handshake
from imapproxy.net.tls_socket import SocketTLSStream
from imapproxy.policy import Policy
from imapproxy.server import accept, sdnotify
from imapproxy.server.admission import Admission, ClientStream
from imapproxy.server.driver import SessionDriver
from imapproxy.server.guard import LimitBackend
from imapproxy.server.limits import Limiter
from imapproxy.server.runtime import Runtime, build_runtime, keep_bound_addresses, reloader
from imapproxy.server.shutdown import LiveSessions
from imapproxy.telemetry import logs
from imapproxy.telemetry.logs import log_event
from imapproxy.telemetry.observer import Observers
from imapproxy.telemetry.recorder import MetricsObserver, Telemetry
from imapproxy.telemetry.sessionlog import SessionLog

__all__ = ["Proxy", "reloader"]

log = logging.getLogger("imapproxy")


class Proxy:
    """The proxy of one process. ``serve`` binds, reports ready and runs until ``stop`` (or
    a signal); ``reload`` swaps in the runtime of the file ``reload_config`` reads.

    Raises ``TLSSetupError`` (an OSError) at construction for unusable certificates."""

    # A worker of several (server.workers) binds with SO_REUSEPORT instead.
    open_listeners: accept.OpenListeners = staticmethod(trio.open_tcp_listeners)

    def __init__(
        self,
        config: Config,
        telemetry: Telemetry,
        *,
        reload_config: Callable[[], Config] | None = None,
        limits: LimitBackend | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.reload_config = reload_config
        self.bound: list[tuple[str, int]] = []
        self._stop = trio.Event()
        self._tls_listeners: list[TLSListener] = []
        self.runtime: Runtime = build_runtime(config, telemetry, self._current_policy)
        # Per-IP / per-user bookkeeping; a worker of several is given the shared one.
        self.limits: LimitBackend = limits or Limiter(self.runtime.limits)
        self.admission = Admission(self.limits, telemetry)
        self.sessions = LiveSessions()
        # One observer stream for every session: metrics, logs, the inspector.
        self.inspector = Inspector(self.runtime.trace)
        self.observers = Observers([MetricsObserver(telemetry), SessionLog(), self.inspector])

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def active(self) -> int:
        """Connections admitted and not finished."""
        return self.sessions.count

    def _current_policy(self) -> Policy | None:
        return self.runtime.policy  # read per command: a reload reaches open sessions

    # --- reload and stop ---------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config; True when the new runtime is in force."""
        if self.reload_config is None:
            return False
        sdnotify.reloading()
        try:
            new = keep_bound_addresses(self.reload_config(), self.config)
            runtime = build_runtime(new, self.telemetry, self._current_policy)
        except (ConfigError, TLSSetupError) as exc:
            log_event(log, "reload_failed", error=str(exc), level=logging.ERROR)
            self.telemetry.config_reloaded(False)
            sdnotify.ready()
            return False
        self._swap(runtime)
        logs.reopen()
        self.telemetry.config_reloaded(True)
        log_event(log, "reloaded", rules=len(new.rules))
        sdnotify.ready()
        return True

    def _swap(self, new: Runtime) -> None:
        """Put ``new`` in force: what outlives a runtime (listeners, limits bookkeeping,
        the inspector, what the old policy learned) takes its parts."""
        old = self.runtime
        if new.policy is not None and old.policy is not None:
            new.policy.carry_over(old.policy)  # keep what was learned (the hierarchy delimiter)
        if new.client_tls.listen_context is not None:
            for lst in self._tls_listeners:
                lst.context = new.client_tls.listen_context
        self.runtime = new
        self.limits.update(new.limits)
        self.inspector.trace = new.trace

    def stop(self) -> None:
        self._stop.set()

    # --- serving -----------------------------------------------------------------------
    async def serve(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Signals are caught before anything is bound or READY=1 is sent: a `systemctl reload`
        # right after start must reload, not kill the process (SIGHUP's default action).
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            await self._serve(signals, task_status)

    async def _serve(
        self,
        signals: AsyncIterator[int],
        task_status: trio.TaskStatus[list[tuple[str, int]]],
    ) -> None:
        cfg = self.config
        named = await accept.open_all(
            cfg, self.runtime.client_tls.listen_context, self.open_listeners
        )
        self._tls_listeners = [lst for lst, _ in named if isinstance(lst, TLSListener)]
        self.bound = [accept.sockname(lst) for lst, _ in named]
        upstream = cfg.upstream.address if cfg.upstream else None
        log_event(
            log,
            "listening",
            addresses=[f"{h}:{p}" for h, p in self.bound],
            upstream=f"{upstream.host}:{upstream.port}" if upstream else None,
            rules=len(cfg.rules),
        )
        control = self._control_server(cfg)
        # The readiness hub of plain sessions (net.hub) now: its descriptor is the process's,
        # not taken from the first session at a moment descriptors may have run out.
        Hub.current()
        task_status.started(self.bound)
        sdnotify.ready()
        async with trio.open_nursery() as sessions:
            if control is not None:
                sessions.start_soon(control.serve)
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    accept.serve, named, self._handle, sessions, self.telemetry, lambda: self.active
                )
                accepting.start_soon(self._watch_signals, signals)
                await self._stop.wait()
                sdnotify.stopping()
                accepting.cancel_scope.cancel()  # closes the listeners
            await self.sessions.wind_down(self.config.limits.grace_period, sessions.cancel_scope)
        log_event(log, "stopped")

    def _control_server(self, cfg: Config) -> ControlServer | None:
        """The inspector's control socket, bound (or None: not configured, or not required
        and unavailable)."""
        if cfg.control.socket is None:
            return None
        control = ControlServer(self.inspector, cfg.control.socket)
        try:
            control.bind()  # a ControlSocketError is an OSError: reported like a busy port
        except ControlSocketError as exc:
            if cfg.control.required:
                raise
            log_event(log, "control_unavailable", error=str(exc), level=logging.WARNING)
            return None
        return control

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.reload()
            else:
                self.stop()
                return

    async def _handle(self, stream: ClientStream, listener: str) -> None:
        """One accepted connection, from admission to its last byte."""
        admitted = await self.admission.admit(stream, listener, self.runtime, self.active)
        if admitted is None:
            return
        guard, origin = admitted.guard, admitted.origin
        peer = guard.peer  # the client as logs show it (admission made the text once)
        # This frame lives as long as the session: it keeps only what its end needs (the
        # guard, the peer text), not the admission record and the endpoints (~300 bytes).
        del admitted
        with self.sessions.admitted():
            try:
                if isinstance(stream, SocketTLSStream) and not await accept_handshake(
                    stream, self.telemetry, peer
                ):
                    return
                # The runtime in force now, after the handshake (a reload may have come).
                context = self.runtime.session_context(
                    origin, listener, guard, self.telemetry, self.observers
                )
                del origin  # the session keeps the client's address (its settings)
                driver = SessionDriver(context, stream, peer)
                with self.sessions.running(driver):
                    await driver.run()
            except Exception:  # whatever went wrong, it ends this session, never the process
                log.exception("session setup failed for %s", peer)
                with trio.move_on_after(2), contextlib.suppress(*CONNECTION_ERRORS):
                    await stream.aclose()
            finally:
                guard.close()
