"""The PROXY protocol (haproxy's, versions 1 and 2), sans I/O: parsing and encoding headers.

A load balancer in front of the proxy opens each connection with one header saying who the
client is. ``ProxyHeaderReader`` takes the connection's first bytes in pieces of any size
(one at a time too), detects the version from the first bytes, and reports how many of the
bytes it was given belong to the header: the caller keeps the rest for the session (the
listener peeks and consumes exactly that many, so nothing past the header is ever read).

- v1: one text line ``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`` or ``PROXY UNKNOWN ...``,
  at most 107 bytes; addresses must match the family, ports are 0-65535 without signs.
- v2: the 12-byte signature, version/command, family/transport, a 16-bit length, the
  addresses, then TLVs. LOCAL (health checks), UNSPEC and AF_UNIX carry no client IP; TLVs
  are walked (an overrun is an error) but not interpreted; the length is capped.

Anything else (another protocol, a bad field, a header longer than allowed) raises
``ProxyHeaderError`` at the first byte that proves it, with a one-line reason.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = [
    "V1_MAX_LENGTH",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "Endpoint",
    "IPAddress",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderReader",
    "encode_v2",
    "parse_proxy_header",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the spec's worst case, "PROXY UNKNOWN" + two full IPv6 endpoints + CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature, version/command, family/transport, length
# haproxy's own TLVs (ALPN, authority, unique id, SSL details) stay well below this; the
# format allows 64 KiB, which a peer that has not been authenticated must not make us hold.
V2_MAX_LENGTH = 4096
_V2_ADDRESS_LENGTH = {0x11: 12, 0x21: 36, 0x31: 216}  # TCP over IPv4, IPv6, AF_UNIX


class ProxyHeaderError(ValueError):
    """Not a valid PROXY header; ``str()`` is a one-line reason for the log."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header. ``source``/``destination`` are None when it carries no IP
    endpoints (v2 LOCAL, UNSPEC or AF_UNIX; v1 UNKNOWN): the connection's own addresses
    then stand, as the spec says."""

    version: int
    source: Endpoint | None
    destination: Endpoint | None
    length: int  # bytes of the header on the wire


class ProxyHeaderReader:
    """Incremental parser for one connection's header."""

    __slots__ = ("_buf", "_need", "header")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 0  # v2: total header length once the fixed part is in; 0 before
        self.header: ProxyHeader | None = None

    def feed(self, data: bytes) -> int:
        """Take bytes; return how many of them belong to the header (all of them while it
        is incomplete). ``header`` is set once it is complete; what follows is not ours.
        Raises ProxyHeaderError as soon as the bytes cannot be a valid header."""
        if self.header is not None or not data:
            return 0
        before = len(self._buf)
        first = (self._buf[:1] or data[:1])[0:1]
        if first == b"P":
            taken = self._feed_v1(data)
        elif first == b"\r":
            taken = self._feed_v2(data)
        else:
            raise ProxyHeaderError(f"no PROXY header: the connection starts with {_show(data)}")
        assert len(self._buf) == before + taken
        return taken

    # --- version 1 ---------------------------------------------------------------------
    def _feed_v1(self, data: bytes) -> int:
        room = V1_MAX_LENGTH - len(self._buf)
        end = data.find(b"\n", 0, room)
        taken = len(data[:room]) if end < 0 else end + 1
        self._buf += data[:taken]
        seen = bytes(self._buf[: len(V1_PREFIX)])
        if not V1_PREFIX.startswith(seen):
            raise ProxyHeaderError(f"no PROXY header: the connection starts with {_show(seen)}")
        if end >= 0:
            self.header = _parse_v1(bytes(self._buf))
        elif len(self._buf) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 line without end in {V1_MAX_LENGTH} bytes")
        return taken

    # --- version 2 ---------------------------------------------------------------------
    def _feed_v2(self, data: bytes) -> int:
        taken = 0
        if len(self._buf) < _V2_FIXED:
            taken = min(len(data), _V2_FIXED - len(self._buf))
            self._buf += data[:taken]
            sig = bytes(self._buf[: len(V2_SIGNATURE)])
            if not V2_SIGNATURE.startswith(sig):
                raise ProxyHeaderError("no PROXY header: bad PROXY v2 signature")
            if len(self._buf) < _V2_FIXED:
                return taken
            self._need = _v2_total_length(bytes(self._buf))
        more = min(len(data) - taken, self._need - len(self._buf))
        self._buf += data[taken : taken + more]
        taken += more
        if len(self._buf) == self._need:
            self.header = _parse_v2(bytes(self._buf))
        return taken


def parse_proxy_header(data: bytes) -> tuple[ProxyHeader | None, bytes]:
    """One-shot form: (the header, or None while incomplete; the bytes after it)."""
    reader = ProxyHeaderReader()
    taken = reader.feed(data)
    return reader.header, data[taken:] if reader.header is not None else b""


