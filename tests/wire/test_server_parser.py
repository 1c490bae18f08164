"""Server-to-client parser: greeting, responses, literals, over-long lines, memory."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from imapproxy.wire import (
    CLOSED,
    NEED_DATA,
    LiteralData,
    LiteralHeader,
    ProtocolError,
    Response,
    ResponseKind,
    ResponsePart,
    ServerParser,
)

U, T, C, X = (
    ResponseKind.UNTAGGED,
    ResponseKind.TAGGED,
    ResponseKind.CONTINUATION,
    ResponseKind.UNKNOWN,
)


def drain(parser: ServerParser) -> list[object]:
    events: list[object] = []
    while (ev := parser.next_event()) is not NEED_DATA and ev is not CLOSED:
        events.append(ev)
    return events


def parse(data: bytes, max_line: int = 64 * 1024) -> list[object]:
    parser = ServerParser(max_line)
    parser.receive_data(data)
    return drain(parser)


def raw_of(events: list[object]) -> bytes:
    return b"".join(e.data if isinstance(e, LiteralData) else e.raw for e in events)


@pytest.mark.parametrize(
    ("line", "kind", "tag", "word"),
    [
        (b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n", U, b"*", "OK"),
        (b"* PREAUTH [CAPABILITY IMAP4rev1] logged in as bob\r\n", U, b"*", "PREAUTH"),
        (b"* BYE Autologout; idle for too long\r\n", U, b"*", "BYE"),
        (b"a1 OK [READ-WRITE] SELECT completed\r\n", T, b"a1", "OK"),
        (b"a2 NO [TRYCREATE] No such mailbox\r\n", T, b"a2", "NO"),
        (b"a3 BAD Error in IMAP command\r\n", T, b"a3", "BAD"),
        (b"A]4 ok done\r\n", T, b"A]4", "OK"),
        (b"* 3 FETCH (FLAGS (\\Seen))\r\n", U, b"*", "FETCH"),
        (b"* 23 EXISTS\r\n", U, b"*", "EXISTS"),
        (b"* 0 RECENT\r\n", U, b"*", "RECENT"),
        (b"* 44 EXPUNGE\n", U, b"*", "EXPUNGE"),
        (b"* CAPABILITY IMAP4rev1 IDLE\r\n", U, b"*", "CAPABILITY"),
        (b'* LIST (\\HasNoChildren) "/" INBOX\r\n', U, b"*", "LIST"),
        (b"* SEARCH\r\n", U, b"*", "SEARCH"),
        (b'* ESEARCH (TAG "a1") UID COUNT 3\r\n', U, b"*", "ESEARCH"),
        (b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n", U, b"*", "STATUS"),
        (b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n", U, b"*", "OK"),
        (b"+ Ready for literal data\r\n", C, b"+", ""),
        (b"+ \r\n", C, b"+", ""),
        (b"+\r\n", C, b"+", ""),
        (b"+ dGVzdA==\r\n", C, b"+", ""),
    ],
)
def test_response_lines(line: bytes, kind: ResponseKind, tag: bytes, word: str) -> None:
    assert parse(line) == [Response(kind, tag, word, line, None)]


@pytest.mark.parametrize("line", [b"garbage\r\n", b"\r\n", b"* \r\n", b"*\r\n", b"a1 123\r\n"])
def test_unclassifiable_lines_are_forwarded_as_unknown(line: bytes) -> None:
    (ev,) = parse(line)
    assert ev.kind is X and ev.raw == line


def test_many_responses_in_one_read() -> None:
    lines = [
        b"* 1 EXISTS\r\n",
        b"* FLAGS (\\Seen \\Deleted)\r\n",
        b"+ go ahead\r\n",
        b"a1 OK done\r\n",
    ]
    events = parse(b"".join(lines))
    assert [e.raw for e in events] == lines


def test_fetch_literal_then_rest_of_line() -> None:
    body = b"From: a@b\r\n\r\nhello {5}\r\n* 9 EXISTS\r\n"  # payload looking like responses
    head = b"* 12 FETCH (UID 7 BODY[] {%d}\r\n" % len(body)
    data = head + body + b")\r\na1 OK done\r\n"
    events = parse(data)
    assert events == [
        Response(U, b"*", "FETCH", head, LiteralHeader(len(body), sync=True, binary=False)),
        LiteralData(body, True),
        ResponsePart(b")\r\n", None),
        Response(T, b"a1", "OK", b"a1 OK done\r\n", None),
    ]


def test_several_literals_in_one_fetch_response_incl_literal8() -> None:
    hdr, txt, binary = b"Subject: x\r\n\r\n", b"body text\r\n", b"\x00\x01\xff\xfe"
    head = b"* 1 FETCH (BODY[HEADER] {%d}\r\n" % len(hdr)
    part2 = b" BODY[TEXT] {%d}\r\n" % len(txt)
    part3 = b" BINARY[1] ~{%d}\r\n" % len(binary)
    data = head + hdr + part2 + txt + part3 + binary + b" UID 5)\r\n"
    events = parse(data)
    assert events == [
        Response(U, b"*", "FETCH", head, LiteralHeader(len(hdr), True, False)),
        LiteralData(hdr, True),
        ResponsePart(part2, LiteralHeader(len(txt), True, False)),
        LiteralData(txt, True),
        ResponsePart(part3, LiteralHeader(len(binary), True, True)),
        LiteralData(binary, True),
        ResponsePart(b" UID 5)\r\n", None),
    ]


def test_empty_literal_in_a_response() -> None:
    data = b'* LIST () "/" {0}\r\n\r\n'
    assert parse(data) == [
        Response(U, b"*", "LIST", b'* LIST () "/" {0}\r\n', LiteralHeader(0, True, False)),
        ResponsePart(b"\r\n", None),
    ]


def test_literal_split_over_reads() -> None:
    body = bytes(range(200))
    data = b"* 1 FETCH (BODY[] {200}\r\n" + body + b")\r\n"
    parser = ServerParser()
    events = []
    for i in range(0, len(data), 7):
        parser.receive_data(data[i : i + 7])
        events += drain(parser)
    assert raw_of(events) == data
    datas = [e for e in events if isinstance(e, LiteralData)]
    assert b"".join(e.data for e in datas) == body
    assert [e.last for e in datas] == [False] * (len(datas) - 1) + [True]


def test_one_megabyte_search_line_comes_out_in_pieces() -> None:
    max_line = 64 * 1024
    line = b"* SEARCH" + b"".join(b" %d" % i for i in range(1, 160_000)) + b"\r\n"
    assert len(line) > 1_000_000
    parser = ServerParser(max_line)
    chunk = 64 * 1024
    events = []
    for i in range(0, len(line), chunk):
        parser.receive_data(line[i : i + chunk])
        assert parser.buffered <= max_line + chunk
        events += drain(parser)
        assert parser.buffered <= max_line + chunk
    assert raw_of(events) == line
    first, rest = events[0], events[1:]
    assert isinstance(first, Response)
    assert (first.kind, first.word, first.partial) == (U, "SEARCH", True)
    assert all(isinstance(e, ResponsePart) for e in rest)
    assert [e.partial for e in rest] == [True] * (len(rest) - 1) + [False]
    assert all(len(e.raw) <= max_line + chunk for e in events)
    # The next response is parsed as a response again.
    parser.receive_data(b"a1 OK done\r\n")
    assert drain(parser) == [Response(T, b"a1", "OK", b"a1 OK done\r\n", None)]


def test_long_line_ending_in_a_literal_keeps_the_announcement() -> None:
    max_line = 256
    head = b"* 1 FETCH (BODY[HEADER.FIELDS (" + b"X-LONG " * 200 + b")] {5}\r\n"
    data = head + b"hello)\r\n"
    parser = ServerParser(max_line)
    events = []
    for i in range(0, len(data), 100):
        parser.receive_data(data[i : i + 100])
        events += drain(parser)
    assert raw_of(events) == data
    lines = [e for e in events if not isinstance(e, LiteralData)]
    assert events[0].partial
    ends = [e for e in lines if not e.partial]
    assert ends[0].literal == LiteralHeader(5, True, False)
    assert LiteralData(b"hello", True) in events
    assert lines[-1] == ResponsePart(b")\r\n", None)


def test_twenty_megabyte_fetch_literal_bounded_memory_and_zero_copy() -> None:
    max_line = 64 * 1024
    block = bytes(range(256)) * 256  # one 64 KiB read, reused for every read
    count = 320  # 20 MiB
    size = len(block) * count
    parser = ServerParser(max_line)
    parser.receive_data(b"* 1 FETCH (BODY[] {%d}\r\n" % size)
    (head,) = drain(parser)
    assert head.literal == LiteralHeader(size, True, False)
    seen = 0
    tracemalloc.start()
    try:
        for i in range(count):
            parser.receive_data(block)
            assert parser.buffered <= max_line + len(block)
            (ev,) = drain(parser)
            assert ev.data is block  # zero copy: the very object that was read
            assert ev.last == (i == count - 1)
            seen += len(ev.data)
            assert parser.buffered == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == size
    assert peak < 1 << 20  # nothing near the literal's size was ever allocated
    parser.receive_data(b")\r\na1 OK done\r\n")
    assert [e.raw for e in drain(parser)] == [b")\r\n", b"a1 OK done\r\n"]


def test_misaligned_literal_reads_are_bounded_too() -> None:
    max_line = 1024
    body = bytes(range(256)) * 4000  # ~1 MB
    data = b"* 1 FETCH (BODY[] {%d}\r\n" % len(body) + body + b")\r\n* 2 EXISTS\r\n"
    parser = ServerParser(max_line)
    events = []
    step = 10_007
    for i in range(0, len(data), step):
        parser.receive_data(data[i : i + step])
        assert parser.buffered <= max_line + step
        events += drain(parser)
    assert raw_of(events) == data
    assert events[-1] == Response(U, b"*", "EXISTS", b"* 2 EXISTS\r\n", None)


# --- end of stream and errors ----------------------------------------------------------------
def test_eof_between_responses_is_closed() -> None:
    parser = ServerParser()
    parser.receive_data(b"* BYE bye\r\n")
    drain(parser)
    parser.receive_data(b"")
    assert parser.next_event() is CLOSED


@pytest.mark.parametrize(
    "data", [b"* OK partial", b"* 1 FETCH (BODY[] {10}\r\n12345", b"* 1 FETCH (BODY[] {1}\r\nx"]
)
def test_eof_inside_a_response_is_fatal(data: bytes) -> None:
    parser = ServerParser()
    parser.receive_data(data)
    drain(parser)
    parser.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        drain(parser)
    assert info.value.fatal
    assert parser.next_event() is CLOSED


def test_literal_size_out_of_range_is_fatal() -> None:
    parser = ServerParser()
    parser.receive_data(b"* 1 FETCH (BODY[] {99999999999999999999}\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.fatal
    assert parser.next_event() is CLOSED


def test_start_tls_refuses_bytes_after_the_answer() -> None:
    parser = ServerParser()
    parser.receive_data(b"a OK begin TLS\r\n* OK injected\r\n")
    assert parser.next_event().tag == b"a"
    with pytest.raises(ProtocolError) as info:
        parser.start_tls()
    assert info.value.fatal

    clean = ServerParser()
    clean.receive_data(b"a OK begin TLS\r\n")
    drain(clean)
    clean.start_tls()
    clean.receive_data(b"* CAPABILITY IMAP4rev1\r\n")
    assert [e.word for e in drain(clean)] == ["CAPABILITY"]


def test_one_megabyte_of_random_bytes() -> None:
    blob = random.Random(7).randbytes(1 << 20)
    parser = ServerParser()
    seen = 0
    try:
        for i in range(0, len(blob), 64 * 1024):
            parser.receive_data(blob[i : i + 64 * 1024])
            seen += len(raw_of(drain(parser)))
            assert parser.buffered <= 2 * 64 * 1024
        parser.receive_data(b"")
        seen += len(raw_of(drain(parser)))
    except ProtocolError as exc:
        assert exc.fatal  # e.g. ends inside a line or a literal
    else:
        assert seen == len(blob)
