"""What the metrics' labels and histogram buckets may hold: every vocabulary, written once.

Label values are bounded: commands outside the known IMAP set become "other", SASL mechanisms
outside a known set become "other", and enumerated labels (status, direction, reason, side,
result) are validated with ``check_label``. No per-user or per-mailbox labels exist.

Pure data and small functions; no prometheus_client import.
"""

from __future__ import annotations

from imapproxy.wire.commands import KNOWN_COMMANDS, normalise_command_name

__all__ = [
    "COMMAND_BUCKETS",
    "COMMAND_STATUSES",
    "CONNECT_BUCKETS",
    "DIRECTIONS",
    "LIMIT_REASONS",
    "LISTENERS",
    "LOGIN_RESULTS",
    "MECHANISMS",
    "RELOAD_RESULTS",
    "RESOURCE_REASONS",
    "SESSION_BUCKETS",
    "SIDES",
    "TLS_RESULTS",
    "UPSTREAM_ERROR_REASONS",
    "check_label",
    "command_label",
    "mechanism_label",
]

LISTENERS = ("plain", "tls")
COMMAND_STATUSES = ("OK", "NO", "BAD", "none")
DIRECTIONS = ("client_to_upstream", "upstream_to_client")
LOGIN_RESULTS = ("ok", "failed", "blocked")
# SASL mechanisms seen from real clients; "LOGIN" also stands for the LOGIN command.
MECHANISMS = frozenset(
    {
        "LOGIN", "PLAIN", "XOAUTH2", "OAUTHBEARER", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1",
        "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "EXTERNAL", "ANONYMOUS",
        "GSSAPI", "NTLM",
    }
)  # fmt: skip
UPSTREAM_ERROR_REASONS = (
    "connect_refused", "connect_timeout", "tls", "closed", "protocol", "other",
)  # fmt: skip
SIDES = ("client", "upstream")
# Out of resources: the errno, lower case (imapproxy.server.capacity.RESOURCE_ERRNOS).
RESOURCE_REASONS = ("emfile", "enfile", "enomem", "enobufs")
TLS_RESULTS = ("ok", "failed")
RELOAD_RESULTS = ("ok", "failed")
# Abuse limits (server/limits.py, server/guard.py): what was refused or ended.
LIMIT_REASONS = (
    "sessions", "sessions_per_ip", "sessions_per_user", "login_failures_ip",
    "login_failures_user", "auth_timeout", "pipelined",
)  # fmt: skip

# Seconds to hours: sessions range from a quick poll to an all-day IDLE client.
SESSION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
                   28800.0, 86400.0)  # fmt: skip
# 0.5 ms (a cached NOOP on loopback) to 60 s (a huge SEARCH or APPEND); IDLE lands in +Inf.
COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)  # fmt: skip
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)  # fmt: skip


def command_label(name: str) -> str:
    """The `command` label value: the normalised name if it is a known IMAP command, else
    "other" (client-chosen names must not create new series)."""
    normalised = normalise_command_name(name)
    return normalised if normalised in KNOWN_COMMANDS else "other"


def mechanism_label(name: str) -> str:
    """The `mechanism` label value: a known SASL mechanism (upper case) or "other"."""
    upper = name.upper()
    return upper if upper in MECHANISMS else "other"


def check_label(value: str, allowed: tuple[str, ...], what: str) -> None:
    """ValueError unless ``value`` is one of the enumerated ``allowed`` values."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, not {value!r}")
