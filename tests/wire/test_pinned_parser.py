"""Parser behaviour pinned for mutation testing (issue 8, "Behaviour no test pins").

Each test states one rule of the wire layer that a mutant of ``wire/`` once changed without
any test failing: where a literal may start, which commands take no arguments, which
continuation request belongs to the client, the STARTTLS hand-over checks, tokenising
corners and the default line caps.
"""

from __future__ import annotations

import base64

import pytest

from imapproxy.wire import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    ClientParser,
    Command,
    CommandPart,
    IdleDone,
    LiteralData,
    LiteralHeader,
    ProtocolError,
    Response,
    ResponseKind,
    ResponsePart,
    ServerParser,
    command_line,
)
from imapproxy.wire import client as client_module
from imapproxy.wire import server as server_module
from imapproxy.wire.grammar import LITERAL_TAIL
from imapproxy.wire.literals import as_sync, split_at_literals
from imapproxy.wire.sasl import login_user, sasl_user
from imapproxy.wire.tokens import (
    Token,
    TokenError,
    TokenKind,
    encode_astring,
    parse_command,
    tokenize,
)
from tests.wire.test_client_parser import NO_ARGUMENTS


def drain(parser: ClientParser | ServerParser) -> tuple[list[object], object]:
    events: list[object] = []
    while True:
        ev = parser.next_event()
        if ev is NEED_DATA or ev is PAUSED or ev is CLOSED:
            return events, ev
        events.append(ev)


def feed(parser: ClientParser | ServerParser, data: bytes) -> tuple[list[object], object]:
    parser.receive_data(data)
    return drain(parser)


def refused(parser: ClientParser, data: bytes) -> ProtocolError:
    parser.receive_data(data)
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    return info.value


# --- literal placement --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        b"a SELECT foo{5}\r\n",  # glued to an atom
        b"a SELECT foo{5+}\r\n",
        b'a SELECT "foo {5}\r\n',  # inside a quoted string left open
        b'a SELECT "foo\\" {5}\r\n',  # the quote is escaped: still open
        b'a SELECT "x" "foo {5+}\r\n',  # a closed string, then an open one
    ],
)
def test_misplaced_literal_is_refused_with_the_commands_tag(line: bytes) -> None:
    parser = ClientParser()
    err = refused(parser, line)
    assert (err.reason, err.fatal, err.tag) == ("literal not allowed here", False, b"a")
    assert not parser.paused  # a refused {n} gets no "+": the next bytes are a command


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b"a SELECT {5}\r\n", 5),
        (b'a SELECT "x y" {5}\r\n', 5),  # a closed quoted string before it
        (b'a SELECT "x\\\\" {5}\r\n', 5),  # an escaped backslash closes nothing early
        (b"a APPEND INBOX ({5}\r\n", 5),  # right after "("
    ],
)
def test_literal_that_starts_an_argument_is_read(line: bytes, size: int) -> None:
    parser = ClientParser()
    events, state = feed(parser, line)
    assert events == [Command(b"a", events[0].name, line, LiteralHeader(size, True, False))]  # type: ignore[attr-defined]
    assert state is PAUSED and parser.waiting_tag == b"a"


def test_refused_nonsync_literal_payload_is_skipped_as_part_of_the_line() -> None:
    parser = ClientParser()
    err = refused(parser, b"a SELECT foo{5+}\r\nb DEL\r\nc NOOP\r\n")
    assert err.tag == b"a"
    events, state = drain(parser)
    assert events == [
        LiteralData(b"b DEL", True),
        CommandPart(b"\r\n", None),
        Command(b"c", "NOOP", b"c NOOP\r\n", None),
    ]
    assert state is NEED_DATA


def test_literal_glued_after_a_literal_is_not_a_literal() -> None:
    parser = ClientParser()
    feed(parser, b"a LOGIN {3}\r\n")
    assert parser.continuation_received()
    events, state = feed(parser, b"bob{2}\r\n")
    # No space before "{2}": servers end the command there, so the proxy does too.
    assert events == [LiteralData(b"bob", True), CommandPart(b"{2}\r\n", None)]
    assert state is NEED_DATA and not parser.paused
    events, _ = feed(parser, b"pw NOOP\r\n")
    assert events == [Command(b"pw", "NOOP", b"pw NOOP\r\n", None)]


