"""Reading the YAML config file into ``Config``, by the schema in ``imapproxy.config.schema``.

``load_config`` reads with PyYAML's SafeLoader but keeps node positions, so every problem is
a ``ConfigError`` whose ``str()`` is one line, ``FILE:LINE:COL: reason`` (``FILE: reason``
when the file itself cannot be read). Unknown keys, wrong types and values that would have
no effect are errors: nothing in the file is silently ignored.

Relative paths (``rules_file``, certificates, ``log.file``, ``control.socket``) resolve
against the directory of the config file, so a config works from any working directory.
A section set to null (``metrics:`` with everything below commented out) means its defaults.

The dataclasses live in ``imapproxy.config.model``; they are re-exported here, where the
rest of the proxy has always imported them from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from imapproxy.config.checks import LOG_LEVELS, TLS_VERSIONS
from imapproxy.config.model import (
    Address,
    ClientTLS,
    Config,
    ControlConfig,
    Limits,
    Listen,
    LogConfig,
    LoginFailures,
    MetricsConfig,
    TLSListen,
    TraceConfig,
    Upstream,
    parse_workers,
)
from imapproxy.config.rulefile import parse_rules, parse_rules_document
from imapproxy.config.schema import TOP, read_section
from imapproxy.config.yamlsource import ConfigError, Mapping, load_yaml
from imapproxy.policy.model import Rule

__all__ = [
    "LOG_LEVELS",
    "TLS_VERSIONS",
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
    "parse_workers",
]


def load_config(path: Path) -> Config:
    """Read and validate a config file; raises ConfigError."""
    root = load_yaml(path, str(path))
    if root is None or root.is_null:
        return Config(source=path)  # an empty file is all defaults
    base = path.parent
    config: Config = read_section(TOP, root, base)
    top = root.as_mapping("top level")
    return replace(config, source=path, rules=tuple(_rules(top, base)))


def check_config(path: Path) -> str | None:
    """None when the file is valid, else its one-line error (for ``imapproxy check``)."""
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return None


def _rules(top: Mapping, base: Path) -> list[Rule]:
    """``rules`` (inline) or ``rules_file``; the schema declares both for the reference."""
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
