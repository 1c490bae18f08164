"""Client-to-server parser: commands, literals, the modes that wait for the server."""

from __future__ import annotations

import random

import pytest

from imapproxy.wire import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    ClientParser,
    Command,
    CommandPart,
    EmptyLine,
    IdleDone,
    LiteralData,
    LiteralHeader,
    ProtocolError,
    SaslResponse,
)

Sentinel = object


def drain(parser: ClientParser) -> tuple[list[object], object]:
    """Events up to the next sentinel (NEED_DATA, PAUSED or CLOSED)."""
    events: list[object] = []
    while True:
        ev = parser.next_event()
        if ev is NEED_DATA or ev is PAUSED or ev is CLOSED:
            return events, ev
        events.append(ev)


def feed(parser: ClientParser, data: bytes) -> tuple[list[object], object]:
    parser.receive_data(data)
    return drain(parser)


def payload_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, LiteralData))


def sync(size: int) -> LiteralHeader:
    return LiteralHeader(size, sync=True, binary=False)


def nonsync(size: int) -> LiteralHeader:
    return LiteralHeader(size, sync=False, binary=False)


# --- plain commands ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        b"a001 NOOP\r\n",
        b"a002 login bob pass\r\n",
        b'a003 LOGIN "b\\"ob" "pa\\\\ss"\r\n',  # quoted with \" and \\
        b'a004 SEARCH SUBJECT "{5}" ALL\r\n',  # braces inside a quoted string
        b"a005 FETCH 1:*,3,5:7 (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>)\r\n",
        b"a006 STORE 2:4 +FLAGS.SILENT (\\Seen \\Deleted)\r\n",
        b'a007 LIST (SUBSCRIBED) "" (INBOX "Sent Items") RETURN (CHILDREN)\r\n',
        b"a008 FETCH * BINARY.PEEK[1.2]<0.2048>\r\n",
        b"a]9 X-VENDOR.CMD_1 arg\r\n",  # "]" is an ASTRING-CHAR; names may have . _ -
        b"A010 CAPABILITY\n",  # bare LF
        b"a011 ID NIL\r\n",
    ],
)
def test_plain_command_line(line: bytes) -> None:
    parser = ClientParser()
    events, end = feed(parser, line)
    tag, name = line.split(b" ")[0], line.split(b" ")[1].rstrip(b"\r\n")
    assert events == [Command(tag, name.decode().upper(), line, None)]
    assert end is NEED_DATA
    assert not parser.paused and parser.waiting_tag is None


@pytest.mark.parametrize(
    ("line", "name"),
    [
        (b"a UID FETCH 1:* (FLAGS)\r\n", "UID FETCH"),
        (b"a uid store 1 +FLAGS (\\Seen)\r\n", "UID STORE"),
        (b"a Uid Expunge 1:5\r\n", "UID EXPUNGE"),
        (b"a UID MOVE 1 Trash\r\n", "UID MOVE"),
    ],
)
def test_uid_commands_are_named_with_their_subcommand(line: bytes, name: str) -> None:
    events, _ = feed(ClientParser(), line)
    assert events == [Command(b"a", name, line, None)]


def test_pipelined_commands_in_one_read() -> None:
    lines = [b"a1 NOOP\r\n", b"a2 SELECT INBOX\r\n", b"a3 FETCH 1 (UID)\r\n", b"a4 LOGOUT\r\n"]
    events, end = feed(ClientParser(), b"".join(lines))
    assert [e.raw for e in events] == lines
    assert [e.tag for e in events] == [line.split(b" ")[0] for line in lines]
    assert end is NEED_DATA


def test_empty_line_between_commands_is_its_own_event() -> None:
    events, _ = feed(ClientParser(), b"\r\na NOOP\r\n\n")
    assert events == [
        EmptyLine(b"\r\n"),
        Command(b"a", "NOOP", b"a NOOP\r\n", None),
        EmptyLine(b"\n"),
    ]