def test_literal_after_a_space_on_a_continuation_line_is_read() -> None:
    parser = ClientParser()
    feed(parser, b"a LOGIN {3}\r\n")
    parser.continuation_received()
    events, state = feed(parser, b"bob {2}\r\n")
    assert events[-1] == CommandPart(b" {2}\r\n", LiteralHeader(2, True, False))
    assert state is PAUSED


@pytest.mark.parametrize("name", NO_ARGUMENTS)
@pytest.mark.parametrize("announce", [b"{3+}", b"{3}"])
def test_command_without_arguments_never_takes_a_literal(name: str, announce: bytes) -> None:
    # Dovecot skips whatever follows such a command's name and runs the "payload" as a
    # command of its own: the proxy refuses the line instead of forwarding it.
    parser = ClientParser()
    err = refused(parser, b"t " + name.lower().encode() + b" " + announce + b"\r\n")
    assert (err.reason, err.tag) == ("literal not allowed here", b"t")


def test_no_argument_list_is_exactly_the_documented_one() -> None:
    assert sorted(command_line.NO_ARGUMENTS) == NO_ARGUMENTS


@pytest.mark.parametrize("name", ["SELECT", "LOGIN", "APPEND", "XFOO", "ENABLE"])
def test_commands_with_arguments_take_a_literal(name: str) -> None:
    parser = ClientParser()
    events, _ = feed(parser, b"t " + name.encode() + b" {3+}\r\nabc\r\n")
    assert isinstance(events[0], Command) and events[0].literal == LiteralHeader(3, False, False)
    assert payload_of(events) == b"abc"


def payload_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, LiteralData))


# --- continuation routing -----------------------------------------------------------------------
def test_confirmed_literal_continuation_is_silent_then_routing_resets() -> None:
    parser = ClientParser()
    parser.confirm_literals = True
    feed(parser, b"a APPEND INBOX {3+}\r\n")
    assert parser.paused and parser.silent_continuation  # the client expects no "+"
    assert parser.continuation_received()
    assert not parser.silent_continuation
    events, _ = feed(parser, b"abc\r\nb IDLE\r\n")
    assert payload_of(events) == b"abc"
    # IDLE's "+ idling" is the client's: it must not be taken for a confirmation.
    assert parser.paused and not parser.silent_continuation
    assert parser.continuation_received()
    events, _ = feed(parser, b"DONE\r\nc APPEND INBOX {2}\r\n")
    assert events[0] == IdleDone(b"DONE\r\n")
    assert parser.paused and not parser.silent_continuation  # {n}: the client waits for "+"


def test_refused_confirmed_literal_leaves_nothing_silent() -> None:
    parser = ClientParser()
    parser.confirm_literals = True
    feed(parser, b"a APPEND Nope {3+}\r\n")
    assert parser.silent_continuation
    assert parser.command_finished(b"a")  # NO [TRYCREATE] instead of "+"
    assert not parser.silent_continuation and not parser.paused
    # The client sent the payload anyway (it expected no "+"): those 3 bytes and the rest of
    # the command line are dropped, never parsed as a command (issue 8); what follows is.
    events, _ = feed(parser, b"abc NOOP\r\nb IDLE\r\n")
    assert [e.tag for e in events if isinstance(e, Command)] == [b"b"]
    assert not any(isinstance(e, LiteralData) for e in events)
    assert parser.paused and not parser.silent_continuation


def test_without_confirmation_a_nonsync_literal_does_not_pause() -> None:
    parser = ClientParser()
    events, state = feed(parser, b"a APPEND INBOX {3+}\r\nabc\r\n")
    assert state is NEED_DATA and not parser.paused and not parser.silent_continuation
    assert payload_of(events) == b"abc"


def test_second_nonsync_literal_on_a_continuation_line_is_confirmed_too() -> None:
    parser = ClientParser()
    parser.confirm_literals = True
    feed(parser, b"a APPEND INBOX {3+}\r\n")
    parser.continuation_received()
    events, state = feed(parser, b"abc {4+}\r\ndefg\r\n")
    assert events[-1] == CommandPart(b" {4+}\r\n", LiteralHeader(4, False, False))
    assert state is PAUSED and parser.silent_continuation
    parser.continuation_received()
    events, _ = drain(parser)
    assert payload_of(events) == b"defg"


