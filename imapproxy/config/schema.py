"""The config file's schema, declared once: every key with its type, default, help and check.

Each section is a ``Section``: the dataclass it builds (``imapproxy.config.model``) and its
``Key``s in reading order. A key names the dataclass field it sets (same name), a ``kind``
for the reference, its help text and ``read``, which turns the YAML node into the value or
raises a located ``ConfigError`` (``FILE:LINE:COL: reason``). A key absent from the file
keeps the dataclass default (or ``fallback``). ``checks`` run on the built value for rules
that span keys. The loader (``read_section``) and the reference (``reference.py``) both
walk these tables, so a key cannot be parsed without being documented, or the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.nodes import ScalarNode

from imapproxy.config import model
from imapproxy.config.checks import (
    LOG_LEVELS,
    TLS_VERSIONS,
    Reader,
    address,
    boolean,
    choice,
    ciphers,
    hostname,
    integer,
    log_level,
    networks,
    number,
    path,
    proxy_keys,
    trace_sizes,
    upstream_tls_keys,
    workers,
)
from imapproxy.config.model import Address
from imapproxy.config.yamlsource import Mapping, YNode

Check = Callable[[Mapping, Any], None]

ABSENT: Any = object()
"""``Key.fallback`` when the dataclass default applies."""


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a section: it sets the dataclass field of the same ``name``."""

    name: str
    kind: str
    help: str
    read: Reader | None = None  # None: a nested section (``section``) or read by the loader
    section: Section | None = None
    required: bool = False
    nullable: bool = False  # an explicit null sets None instead of keeping the default
    fallback: object = ABSENT  # the value when absent, where the dataclass has no default


@dataclass(frozen=True, slots=True)
class Section:
    """One mapping of the file and the dataclass (``model``) it builds."""

    name: str  # dotted, as messages name it
    model: Callable[..., Any]
    help: str
    keys: tuple[Key, ...]
    shorthand: str | None = None  # a scalar in place of the mapping sets this key
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()  # cross-key rules, for the reference


def read_section(section: Section, node: YNode, base: Path) -> Any:
    """Build ``section.model`` from a YAML node, checking every key."""
    what = section.name
    prefix = "" if section is TOP else f"{what}."
    if section.shorthand is not None and isinstance(node.node, ScalarNode):
        key = next(k for k in section.keys if k.name == section.shorthand)
        assert key.read is not None
        return section.model(**{key.name: key.read(node, what, base)})
    mapping = node.as_mapping(what)
    mapping.check_keys(
        tuple(k.name for k in section.keys), tuple(k.name for k in section.keys if k.required)
    )
    values: dict[str, object] = {}
    for key in section.keys:
        value = mapping.get(key.name)
        if value is None:
            if key.nullable and key.name in mapping:
                values[key.name] = None
            elif key.fallback is not ABSENT:
                values[key.name] = key.fallback
        elif key.section is not None:
            values[key.name] = read_section(key.section, value, base)
        elif key.read is not None:
            values[key.name] = key.read(value, prefix + key.name, base)
    result = section.model(**values)
    for check in section.checks:
        check(mapping, result)
    return result


# -- the sections -------------------------------------------------------------------------

_PROXY_NOTE = (
    "`proxy_protocol: true` needs `trusted_networks`, and `trusted_networks` needs "
    "`proxy_protocol: true`: a PROXY header from anyone would let anyone claim any address."
)


def _proxy_keys(where: str) -> tuple[Key, ...]:
    return (
        Key(
            "proxy_protocol",
            "bool",
            f"Every connection must start with a PROXY v1/v2 header{where}.",
            boolean,
        ),
        Key(
            "trusted_networks",
            "list of CIDR",
            "Peers (load balancers) allowed to send the PROXY header; others are refused.",
            networks,
        ),
    )


LISTEN = Section(
    "listen",
    model.Listen,
    'The plain IMAP listener. A string (`listen: "host:port"`) sets only the address.',
    (
        Key("address", "address", "`host:port` or `[v6]:port` to accept clients on.", address),
        *_proxy_keys(""),
    ),
    shorthand="address",
    checks=(proxy_keys,),
    notes=(_PROXY_NOTE,),
)

