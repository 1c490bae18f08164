"""Property tests: framing does not depend on how bytes arrive, and bad bytes only ever
produce protocol errors.

The valid streams and their expected events come from ``tests/wire/streams.py`` (built
from the grammar, not from the parsers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapproxy.session.core import Session, SessionSettings
from imapproxy.session.output import Note, Output
from imapproxy.wire import CLOSED, NEED_DATA, PAUSED, ClientParser, ProtocolError, ServerParser

from .streams import (
    client_streams,
    drive_client,
    drive_server,
    event_bytes,
    normalise_client,
    normalise_server,
    server_streams,
    splits,
)

SMALL_LINE = 128  # server parser cap in these tests, so generated lines go past it
# Under mutmut (it sets MUTANT_UNDER_TEST) every surviving mutant reruns these; fewer
# examples keep a mutation run within minutes per module (see CONTRIBUTING.md).
_EXAMPLES = 0.2 if "MUTANT_UNDER_TEST" in os.environ else 1.0
PROPS = settings(
    max_examples=int(100 * _EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FUZZ = settings(
    max_examples=int(150 * _EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- valid streams: same events for any split ------------------------------------------
@PROPS
@given(st.data())
def test_client_stream_events_match_grammar_for_any_split(data: st.DataObject) -> None:
    stream = data.draw(client_streams())
    whole = drive_client(ClientParser(), [stream.data], stream.plan)
    assert normalise_client(whole) == stream.events
    assert event_bytes(whole) == stream.data

    chunks = data.draw(splits(stream.data))
    pieces = drive_client(ClientParser(), chunks, stream.plan)
    assert normalise_client(pieces) == stream.events
    assert event_bytes(pieces) == stream.data


@PROPS
@given(st.data())
def test_server_stream_events_match_grammar_for_any_split(data: st.DataObject) -> None:
    stream = data.draw(server_streams(long_at=2 * SMALL_LINE))
    whole = drive_server(ServerParser(SMALL_LINE), [stream.data])
    assert normalise_server(whole) == stream.events
    assert event_bytes(whole) == stream.data

    chunks = data.draw(splits(stream.data))
    pieces = drive_server(ServerParser(SMALL_LINE), chunks)
    assert normalise_server(pieces) == stream.events
    assert event_bytes(pieces) == stream.data
    # Memory stays bounded however the line arrives: no piece is longer than the cap
    # plus what one read brought.
    longest_read = max(map(len, chunks), default=0)
    for ev in pieces:
        raw = getattr(ev, "raw", b"")
        assert len(raw) <= SMALL_LINE + longest_read


@PROPS
@given(st.data())
def test_session_forwards_valid_client_stream_unchanged_for_any_split(
    data: st.DataObject,
) -> None:
    """With no policy, the upstream receives exactly the client's bytes, whatever the
    reads, and the client exactly the server's (no capability words to filter here)."""
    stream = data.draw(client_streams(tls=False))
    chunks = data.draw(splits(stream.data))
    session = Session(SessionSettings())
    up: list[bytes] = []
    down: list[bytes] = []
    sent_down: list[bytes] = []

    def server(raw: bytes) -> None:
        sent_down.append(raw)
        out = session.server_data(raw)
        up.extend(out.to_upstream)
        down.extend(out.to_client)
        assert out.close is None

    answers = {tag: list(a) for tag, a in stream.plan.items()}
    server(b"* OK ready\r\n")
    for chunk in chunks:
        out = session.client_data(chunk)
        up.extend(out.to_upstream)
        down.extend(out.to_client)
        assert out.close is None
        while session.client_paused:
            tag = session.client.waiting_tag
            assert tag is not None
            action = answers[tag].pop(0)
            server(b"+ go\r\n" if action == "+" else tag + b" NO no\r\n")
    assert all(not a for a in answers.values())
    assert b"".join(up) == stream.data
    assert b"".join(down) == b"".join(sent_down)


class _HoldEverything:
    """Needs every command's arguments (so every command is held) and lets all pass."""

    def needs_arguments(self, command: str) -> bool:
        return True

    def decide(self, facts: object, command: str, raw: bytes, complete: bool) -> _Verdict:
        return _Verdict()

    def rewrites_responses(self) -> bool:
        return False

    def rewrite_response(self, raw: bytes, facts: object = None) -> bytes | None:
        return None

    def rewrite_status_text(self, raw: bytes) -> bytes | None:
        return None