def test_answers_for_other_tags_or_states_do_not_resume() -> None:
    parser = ClientParser()
    feed(parser, b"a APPEND INBOX {3}\r\n")
    assert not parser.command_finished(b"b")
    assert parser.paused and parser.waiting_tag == b"a"
    assert parser.command_finished(b"a")
    assert parser.waiting_tag is None
    assert not parser.continuation_received()  # nothing waits for a "+" now
    assert not parser.command_finished(b"a")


# --- STARTTLS hand-over -------------------------------------------------------------------------
def test_client_start_tls_refuses_pipelined_bytes() -> None:
    parser = ClientParser()
    feed(parser, b"a STARTTLS\r\nb NOOP\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.start_tls()
    assert info.value.fatal


def test_client_start_tls_resumes_reading_commands() -> None:
    parser = ClientParser()
    _, state = feed(parser, b"a STARTTLS\r\n")
    assert state is PAUSED
    parser.start_tls()
    events, _ = feed(parser, b"b NOOP\r\n")
    assert events == [Command(b"b", "NOOP", b"b NOOP\r\n", None)]


def test_server_start_tls_refuses_bytes_after_the_tagged_ok() -> None:
    parser = ServerParser()
    parser.receive_data(b"s OK Begin TLS negotiation now\r\n* OK injected\r\n")
    assert isinstance(parser.next_event(), Response)
    assert parser.buffered == len(b"* OK injected\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.start_tls()
    assert info.value.fatal


def test_server_start_tls_after_a_clean_answer_parses_the_new_stream() -> None:
    parser = ServerParser()
    parser.receive_data(b"s OK Begin TLS negotiation now\r\n")
    parser.next_event()
    assert parser.buffered == 0
    parser.start_tls()
    events, _ = feed(parser, b"* CAPABILITY IMAP4rev1\r\n")
    assert [(e.kind, e.word) for e in events] == [(ResponseKind.UNTAGGED, "CAPABILITY")]  # type: ignore[attr-defined]


def test_server_take_rest_hands_over_unparsed_bytes() -> None:
    parser = ServerParser()
    parser.receive_data(b"s OK go\r\n\x16\x03\x01tls")
    parser.next_event()
    assert parser.take_rest() == b"\x16\x03\x01tls"
    assert parser.buffered == 0


# --- default line caps --------------------------------------------------------------------------
def test_default_line_caps_are_64_kib() -> None:
    assert client_module.DEFAULT_MAX_LINE == server_module.DEFAULT_MAX_LINE == 64 * 1024


def test_client_default_cap_boundary() -> None:
    cap = client_module.DEFAULT_MAX_LINE
    line = b"a SEARCH " + b"1," * ((cap - 13) // 2)
    line += b"1" * (cap - 2 - len(line)) + b"\r\n"
    assert len(line) == cap
    events, _ = feed(ClientParser(), line)
    assert [type(e) for e in events] == [Command]
    assert not events[0].partial
    # One byte more: the line streams in pieces (issue 8), the last one keeping the line's
    # tail (where a literal would be announced) whole; no byte is lost or added.
    longer = line[:-2] + b"1\r\n"
    events, _ = feed(ClientParser(), longer)
    assert [(type(e), e.partial) for e in events] == [(Command, True), (CommandPart, False)]
    assert len(events[1].raw) == LITERAL_TAIL
    assert b"".join(e.raw for e in events) == longer
    parser = ClientParser()  # no line end yet: the cap applies to what is buffered
    unended = b"a SEARCH " + b"1" * (cap - 9)
    parser.receive_data(unended)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"1")
    event = parser.next_event()
    assert isinstance(event, Command) and event.partial
    assert event.raw == (unended + b"1")[: cap + 1 - LITERAL_TAIL]
    assert parser.next_event() is NEED_DATA


def test_server_default_cap_splits_only_past_the_cap() -> None:
    cap = server_module.DEFAULT_MAX_LINE
    parser = ServerParser()
    parser.receive_data(b"* SEARCH " + b"1" * (cap - 9))
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"2")
    first = parser.next_event()
    assert isinstance(first, Response) and first.partial and first.word == "SEARCH"
    parser.receive_data(b"\r\n")
    rest, _ = drain(parser)
    assert all(isinstance(e, ResponsePart) for e in rest)
    assert first.raw + b"".join(e.raw for e in rest) == (  # type: ignore[attr-defined]
        b"* SEARCH " + b"1" * (cap - 9) + b"2\r\n"
    )


# --- tokens -------------------------------------------------------------------------------------
def test_bare_lf_line_ends() -> None:
    cmd = parse_command(b"a SELECT INBOX\n")
    assert (cmd.tag, cmd.name, [t.value for t in cmd.args]) == (b"a", "SELECT", [b"INBOX"])
    lit = tokenize(b"{3}\nabc x\n")
    assert [(t.kind, t.value) for t in lit] == [(TokenKind.LITERAL, b"abc"), (TokenKind.ATOM, b"x")]
    with pytest.raises(TokenError):
        tokenize(b"x\ny\n")  # a line end is only valid at the very end


def test_nested_brackets_in_a_section_belong_to_the_atom() -> None:
    raw = b"BODY.PEEK[HEADER.FIELDS (A [B] C)]<0.10> FLAGS"
    tokens = tokenize(raw)
    assert [t.value for t in tokens] == [b"BODY.PEEK[HEADER.FIELDS (A [B] C)]<0.10>", b"FLAGS"]
    assert [(t.start, t.end) for t in tokens] == [(0, 40), (41, 46)]
    assert [t.value for t in tokenize(b"binary[1[2]] x")] == [b"binary[1[2]]", b"x"]


@pytest.mark.parametrize("raw", [b"BODY[HEADER", b"BODY[A[B]\r\n]", b"BODY[x\nx]"])
def test_unterminated_section_is_an_error(raw: bytes) -> None:
    with pytest.raises(TokenError):
        tokenize(raw)


def test_bracket_outside_a_section_is_an_atom_char() -> None:
    assert [t.value for t in tokenize(b"[Gmail]/All foo[bar x")] == [
        b"[Gmail]/All",
        b"foo[bar",
        b"x",
    ]


def test_token_spans_and_lists() -> None:
    (lst,) = tokenize(b'(\\Seen "a b" {1}\r\nx)')
    assert lst.kind is TokenKind.LIST and (lst.start, lst.end) == (0, 20)
    assert [(t.kind, t.value, t.start, t.end) for t in lst.items] == [
        (TokenKind.ATOM, b"\\Seen", 1, 6),
        (TokenKind.QUOTED, b"a b", 7, 12),
        (TokenKind.LITERAL, b"x", 13, 19),
    ]
    assert lst.astring() is None and lst.items[1].astring() == b"a b"


@pytest.mark.parametrize(
    "raw", [b"(a", b"a)", b'"open', b"{5}\r\nab", b"{x}\r\n", b"~{2\r\n", b" ) "]
)
def test_malformed_arguments_raise(raw: bytes) -> None:
    with pytest.raises(TokenError):
        tokenize(raw)


def test_tilde_without_brace_is_an_atom() -> None:
    assert tokenize(b"~x ~{1}\r\nq") == [
        Token(TokenKind.ATOM, b"~x", 0, 2),
        Token(TokenKind.LITERAL, b"q", 3, 10),
    ]


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"INBOX", b"INBOX"),
        (b"\\Seen", b'"\\\\Seen"'),  # "\" is no atom char: never emitted bare
        (b"a\\b", b'"a\\\\b"'),
        (b"", b'""'),
        (b"a b", b'"a b"'),
        (b'say "hi"', b'"say \\"hi\\""'),
        (b"a%", b'"a%"'),
        (b"x*", b'"x*"'),
        (b"a\r\nb", b"{4}\r\na\r\nb"),
        (b"nul\x00", b"{4}\r\nnul\x00"),
        (b"gr\xc3\xbc", b"{4}\r\ngr\xc3\xbc"),
    ],
)
def test_encode_astring_picks_the_cheapest_valid_form(value: bytes, wire: bytes) -> None:
    assert encode_astring(value) == wire
    (token,) = tokenize(wire)
    assert token.value == value


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"a uid fetch 1 FLAGS\r\n", "UID FETCH"),
        (b"a Uid Expunge 1\r\n", "UID EXPUNGE"),
        (b"a noop\r\n", "NOOP"),
    ],
)
def test_parse_command_names(raw: bytes, name: str) -> None:
    assert parse_command(raw).name == name