# --- synchronising literals ----------------------------------------------------------------
def test_sync_literal_pauses_until_continuation() -> None:
    parser = ClientParser()
    events, end = feed(parser, b"a APPEND INBOX {11}\r\n")
    assert events == [Command(b"a", "APPEND", b"a APPEND INBOX {11}\r\n", sync(11))]
    assert end is PAUSED
    assert parser.paused and parser.waiting_tag == b"a"
    # Bytes the client sends before the "+" are held, not parsed.
    events, end = feed(parser, b"hello world\r\nb NOOP\r\n")
    assert (events, end) == ([], PAUSED)
    assert parser.continuation_received()
    assert not parser.paused
    events, end = drain(parser)
    assert events == [
        LiteralData(b"hello world", True),
        CommandPart(b"\r\n", None),
        Command(b"b", "NOOP", b"b NOOP\r\n", None),
    ]
    assert end is NEED_DATA


def test_tagged_answer_cancels_a_sync_literal() -> None:
    parser = ClientParser()
    feed(parser, b"a APPEND Nope {5}\r\n")
    assert not parser.command_finished(b"other")  # another command's answer changes nothing
    assert parser.paused
    # After the server's NO the client goes on with a new command; its bytes look like a
    # 5-byte payload but must be read as a command.
    parser.receive_data(b"b DELETE INBOX\r\n")
    assert parser.command_finished(b"a")
    events, _ = drain(parser)
    assert events == [Command(b"b", "DELETE", b"b DELETE INBOX\r\n", None)]


def test_continuation_or_answer_when_not_waiting_changes_nothing() -> None:
    parser = ClientParser()
    feed(parser, b"a NOOP\r\n")
    assert not parser.continuation_received()
    assert not parser.command_finished(b"a")
    events, end = feed(parser, b"b NOOP\r\n")
    assert [e.tag for e in events] == [b"b"] and end is NEED_DATA


def test_sync_literal8_payload_with_nul_bytes() -> None:
    payload = bytes(range(256))
    parser = ClientParser()
    line = b"a APPEND INBOX ~{%d}\r\n" % len(payload)
    events, end = feed(parser, line + payload + b"\r\n")
    assert events == [Command(b"a", "APPEND", line, LiteralHeader(256, sync=True, binary=True))]
    assert end is PAUSED
    parser.continuation_received()
    events, _ = drain(parser)
    assert payload_of(events) == payload
    assert events[-1] == CommandPart(b"\r\n", None)


@pytest.mark.parametrize("announce", [b"{0}", b"{0+}"])
def test_zero_length_literal(announce: bytes) -> None:
    parser = ClientParser()
    line = b"a LOGIN " + announce + b"\r\n"
    events, end = feed(parser, line + b' ""\r\n')
    assert events[0].literal.size == 0
    if events[0].literal.sync:  # even an empty sync literal waits for "+"
        assert end is PAUSED
        assert parser.continuation_received()
        events, end = drain(parser)
    else:
        events = events[1:]
    assert events == [CommandPart(b' ""\r\n', None)]


def test_login_with_two_sync_literals() -> None:
    parser = ClientParser()
    events, end = feed(parser, b"a LOGIN {3}\r\n")
    assert events == [Command(b"a", "LOGIN", b"a LOGIN {3}\r\n", sync(3))] and end is PAUSED
    parser.continuation_received()
    events, end = feed(parser, b"bob {6}\r\n")
    assert events == [LiteralData(b"bob", True), CommandPart(b" {6}\r\n", sync(6))]
    assert end is PAUSED and parser.waiting_tag == b"a"
    parser.continuation_received()
    events, end = feed(parser, b"secret\r\n")
    assert events == [LiteralData(b"secret", True), CommandPart(b"\r\n", None)]
    assert end is NEED_DATA


def test_second_literal_refused_ends_the_command() -> None:
    parser = ClientParser()
    feed(parser, b"a LOGIN {3}\r\n")
    parser.continuation_received()
    feed(parser, b"bob {6}\r\n")
    assert parser.command_finished(b"a")
    events, _ = feed(parser, b"b NOOP\r\n")
    assert events == [Command(b"b", "NOOP", b"b NOOP\r\n", None)]


