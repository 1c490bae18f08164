"""The YAML config file: schema, validation and frozen dataclasses.

``load_config`` reads with PyYAML's SafeLoader but keeps node positions, so every problem is
a ``ConfigError`` whose ``str()`` is one line, ``FILE:LINE:COL: reason`` (``FILE: reason``
when the file itself cannot be read). Unknown keys, wrong types and values that would have
no effect are errors: nothing in the file is silently ignored.

Relative paths (``rules_file``, certificates, ``log.file``, ``control.socket``) resolve
against the directory of the config file, so a config works from any working directory.
A section set to null (``metrics:`` with everything below commented out) means its defaults.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast

from yaml.nodes import ScalarNode

from imapproxy.config.rulefile import network, parse_rules, parse_rules_document
from imapproxy.config.yamlsource import ConfigError, Mapping, YNode, load_yaml
from imapproxy.policy.model import Network, Rule
from imapproxy.wire.grammar import DEFAULT_MAX_LINE

__all__ = [
    "Address",
    "ClientTLS",
    "Config",
    "ConfigError",
    "ControlConfig",
    "Limits",
    "Listen",
    "LogConfig",
    "LoginFailures",
    "MetricsConfig",
    "TLSListen",
    "TraceConfig",
    "Upstream",
    "check_config",
    "load_config",
]

_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
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
        elif not _HOSTNAME.fullmatch(host):
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


_PROXY_KEYS = ("proxy_protocol", "trusted_networks")
_TOP_KEYS = (
    "listen",
    "listen_tls",
    "client_tls",
    "upstream",
    "metrics",
    "control",
    "trace",
    "log",
    "limits",
    "rules",
    "rules_file",
    "workers",
)


def load_config(path: Path) -> Config:
    """Read and validate a config file; raises ConfigError."""
    root = load_yaml(path, str(path))
    if root is None or root.is_null:
        return Config(source=path)  # an empty file is all defaults
    top = root.as_mapping("top level")
    top.check_keys(_TOP_KEYS)
    base = path.parent
    values = _Reader(base)
    config = Config(source=path)
    if (node := top.get("listen")) is not None:
        config = replace(config, listen=values.listen(node))
    if (node := top.get("listen_tls")) is not None:
        config = replace(config, listen_tls=values.listen_tls(node))
    if (node := top.get("client_tls")) is not None:
        config = replace(config, client_tls=values.client_tls(node))
    if (node := top.get("upstream")) is not None:
        config = replace(config, upstream=values.upstream(node))
    if (node := top.get("metrics")) is not None:
        config = replace(config, metrics=values.metrics(node))
    if (node := top.get("control")) is not None:
        config = replace(config, control=values.control(node))
    if (node := top.get("trace")) is not None:
        config = replace(config, trace=values.trace(node))
    if (node := top.get("log")) is not None:
        config = replace(config, log=values.log(node))
    if (node := top.get("limits")) is not None:
        config = replace(config, limits=values.limits(node))
    if (node := top.get("workers")) is not None:
        config = replace(config, workers=_workers(node))
    return replace(config, rules=tuple(_rules(top, base)))


def parse_workers(text: str) -> int:
    """``--workers`` / ``workers:``: a count from 1, or ``auto`` (one per CPU the process may
    use); ValueError with a one-line reason."""
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise ValueError(f"workers must be a number from 1 to 1024 or 'auto', got {text!r}")
    return int(text)


def _workers(node: YNode) -> int:
    if isinstance(node.node, ScalarNode) and node.node.value == "auto":
        return parse_workers("auto")
    count = node.as_int("workers", minimum=1)
    if count > 1024:
        node.fail(f"workers must be at most 1024, got {count}")
    return count


def check_config(path: Path) -> str | None:
    """None when the file is valid, else its one-line error (for ``imapproxy check``)."""
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return None


def _rules(top: Mapping, base: Path) -> list[Rule]:
    inline, rules_file = top.get("rules"), top.get("rules_file")
    if "rules" in top and "rules_file" in top:
        _, second = sorted(("rules", "rules_file"), key=lambda k: top.key_node(k).line)
        top.key_node(second).fail(f"'rules' and 'rules_file' cannot both be given; drop {second!r}")
    if inline is not None:
        return parse_rules(inline)
    if rules_file is None:
        return []
    text = rules_file.as_str("rules_file")
    target = Path(text).expanduser()
    if not target.is_absolute():
        target = base / target
    if not target.is_file():
        rules_file.fail(f"rules file not found: {target}")
    return parse_rules_document(load_yaml(target, str(target)))


class _Reader:
    """Section parsers; ``base`` is the directory relative paths resolve against."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def address(self, node: YNode, what: str) -> Address:
        text = node.as_str(what)
        try:
            return Address.parse(text)
        except ValueError as exc:
            node.fail(f"invalid address in {what}: {exc}")

    def path(self, node: YNode, what: str, *, must_exist: bool) -> Path:
        path = Path(node.as_str(what)).expanduser()
        if not path.is_absolute():
            path = self.base / path
        if must_exist and not path.is_file():
            node.fail(f"{what}: file not found: {path}")
        return path

    def listen(self, node: YNode) -> Listen:
        if isinstance(node.node, ScalarNode):  # `listen: "host:port"`
            return Listen(self.address(node, "listen"))
        section = node.as_mapping("listen")
        section.check_keys(("address", *_PROXY_KEYS))
        result = Listen()
        if (value := section.get("address")) is not None:
            result = replace(result, address=self.address(value, "listen.address"))
        proxy_protocol, trusted = self._proxy_keys(section, "listen")
        return replace(result, proxy_protocol=proxy_protocol, trusted_networks=trusted)

    def listen_tls(self, node: YNode) -> TLSListen:
        section = node.as_mapping("listen_tls")
        section.check_keys(("address", "cert", "key", *_PROXY_KEYS), ("cert", "key"))
        address = Address("0.0.0.0", 993)
        if (value := section.get("address")) is not None:
            address = self.address(value, "listen_tls.address")
        proxy_protocol, trusted = self._proxy_keys(section, "listen_tls")
        return TLSListen(address, *self._cert_key(section, "listen_tls"), proxy_protocol, trusted)

    def _proxy_keys(self, section: Mapping, what: str) -> tuple[bool, tuple[Network, ...]]:
        """``proxy_protocol`` and ``trusted_networks``: both or neither, since a header from
        anyone would let anyone claim any address."""
        enabled = False
        if (value := section.get("proxy_protocol")) is not None:
            enabled = value.as_bool(f"{what}.proxy_protocol")
        networks: list[Network] = []
        if (value := section.get("trusted_networks")) is not None:
            for item, text in value.as_str_list(f"{what}.trusted_networks"):
                networks.append(network(item, text, f"{what}.trusted_networks"))
            if not enabled:
                section.key_node("trusted_networks").fail(
                    f"{what}.trusted_networks has no effect without {what}.proxy_protocol: true"
                )
        elif enabled:
            section.key_node("proxy_protocol").fail(
                f"{what}.proxy_protocol needs {what}.trusted_networks (the load balancers' "
                "addresses, e.g. ['10.0.0.0/8']): a PROXY header from anyone else is refused"
            )
        return enabled, tuple(networks)

    def _cert_key(self, section: Mapping, what: str) -> tuple[Path, Path]:
        cert, key = section.get("cert"), section.get("key")
        assert cert is not None and key is not None
        return (
            self.path(cert, f"{what}.cert", must_exist=True),
            self.path(key, f"{what}.key", must_exist=True),
        )

    def client_tls(self, node: YNode) -> ClientTLS:
        section = node.as_mapping("client_tls")
        section.check_keys(("cert", "key", "require", "min_version", "ciphers"), ("cert", "key"))
        cert, key = self._cert_key(section, "client_tls")
        result = ClientTLS(cert, key)
        if (value := section.get("require")) is not None:
            result = replace(result, require=value.as_bool("client_tls.require"))
        if (value := section.get("min_version")) is not None:
            version = value.as_choice("client_tls.min_version", TLS_VERSIONS)
            result = replace(result, min_version=version)
        if (value := section.get("ciphers")) is not None:
            ciphers = value.as_str("client_tls.ciphers")
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
            except ssl.SSLError:
                value.fail(f"client_tls.ciphers {ciphers!r} selects no cipher OpenSSL knows")
            result = replace(result, ciphers=ciphers)
        return result

    def upstream(self, node: YNode) -> Upstream:
        if isinstance(node.node, ScalarNode):  # `upstream: "host:port"` shorthand
            return Upstream(self.address(node, "upstream"))
        section = node.as_mapping("upstream")
        section.check_keys(
            ("address", "tls", "verify", "ca_file", "server_name", "connect_timeout", "client_ip"),
            ("address",),
        )
        address = section.get("address")
        assert address is not None
        result = Upstream(self.address(address, "upstream.address"))
        if (value := section.get("tls")) is not None:
            tls = value.as_choice("upstream.tls", ("implicit", "none", "starttls"))
            result = replace(result, tls=cast(Literal["none", "starttls", "implicit"], tls))
        if (value := section.get("verify")) is not None:
            result = replace(result, verify=value.as_bool("upstream.verify"))
        if (value := section.get("ca_file")) is not None:
            ca_file = self.path(value, "upstream.ca_file", must_exist=True)
            result = replace(result, ca_file=ca_file)
        if (value := section.get("server_name")) is not None:
            name = value.as_str("upstream.server_name")
            if not _HOSTNAME.fullmatch(name):
                value.fail(f"invalid upstream.server_name {name!r}")
            result = replace(result, server_name=name)
        if (value := section.get("connect_timeout")) is not None:
            timeout = value.as_number("upstream.connect_timeout")
            result = replace(result, connect_timeout=timeout)
        if (value := section.get("client_ip")) is not None:
            client_ip = value.as_choice("upstream.client_ip", ("id", "none", "proxy_v2"))
            result = replace(result, client_ip=cast(Literal["none", "proxy_v2", "id"], client_ip))
        if result.tls == "none":
            for key in ("verify", "ca_file", "server_name"):
                if section.get(key) is not None:
                    section.key_node(key).fail(
                        f"upstream.{key} has no effect without TLS to the upstream "
                        "(set upstream.tls to starttls or implicit)"
                    )
        return result

    def metrics(self, node: YNode) -> MetricsConfig:
        section = node.as_mapping("metrics")
        section.check_keys(("address",))
        if "address" not in section:
            return MetricsConfig()
        value = section.get("address")
        return MetricsConfig(None if value is None else self.address(value, "metrics.address"))

    def control(self, node: YNode) -> ControlConfig:
        section = node.as_mapping("control")
        section.check_keys(("socket",))
        value = section.get("socket")
        socket = None if value is None else self.path(value, "control.socket", must_exist=False)
        return ControlConfig(socket)

    def trace(self, node: YNode) -> TraceConfig:
        section = node.as_mapping("trace")
        section.check_keys(("dir", "max_file_bytes", "max_dir_bytes"))
        result = TraceConfig()
        if (value := section.get("dir")) is not None:
            result = replace(result, dir=self.path(value, "trace.dir", must_exist=False))
        if (value := section.get("max_file_bytes")) is not None:
            size = value.as_int("trace.max_file_bytes", minimum=4096)
            result = replace(result, max_file_bytes=size)
        if (value := section.get("max_dir_bytes")) is not None:
            size = value.as_int("trace.max_dir_bytes", minimum=4096)
            result = replace(result, max_dir_bytes=size)
        if result.max_file_bytes > result.max_dir_bytes:
            key = "max_file_bytes" if "max_file_bytes" in section else "max_dir_bytes"
            section.key_node(key).fail("trace.max_file_bytes is larger than trace.max_dir_bytes")
        return result

    def log(self, node: YNode) -> LogConfig:
        section = node.as_mapping("log")
        section.check_keys(("level", "format", "file"))
        result = LogConfig()
        if (value := section.get("level")) is not None:
            level = value.as_str("log.level").lower()
            if level not in LOG_LEVELS:
                value.fail(
                    f"unknown log.level {value.as_str('log.level')!r} "
                    f"(expected one of: {', '.join(LOG_LEVELS)})"
                )
            result = replace(result, level=level)
        if (value := section.get("format")) is not None:
            log_format = value.as_choice("log.format", ("json", "text"))
            result = replace(result, format=cast(Literal["json", "text"], log_format))
        if (value := section.get("file")) is not None:
            result = replace(result, file=self.path(value, "log.file", must_exist=False))
        return result

    def limits(self, node: YNode) -> Limits:
        section = node.as_mapping("limits")
        section.check_keys(
            (
                "max_line", "idle_timeout", "grace_period", "max_sessions", "max_sessions_per_ip",
                "max_sessions_per_user", "login_failures", "auth_timeout", "max_pipelined",
                "proxy_header_timeout",
            )
        )  # fmt: skip
        result = Limits()
        if (value := section.get("max_line")) is not None:
            result = replace(result, max_line=value.as_int("limits.max_line", minimum=1024))
        if (value := section.get("idle_timeout")) is not None:
            idle = value.as_number("limits.idle_timeout")
            result = replace(result, idle_timeout=idle)
        if (value := section.get("grace_period")) is not None:
            grace = value.as_number("limits.grace_period", positive=False)
            result = replace(result, grace_period=grace)
        if (value := section.get("max_sessions")) is not None:
            sessions = value.as_int("limits.max_sessions", minimum=1)
            result = replace(result, max_sessions=sessions)
        if (value := section.get("proxy_header_timeout")) is not None:
            timeout = value.as_number("limits.proxy_header_timeout")
            result = replace(result, proxy_header_timeout=timeout)
        if (value := section.get("max_sessions_per_ip")) is not None:
            per_ip = value.as_int("limits.max_sessions_per_ip", minimum=0)
            result = replace(result, max_sessions_per_ip=per_ip)
        if (value := section.get("max_sessions_per_user")) is not None:
            per_user = value.as_int("limits.max_sessions_per_user", minimum=0)
            result = replace(result, max_sessions_per_user=per_user)
        if (value := section.get("auth_timeout")) is not None:
            result = replace(result, auth_timeout=value.as_number("limits.auth_timeout"))
        if (value := section.get("max_pipelined")) is not None:
            pipelined = value.as_int("limits.max_pipelined", minimum=1)
            result = replace(result, max_pipelined=pipelined)
        if (value := section.get("login_failures")) is not None:
            result = replace(result, login_failures=self._login_failures(value))
        return result

    def _login_failures(self, node: YNode) -> LoginFailures:
        section = node.as_mapping("limits.login_failures")
        section.check_keys(("per_ip", "per_user", "window"))
        result = LoginFailures()
        if (value := section.get("per_ip")) is not None:
            result = replace(result, per_ip=value.as_int("limits.login_failures.per_ip", minimum=0))
        if (value := section.get("per_user")) is not None:
            per_user = value.as_int("limits.login_failures.per_user", minimum=0)
            result = replace(result, per_user=per_user)
        if (value := section.get("window")) is not None:
            window = value.as_number("limits.login_failures.window")
            result = replace(result, window=window)
        return result
