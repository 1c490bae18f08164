"""The process: listeners, accept loops, signals, graceful shutdown and reload.

SIGTERM/SIGINT: stop accepting, let sessions finish for ``limits.grace_period`` seconds,
then cancel them (each says ``* BYE`` on the way out). SIGHUP: re-read the config file and
swap in the new rules for new commands, and re-read certificates for new TLS handshakes; a bad
file keeps the old rules and certificates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from imapproxy.config.loader import Config, ConfigError, load_config
from imapproxy.inspect.control import ControlServer, ControlSocketError
from imapproxy.inspect.registry import Inspector
from imapproxy.inspect.trace import TraceDir, TraceRecorder
from imapproxy.net.client_ip import ClientOrigin
from imapproxy.net.streams import CONNECTION_ERRORS
from imapproxy.net.tls import (
    ClientSideTLS,
    TLSListener,
    TLSSetupError,
    accept_handshake,
    client_side_tls,
    tls_listeners,
)
from imapproxy.net.upstream import Dialer, make_upstream_dialer
from imapproxy.policy import Policy, SessionFacts
from imapproxy.server import sdnotify
from imapproxy.server.capacity import capacity_log, resource_error
from imapproxy.server.driver import SessionContext, SessionDriver
from imapproxy.server.guard import LimitBackend, SessionGuard, limit_values, report_hit
from imapproxy.server.limits import Limiter
from imapproxy.server.proxy_in import ProxyAccept, receive_origin
from imapproxy.session.settings import SessionSettings
from imapproxy.telemetry import logs
from imapproxy.telemetry.logs import log_event
from imapproxy.telemetry.observer import Observers
from imapproxy.telemetry.recorder import MetricsObserver, Telemetry
from imapproxy.telemetry.sessionlog import SessionLog

log = logging.getLogger("imapproxy")

ACCEPT_BACKOFF = 0.1  # seconds, after accept() ran out of resources (trio.serve_listeners')


class Proxy:
    def __init__(
        self,
        config: Config,
        telemetry: Telemetry,
        *,
        reload_config: Callable[[], Config] | None = None,
        limits: LimitBackend | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self._reload_config = reload_config
        self.bound: list[tuple[str, int]] = []
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()
        self._stop = trio.Event()
        self._drivers: set[SessionDriver] = set()
        # One observer stream for every session: metrics, logs, the inspector.
        self.inspector = Inspector(_trace_recorder(config))
        self.observers = Observers([MetricsObserver(telemetry), SessionLog(), self.inspector])
        self._settings, self._policy = self._session_settings(config)
        # TLS contexts are costly to build: once in serve(), again on SIGHUP (see _endpoints).
        self._client_tls = ClientSideTLS()
        self._dial_upstream: Dialer | None = None
        self._tls_listeners: list[TLSListener] = []
        # Per-IP / per-user bookkeeping; a worker of several is given the shared one.
        self.limits: LimitBackend = limits or Limiter(limit_values(config.limits))

    # --- configuration -----------------------------------------------------------------
    def _session_settings(self, config: Config) -> tuple[SessionSettings, Policy | None]:
        # Trace rules record sessions (the inspector); they never change what is relayed.
        enforced = [r for r in config.rules if r.action != "trace"]
        policy = Policy.compile(enforced) if enforced else None
        client_tls = config.client_tls
        settings = SessionSettings(
            max_line=config.limits.max_line,
            offer_starttls=client_tls is not None,
            max_pipelined=config.limits.max_pipelined,
            require_tls=client_tls is not None and client_tls.require,
            # Read per command, so a reload reaches sessions already open.
            policy_source=self._current_policy,
            facts=SessionFacts,
        )
        return settings, policy

    def _current_policy(self) -> Policy | None:
        return self._policy

    def reload(self) -> bool:
        """Re-read the config; True when the new rules are in force."""
        if self._reload_config is None:
            return False
        sdnotify.reloading()
        try:
            new = self._reload_config()
            settings, policy = self._session_settings(new)
            # Listeners stay bound where they are; the TLS one takes the file's new certificate.
            old_tls = self.config.listen_tls
            listen_tls = None
            if old_tls is not None:
                listen_tls = dataclasses.replace(new.listen_tls or old_tls, address=old_tls.address)
            listen = dataclasses.replace(new.listen, address=self.config.listen.address)
            new = dataclasses.replace(new, listen=listen, listen_tls=listen_tls)
            self._endpoints(new)
        except (ConfigError, TLSSetupError) as exc:
            log_event(log, "reload_failed", error=str(exc), level=logging.ERROR)
            self.telemetry.config_reloaded(False)
            sdnotify.ready()
            return False
        self.config = new
        self.limits.update(limit_values(new.limits))
        if policy is not None and self._policy is not None:
            policy.carry_over(self._policy)  # keep what was learned (the hierarchy delimiter)
        self._settings = settings
        self._policy = policy
        self.inspector.trace = _trace_recorder(new)
        logs.reopen()
        self.telemetry.config_reloaded(True)
        log_event(log, "reloaded", rules=len(new.rules))
        sdnotify.ready()
        return True

    def stop(self) -> None:
        self._stop.set()

    # A worker of several (server.workers) binds with SO_REUSEPORT instead.
    open_listeners: Callable[..., Awaitable[list[trio.SocketListener]]] = staticmethod(
        trio.open_tcp_listeners
    )

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
        self._endpoints(cfg)  # a TLSSetupError is an OSError: reported like a busy port
        address = cfg.listen.address
        listeners = await self.open_listeners(address.port, host=address.host)
        named: list[tuple[trio.SocketListener | TLSListener, str]] = [
            (lst, "plain") for lst in listeners
        ]
        if cfg.listen_tls is not None and self._client_tls.listen_context is not None:
            self._tls_listeners = await tls_listeners(
                cfg.listen_tls, self._client_tls.listen_context, self.open_listeners
            )
            named += [(lst, "tls") for lst in self._tls_listeners]
        self.bound = [_sockname(lst) for lst, _ in named]
        log_event(
            log,
            "listening",
            addresses=[f"{h}:{p}" for h, p in self.bound],
            upstream=f"{cfg.upstream.address.host}:{cfg.upstream.address.port}"
            if cfg.upstream
            else None,
            rules=len(cfg.rules),
        )
        control = None
        if cfg.control.socket is not None:
            control = ControlServer(self.inspector, cfg.control.socket)
            try:
                control.bind()  # a ControlSocketError is an OSError: reported like a busy port
            except ControlSocketError as exc:
                if cfg.control.required:
                    raise
                log_event(log, "control_unavailable", error=str(exc), level=logging.WARNING)
                control = None
        task_status.started(self.bound)
        sdnotify.ready()
        async with trio.open_nursery() as sessions:
            if control is not None:
                sessions.start_soon(control.serve)
            async with trio.open_nursery() as accepting:
                for lst, name in named:
                    accepting.start_soon(self._accept_loop, lst, name, sessions)
                accepting.start_soon(self._watch_signals, signals)
                await self._stop.wait()
                sdnotify.stopping()
                accepting.cancel_scope.cancel()
            for lst, _ in named:
                await lst.aclose()
            log_event(
                log, "stopping", active_sessions=self.active, grace_period=cfg.limits.grace_period
            )
            with trio.move_on_after(cfg.limits.grace_period):
                await self._idle.wait()
            for driver in self._drivers:
                driver.shutting_down = True
            sessions.cancel_scope.cancel()
        log_event(log, "stopped")

    def _endpoints(self, config: Config) -> None:
        """Build the upstream connector and client-facing TLS contexts (raises TLSSetupError)."""
        client_tls = client_side_tls(config.client_tls, config.listen_tls)
        dial = None
        if config.upstream is not None:
            dial = make_upstream_dialer(config.upstream, self.telemetry)
        self._client_tls, self._dial_upstream = client_tls, dial
        if client_tls.listen_context is not None:
            for lst in self._tls_listeners:
                lst.context = client_tls.listen_context

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.reload()
            else:
                self.stop()
                return

    async def _accept_loop(
        self, listener: trio.SocketListener | TLSListener, name: str, sessions: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                reason = resource_error(exc)
                if reason is None:
                    raise
                # Out of descriptors (or memory): connections wait in the listen backlog
                # until sessions close. Back off as trio.serve_listeners does; one log line
                # per minute at most, however often this happens.
                self.telemetry.accept_error("client", reason)
                capacity_log.event(
                    "accept_failed",
                    listener=name,
                    reason=reason,
                    error=exc.strerror or str(exc),
                    active_sessions=self.active,
                    level=logging.ERROR,
                )
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            sessions.start_soon(self._handle, stream, name)

    async def _handle(
        self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream], listener: str
    ) -> None:
        tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        try:
            origin = ClientOrigin.of_socket(tcp.socket)
        except OSError:
            await stream.aclose()
            return
        accept = self._proxy_accept(listener)
        if accept is not None:  # before anything else: the header names the client
            carried = None
            try:
                carried = await receive_origin(tcp.socket, origin, accept, self.telemetry, listener)
            finally:  # refused, or cancelled by a shutdown while waiting
                if carried is None:
                    await trio.aclose_forcefully(stream)
            if carried is None:
                return
            origin = carried
        peer = origin.client_text
        ip = str(origin.client[0])  # the carried address when behind a balancer
        if self.active >= self.config.limits.max_sessions:
            report_hit(self.telemetry, "sessions", peer)
            await _turn_away(stream, b"* BYE [UNAVAILABLE] Too many connections\r\n")
            return
        if self.limits.open_session(ip) is not None:
            report_hit(self.telemetry, "sessions_per_ip", peer)
            await _turn_away(
                stream, b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
            )
            return
        guard = SessionGuard(self.limits, ip, peer, self.telemetry)
        self.active += 1
        self._idle = trio.Event() if self.active == 1 else self._idle
        driver: SessionDriver | None = None
        try:
            if isinstance(stream, trio.SSLStream) and not await accept_handshake(
                stream, self.telemetry, peer
            ):
                return
            driver = SessionDriver(self._context(origin, listener, guard), stream, peer)
            self._drivers.add(driver)
            await driver.run()
        except Exception:  # whatever went wrong, it ends this session, never the process
            log.exception("session setup failed for %s", peer)
            with trio.move_on_after(2), contextlib.suppress(*CONNECTION_ERRORS):
                await stream.aclose()
        finally:
            if driver is not None:
                self._drivers.discard(driver)
            guard.close()
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    def _proxy_accept(self, listener: str) -> ProxyAccept | None:
        """The listener's PROXY protocol settings (read per connection: a reload changes
        ``trusted_networks`` for the next one)."""
        cfg = self.config
        lst = cfg.listen if listener == "plain" else cfg.listen_tls
        if lst is None or not lst.proxy_protocol:
            return None
        return ProxyAccept(lst.trusted_networks, cfg.limits.proxy_header_timeout)

    def _context(self, origin: ClientOrigin, listener: str, guard: SessionGuard) -> SessionContext:
        cfg = self.config
        assert cfg.upstream is not None and self._dial_upstream is not None
        settings = dataclasses.replace(
            self._settings,
            client_ip=origin.client[0],  # the carried address when behind a balancer
            client_tls_active=listener == "tls",
            login_gate=guard.gate,
        )
        return SessionContext(
            settings=settings,
            connect_upstream=self._dial_upstream(origin),
            telemetry=self.telemetry,
            listener=listener,
            connect_timeout=cfg.upstream.connect_timeout,
            idle_timeout=cfg.limits.idle_timeout,
            start_client_tls=self._client_tls.start_tls,
            guard=guard,
            auth_timeout=cfg.limits.auth_timeout,
            observers=self.observers,
        )


async def _turn_away(stream: trio.abc.Stream, line: bytes) -> None:
    """Refuse a connection at accept: one line, then close; a client gone is no error."""
    with trio.move_on_after(2):
        with contextlib.suppress(*CONNECTION_ERRORS):
            await stream.send_all(line)
        with contextlib.suppress(*CONNECTION_ERRORS):
            await stream.aclose()


def _trace_recorder(config: Config) -> TraceRecorder | None:
    rules = [r for r in config.rules if r.action == "trace"]
    if not rules:
        return None
    t = config.trace
    return TraceRecorder(rules, TraceDir(t.dir, t.max_file_bytes, t.max_dir_bytes))


def _sockname(listener: trio.SocketListener | TLSListener) -> tuple[str, int]:
    name = listener.socket.getsockname()
    return str(name[0]), int(name[1])


def reloader(path: Path, overrides: Callable[[Config], Config]) -> Callable[[], Config]:
    return lambda: overrides(load_config(path))


__all__ = ["Proxy", "reloader"]