LISTEN_TLS = Section(
    "listen_tls",
    model.TLSListen,
    "An implicit-TLS (IMAPS) listener; absent means none.",
    (
        Key(
            "address",
            "address",
            "`host:port` to accept TLS clients on.",
            address,
            fallback=Address("0.0.0.0", 993),
        ),
        *_proxy_keys(" (it comes before the TLS handshake)"),
        Key(
            "cert",
            "path",
            "Certificate chain (PEM); must exist.",
            path(must_exist=True),
            required=True,
        ),
        Key("key", "path", "Private key (PEM); must exist.", path(must_exist=True), required=True),
    ),
    checks=(proxy_keys,),
    notes=(_PROXY_NOTE,),
)

CLIENT_TLS = Section(
    "client_tls",
    model.ClientTLS,
    "STARTTLS towards clients on the plain listener; absent means STARTTLS is not offered.",
    (
        Key(
            "cert",
            "path",
            "Certificate chain (PEM); must exist.",
            path(must_exist=True),
            required=True,
        ),
        Key("key", "path", "Private key (PEM); must exist.", path(must_exist=True), required=True),
        Key(
            "require",
            "bool",
            "Refuse LOGIN/AUTHENTICATE until the client has done STARTTLS.",
            boolean,
        ),
        Key(
            "min_version",
            "choice",
            f"Lowest TLS version: {', '.join(TLS_VERSIONS)} (listen_tls too).",
            choice(*TLS_VERSIONS),
        ),
        Key(
            "ciphers",
            "string",
            "OpenSSL cipher list for TLS 1.2 and below (listen_tls too).",
            ciphers,
        ),
    ),
)

UPSTREAM = Section(
    "upstream",
    model.Upstream,
    'The mail server (or `--upstream`). A string (`upstream: "host:port"`) sets only the address.',
    (
        Key("address", "address", "`host:port` of the IMAP server.", address, required=True),
        Key(
            "tls",
            "choice",
            "`none`, `starttls` or `implicit` (IMAPS).",
            choice("implicit", "none", "starttls"),
        ),
        Key("verify", "bool", "Verify the server's certificate and name.", boolean),
        Key(
            "ca_file",
            "path",
            "CA bundle to verify against (default: the system's).",
            path(must_exist=True),
        ),
        Key(
            "server_name", "string", "Name to verify and send as SNI (default: the host).", hostname
        ),
        Key("connect_timeout", "seconds", "Time to connect (and finish TLS).", number()),
        Key(
            "client_ip",
            "choice",
            "How the server learns the client's address: `none`, `proxy_v2` (a PROXY v2 "
            "header; Dovecot `haproxy_trusted_networks`) or `id` (ID x-originating-ip; "
            "Dovecot `login_trusted_networks`).",
            choice("id", "none", "proxy_v2"),
        ),
    ),
    shorthand="address",
    checks=(upstream_tls_keys,),
    notes=("`verify`, `ca_file` and `server_name` need `tls: starttls` or `tls: implicit`.",),
)

METRICS = Section(
    "metrics",
    model.MetricsConfig,
    "The Prometheus exporter.",
    (
        Key(
            "address",
            "address",
            "`host:port` to serve `/metrics` on; null: no exporter.",
            address,
            nullable=True,
        ),
    ),
)

CONTROL = Section(
    "control",
    model.ControlConfig,
    "The inspector's control socket (`imapproxy sessions|kick|tail|show`).",
    (
        Key(
            "socket",
            "path",
            "Unix socket path; null: `$RUNTIME_DIRECTORY/control.sock` under systemd, "
            "`/run/imapproxy/control.sock` as root, else no control socket.",
            path(must_exist=False),
        ),
    ),
)

