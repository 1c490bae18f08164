"""The configuration's values: frozen dataclasses, one per section of the YAML file.

What the rest of the proxy reads. ``imapproxy.config.schema`` declares how each field is
spelled, checked and documented in the file; ``imapproxy.config.loader`` builds these from it.
Defaults here are the defaults of the file (``docs/configuration.md`` is generated from them).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from imapproxy.policy.model import Network, Rule
from imapproxy.wire.grammar import DEFAULT_MAX_LINE

HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
LOG_LEVELS = ("critical", "debug", "error", "info", "warning")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """``host:port`` or ``[v6]:port``; ValueError with a one-line reason."""
        if text.startswith("["):
            v6, sep, port = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"expected '[IPv6]:port', got {text!r}")
            try:
                ipaddress.IPv6Address(v6)
            except ValueError:
                raise ValueError(f"invalid IPv6 address {v6!r}") from None
            return cls(v6, _port(port))
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected 'host:port', got {text!r} (the port is required)")
        if ":" in host:
            raise ValueError(f"put IPv6 addresses in brackets, e.g. '[{host}]:{port}'")
        if not host:
            raise ValueError(f"missing host in {text!r} (use '0.0.0.0:{port}' for all)")
        if host.replace(".", "").isdigit():
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"invalid IPv4 address {host!r}") from None
        elif not HOSTNAME.fullmatch(host):
            raise ValueError(f"invalid host name {host!r}")
        return cls(host, _port(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


@dataclass(frozen=True, slots=True)
class Listen:
    """A plain listener. With ``proxy_protocol`` every connection must start with a PROXY
    v1/v2 header, accepted only from ``trusted_networks`` (a load balancer)."""

    address: Address = Address("0.0.0.0", 143)
    proxy_protocol: bool = False
    trusted_networks: tuple[Network, ...] = ()


@dataclass(frozen=True, slots=True)
class TLSListen:
    address: Address
    cert: Path
    key: Path
    proxy_protocol: bool = False  # the PROXY header comes before the TLS handshake
    trusted_networks: tuple[Network, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientTLS:
    cert: Path
    key: Path
    require: bool = False
    min_version: str = "TLSv1.2"
    ciphers: str | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    address: Address
    tls: Literal["none", "starttls", "implicit"] = "none"
    verify: bool = True
    ca_file: Path | None = None
    server_name: str | None = None
    connect_timeout: float = 10.0
    # How the mail server learns the client's address: not at all, a PROXY v2 header
    # (Dovecot haproxy_trusted_networks), or ID x-originating-ip (login_trusted_networks).
    client_ip: Literal["none", "proxy_v2", "id"] = "none"


@dataclass(frozen=True, slots=True)
class LoginFailures:
    """Failed logins allowed per client address and per user within ``window`` seconds."""

    per_ip: int = 10
    per_user: int = 5
    window: float = 300.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_line: int = DEFAULT_MAX_LINE
    idle_timeout: float = 1860.0
    grace_period: float = 30.0
    max_sessions: int = 10000
    proxy_header_timeout: float = 5.0  # seconds for a PROXY header to arrive complete
    # Abuse limits (server/limits.py); 0 switches a count limit off.
    max_sessions_per_ip: int = 50
    max_sessions_per_user: int = 20
    login_failures: LoginFailures = field(default_factory=LoginFailures)
    auth_timeout: float = 60.0  # seconds to log in before * BYE
    max_pipelined: int = 1000  # commands in flight per session


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: Literal["json", "text"] = "json"
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: Address | None = Address("127.0.0.1", 9143)  # None: no metrics listener


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path | None = None
    # False for the default path (not configured): a socket another proxy holds is then a
    # warning, not a failure to start.
    required: bool = True


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """Where ``trace`` rules write (see ``imapproxy.inspect.trace``)."""

    dir: Path = Path("/var/lib/imapproxy/traces")
    max_file_bytes: int = 10 * 1024 * 1024
    max_dir_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Config:
    listen: Listen = field(default_factory=Listen)
    listen_tls: TLSListen | None = None
    client_tls: ClientTLS | None = None
    upstream: Upstream | None = None  # may come from --upstream instead
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    limits: Limits = field(default_factory=Limits)
    rules: tuple[Rule, ...] = ()
    source: Path | None = None
    workers: int = 1  # worker processes (server/workers.py); 0 in the file means "auto"


def parse_workers(text: str) -> int:
    """``--workers`` / ``workers:``: a count from 1, or ``auto`` (one per CPU the process may
    use); ValueError with a one-line reason."""
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise ValueError(f"workers must be a number from 1 to 1024 or 'auto', got {text!r}")
    return int(text)