def _parse_v1(line: bytes) -> ProxyHeader:
    if not line.endswith(b"\r\n"):
        raise ProxyHeaderError("PROXY v1 line does not end with CRLF")
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    fields = text.split(" ")
    family = fields[1] if len(fields) > 1 else ""
    if family == "UNKNOWN":  # the rest is to be ignored
        return ProxyHeader(1, None, None, len(line))
    if family not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1: unknown protocol {family[:10]!r}")
    if len(fields) != 6:
        raise ProxyHeaderError(f"PROXY v1 {family}: expected 4 fields, got {len(fields) - 2}")
    version = 4 if family == "TCP4" else 6
    src, dst = [_v1_address(f, version) for f in fields[2:4]]
    sport, dport = [_v1_port(f) for f in fields[4:6]]
    return ProxyHeader(1, (src, sport), (dst, dport), len(line))


def _v1_address(text: str, version: int) -> IPAddress:
    try:
        if "%" in text:  # a scope id means nothing to anyone past this host
            raise ValueError
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1: invalid address {text[:46]!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not an IPv{version} address")
    return address


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1: invalid port {text[:8]!r}")
    if len(text) > 1 and text[0] == "0":
        raise ProxyHeaderError(f"PROXY v1: port {text!r} has a leading zero")
    return int(text)


def _v2_total_length(fixed: bytes) -> int:
    version, command = fixed[12] >> 4, fixed[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2: unsupported version {version}")
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2: unknown command {command}")
    length = int.from_bytes(fixed[14:16], "big")
    if length > V2_MAX_LENGTH:
        raise ProxyHeaderError(f"PROXY v2: header of {length} bytes (at most {V2_MAX_LENGTH})")
    if command == 1:  # PROXY: the family must be one we know, its addresses must fit
        family = fixed[13]
        if family >> 4 > 3 or family & 0x0F > 2:
            raise ProxyHeaderError(f"PROXY v2: unknown address family/transport 0x{family:02x}")
        if family & 0x0F == 2:
            raise ProxyHeaderError("PROXY v2: a datagram (UDP) connection cannot carry IMAP")
        needed = _V2_ADDRESS_LENGTH.get(family, 0)
        if length < needed:
            raise ProxyHeaderError(f"PROXY v2: {length} bytes cannot hold the addresses")
    return _V2_FIXED + length


def _parse_v2(header: bytes) -> ProxyHeader:
    body = header[_V2_FIXED:]
    if header[12] & 0x0F == 0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(2, None, None, len(header))
    family = header[13]
    used = _V2_ADDRESS_LENGTH.get(family, len(body))
    _check_tlvs(body[used:])
    if family == 0x11:
        src4, dst4 = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        ports = int.from_bytes(body[8:10], "big"), int.from_bytes(body[10:12], "big")
        return ProxyHeader(2, (src4, ports[0]), (dst4, ports[1]), len(header))
    if family == 0x21:
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        ports = int.from_bytes(body[32:34], "big"), int.from_bytes(body[34:36], "big")
        return ProxyHeader(2, (src6, ports[0]), (dst6, ports[1]), len(header))
    return ProxyHeader(2, None, None, len(header))  # UNSPEC, AF_UNIX: no client IP


def _check_tlvs(tlvs: bytes) -> None:
    """Walk the TLVs (type, 16-bit length, value) without interpreting them."""
    pos = 0
    for _ in range(len(tlvs)):  # each TLV takes at least 3 bytes: bounded
        if pos == len(tlvs):
            return
        if len(tlvs) - pos < 3:
            raise ProxyHeaderError("PROXY v2: truncated TLV")
        pos += 3 + int.from_bytes(tlvs[pos + 1 : pos + 3], "big")
        if pos > len(tlvs):
            raise ProxyHeaderError("PROXY v2: a TLV runs past the header")


def encode_v2(source: Endpoint, destination: Endpoint) -> bytes:
    """A PROXY v2 header (command PROXY, TCP, no TLVs). Mixed families are sent as IPv6
    (IPv4-mapped), since one header has one family."""
    src, dst = source[0], destination[0]
    if src.version != dst.version:
        src, dst = _as_v6(src), _as_v6(dst)
    family, length = (0x11, 12) if src.version == 4 else (0x21, 36)
    return b"".join(
        (
            V2_SIGNATURE,
            bytes((0x21, family)),
            length.to_bytes(2, "big"),
            src.packed,
            dst.packed,
            source[1].to_bytes(2, "big"),
            destination[1].to_bytes(2, "big"),
        )
    )


def _as_v6(address: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


def _show(data: bytes | bytearray) -> str:
    return repr(bytes(data[:16]))