def test_multiappend_mixed_literals() -> None:
    m1, m2, m3 = b"From: a\r\n\r\nx", b"From: b\r\n\r\nyy", b"\x00binary\xff"
    parser = ClientParser()
    first = b"a APPEND Drafts (\\Seen) {%d}\r\n" % len(m1)
    events, end = feed(parser, first)
    assert events == [Command(b"a", "APPEND", first, sync(len(m1)))] and end is PAUSED
    parser.continuation_received()
    part2 = b" (\\Draft) {%d+}\r\n" % len(m2)
    part3 = b' "1-Jan-2024 00:00:00 +0000" ~{%d}\r\n' % len(m3)
    events, end = feed(parser, m1 + part2 + m2 + part3)
    assert events == [
        LiteralData(m1, True),
        CommandPart(part2, nonsync(len(m2))),
        LiteralData(m2, True),
        CommandPart(part3, LiteralHeader(len(m3), sync=True, binary=True)),
    ]
    assert end is PAUSED
    parser.continuation_received()
    events, end = feed(parser, m3 + b"\r\n")
    assert events == [LiteralData(m3, True), CommandPart(b"\r\n", None)]


def test_search_with_nonsync_literal() -> None:
    word = "naïve".encode()
    line = b"a SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n" % len(word)
    events, end = feed(ClientParser(), line + word + b" ALL\r\n")
    assert events == [
        Command(b"a", "SEARCH", line, nonsync(len(word))),
        LiteralData(word, True),
        CommandPart(b" ALL\r\n", None),
    ]
    assert end is NEED_DATA


def test_literal_payload_is_never_parsed() -> None:
    payload = b"b DELETE INBOX\r\nc APPEND x {5}\r\n* BYE\r\n"
    parser = ClientParser()
    line = b"a APPEND INBOX {%d+}\r\n" % len(payload)
    events, _ = feed(parser, line + payload + b"\r\nd NOOP\r\n")
    assert events == [
        Command(b"a", "APPEND", line, nonsync(len(payload))),
        LiteralData(payload, True),
        CommandPart(b"\r\n", None),
        Command(b"d", "NOOP", b"d NOOP\r\n", None),
    ]


def test_literal_payload_larger_than_the_line_cap_is_fine() -> None:
    payload = b"x" * 5000
    line = b"a APPEND INBOX {5000+}\r\n"
    events, _ = feed(ClientParser(max_line=64), line + payload + b"\r\n")
    assert payload_of(events) == payload
    assert events[-1] == CommandPart(b"\r\n", None)


# --- AUTHENTICATE ---------------------------------------------------------------------------
def test_authenticate_lines_after_continuation_are_sasl_data() -> None:
    parser = ClientParser()
    cmd = b"a AUTHENTICATE LOGIN\r\n"
    events, end = feed(parser, cmd)
    assert events == [Command(b"a", "AUTHENTICATE", cmd, None)] and end is PAUSED
    # SASL data that looks like a command or a literal is still SASL data.
    events, end = feed(parser, b"b DELETE INBOX {5}\r\n")
    assert (events, end) == ([], PAUSED)
    assert parser.continuation_received()
    events, end = drain(parser)
    assert events == [SaslResponse(b"b DELETE INBOX {5}\r\n")] and end is PAUSED
    assert parser.continuation_received()
    events, end = feed(parser, b"cGFzcw==\r\n")
    assert events == [SaslResponse(b"cGFzcw==\r\n")] and end is PAUSED
    assert parser.command_finished(b"a")
    events, end = feed(parser, b"c NOOP\r\n")
    assert events == [Command(b"c", "NOOP", b"c NOOP\r\n", None)]


def test_authenticate_cancellation_line() -> None:
    parser = ClientParser()
    feed(parser, b"a AUTHENTICATE PLAIN\r\n")
    parser.continuation_received()
    events, end = feed(parser, b"*\r\n")
    assert events == [SaslResponse(b"*\r\n")] and end is PAUSED
    parser.command_finished(b"a")
    events, _ = feed(parser, b"b NOOP\r\n")
    assert [type(e) for e in events] == [Command]


