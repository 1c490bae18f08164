"""The session's parts on their own (in-flight table, held commands, the release queue),
the login seam through a playbook, and the playbook helper itself."""

from __future__ import annotations

import base64

import pytest

from imapproxy.policy import SessionFacts
from imapproxy.session.held import HeldCommand, ReleaseQueue
from imapproxy.session.inflight import InFlight, InFlightCommand
from imapproxy.session.output import CommandBlocked, CommandDone, LoginDone, RuleHit
from imapproxy.wire import LiteralHeader

from .playbook import (
    Like,
    Paused,
    Playbook,
    PlaybookFactory,
    Resumed,
    StartTLS,
    abandon,
    client,
    server,
    tls_started,
    to_client,
    to_upstream,
)
from .test_integrity import RULES, compile_rules


# --- InFlight ----------------------------------------------------------------------------
def _cmd(tag: bytes, name: str = "NOOP") -> InFlightCommand:
    return InFlightCommand(tag, name, 0.0)


def test_local_answer_waits_for_every_command_forwarded_before_it() -> None:
    table, sent = InFlight(), list[bytes]()
    a, b = _cmd(b"a"), _cmd(b"b")
    table.track(a)
    table.answer_in_order(b"x", b"x NO\r\n", table.seq, sent)  # after a
    table.track(b)
    table.answer_in_order(b"y", b"y NO\r\n", table.seq, sent)  # after b
    assert sent == [] and table.queued_bytes == 12
    assert table.tag_in_flight(b"x") and table.tag_in_flight(b"a")
    del table.pending[b"a"]  # a answered
    table.release_answers(sent)
    assert sent == [b"x NO\r\n"] and not table.tag_in_flight(b"x")
    del table.pending[b"b"]
    table.release_answers(sent)
    assert sent == [b"x NO\r\n", b"y NO\r\n"] and table.queued_bytes == 0


def test_local_answer_with_nothing_before_it_goes_at_once() -> None:
    table, sent = InFlight(), list[bytes]()
    table.answer_in_order(b"x", b"x BAD\r\n", table.seq, sent)
    assert sent == [b"x BAD\r\n"] and table.queued_bytes == 0


def test_duplicate_tags_are_counted_while_queued() -> None:
    table, sent = InFlight(), list[bytes]()
    table.track(_cmd(b"a"))
    table.answer_in_order(b"d", b"d BAD\r\n", table.seq, sent)
    table.answer_in_order(b"d", b"d BAD\r\n", table.seq, sent)
    table.pending.clear()
    table.release_answers(sent)
    assert sent == [b"d BAD\r\n"] * 2 and not table.tag_in_flight(b"d")


def test_abandon_empties_the_table_in_forwarding_order() -> None:
    table = InFlight()
    for tag in (b"b", b"a", b"c"):
        table.track(_cmd(tag))
    assert [c.tag for c in table.abandon()] == [b"b", b"a", b"c"]
    assert not table.pending and table.oldest() == table.seq + 1


# --- HeldCommand and ReleaseQueue ----------------------------------------------------------
def test_held_command_bounds_its_payload() -> None:
    held = HeldCommand(b"a APPEND INBOX {10}\r\n")
    assert not held.announce(LiteralHeader(10, True, False), max_payload=16)
    held.parts.append(b"x" * 10)
    held.add_line(b" {7}\r\n")
    assert held.announce(LiteralHeader(7, True, False), max_payload=16)


@pytest.mark.parametrize(
    ("head", "known"),
    [(b"a APPEND INBOX {5}\r\n", True), (b"a APPEND {5}\r\n", False)],
)
def test_append_target_is_known_once_the_mailbox_is_read(head: bytes, known: bool) -> None:
    assert HeldCommand(head).append_target_known("APPEND") is known
    assert not HeldCommand(head).append_target_known("STATUS")