@pytest.mark.parametrize("raw", [b"NOOP\r\n", b" NOOP\r\n", b"a UID BOGUS 1\r\n", b"a \r\n"])
def test_parse_command_refuses_missing_parts(raw: bytes) -> None:
    with pytest.raises(TokenError):
        parse_command(raw)


def test_carriage_return_inside_a_section_ends_it() -> None:
    with pytest.raises(TokenError):
        tokenize(b"BODY[x\ry] FLAGS")


# --- framing ------------------------------------------------------------------------------------
def test_literal_payload_bytes_are_handed_out_as_they_arrive() -> None:
    parser = ServerParser()
    feed(parser, b"* 1 FETCH (BODY[] {3}\r\n")
    for i, byte in enumerate(b"abc"):
        events, state = feed(parser, bytes([byte]))
        assert events == [LiteralData(bytes([byte]), i == 2)] and state is NEED_DATA


def test_a_read_that_is_all_payload_is_forwarded_without_a_copy() -> None:
    parser = ServerParser()
    feed(parser, b"* 1 FETCH (BODY[] {10}\r\n")
    payload = b"0123456789"
    parser.receive_data(payload)
    data = parser.next_event()
    assert isinstance(data, LiteralData) and data.data is payload and data.last


def test_split_at_literals_cuts_after_each_announcement() -> None:
    raw = b"a LOGIN {3}\r\nbob {2+}\r\npw\r\n"
    assert split_at_literals(raw, confirm=False) == [b"a LOGIN {3}\r\n", b"bob {2+}\r\npw\r\n"]
    assert split_at_literals(raw, confirm=True) == [
        b"a LOGIN {3}\r\n",
        b"bob {2}\r\n",
        b"pw\r\n",
    ]
    # Bytes after the last line end (a live literal's payload so far) stay in the last segment.
    assert split_at_literals(b"a X {3}\r\nab", confirm=False) == [b"a X {3}\r\n", b"ab"]
    assert split_at_literals(b"a X {0}\r\n\r\n", confirm=False) == [b"a X {0}\r\n", b"\r\n"]
    assert split_at_literals(b"a X {1}\r\nx tail", confirm=False) == [b"a X {1}\r\n", b"x tail"]
    assert as_sync(b"a X {3+}\r\n") == b"a X {3}\r\n"
    assert as_sync(b"a X {3+}\n") == b"a X {3}\n"
    assert as_sync(b"a X {3}\r\n") == b"a X {3}\r\n"


