"""Framer and literal announcements: line ends, caps, pieces, literal payload, zero copy."""

from __future__ import annotations

import pytest

from imapproxy.wire import LiteralHeader, ProtocolError
from imapproxy.wire.framing import Framer, LineTooLong, literal_at_end

MAX_NUMBER64 = 2**63 - 1  # RFC 9051: literal sizes are number64


# --- literal_at_end --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a APPEND INBOX {5}\r\n", LiteralHeader(5, sync=True, binary=False)),
        (b"a APPEND INBOX {5+}\r\n", LiteralHeader(5, sync=False, binary=False)),
        (b"a APPEND INBOX ~{5}\r\n", LiteralHeader(5, sync=True, binary=True)),
        (b"a APPEND INBOX ~{5+}\r\n", LiteralHeader(5, sync=False, binary=True)),
        (b"a LOGIN {0}\r\n", LiteralHeader(0, sync=True, binary=False)),
        (b"a LOGIN {0+}\r\n", LiteralHeader(0, sync=False, binary=False)),
        (b"a LOGIN {007}\r\n", LiteralHeader(7, sync=True, binary=False)),  # 1*DIGIT
        (b"a LOGIN {12}\n", LiteralHeader(12, sync=True, binary=False)),  # bare LF
        (b"* 1 FETCH (BODY[] {4294967295}\r\n", LiteralHeader(2**32 - 1, True, False)),
        (b"x {%d}\r\n" % MAX_NUMBER64, LiteralHeader(MAX_NUMBER64, True, False)),
    ],
)
def test_literal_at_end_recognises_announcements(line: bytes, expected: LiteralHeader) -> None:
    assert literal_at_end(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"a NOOP\r\n",
        b"a X {5} \r\n",  # not at the end
        b"a X {5}x\r\n",
        b"a X {}\r\n",
        b"a X {+}\r\n",
        b"a X {-1}\r\n",
        b"a X {5++}\r\n",
        b"a X {5}",  # no line end
        b"a X {5}\r",
        b"a X {5}\r\r\n",
        b"a X {5 }\r\n",
        b"a X {0x5}\r\n",
        b"a X ~~{5}x\r\n",
        b"}\r\n",
        b"",
    ],
)
def test_literal_at_end_rejects_non_announcements(line: bytes) -> None:
    assert literal_at_end(line) is None


def test_literal_at_end_finds_announcement_after_a_very_long_line() -> None:
    line = b"a SEARCH " + b"x" * 1_000_000 + b" {17+}\r\n"
    assert literal_at_end(line) == LiteralHeader(17, sync=False, binary=False)


@pytest.mark.parametrize("size", [MAX_NUMBER64 + 1, 10**20 - 1])
def test_literal_size_beyond_number64_is_fatal(size: int) -> None:
    with pytest.raises(ProtocolError) as info:
        literal_at_end(b"a APPEND x {%d}\r\n" % size)
    assert info.value.fatal


# --- lines -------------------------------------------------------------------------------
def lines_of(framer: Framer) -> list[tuple[bytes, bool]]:
    out = []
    while (got := framer.next_line()) is not None:
        out.append(got)
    return out


def test_lines_are_returned_whole_with_their_line_end() -> None:
    framer = Framer(1024, split_long_lines=False)
    data = b"a1 NOOP\r\nb2 LOGOUT\nc3 X"
    framer.receive_data(data)
    assert lines_of(framer) == [(b"a1 NOOP\r\n", True), (b"b2 LOGOUT\n", True)]
    assert framer.buffered == len(b"c3 X")
    framer.receive_data(b"\r\n")
    assert lines_of(framer) == [(b"c3 X\r\n", True)]
    assert framer.buffered == 0


def test_line_drip_fed_one_byte_at_a_time() -> None:
    data = b"a1 LOGIN user pass\r\nb2 NOOP\r\n"
    framer = Framer(1024, split_long_lines=False)
    got = []
    for i in range(len(data)):
        framer.receive_data(data[i : i + 1])
        got += lines_of(framer)
    assert got == [(b"a1 LOGIN user pass\r\n", True), (b"b2 NOOP\r\n", True)]


def test_many_lines_across_reads_survive_buffer_compaction() -> None:
    # Every read ends mid-line, so the framer works on a growing buffer far past 64 KiB.
    lines = [b"t%d FETCH %d (FLAGS)\r\n" % (i, i) for i in range(20_000)]
    data = b"".join(lines)
    framer = Framer(1024, split_long_lines=False)
    got = []
    step = 70_001
    for start in range(0, len(data), step):
        framer.receive_data(data[start : start + step])
        got += [line for line, _ in lines_of(framer)]
    assert got == lines
    assert framer.buffered == 0


