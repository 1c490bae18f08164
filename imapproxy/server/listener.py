"""The process: listeners, accept loops, signals, graceful shutdown and reload.

SIGTERM/SIGINT: stop accepting, let sessions finish for ``limits.grace_period`` seconds,
then cancel them (each says ``* BYE`` on the way out). SIGHUP: re-read the config file and
swap in the new rules for new commands, and re-read certificates for new TLS handshakes; a bad
file keeps the old rules and certificates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from imapproxy.config.loader import Config, ConfigError, load_config
from imapproxy.inspect.control import ControlServer, ControlSocketError
from imapproxy.inspect.registry import Inspector
from imapproxy.inspect.trace import TraceDir, TraceRecorder
from imapproxy.net.streams import CONNECTION_ERRORS, UpstreamConnector
from imapproxy.net.tls import (
    ClientSideTLS,
    TLSListener,
    TLSSetupError,
    accept_handshake,
    client_side_tls,
    tls_listeners,
)
from imapproxy.net.upstream import make_upstream_connector
from imapproxy.policy import Policy, SessionFacts
from imapproxy.server import sdnotify
from imapproxy.server.driver import SessionContext, SessionDriver
from imapproxy.session.settings import SessionSettings
from imapproxy.telemetry import logs
from imapproxy.telemetry.logs import log_event
from imapproxy.telemetry.observer import Observers
from imapproxy.telemetry.recorder import MetricsObserver, Telemetry
from imapproxy.telemetry.sessionlog import SessionLog

log = logging.getLogger("imapproxy")

# accept() errors that mean "out of resources right now", not "the listener is broken".
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class Proxy:
    def __init__(
        self,
        config: Config,
        telemetry: Telemetry,
        *,
        reload_config: Callable[[], Config] | None = None,
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
        self._connect_upstream: UpstreamConnector | None = None
        self._tls_listeners: list[TLSListener] = []

    # --- configuration -----------------------------------------------------------------
    def _session_settings(self, config: Config) -> tuple[SessionSettings, Policy | None]:
        # Trace rules record sessions (the inspector); they never change what is relayed.
        enforced = [r for r in config.rules if r.action != "trace"]
        policy = Policy.compile(enforced) if enforced else None
        client_tls = config.client_tls
        settings = SessionSettings(
            max_line=config.limits.max_line,
            offer_starttls=client_tls is not None,
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
            new = dataclasses.replace(new, listen=self.config.listen, listen_tls=listen_tls)
            self._endpoints(new)
        except (ConfigError, TLSSetupError) as exc:
            log_event(log, "reload_failed", error=str(exc), level=logging.ERROR)
            self.telemetry.config_reloaded(False)
            sdnotify.ready()
            return False
        self.config = new
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
        listeners = await trio.open_tcp_listeners(cfg.listen.port, host=cfg.listen.host)
        named: list[tuple[trio.SocketListener | TLSListener, str]] = [
            (lst, "plain") for lst in listeners
        ]
        if cfg.listen_tls is not None and self._client_tls.listen_context is not None:
            self._tls_listeners = await tls_listeners(
                cfg.listen_tls, self._client_tls.listen_context
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
        connect = None
        if config.upstream is not None:
            connect = make_upstream_connector(config.upstream, self.telemetry)
        self._client_tls, self._connect_upstream = client_tls, connect
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
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise
                log_event(log, "accept_failed", error=str(exc), level=logging.ERROR)
                await trio.sleep(0.1)  # as trio.serve_listeners does: back off, keep serving
                continue
            sessions.start_soon(self._handle, stream, name)

    async def _handle(
        self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream], listener: str
    ) -> None:
        tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        try:
            host, port = tcp.socket.getpeername()[:2]
        except OSError:
            await stream.aclose()
            return
        if self.active >= self.config.limits.max_sessions:
            with trio.move_on_after(2):
                try:
                    await stream.send_all(b"* BYE [UNAVAILABLE] Too many connections\r\n")
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            return
        self.active += 1
        self._idle = trio.Event() if self.active == 1 else self._idle
        driver: SessionDriver | None = None
        try:
            if isinstance(stream, trio.SSLStream) and not await accept_handshake(
                stream, self.telemetry, f"{host}:{port}"
            ):
                return
            driver = SessionDriver(self._context(host, listener), stream, f"{host}:{port}")
            self._drivers.add(driver)
            await driver.run()
        except Exception:  # whatever went wrong, it ends this session, never the process
            log.exception("session setup failed for %s:%s", host, port)
            with trio.move_on_after(2), contextlib.suppress(*CONNECTION_ERRORS):
                await stream.aclose()
        finally:
            if driver is not None:
                self._drivers.discard(driver)
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    def _context(self, host: str, listener: str) -> SessionContext:
        cfg = self.config
        assert cfg.upstream is not None and self._connect_upstream is not None
        settings = dataclasses.replace(
            self._settings,
            client_ip=ipaddress.ip_address(host.split("%", 1)[0]),
            client_tls_active=listener == "tls",
        )
        return SessionContext(
            settings=settings,
            connect_upstream=self._connect_upstream,
            telemetry=self.telemetry,
            listener=listener,
            connect_timeout=cfg.upstream.connect_timeout,
            idle_timeout=cfg.limits.idle_timeout,
            start_client_tls=self._client_tls.start_tls,
            observers=self.observers,
        )


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