@PROPS
@given(st.data())
def test_session_holding_every_command_still_forwards_the_stream_unchanged(
    data: st.DataObject,
) -> None:
    """Held commands: the proxy answers small sync literals itself and feeds the held
    bytes to the upstream one '+' at a time. A fake server that reads what reaches it with
    a parser of its own answers every pause from the plan; in the end the upstream has read
    exactly the client's bytes, in order, and nothing is left waiting."""
    stream = data.draw(client_streams(tls=False, refuse=False))
    # Often one read: a client that pipelines lets several held commands complete before
    # the upstream answers the first one.
    whole = data.draw(st.booleans(), label="one read")
    chunks = [stream.data] if whole else data.draw(splits(stream.data))
    # The holding machinery alone: confirmed literals ({n+} forwarded as {n}, see
    # session.py) would change the bytes on purpose and are tested on their own.
    session = Session(SessionSettings(policy=_HoldEverything(), confirm_literals=False))
    upstream = ClientParser()  # the fake server's view of what it receives
    answers = {tag: list(a) for tag, a in stream.plan.items()}
    received: list[bytes] = []
    down: list[bytes] = []

    def pump(out: Output) -> None:
        pending = [out]
        while pending:
            out = pending.pop()
            down.extend(out.to_client)
            assert out.close is None
            if not out.to_upstream:
                continue
            chunk = b"".join(out.to_upstream)
            received.append(chunk)
            upstream.receive_data(chunk)
            while (ev := upstream.next_event()) is not NEED_DATA:
                if ev is PAUSED:
                    tag = upstream.waiting_tag
                    assert tag is not None
                    if answers[tag].pop(0) == "+":
                        upstream.continuation_received()
                        pending.append(session.server_data(b"+ go\r\n"))
                    else:
                        upstream.command_finished(tag)
                        pending.append(session.server_data(tag + b" NO no\r\n"))

    def settle() -> None:
        # A state-changing command (LOGIN, SELECT, ...) holds the session's parser until
        # its tagged answer (issue 8, bug 3): answer it once the fake server has read it.
        for _ in range(len(stream.data) + 1):
            tag = session.client.waiting_tag
            if tag is None or upstream.paused or answers.get(tag):
                return
            pump(session.server_data(tag + b" OK done\r\n"))

    pump(session.server_data(b"* OK ready\r\n"))
    for chunk in chunks:
        pump(session.client_data(chunk))
        settle()
    assert b"".join(received) == stream.data
    assert all(not a for a in answers.values())
    assert not session.client_paused
    # Each continuation the client needed reached it exactly once, from the proxy (held
    # literal) or relayed from the upstream; "+" answering the proxy's segments did not.
    needed = sum(a.count("+") for a in stream.plan.values())
    seen = b"".join(down)
    assert seen.count(b"+ go\r\n") + seen.count(b"+ Ready for literal data\r\n") == needed


# --- arbitrary bytes ---------------------------------------------------------------------
# Fragments that steer random input into the interesting states.
_FRAGMENTS = [
    b"a1 ",
    b"* ",
    b"+ ",
    b"UID ",
    b"APPEND INBOX ",
    b"LOGIN ",
    b"AUTHENTICATE PLAIN",
    b"IDLE",
    b"STARTTLS",
    b"COMPRESS DEFLATE",
    b"DONE",
    b"{5}",
    b"{3+}",
    b"~{2}",
    b"{0}",
    b"{99999999999999999999}",
    b"{4294967295}",
    b"OK ",
    b"NO ",
    b"BAD ",
    b"BYE ",
    b"PREAUTH ",
    b"CAPABILITY IMAP4rev1 STARTTLS ",
    b"[CAPABILITY STARTTLS] ",
    b'LIST () "/" ',
    b"FETCH (BODY[] ",
    b'"q\\"x"',
    b"(",
    b")",
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
]
noise = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=12)), max_size=60).map(
    b"".join
)