# --- error texts (they reach the client in BAD and BYE lines) -----------------------------------
def test_protocol_error_carries_its_reason() -> None:
    err = ProtocolError("some reason", fatal=True, tag=b"t")
    assert (str(err), err.reason, err.fatal, err.tag) == ("some reason", "some reason", True, b"t")
    assert ProtocolError("x", fatal=False).tag is None


def test_uid_without_a_subcommand() -> None:
    err = refused(ClientParser(), b"a UID 1:*\r\n")
    assert (err.reason, err.fatal, err.tag) == ("UID needs a command", False, b"a")


def test_pipelined_after_starttls_reason() -> None:
    parser = ClientParser()
    feed(parser, b"a STARTTLS\r\nb NOOP\r\n")
    with pytest.raises(ProtocolError, match=r"\Adata pipelined after STARTTLS\Z"):
        parser.start_tls()
    server = ServerParser()
    server.receive_data(b"s OK go\r\nx")
    server.next_event()
    with pytest.raises(
        ProtocolError, match=r"\Adata pipelined after the server's STARTTLS answer\Z"
    ):
        server.start_tls()


# --- SASL user names ----------------------------------------------------------------------------
def test_sasl_response_that_is_not_strict_base64_names_nobody() -> None:
    assert sasl_user("LOGIN", b"Ym9i\r\n") == "bob"
    assert sasl_user("LOGIN", b"Ym9i!") is None  # lenient decoding would read "bob"
    assert sasl_user("LOGIN", b"Ym 9i") is None