def test_authenticate_with_initial_response_then_answer() -> None:
    parser = ClientParser()
    cmd = b"a AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=\r\n"
    events, end = feed(parser, cmd + b"b SELECT INBOX\r\n")
    assert events == [Command(b"a", "AUTHENTICATE", cmd, None)] and end is PAUSED
    assert parser.command_finished(b"a")
    events, _ = drain(parser)
    assert events == [Command(b"b", "SELECT", b"b SELECT INBOX\r\n", None)]


# --- IDLE ----------------------------------------------------------------------------------
def test_idle_done_only_after_continuation() -> None:
    parser = ClientParser()
    events, end = feed(parser, b"a IDLE\r\nDONE\r\n")
    assert events == [Command(b"a", "IDLE", b"a IDLE\r\n", None)] and end is PAUSED
    assert parser.waiting_tag == b"a"
    assert parser.continuation_received()
    events, end = drain(parser)
    assert events == [IdleDone(b"DONE\r\n")] and end is NEED_DATA
    events, _ = feed(parser, b"b NOOP\r\n")
    assert [type(e) for e in events] == [Command]


def test_rejected_idle_leaves_the_next_line_a_command() -> None:
    # If "b DELETE INBOX" were taken for the end of IDLE, the policy would never see a
    # command the server then executes.
    parser = ClientParser()
    events, end = feed(parser, b"a IDLE\r\nb DELETE INBOX\r\n")
    assert end is PAUSED
    assert parser.command_finished(b"a")
    events, _ = drain(parser)
    assert events == [Command(b"b", "DELETE", b"b DELETE INBOX\r\n", None)]


# --- STARTTLS / COMPRESS -------------------------------------------------------------------
def test_starttls_waits_and_restarts_cleanly() -> None:
    parser = ClientParser()
    events, end = feed(parser, b"a STARTTLS\r\n")
    assert events == [Command(b"a", "STARTTLS", b"a STARTTLS\r\n", None)] and end is PAUSED
    assert not parser.continuation_received()  # no "+" turns STARTTLS into anything
    assert parser.paused
    parser.start_tls()
    events, _ = feed(parser, b"b LOGIN bob pw\r\n")
    assert [e.name for e in events] == ["LOGIN"]