def test_release_queue_sends_one_segment_per_plus_and_what_waited_behind() -> None:
    q, up = ReleaseQueue(), list[bytes]()
    q.release(b"g", [b"g STATUS {5}\r\n", b"INBOX (MESSAGES)\r\n"], up)
    assert up == [b"g STATUS {5}\r\n"] and q.waiting and q.waiting_tag == b"g"
    q.queue(b"n NOOP\r\n")
    q.release(b"h", [b"h X {1}\r\n", b"y\r\n"], up)  # behind g, whole
    assert q.queued_bytes == len(b"n NOOP\r\nh X {1}\r\ny\r\n")
    q.continuation(up)  # g's "+": its last segment, then the queue until h's first "+"
    assert up[1:] == [b"INBOX (MESSAGES)\r\n", b"n NOOP\r\n", b"h X {1}\r\n"]
    assert q.waiting_tag == b"h" and list(q.waiting) == [b"y\r\n"]
    assert q.queued_bytes == 0


def test_release_queue_abort_drops_the_waiting_segments_only() -> None:
    q, up = ReleaseQueue(), list[bytes]()
    q.release(b"g", [b"g X {1}\r\n", b"a {1}\r\n", b"b\r\n"], up)
    q.queue(b"n NOOP\r\n")
    q.abort(up)  # g answered NO mid-way
    assert up == [b"g X {1}\r\n", b"n NOOP\r\n"] and not q.waiting and not q.behind


# --- the login seam, through the session ------------------------------------------------
def test_starttls_waits_for_earlier_commands_then_starts_tls(playbook: PlaybookFactory) -> None:
    assert (
        playbook(offer_starttls=True)
        >> server(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        << to_client(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
        >> client(b"a NOOP\r\nt STARTTLS\r\n")
        << to_upstream(b"a NOOP\r\n")
        << Paused()  # nothing is read after STARTTLS until it is answered
        >> server(b"a OK\r\n")
        << to_client(b"a OK\r\nt OK Begin TLS negotiation now\r\n")
        << StartTLS()
        << Like(CommandDone, tag="a", status="OK")
        << Like(CommandDone, tag="t", command="STARTTLS", status="OK")
        >> tls_started()
        << Resumed()
        >> client(b"b CAPABILITY\r\n")
        << to_upstream(b"b CAPABILITY\r\n")
        >> abandon()
        << Like(CommandDone, tag="b", status="none")
    )


def test_authenticate_blocked_once_its_user_is_known(playbook: PlaybookFactory) -> None:
    rules = RULES + (
        "- {name: no-mallory, action: block, when: {user: [mallory], command: [AUTHENTICATE]}}\n"
    )
    pb = playbook(policy=compile_rules(rules), facts=SessionFacts)
    plain = base64.b64encode(b"\x00mallory\x00pw")
    assert (
        pb
        >> server(b"* OK ready\r\n")
        << to_client(b"* OK ready\r\n")
        >> client(b"a AUTHENTICATE PLAIN\r\n")
        << to_upstream(b"a AUTHENTICATE PLAIN\r\n")
        << Paused()
        >> server(b"+ \r\n")
        << to_client(b"+ \r\n")
        << Resumed()
        >> client(plain + b"\r\n")
        << to_client(b"a NO [no-mallory] Blocked by policy rule no-mallory\r\n")
        << to_upstream(b"*\r\n")  # the exchange upstream is cancelled, never completed
        << RuleHit("no-mallory", "block")
        << CommandBlocked("no-mallory", "AUTHENTICATE")
        << LoginDone("PLAIN", "blocked", "mallory")
        << Like(CommandDone, tag="a", status="NO", user="mallory")
        << Paused()
        >> server(b"a BAD Authentication cancelled\r\n")  # swallowed: the client has ours
        << Resumed()
    )
    assert pb.session.user is None


# --- the playbook helper ----------------------------------------------------------------
def test_playbook_fails_on_output_nobody_expected(playbook: PlaybookFactory) -> None:
    pb = playbook()
    with pytest.raises(AssertionError, match="Playbook mismatch"):
        assert pb >> server(b"* OK ready\r\n")


def test_playbook_fails_on_expected_output_that_did_not_happen(
    playbook: PlaybookFactory,
) -> None:
    pb = playbook()
    with pytest.raises(AssertionError, match=r"to_upstream"):
        assert pb >> server(b"* OK ready\r\n") << to_client(b"* OK ready\r\n") << to_upstream(b"x")


def test_playbook_is_unfinished_until_asserted(playbook: PlaybookFactory) -> None:
    pb = playbook()
    pb >> server(b"* OK ready\r\n")
    assert not pb.asserted
    assert pb << to_client(b"* OK ready\r\n")
    assert pb.asserted and isinstance(pb, Playbook)