@FUZZ
@given(st.data(), noise, st.sampled_from([64, 1024]))
def test_client_parser_arbitrary_bytes_only_protocol_errors(
    data: st.DataObject, blob: bytes, max_line: int
) -> None:
    parser = ClientParser(max_line)
    chunks = [*data.draw(splits(blob)), b""]
    fatal = False
    steps = 0
    for chunk in chunks:
        parser.receive_data(chunk)
        while True:
            steps += 1
            assert steps < 10_000, "parser does not make progress"
            try:
                ev = parser.next_event()
            except ProtocolError as exc:
                assert isinstance(exc.fatal, bool)
                if exc.fatal:
                    fatal = True
                    break
                continue
            if ev is NEED_DATA or ev is CLOSED:
                break
            if ev is PAUSED:
                tag = parser.waiting_tag
                assert tag is not None
                if data.draw(st.booleans(), label="continuation"):
                    if not parser.continuation_received():
                        parser.command_finished(tag)
                else:
                    assert parser.command_finished(tag)
                continue
        if fatal:
            break
    if fatal:
        # A fatal error ends the stream: nothing more is ever parsed.
        parser.receive_data(b"a NOOP\r\n")
        assert parser.next_event() is CLOSED


@FUZZ
@given(st.data(), noise, st.sampled_from([64, 1024]))
def test_server_parser_arbitrary_bytes_only_protocol_errors(
    data: st.DataObject, blob: bytes, max_line: int
) -> None:
    parser = ServerParser(max_line)
    total = 0
    for chunk in [*data.draw(splits(blob)), b""]:
        parser.receive_data(chunk)
        try:
            while (ev := parser.next_event()) is not NEED_DATA and ev is not CLOSED:
                total += len(getattr(ev, "raw", None) or getattr(ev, "data", b""))
        except ProtocolError as exc:
            assert exc.fatal  # the server direction has no recoverable errors
            assert parser.next_event() is CLOSED
            return
    # Everything the server sent is in the events (nothing is dropped or invented).
    assert total == len(blob)


@dataclass(frozen=True)
class _Verdict:
    block: tuple[str, str] | None = None
    rewritten: bytes | None = None
    log: str | None = None
    matched: tuple[tuple[str, str], ...] = ()


class _ChaosPolicy:
    """Needs the arguments of some commands, blocks others, rewrites LIST responses."""

    def needs_arguments(self, command: str) -> bool:
        return command in ("LOGIN", "SELECT", "APPEND", "AUTHENTICATE")

    def decide(self, facts: object, command: str, raw: bytes, complete: bool) -> _Verdict:
        if command in ("DELETE", "APPEND") or b"evil" in raw:
            return _Verdict(block=("no-delete", "blocked"), matched=(("no-delete", "block"),))
        return _Verdict(log="full")

    def rewrites_responses(self) -> bool:
        return True

    def rewrite_response(self, raw: bytes, facts: object = None) -> bytes | None:
        return raw.replace(b"a", b"b") if b"a" in raw else None

    def rewrite_status_text(self, raw: bytes) -> bytes | None:
        return None


@FUZZ
@given(st.data(), noise, noise, st.booleans())
def test_session_arbitrary_bytes_both_sides_never_raise(
    data: st.DataObject, client_blob: bytes, server_blob: bytes, with_policy: bool
) -> None:
    settings_ = SessionSettings(
        max_line=1024, policy=_ChaosPolicy() if with_policy else None, offer_starttls=True
    )
    session = Session(settings_)
    client_chunks = data.draw(splits(client_blob))
    server_chunks = data.draw(splits(server_blob))
    closed = False
    while client_chunks or server_chunks:
        use_client = bool(client_chunks) and (not server_chunks or data.draw(st.booleans()))
        if use_client:
            out = session.client_data(client_chunks.pop(0))
        else:
            out = session.server_data(server_chunks.pop(0))
        _check_output(out)
        closed = closed or out.close is not None
    for feed in (session.server_data, session.client_data):  # both sides hang up
        out = feed(b"")
        _check_output(out)
        closed = closed or out.close is not None
    assert closed and session.closed is not None
    session.abandon()


def _check_output(out: Output) -> None:
    assert all(isinstance(b, bytes) for b in out.to_client)
    assert all(isinstance(b, bytes) for b in out.to_upstream)
    assert all(isinstance(n, Note) for n in out.notes)
