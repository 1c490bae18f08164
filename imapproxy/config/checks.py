"""The checks behind the schema's keys: readers (YAML node -> value) and cross-key rules.

A reader takes the value node, the dotted key name messages use, and the directory relative
paths resolve against; it returns the value or raises a located ``ConfigError`` through
``YNode.fail``. A cross-key check takes the section's mapping and the built dataclass.
The messages are the config file's user interface: tests pin them.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from yaml.nodes import ScalarNode

from imapproxy.config import model
from imapproxy.config.model import Address, parse_workers
from imapproxy.config.rulefile import network
from imapproxy.config.yamlsource import Mapping, YNode
from imapproxy.policy.model import Network

Reader = Callable[[YNode, str, Path], object]
"""(value node, dotted key name for messages, directory relative paths resolve against)."""

TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
LOG_LEVELS = ("critical", "debug", "error", "info", "warning")


# -- readers ------------------------------------------------------------------------------


def address(node: YNode, what: str, base: Path) -> Address:
    text = node.as_str(what)
    try:
        return Address.parse(text)
    except ValueError as exc:
        node.fail(f"invalid address in {what}: {exc}")


def path(*, must_exist: bool) -> Reader:
    def read(node: YNode, what: str, base: Path) -> Path:
        result = Path(node.as_str(what)).expanduser()
        if not result.is_absolute():
            result = base / result
        if must_exist and not result.is_file():
            node.fail(f"{what}: file not found: {result}")
        return result

    return read


def boolean(node: YNode, what: str, base: Path) -> bool:
    return node.as_bool(what)


def integer(minimum: int) -> Reader:
    return lambda node, what, base: node.as_int(what, minimum=minimum)


def number(*, positive: bool = True) -> Reader:
    return lambda node, what, base: node.as_number(what, positive=positive)


def choice(*choices: str) -> Reader:
    return lambda node, what, base: node.as_choice(what, choices)


def networks(node: YNode, what: str, base: Path) -> tuple[Network, ...]:
    return tuple(network(item, text, what) for item, text in node.as_str_list(what))


def hostname(node: YNode, what: str, base: Path) -> str:
    name = node.as_str(what)
    if not model.HOSTNAME.fullmatch(name):
        node.fail(f"invalid {what} {name!r}")
    return name


def ciphers(node: YNode, what: str, base: Path) -> str:
    text = node.as_str(what)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text)
    except ssl.SSLError:
        node.fail(f"{what} {text!r} selects no cipher OpenSSL knows")
    return text


def log_level(node: YNode, what: str, base: Path) -> str:
    level = node.as_str(what).lower()
    if level not in LOG_LEVELS:
        node.fail(
            f"unknown {what} {node.as_str(what)!r} (expected one of: {', '.join(LOG_LEVELS)})"
        )
    return level


def workers(node: YNode, what: str, base: Path) -> int:
    if isinstance(node.node, ScalarNode) and node.node.value == "auto":
        return parse_workers("auto")
    count = node.as_int(what, minimum=1)
    if count > 1024:
        node.fail(f"workers must be at most 1024, got {count}")
    return count


# -- cross-key checks ---------------------------------------------------------------------


def proxy_keys(section: Mapping, result: model.Listen | model.TLSListen) -> None:
    """``proxy_protocol`` and ``trusted_networks``: both or neither, since a header from
    anyone would let anyone claim any address."""
    what = section.what
    if result.trusted_networks:
        if not result.proxy_protocol:
            section.key_node("trusted_networks").fail(
                f"{what}.trusted_networks has no effect without {what}.proxy_protocol: true"
            )
    elif result.proxy_protocol:
        section.key_node("proxy_protocol").fail(
            f"{what}.proxy_protocol needs {what}.trusted_networks (the load balancers' "
            "addresses, e.g. ['10.0.0.0/8']): a PROXY header from anyone else is refused"
        )


def upstream_tls_keys(section: Mapping, result: model.Upstream) -> None:
    if result.tls == "none":
        for key in ("verify", "ca_file", "server_name"):
            if section.get(key) is not None:
                section.key_node(key).fail(
                    f"upstream.{key} has no effect without TLS to the upstream "
                    "(set upstream.tls to starttls or implicit)"
                )


def trace_sizes(section: Mapping, result: model.TraceConfig) -> None:
    if result.max_file_bytes > result.max_dir_bytes:
        key = "max_file_bytes" if "max_file_bytes" in section else "max_dir_bytes"
        section.key_node(key).fail("trace.max_file_bytes is larger than trace.max_dir_bytes")