def test_starttls_with_pipelined_bytes_raises() -> None:
    parser = ClientParser()
    feed(parser, b"a STARTTLS\r\nb LOGIN bob pw\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.start_tls()
    assert info.value.fatal


def test_compress_waits_for_the_answer_only() -> None:
    parser = ClientParser()
    events, end = feed(parser, b"a COMPRESS DEFLATE\r\nb NOOP\r\n")
    assert [e.name for e in events] == ["COMPRESS"] and end is PAUSED
    assert not parser.continuation_received()
    assert parser.command_finished(b"a")
    events, _ = drain(parser)
    assert [e.tag for e in events] == [b"b"]


# --- malformed input -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "tag"),
    [
        (b"a1 (bad\r\n", b"a1"),
        (b"a1 123\r\n", b"a1"),
        (b"a1 UID\r\n", b"a1"),
        (b"a1 UID 5\r\n", b"a1"),
        (b"a1 \r\n", b"a1"),
        (b"(bad\r\n", None),
        (b"* NOOP\r\n", None),
        (b"+ NOOP\r\n", None),
        (b"a+b NOOP\r\n", None),  # "+" is not a tag character
        (b"a1\r\n", None),
        (b"\x00\xff\xfe\r\n", None),
        (b" NOOP\r\n", None),
    ],
)
def test_malformed_line_is_a_non_fatal_error_with_the_tag(line: bytes, tag: bytes | None) -> None:
    parser = ClientParser()
    parser.receive_data(line + b"z9 NOOP\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert not info.value.fatal
    assert info.value.tag == tag
    events, end = drain(parser)
    assert events == [Command(b"z9", "NOOP", b"z9 NOOP\r\n", None)] and end is NEED_DATA


def test_malformed_line_with_nonsync_literal_skips_the_payload() -> None:
    payload = b"b DELETE FOO"
    parser = ClientParser()
    parser.receive_data(b"(bad {%d+}\r\n" % len(payload) + payload + b"\r\nc NOOP\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert not info.value.fatal
    events, _ = drain(parser)
    commands = [e for e in events if isinstance(e, Command)]
    assert commands == [Command(b"c", "NOOP", b"c NOOP\r\n", None)]
    assert payload_of(events) == payload


def test_malformed_line_with_sync_literal_expects_no_payload() -> None:
    # The client gets BAD instead of "+", so it sends no payload: next bytes are a command.
    parser = ClientParser()
    parser.receive_data(b"a1 (bad {5}\r\nc NOOP\r\n")
    with pytest.raises(ProtocolError):
        parser.next_event()
    events, _ = drain(parser)
    assert events == [Command(b"c", "NOOP", b"c NOOP\r\n", None)]


def test_long_line_streams_as_pieces() -> None:
    # Issue 8 bug 8: servers accept lines over the cap (Dovecot: 110 KB UID SEARCH); the
    # parser hands them out as pieces of at most max_line bytes, whatever the read split.
    line = b"a UID SEARCH UID " + b"1," * 100 + b"2\r\n"
    for chunks in ([line + b"b NOOP\r\n"], [bytes([x]) for x in line + b"b NOOP\r\n"]):
        parser = ClientParser(max_line=64)
        events = []
        for chunk in chunks:
            parser.receive_data(chunk)
            got, _ = drain(parser)
            events += got
        first = events[0]
        assert isinstance(first, Command) and first.partial and first.name == "UID SEARCH"
        parts = events[1:-1]
        assert all(isinstance(p, CommandPart) for p in parts)
        assert [p.partial for p in parts] == [True] * (len(parts) - 1) + [False]
        assert all(len(p.raw) <= 64 for p in [first, *parts])
        assert first.raw + b"".join(p.raw for p in parts) == line
        assert events[-1] == Command(b"b", "NOOP", b"b NOOP\r\n", None)


def test_long_line_keeps_its_literal_announcement_whole() -> None:
    parser = ClientParser(max_line=64)
    parser.receive_data(b"a APPEND " + b"x" * 200 + b" {3+}\r\nabc\r\n")
    events, _ = drain(parser)
    assert events[-3].literal is not None and events[-3].literal.size == 3
    assert events[-2] == LiteralData(b"abc", True)


def test_malformed_long_line_is_skipped_whole() -> None:
    parser = ClientParser(max_line=64)
    parser.receive_data(b"(" * 200 + b" {3+}\r\nabc\r\nb NOOP\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert not info.value.fatal
    events, _ = drain(parser)
    assert events == [Command(b"b", "NOOP", b"b NOOP\r\n", None)]


def test_long_sasl_line_is_fatal() -> None:
    parser = ClientParser(max_line=64)
    parser.receive_data(b"a AUTHENTICATE PLAIN\r\n")
    drain(parser)
    parser.continuation_received()
    parser.receive_data(b"x" * 200)
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.fatal


def test_literal_size_out_of_range_is_fatal() -> None:
    parser = ClientParser()
    parser.receive_data(b"a APPEND x {99999999999999999999+}\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.fatal
    assert parser.next_event() is CLOSED


# --- end of stream -------------------------------------------------------------------------
def test_eof_between_commands_is_closed() -> None:
    parser = ClientParser()
    feed(parser, b"a NOOP\r\n")
    events, end = feed(parser, b"")
    assert (events, end) == ([], CLOSED)
    assert parser.next_event() is CLOSED


@pytest.mark.parametrize(
    "data",
    [
        b"a NOO",  # mid-line
        b"a APPEND x {10+}\r\n01234",  # mid-literal
        b"a APPEND x {3+}\r\nabc",  # after a literal, before the line goes on
    ],
)
def test_eof_mid_command_is_fatal(data: bytes) -> None:
    parser = ClientParser()
    parser.receive_data(data)
    drain(parser)
    parser.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        drain(parser)
    assert info.value.fatal


def test_huge_sync_literal_then_eof() -> None:
    parser = ClientParser()
    events, end = feed(parser, b"a APPEND INBOX {4294967295}\r\n")
    assert events[0].literal == sync(2**32 - 1) and end is PAUSED
    parser.receive_data(b"")
    assert parser.next_event() is PAUSED  # still waiting for the server's answer
    parser.continuation_received()
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.fatal


def test_huge_sync_literal_refused_then_eof_is_clean() -> None:
    parser = ClientParser()
    feed(parser, b"a APPEND INBOX {4294967295}\r\n")
    parser.receive_data(b"")
    parser.command_finished(b"a")
    assert parser.next_event() is CLOSED


def test_huge_nonsync_literal_then_eof() -> None:
    parser = ClientParser()
    events, _ = feed(parser, b"a APPEND INBOX {4294967295+}\r\nsome bytes")
    assert events[1] == LiteralData(b"some bytes", False)
    parser.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.fatal


# --- volume --------------------------------------------------------------------------------
def test_one_megabyte_of_random_bytes() -> None:
    rng = random.Random(20240601)
    blob = rng.randbytes(1 << 20)
    parser = ClientParser()
    chunk = 64 * 1024
    errors = 0
    fatal = False
    for start in [*range(0, len(blob), chunk), None]:
        parser.receive_data(blob[start : start + chunk] if start is not None else b"")
        assert parser._framer.buffered <= 64 * 1024 + chunk
        while True:
            try:
                ev = parser.next_event()
            except ProtocolError as exc:
                errors += 1
                if exc.fatal:
                    fatal = True
                    break
                continue
            if ev is NEED_DATA or ev is CLOSED:
                break
            if ev is PAUSED:
                parser.command_finished(parser.waiting_tag)
        if fatal:
            break
    assert errors > 0
    assert fatal or parser.next_event() is CLOSED


def test_twenty_megabyte_append_streams_in_bounded_memory() -> None:
    block = bytes(range(256)) * 256  # 64 KiB
    count = 320  # 20 MiB
    parser = ClientParser()
    line = b"a APPEND INBOX {%d+}\r\n" % (len(block) * count)
    events, _ = feed(parser, line)
    assert events[0].literal == nonsync(len(block) * count)
    total = 0
    for i in range(count):
        parser.receive_data(block)
        assert parser._framer.buffered <= len(block)
        ev = parser.next_event()
        assert ev.data is block  # a whole read of payload: forwarded without a copy
        assert ev.last == (i == count - 1)
        total += len(ev.data)
        assert parser.next_event() is NEED_DATA
        assert parser._framer.buffered == 0
    assert total == len(block) * count
    events, _ = feed(parser, b"\r\n")
    assert events == [CommandPart(b"\r\n", None)]


@pytest.mark.parametrize("first", [b"a IDLE\r\n", b"a AUTHENTICATE PLAIN\r\n"])
def test_tagged_answer_after_continuation_ends_the_exchange(first: bytes) -> None:
    # The server gave "+" and then ended the exchange itself (aborted authentication,
    # IDLE terminated): the client's next line is a command for the server, so it must be
    # a Command here too, not SASL data or the end of IDLE that bypasses the policy.
    parser = ClientParser()
    feed(parser, first)
    assert parser.continuation_received()
    assert not parser.command_finished(b"other")
    assert parser.command_finished(b"a")
    events, _ = feed(parser, b"b DELETE INBOX\r\n")
    assert events == [Command(b"b", "DELETE", b"b DELETE INBOX\r\n", None)]


def test_answered_confirmed_literal_payload_is_dropped_with_the_rest_of_the_command() -> None:
    # Issue 8 bug 2: the server answered before the "+" that confirms a {n+}; the client
    # sent the payload anyway: it is the command's data, never commands.
    parser = ClientParser()
    parser.confirm_literals = True
    parser.receive_data(b"b APPEND X {3+}\r\nabc def {14+}\r\nx DELETE Arc\r\n\r\nc NOOP\r\n")
    events, end = drain(parser)
    assert end is PAUSED and parser.silent_continuation
    assert parser.command_finished(b"b")
    events, _ = drain(parser)
    assert events == [Command(b"c", "NOOP", b"c NOOP\r\n", None)]


def test_answered_sync_literal_expects_no_payload() -> None:
    parser = ClientParser()
    parser.confirm_literals = True
    parser.receive_data(b"b APPEND X {3}\r\nc NOOP\r\n")
    drain(parser)
    assert parser.command_finished(b"b")
    events, _ = drain(parser)
    assert events == [Command(b"c", "NOOP", b"c NOOP\r\n", None)]


@pytest.mark.parametrize("bytewise", [False, True])
def test_barrier_command_waits_for_its_answer(bytewise: bool) -> None:
    data = b"a LOGIN {3+}\r\nbob pw\r\nb DELETE X\r\n"
    parser = ClientParser()
    parser.barrier_commands = frozenset({"LOGIN"})
    events: list[object] = []
    for chunk in [bytes([x]) for x in data] if bytewise else [data]:
        parser.receive_data(chunk)
        got, end = drain(parser)
        events += got
    assert end is PAUSED and parser.waiting_tag == b"a"
    assert not any(isinstance(e, Command) and e.tag == b"b" for e in events)
    assert not parser.command_finished(b"x")  # another tag's answer does not resume it
    assert parser.command_finished(b"a")
    got, _ = drain(parser)
    assert got == [Command(b"b", "DELETE", b"b DELETE X\r\n", None)]


# The commands that take no arguments, written out here (not imported) so that a change to the
# parser's list fails a test; tests/wire/test_pinned_parser.py checks the list is exactly this.
NO_ARGUMENTS = [
    "CAPABILITY",
    "CHECK",
    "CLOSE",
    "EXPUNGE",
    "IDLE",
    "LOGOUT",
    "NAMESPACE",
    "NOOP",
    "STARTTLS",
    "UNAUTHENTICATE",
    "UNSELECT",
]


@pytest.mark.parametrize("name", NO_ARGUMENTS)
def test_literal_on_a_command_without_arguments_is_refused(name: str) -> None:
    # Servers skip what follows these names and run the "payload" as a command.
    parser = ClientParser()
    parser.receive_data(b"a %s {14+}\r\nb DELETE Arch\r\n\r\nc NOOP\r\n" % name.encode())
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert not info.value.fatal and info.value.tag == b"a"
    events, _ = drain(parser)
    assert events[-1] == Command(b"c", "NOOP", b"c NOOP\r\n", None)
    assert not any(isinstance(e, Command) and e.tag == b"b" for e in events)


@pytest.mark.parametrize(
    "line",
    [b"a SELECT foo{5+}\r\n", b'a SELECT "foo {5+}\r\n', b'a LOGIN u"p {5+}\r\n'],
    ids=["glued-to-atom", "inside-open-quote", "after-quote-char"],
)
def test_misplaced_literal_is_refused(line: bytes) -> None:
    parser = ClientParser()
    parser.receive_data(line + b"x1 X\r\nc NOOP\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert not info.value.fatal
    events, _ = drain(parser)  # the announced payload is skipped, never a command
    commands = [e for e in events if isinstance(e, Command)]
    assert commands == [Command(b"c", "NOOP", b"c NOOP\r\n", None)]


def test_default_line_cap_is_64_kib() -> None:
    at_cap = b"a NOOP " + b"x" * (65536 - 9) + b"\r\n"
    assert len(at_cap) == 65536
    parser = ClientParser()
    parser.receive_data(at_cap + b"x" + at_cap)
    first, rest = parser.next_event(), parser.next_event()
    assert isinstance(first, Command) and not first.partial and first.raw == at_cap
    assert isinstance(rest, Command) and rest.partial  # one byte over: pieces
