"""The PROXY protocol parser: v1 and v2 headers, every split, malformed and truncated input."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapproxy.wire.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
    encode_v2,
    parse_proxy_header,
)

PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IP4 = ipaddress.IPv4Address
IP6 = ipaddress.IPv6Address
AFTER = b"a1 CAPABILITY\r\n"  # what the client sends once the header is through


def v2(command: int, family: int, body: bytes, version: int = 2) -> bytes:
    return (
        V2_SIGNATURE + bytes((version << 4 | command, family)) + struct.pack("!H", len(body)) + body
    )


def v2_inet(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    body = IP4(src).packed + IP4(dst).packed + struct.pack("!HH", sport, dport)
    return v2(1, 0x11, body + tlvs)


def v2_inet6(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    body = IP6(src).packed + IP6(dst).packed + struct.pack("!HH", sport, dport)
    return v2(1, 0x21, body + tlvs)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("!H", len(value)) + value


VALID: list[tuple[bytes, ProxyHeader]] = [
    (
        b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 143\r\n",
        ProxyHeader(1, (IP4("192.0.2.7"), 40001), (IP4("127.0.0.1"), 143), 42),
    ),
    (
        b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n",
        ProxyHeader(1, (IP6("2001:db8::7"), 65535), (IP6("::1"), 0), 36),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, None, None, 15)),
    (b"PROXY UNKNOWN ffff:: 1.2.3.4 whatever\r\n", ProxyHeader(1, None, None, 39)),
    (
        v2_inet("203.0.113.9", "10.0.0.1", 51000, 143),
        ProxyHeader(2, (IP4("203.0.113.9"), 51000), (IP4("10.0.0.1"), 143), 28),
    ),
    (
        v2_inet6("2001:db8::1", "2001:db8::2", 1, 993),
        ProxyHeader(2, (IP6("2001:db8::1"), 1), (IP6("2001:db8::2"), 993), 52),
    ),
    # TLVs (ALPN, authority, NOOP padding, an unknown type) are skipped
    (
        v2_inet(
            "198.51.100.1",
            "127.0.0.1",
            2,
            3,
            tlv(0x01, b"imap") + tlv(0x02, b"mail.example") + tlv(0x04, b"\0" * 5) + tlv(0xEE, b""),
        ),
        ProxyHeader(2, (IP4("198.51.100.1"), 2), (IP4("127.0.0.1"), 3), 28 + 7 + 15 + 8 + 3),
    ),
    # LOCAL (a health check): no client, whatever the family says
    (v2(0, 0x11, b"\0" * 12), ProxyHeader(2, None, None, 28)),
    (v2(0, 0x00, b""), ProxyHeader(2, None, None, 16)),
    (v2(1, 0x00, b"ignored"), ProxyHeader(2, None, None, 23)),  # UNSPEC
    (v2(1, 0x31, b"/tmp/sock".ljust(216, b"\0")), ProxyHeader(2, None, None, 232)),  # AF_UNIX
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid_headers_parse_and_leave_the_rest(raw: bytes, expected: ProxyHeader) -> None:
    assert expected.length == len(raw)
    assert parse_proxy_header(raw + AFTER) == (expected, AFTER)
    assert parse_proxy_header(raw) == (expected, b"")


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_one_byte_at_a_time_and_every_split(raw: bytes, expected: ProxyHeader) -> None:
    data = raw + AFTER
    reader = ProxyHeaderReader()
    taken = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert taken == [1] * len(raw) + [0] * len(AFTER)
    assert reader.header == expected
    for cut in range(1, len(data)):
        reader = ProxyHeaderReader()
        first = reader.feed(data[:cut])
        assert (reader.header is None) == (cut < len(raw))
        second = reader.feed(data[cut:])
        assert first + second == len(raw), cut
        assert reader.header == expected


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_every_truncation_is_incomplete_not_an_error(raw: bytes, expected: ProxyHeader) -> None:
    for cut in range(len(raw)):
        assert parse_proxy_header(raw[:cut]) == (None, b"")


MALFORMED: list[tuple[bytes, str]] = [
    (b"a1 LOGIN user pass\r\n", "no PROXY header"),
    (b"PROXX TCP4", "no PROXY header"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "signature"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 4 fields"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "expected 4 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "invalid port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 0143 2\r\n", "leading zero"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "not ASCII"),
    (b"PROXY UNKNOWN " + b"x" * 200, "without end"),
    (v2(1, 0x11, b"\0" * 12, version=1), "unsupported version"),
    (v2(2, 0x11, b"\0" * 12), "unknown command"),
    (v2(1, 0x41, b"\0" * 12), "unknown address family"),
    (v2(1, 0x13, b"\0" * 12), "unknown address family"),
    (v2(1, 0x12, b"\0" * 12), "datagram"),
    (v2(1, 0x11, b"\0" * 11), "cannot hold the addresses"),
    (v2(1, 0x21, b"\0" * 35), "cannot hold the addresses"),
    (v2(1, 0x11, b"\0" * (V2_MAX_LENGTH + 1)), "at most"),
    (v2(0, 0x00, b"\0" * 65535), "at most"),
    (v2_inet("1.2.3.4", "5.6.7.8", 1, 2, b"\x01\x00"), "truncated TLV"),
    (v2_inet("1.2.3.4", "5.6.7.8", 1, 2, tlv(1, b"ab")[:-1]), "runs past"),
    (v2_inet("1.2.3.4", "5.6.7.8", 1, 2, b"\x01\xff\xff"), "runs past"),
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED)
def test_malformed_headers_are_errors_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse_proxy_header(raw + AFTER)
    # fed one byte at a time, the error comes at the latest with the header's last byte
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyHeaderError, match=reason):
        for i in range(len(raw)):
            reader.feed(raw[i : i + 1])


def test_non_proxy_traffic_fails_on_its_first_byte() -> None:
    for first in (b"a", b"*", b"\x16", b"G", b" "):
        with pytest.raises(ProxyHeaderError):
            ProxyHeaderReader().feed(first)
    reader = ProxyHeaderReader()
    reader.feed(b"PRO")
    with pytest.raises(ProxyHeaderError):
        reader.feed(b"Z")


def test_v1_line_cap_is_107_bytes() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(longest) == V1_MAX_LENGTH
    assert parse_proxy_header(longest)[0] == ProxyHeader(1, None, None, V1_MAX_LENGTH)
    with pytest.raises(ProxyHeaderError, match="without end"):
        parse_proxy_header(longest[:-2] + b"x\r\n")
    reader = ProxyHeaderReader()
    assert reader.feed(longest[:-2] + b"x") == V1_MAX_LENGTH - 1  # one more byte decides
    with pytest.raises(ProxyHeaderError):
        reader.feed(b"\r\n")


def test_header_complete_means_nothing_more_is_taken() -> None:
    reader = ProxyHeaderReader()
    raw = v2_inet("1.2.3.4", "5.6.7.8", 1, 2)
    assert reader.feed(raw + b"x") == len(raw)
    assert reader.feed(b"more") == 0
    assert reader.feed(b"") == 0


def test_encode_v2_round_trips() -> None:
    src4, dst4 = (IP4("192.0.2.1"), 40000), (IP4("127.0.0.1"), 143)
    assert encode_v2(src4, dst4) == v2_inet("192.0.2.1", "127.0.0.1", 40000, 143)
    header, rest = parse_proxy_header(encode_v2(src4, dst4) + b"x")
    assert header == ProxyHeader(2, src4, dst4, 28) and rest == b"x"
    src6, dst6 = (IP6("2001:db8::5"), 1), (IP6("::1"), 2)
    assert parse_proxy_header(encode_v2(src6, dst6))[0] == ProxyHeader(2, src6, dst6, 52)
    mixed = parse_proxy_header(encode_v2(src4, dst6))[0]
    assert mixed is not None and mixed.source == (IP6("::ffff:192.0.2.1"), 40000)


# --- properties ---------------------------------------------------------------------------
endpoints4 = st.tuples(st.ip_addresses(v=4), st.integers(0, 65535))
endpoints6 = st.tuples(st.ip_addresses(v=6), st.integers(0, 65535))
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40))).map(
    lambda items: b"".join(tlv(k, v) for k, v in items)
)


@st.composite
def valid_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    pair = draw(st.one_of(st.tuples(endpoints4, endpoints4), st.tuples(endpoints6, endpoints6)))
    (src, sport), (dst, dport) = pair
    if draw(st.booleans()):
        family = "TCP4" if src.version == 4 else "TCP6"
        raw = f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()
        return raw, ProxyHeader(1, (src, sport), (dst, dport), len(raw))
    extra = draw(tlvs)
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport) + extra
    raw = v2(1, 0x11 if src.version == 4 else 0x21, body)
    return raw, ProxyHeader(2, (src, sport), (dst, dport), len(raw))


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=12)))
    edges = [0, *(p for p in points if p < len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@PROPS
@given(st.data())
def test_any_valid_header_any_split_same_result(data: st.DataObject) -> None:
    raw, expected = data.draw(valid_headers())
    after = data.draw(st.binary(max_size=30))
    reader = ProxyHeaderReader()
    taken = sum(reader.feed(chunk) for chunk in data.draw(cuts(raw + after)))
    assert reader.header == expected
    assert taken == len(raw)


@PROPS
@given(st.binary(max_size=300), st.data())
def test_arbitrary_bytes_only_raise_header_errors(blob: bytes, data: st.DataObject) -> None:
    prefix = data.draw(st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", V2_SIGNATURE]))
    whole = prefix + blob
    reader = ProxyHeaderReader()
    taken = 0
    try:
        for chunk in data.draw(cuts(whole)):
            taken += reader.feed(chunk)
    except ProxyHeaderError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert taken <= len(whole)
    if reader.header is None:
        assert taken == len(whole)  # still waiting: it took everything
    else:
        assert reader.header.length == taken


@PROPS
@given(st.data())
def test_a_corrupted_byte_is_caught_or_still_a_valid_header(data: st.DataObject) -> None:
    raw, _ = data.draw(valid_headers())
    i = data.draw(st.integers(0, len(raw) - 1))
    corrupted = raw[:i] + bytes((raw[i] ^ data.draw(st.integers(1, 255)),)) + raw[i + 1 :]
    try:
        header, _rest = parse_proxy_header(corrupted)
    except ProxyHeaderError:
        return
    if header is not None:  # e.g. another address or port: still well-formed
        assert header.length <= len(corrupted)
