"""Who is logging in: the user name from LOGIN arguments or SASL data, nothing else.

Credentials pass through these functions and are dropped here; only the user name leaves.
"""

from __future__ import annotations

import base64
import binascii

from imapproxy.wire.tokens import ParsedCommand, TokenError, parse_command

# Mechanisms whose first client response names the user.
SASL_MECHANISMS = frozenset({"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"})


def login_user(raw_command: bytes) -> str | None:
    """The user of a complete ``LOGIN user password`` command (literals inline)."""
    try:
        return login_user_of(parse_command(raw_command))
    except TokenError:
        return None


def login_user_of(parsed: ParsedCommand | None) -> str | None:
    """The user of a parsed LOGIN command: its first argument when an astring."""
    if parsed is None or not parsed.args:
        return None
    value = parsed.args[0].astring()
    return None if value is None else value.decode("utf-8", "replace")


def sasl_user(mechanism: str, response: bytes) -> str | None:
    """The user named by the first SASL client response (base64 text, CRLF optional)."""
    try:
        data = base64.b64decode(response.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if mechanism == "PLAIN":  # authzid NUL authcid NUL password
        parts = data.split(b"\x00")
        name = parts[1] if len(parts) == 3 else b""
    elif mechanism == "LOGIN":  # the first response is the user name itself
        name = data
    elif mechanism == "XOAUTH2":  # user=NAME ^A auth=Bearer TOKEN ^A ^A
        name = _field(data.split(b"\x01")[0], b"user=")
    elif mechanism == "OAUTHBEARER":  # n,a=NAME, ^A host=... ^A auth=Bearer ... (RFC 7628)
        gs2 = data.split(b"\x01")[0].split(b",")
        name = next((_field(p, b"a=") for p in gs2 if p.startswith(b"a=")), b"")
    else:
        return None
    return name.decode("utf-8", "replace") if name else None


def _field(part: bytes, prefix: bytes) -> bytes:
    return part[len(prefix) :] if part.startswith(prefix) else b""