def test_oauthbearer_user_only_from_the_gs2_header() -> None:
    good = base64.b64encode(b"n,a=bob,\x01host=x\x01auth=Bearer t\x01\x01")
    assert sasl_user("OAUTHBEARER", good) == "bob"
    sneaky = base64.b64encode(b"n,,\x01auth=Bearer t,a=mallory\x01\x01")
    assert sasl_user("OAUTHBEARER", sneaky) is None


def test_user_names_that_are_not_utf8_are_decoded_with_replacement() -> None:
    assert login_user(b'a LOGIN "b\xe4r" pw\r\n') == "b\ufffdr"
    assert login_user(b"a LOGIN {3}\r\nb\xe4r pw\r\n") == "b\ufffdr"
    assert sasl_user("LOGIN", base64.b64encode(b"b\xe4r")) == "b\ufffdr"
    assert login_user(b"a LOGIN (x) pw\r\n") is None
    assert login_user(b"a LOGIN\r\n") is None


# --- server responses ---------------------------------------------------------------------------
def test_continuation_and_unknown_lines_are_whole_events() -> None:
    parser = ServerParser(max_line=64)
    events, _ = feed(parser, b"+ go ahead\r\n+ {2}\r\nab\r\n?? {1}\r\nx\r\n")
    assert events == [
        Response(ResponseKind.CONTINUATION, b"+", "", b"+ go ahead\r\n", None, False),
        Response(ResponseKind.CONTINUATION, b"+", "", b"+ {2}\r\n", LiteralHeader(2, True, False)),
        LiteralData(b"ab", True),
        ResponsePart(b"\r\n", None),
        Response(ResponseKind.UNKNOWN, b"", "", b"?? {1}\r\n", LiteralHeader(1, True, False)),
        LiteralData(b"x", True),
        ResponsePart(b"\r\n", None),
    ]
    events, _ = feed(parser, b"+ " + b"x" * 100)
    assert events[0] == Response(
        ResponseKind.CONTINUATION, b"+", "", (b"+ " + b"x" * 100)[:70], None, True
    )
    parser = ServerParser(max_line=64)
    events, _ = feed(parser, b"??" + b"y" * 100)
    assert events[0] == Response(
        ResponseKind.UNKNOWN, b"", "", (b"??" + b"y" * 100)[:70], None, True
    )


def test_server_eof_in_the_middle_of_a_response_reason() -> None:
    parser = ServerParser()
    parser.receive_data(b"* 1 FETCH (BODY[] {5}\r\nab")
    drain(parser)
    parser.receive_data(b"")
    with pytest.raises(
        ProtocolError, match=r"\Aserver closed the connection in the middle of a response\Z"
    ):
        parser.next_event()


def test_eight_bit_command_names_never_raise_past_token_error() -> None:
    # Command names are ASCII atoms (wire/grammar.py), as the client parser reads them: an
    # 8-bit name is a TokenError, never a UnicodeDecodeError from decoding it.
    assert parse_command(b"a NOOP\r\n").name == "NOOP"
    with pytest.raises(TokenError, match="malformed tag or command name"):
        parse_command(b"a N\xc4OP\r\n")
    with pytest.raises(TokenError):
        parse_command(b"a UID F\xc4TCH 1\r\n")


def test_tokenize_stops_at_the_given_end() -> None:
    assert tokenize(b"abc def", 0, 2) == [Token(TokenKind.ATOM, b"ab", 0, 2)]
    assert tokenize(b"x BODY[1] y", 2, 9) == [Token(TokenKind.ATOM, b"BODY[1]", 2, 9)]


def test_only_line_end_bytes_may_follow_a_line_end() -> None:
    assert tokenize(b"a\r\n") == [Token(TokenKind.ATOM, b"a", 0, 1)]
    for tail in (b"a\r\n ", b"a\r\nX", b"a\n\t"):
        with pytest.raises(TokenError):
            tokenize(tail)


def test_list_token_value_is_empty_and_quoted_strings_respect_the_end() -> None:
    (lst,) = tokenize(b"(a)")
    assert lst.value == b""
    with pytest.raises(TokenError):
        tokenize(b'"ab" x', 0, 3)  # the closing quote lies past the end
