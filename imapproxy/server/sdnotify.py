"""The sd_notify protocol (systemd's `Type=notify` readiness and reload signalling), no deps.

systemd puts the address of a datagram socket in `$NOTIFY_SOCKET` (a path, or `@name` for an
abstract socket); the service sends newline-separated `KEY=VALUE` assignments to it. Outside
systemd the variable is unset and every call is a cheap no-op returning False, so the proxy can
call these unconditionally.

Only the main process may notify (the unit's default `NotifyAccess=main`), so call these from
the process systemd started, not from a forked child.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "ready", "reloading", "status", "stopping"]

# systemd reads the socket at once; the timeout only bounds a pathological full queue.
_SEND_TIMEOUT_S = 2.0


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # e.g. "vsock:CID:PORT" (systemd >= 254, VMs): not supported here


def notify(message: str) -> bool:
    """Send one notification datagram; True if it was sent. Never raises for delivery problems
    (a service must not die because its supervisor went away); the caller may log False."""
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    address = _address(raw)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT_S)
            sock.connect(address)
            data = message.encode()
            return sock.send(data) == len(data)
    except OSError:
        return False


def ready() -> bool:
    """Listeners are bound and the service accepts connections (also: reload finished)."""
    return notify("READY=1")


def reloading() -> bool:
    """A configuration reload started; send `ready()` when it is done. systemd >= 253 wants
    the CLOCK_MONOTONIC time of the request to tell this reload from an earlier one; older
    versions ignore the extra field."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    """Shutdown started (listeners closing, sessions draining)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """A one-line status shown by `systemctl status`."""
    return notify("STATUS=" + " ".join(text.splitlines()))