def test_receive_data_copies_a_bytearray_the_caller_may_reuse() -> None:
    framer = Framer(1024, split_long_lines=False)
    buf = bytearray(b"a1 NOOP\r\nb2 NO")
    framer.receive_data(buf)
    buf[:] = b"XXXXXXXXXXXXXX"
    more = bytearray(b"OP\r\n")
    framer.receive_data(more)
    more[:] = b"YYYY"
    assert lines_of(framer) == [(b"a1 NOOP\r\n", True), (b"b2 NOOP\r\n", True)]


@pytest.mark.parametrize("max_line", [64, 1000])
def test_client_line_cap_is_inclusive_and_fatal_past_it(max_line: int) -> None:
    exact = b"a " + b"x" * (max_line - 4) + b"\r\n"
    assert len(exact) == max_line
    framer = Framer(max_line, split_long_lines=False)
    framer.receive_data(exact)
    assert framer.next_line() == (exact, True)

    framer = Framer(max_line, split_long_lines=False)
    framer.receive_data(b"a " + b"x" * (max_line - 3) + b"\r\n")
    with pytest.raises(LineTooLong) as info:
        framer.next_line()
    assert info.value.fatal


def test_client_line_cap_trips_before_the_line_end_arrives() -> None:
    framer = Framer(100, split_long_lines=False)
    framer.receive_data(b"x" * 100)
    assert framer.next_line() is None  # could still end exactly at the cap
    framer.receive_data(b"x")
    with pytest.raises(LineTooLong):
        framer.next_line()


def test_server_long_line_comes_in_pieces_that_keep_the_announcement_whole() -> None:
    max_line = 100
    line = b"* 1 FETCH (BODY[HEADER.FIELDS (" + b"A " * 300 + b")] ~{12345678+}\r\n"
    framer = Framer(max_line, split_long_lines=True)
    pieces = []
    for i in range(0, len(line), 37):
        framer.receive_data(line[i : i + 37])
        pieces += lines_of(framer)
        assert framer.buffered <= max_line + 37
    assert b"".join(p for p, _ in pieces) == line
    assert [c for _, c in pieces] == [False] * (len(pieces) - 1) + [True]
    assert len(pieces) > 2
    assert all(len(p) <= max_line + 37 for p, _ in pieces)
    # The last piece alone still tells the literal.
    assert literal_at_end(pieces[-1][0]) == LiteralHeader(12345678, sync=False, binary=True)


# --- literal payload ----------------------------------------------------------------------
def test_literal_chunks_are_slices_of_what_arrived() -> None:
    framer = Framer(1024, split_long_lines=False)
    framer.receive_data(b"a APPEND x {10}\r\n0123")
    assert framer.next_line() == (b"a APPEND x {10}\r\n", True)
    framer.start_literal(10)
    assert framer.next_literal_chunk() == b"0123"
    assert framer.literal_left == 6
    assert framer.next_literal_chunk() is None
    framer.receive_data(b"456789 rest\r\n")
    assert framer.next_literal_chunk() == b"456789"
    assert framer.literal_left == 0
    assert framer.next_line() == (b" rest\r\n", True)


def test_whole_read_of_payload_is_handed_out_without_copy() -> None:
    framer = Framer(1024, split_long_lines=True)
    framer.receive_data(b"* 1 FETCH (BODY[] {100000}\r\n")
    framer.next_line()
    framer.start_literal(100_000)
    block = bytes(range(256)) * 200  # 51200 bytes
    framer.receive_data(block)
    assert framer.next_literal_chunk() is block
    tail = block[: 100_000 - len(block)] + b")\r\n"
    framer.receive_data(tail)
    chunk = framer.next_literal_chunk()
    assert chunk == tail[:-3] and chunk is not tail  # part of a read: a slice
    assert framer.literal_left == 0
    assert framer.next_line() == (b")\r\n", True)


def test_take_rest_hands_out_everything_unconsumed() -> None:
    framer = Framer(1024, split_long_lines=False)
    framer.receive_data(b"a STARTTLS\r\n\x16\x03\x01garbage")
    framer.next_line()
    assert framer.take_rest() == b"\x16\x03\x01garbage"
    assert framer.buffered == 0
    assert framer.next_line() is None


def test_eof_is_recorded_by_an_empty_read() -> None:
    framer = Framer(1024, split_long_lines=False)
    framer.receive_data(b"a NOOP")
    assert not framer.eof
    framer.receive_data(b"")
    assert framer.eof
    assert framer.buffered == len(b"a NOOP")