TRACE = Section(
    "trace",
    model.TraceConfig,
    "Where `trace` rules write session traces.",
    (
        Key("dir", "path", "Directory for trace files.", path(must_exist=False)),
        Key(
            "max_file_bytes",
            "integer >= 4096",
            "Size at which one trace file stops.",
            integer(4096),
        ),
        Key("max_dir_bytes", "integer >= 4096", "Total size of the directory.", integer(4096)),
    ),
    checks=(trace_sizes,),
    notes=("`max_file_bytes` may not exceed `max_dir_bytes`.",),
)

LOG = Section(
    "log",
    model.LogConfig,
    "Logging.",
    (
        Key("level", "choice", f"One of {', '.join(LOG_LEVELS)} (any case).", log_level),
        Key("format", "choice", "`json` (one object a line) or `text`.", choice("json", "text")),
        Key("file", "path", "Log file; null: standard error.", path(must_exist=False)),
    ),
)

LOGIN_FAILURES = Section(
    "limits.login_failures",
    model.LoginFailures,
    "Failed logins allowed within `window` before further attempts are refused.",
    (
        Key("per_ip", "integer >= 0", "Per client address; 0: no limit.", integer(0)),
        Key("per_user", "integer >= 0", "Per user name; 0: no limit.", integer(0)),
        Key("window", "seconds", "The sliding window.", number()),
    ),
)

LIMITS = Section(
    "limits",
    model.Limits,
    "Resource and abuse limits.",
    (
        Key(
            "max_line",
            "integer >= 1024",
            "Longest command or response line, in bytes.",
            integer(1024),
        ),
        Key("idle_timeout", "seconds", "A session with no traffic is closed after this.", number()),
        Key(
            "grace_period",
            "seconds >= 0",
            "On shutdown, time sessions get to finish.",
            number(positive=False),
        ),
        Key("max_sessions", "integer >= 1", "Concurrent sessions per worker.", integer(1)),
        Key(
            "proxy_header_timeout",
            "seconds",
            "Time for a PROXY header to arrive complete.",
            number(),
        ),
        Key(
            "max_sessions_per_ip",
            "integer >= 0",
            "Concurrent sessions per client address; 0: no limit.",
            integer(0),
        ),
        Key(
            "max_sessions_per_user",
            "integer >= 0",
            "Concurrent sessions per user; 0: no limit.",
            integer(0),
        ),
        Key("auth_timeout", "seconds", "Time to log in before `* BYE`.", number()),
        Key("max_pipelined", "integer >= 1", "Commands in flight per session.", integer(1)),
        Key("login_failures", "section", LOGIN_FAILURES.help, section=LOGIN_FAILURES),
    ),
)

TOP = Section(
    "top level",
    model.Config,
    "The file is a mapping of these sections; every one is optional.",
    (
        Key("listen", "section", LISTEN.help, section=LISTEN),
        Key("listen_tls", "section", LISTEN_TLS.help, section=LISTEN_TLS),
        Key("client_tls", "section", CLIENT_TLS.help, section=CLIENT_TLS),
        Key("upstream", "section", UPSTREAM.help, section=UPSTREAM),
        Key("metrics", "section", METRICS.help, section=METRICS),
        Key("control", "section", CONTROL.help, section=CONTROL),
        Key("trace", "section", TRACE.help, section=TRACE),
        Key("log", "section", LOG.help, section=LOG),
        Key("limits", "section", LIMITS.help, section=LIMITS),
        Key("rules", "list of rules", "Policy rules, inline (see the rules reference)."),
        Key("rules_file", "path", "A YAML file holding `rules:` instead (reloaded on SIGHUP)."),
        Key(
            "workers",
            "integer 1-1024 or `auto`",
            "Worker processes sharing the ports; `auto`: one per CPU.",
            workers,
        ),
    ),
    notes=("`rules` and `rules_file` cannot both be given.",),
)

SECTIONS = (
    LISTEN,
    LISTEN_TLS,
    CLIENT_TLS,
    UPSTREAM,
    METRICS,
    CONTROL,
    TRACE,
    LOG,
    LIMITS,
    LOGIN_FAILURES,
)
