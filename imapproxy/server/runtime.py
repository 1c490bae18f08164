"""The runtime: everything the daemon derives from one ``Config``, built in one place.

``build_runtime`` turns a config into the compiled policy, the sessions' base
``SessionSettings``, the client-facing TLS contexts, the upstream dialer, the trace recorder
and the limit numbers. A reload is "build a new ``Runtime`` from the new file; on success swap
it in whole" (``Proxy.reload``): a build that fails (``ConfigError``, ``TLSSetupError``) leaves
the old runtime in force, and nothing of a half-built one is ever used.

What a swap reaches: sessions opened afterwards get the new settings, TLS contexts, dialer and
PROXY protocol settings; sessions already open keep their settings but read the policy per
command (``SessionSettings.policy_source``), so new rules reach them too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapproxy.config.loader import Config, load_config
from imapproxy.inspect.trace import TraceDir, TraceRecorder
from imapproxy.net.client_ip import ClientOrigin
from imapproxy.net.tls import ClientSideTLS, client_side_tls
from imapproxy.net.upstream import Dialer, make_upstream_dialer
from imapproxy.policy import Policy, SessionFacts
from imapproxy.server.driver import SessionContext
from imapproxy.server.guard import SessionGuard, limit_values
from imapproxy.server.limits import LimitValues
from imapproxy.server.proxy_in import ProxyAccept
from imapproxy.session.settings import SessionSettings
from imapproxy.telemetry.observer import Observers
from imapproxy.telemetry.recorder import Telemetry

__all__ = ["PolicySource", "Runtime", "build_runtime", "keep_bound_addresses", "reloader"]

PolicySource = Callable[[], "Policy | None"]


@dataclass(frozen=True, slots=True)
class Runtime:
    """One config, compiled. Immutable: a reload replaces the whole object."""

    config: Config
    policy: Policy | None  # None: no enforced rules (pass-through)
    settings: SessionSettings  # the per-session fields are filled in by ``session_context``
    client_tls: ClientSideTLS
    dial_upstream: Dialer | None  # None only for a config without upstream (never served)
    trace: TraceRecorder | None  # None: no ``trace`` rules
    limits: LimitValues

    def proxy_accept(self, listener: str) -> ProxyAccept | None:
        """The listener's PROXY protocol settings, or None when it expects no header."""
        cfg = self.config
        lst = cfg.listen if listener == "plain" else cfg.listen_tls
        if lst is None or not lst.proxy_protocol:
            return None
        return ProxyAccept(lst.trusted_networks, cfg.limits.proxy_header_timeout)

    def session_context(
        self,
        origin: ClientOrigin,
        listener: str,
        guard: SessionGuard,
        telemetry: Telemetry,
        observers: Observers,
    ) -> SessionContext:
        """What one admitted connection's driver needs."""
        cfg = self.config
        assert cfg.upstream is not None and self.dial_upstream is not None
        settings = SessionSettings(
            **_shared_fields(self.settings),
            client_ip=origin.client[0],  # the carried address when behind a balancer
            client_tls_active=listener == "tls",
            login_gate=guard.gate,
        )
        return SessionContext(
            settings=settings,
            connect_upstream=self.dial_upstream(origin),
            telemetry=telemetry,
            listener=listener,
            connect_timeout=cfg.upstream.connect_timeout,
            idle_timeout=cfg.limits.idle_timeout,
            start_client_tls=self.client_tls.start_tls,
            guard=guard,
            auth_timeout=cfg.limits.auth_timeout,
            observers=observers,
        )


_PER_SESSION = frozenset(("client_ip", "client_tls_active", "login_gate"))
_shared: tuple[SessionSettings | None, dict[str, Any]] = (None, {})


def _shared_fields(settings: SessionSettings) -> dict[str, Any]:
    """The fields of the base ``settings`` that every session takes as they are, as keyword
    arguments (read once per runtime: ``dataclasses.replace`` reads them all per session,
    ~3x the cost of building the settings from them)."""
    global _shared
    base, fields = _shared
    if base is not settings:
        fields = {
            f.name: getattr(settings, f.name)
            for f in dataclasses.fields(settings)
            if f.name not in _PER_SESSION
        }
        _shared = (settings, fields)
    return fields


def build_runtime(config: Config, telemetry: Telemetry, policy_source: PolicySource) -> Runtime:
    """Compile ``config``. ``policy_source`` is what sessions call per command for the policy
    in force (the proxy's current runtime's, so a reload reaches open sessions).

    Raises ``ConfigError`` (rules) or ``TLSSetupError`` (certificates, an OSError)."""
    # Trace rules record sessions (the inspector); they never change what is relayed.
    enforced = [r for r in config.rules if r.action != "trace"]
    policy = Policy.compile(enforced) if enforced else None
    client_tls = config.client_tls
    settings = SessionSettings(
        max_line=config.limits.max_line,
        offer_starttls=client_tls is not None,
        max_pipelined=config.limits.max_pipelined,
        require_tls=client_tls is not None and client_tls.require,
        policy_source=policy_source,
        facts=SessionFacts,
    )
    # TLS contexts are costly to build: once at start, again on each reload.
    contexts = client_side_tls(config.client_tls, config.listen_tls)
    dial = None
    if config.upstream is not None:
        dial = make_upstream_dialer(config.upstream, telemetry)
    return Runtime(
        config=config,
        policy=policy,
        settings=settings,
        client_tls=contexts,
        dial_upstream=dial,
        trace=_trace_recorder(config),
        limits=limit_values(config.limits),
    )


def keep_bound_addresses(new: Config, running: Config) -> Config:
    """``new`` with the listen addresses of ``running``: listeners stay bound where they are
    across a reload; the TLS one takes the new file's certificate."""
    old_tls = running.listen_tls
    listen_tls = None
    if old_tls is not None:
        listen_tls = dataclasses.replace(new.listen_tls or old_tls, address=old_tls.address)
    listen = dataclasses.replace(new.listen, address=running.listen.address)
    return dataclasses.replace(new, listen=listen, listen_tls=listen_tls)


def _trace_recorder(config: Config) -> TraceRecorder | None:
    rules = [r for r in config.rules if r.action == "trace"]
    if not rules:
        return None
    t = config.trace
    return TraceRecorder(rules, TraceDir(t.dir, t.max_file_bytes, t.max_dir_bytes))


def reloader(path: Path, overrides: Callable[[Config], Config]) -> Callable[[], Config]:
    """What SIGHUP calls: the file at ``path`` again, with the command line's overrides."""
    return lambda: overrides(load_config(path))
