"""What the session observes, pinned for mutation testing (issue 8): the ``CommandDone``
accounting (bytes, duration, codes, mailbox), logged responses, the greeting, commands left
in flight, and the response code and rule-name rules of the proxy's own answers.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools

import pytest

from imapproxy.session.core import MAX_CONSECUTIVE_BAD, Session, SessionSettings
from imapproxy.session.output import CommandDone, Output, ProtocolIssue, ResponseLogged
from imapproxy.session.settings import SessionFacts
from tests.session.test_session import FakePolicy, Recorder, Verdict, down, policy_playbook, up


def greeted(**settings: object) -> Recorder:
    pb = Recorder(**settings)
    pb.s(b"* OK ready\r\n")
    return pb


def test_bytes_in_and_out_are_credited_to_the_command() -> None:
    pb = greeted()
    command = [b"a APPEND INBOX (\\Seen) {5}\r\n", b"hello", b"\r\n"]
    pb.c(command[0])
    continuation = b"+ Ready\r\n"
    pb.s(continuation)
    pb.c(command[1])
    pb.c(command[2])
    answer = b"* 3 EXISTS\r\na OK [APPENDUID 1 9] Append completed\r\n"
    pb.s(answer)
    (done,) = pb.of(CommandDone)
    assert done.bytes_in == sum(map(len, command))
    assert done.bytes_out == len(continuation) + len(answer)
    assert (done.status, done.code) == ("OK", "APPENDUID")


def test_bytes_out_restart_after_each_tagged_answer() -> None:
    pb = greeted()
    pb.c(b"a NOOP\r\nb NOOP\r\n")
    pb.s(b"* 1 EXISTS\r\na OK\r\nb OK done\r\n")
    assert [(n.tag, n.bytes_in, n.bytes_out) for n in pb.of(CommandDone)] == [
        ("a", 8, len(b"* 1 EXISTS\r\na OK\r\n")),
        ("b", 8, len(b"b OK done\r\n")),
    ]


def test_bytes_out_count_literals_and_line_pieces() -> None:
    pb = greeted(max_line=1024)
    pb.c(b"a FETCH 1 BODY[]\r\n")
    response = b"* 1 FETCH (BODY[] {4}\r\nbody)\r\n* SEARCH " + b"1 " * 1000 + b"\r\na OK\r\n"
    assert down(pb.s(response)) == response
    (done,) = pb.of(CommandDone)
    assert done.bytes_out == len(response)


def test_greeting_bytes_answer_no_command() -> None:
    pb = Recorder()
    pb.c(b"a NOOP\r\n")  # sent before the greeting arrived
    pb.s(b"* OK [CAPABILITY IMAP4rev1] ready\r\na OK\r\n")
    (done,) = pb.of(CommandDone)
    assert done.bytes_out == len(b"a OK\r\n")


def test_duration_is_measured_on_the_sessions_clock() -> None:
    ticks = itertools.count(100.0, 2.5)
    session = Session(SessionSettings(), clock=lambda: next(ticks))
    session.server_data(b"* OK ready\r\n")
    session.client_data(b"a NOOP\r\n")  # started at 100.0
    out = session.server_data(b"a OK\r\n")  # finished at 102.5
    (done,) = [n for n in out.notes if isinstance(n, CommandDone)]
    assert done.duration == 2.5


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (b"a NO [trycreate] No such mailbox\r\n", "TRYCREATE"),
        (b"a OK [READ-WRITE] done\r\n", "READ-WRITE"),
        (b"a OK [UIDNEXT\r\n", "UIDNEXT"),
        (b"a OK [] empty\r\n", None),
        (b"a OK done\r\n", None),
        (b"a NO " + b"x" * 60 + b" [LATE] code too far in\r\n", None),
    ],
)
def test_response_code_of_the_tagged_answer(answer: bytes, code: str | None) -> None:
    pb = greeted()
    pb.c(b"a NOOP\r\n")
    assert down(pb.s(answer)) == answer
    (done,) = pb.of(CommandDone)
    assert done.code == code


def test_mailbox_and_user_in_the_notes() -> None:
    pb = greeted()
    pb.c(b"a LOGIN bob pw\r\n")
    pb.s(b"a OK\r\n")
    pb.c(b"b SELECT Work\r\n")
    pb.s(b"b OK\r\n")
    pb.c(b"c STATUS Other (MESSAGES)\r\nd FETCH 1 FLAGS\r\n")
    pb.s(b"c OK\r\nd OK\r\n")
    notes = pb.of(CommandDone)
    assert [(n.tag, n.user, n.mailbox) for n in notes] == [
        ("a", "bob", None),
        ("b", "bob", "Work"),  # the SELECT's own mailbox
        ("c", "bob", "Work"),  # other commands: the selected one
        ("d", "bob", "Work"),
    ]


def test_oversized_select_name_is_not_observed() -> None:
    pb = greeted(max_line=1024)
    pb.c(b"a SELECT {2000}\r\n")
    pb.s(b"+ go\r\n")
    pb.c(b"x" * 2000 + b"\r\n")
    pb.s(b"a OK\r\n")
    assert pb.up == b"a SELECT {2000}\r\n" + b"x" * 2000 + b"\r\n"  # forwarded all the same
    assert pb.session.selected is None


def test_select_whose_arguments_do_not_parse_selects_nothing_known() -> None:
    pb = greeted()
    pb.c(b"a SELECT (INBOX\r\n")
    pb.s(b"a OK\r\n")
    assert pb.session.selected is None


def test_login_observed_across_literals() -> None:
    pb = greeted()
    pb.c(b"a LOGIN {3}\r\n")
    pb.s(b"+ \r\n")
    pb.c(b"bob {2}\r\n")
    pb.s(b"+ \r\n")
    pb.c(b"pw\r\n")
    pb.s(b"a OK\r\n")
    assert pb.session.user == "bob"


def test_failed_select_after_a_successful_one_deselects() -> None:
    pb = greeted()
    pb.c(b"a EXAMINE Work\r\n")
    pb.s(b"a OK\r\n")
    assert pb.session.selected == "Work"
    pb.c(b"b CLOSE\r\n")
    pb.s(b"b NO not now\r\n")  # a failed CLOSE leaves the selection
    assert pb.session.selected == "Work"
    pb.c(b"c EXAMINE Missing\r\n")
    pb.s(b"c NO\r\n")
    assert pb.session.selected is None


def test_preauth_greeting_keeps_a_known_user_and_logs_nothing_extra() -> None:
    pb = Recorder()
    pb.s(b"* PREAUTH ready\r\n")
    assert pb.session.user == "(preauth)"
    pb.c(b"a NOOP\r\n")
    pb.s(b"a OK\r\n")
    assert pb.of(CommandDone)[0].user == "(preauth)"


def test_only_the_first_untagged_line_is_the_greeting() -> None:
    pb = Recorder()
    pb.s(b"* OK ready\r\n")
    pb.s(b"* PREAUTH late\r\n")
    assert pb.session.user is None
    out = pb.s(b"* BYE going away\r\n")
    assert down(out) == b"* BYE going away\r\n"
    assert down(pb.s(b"")) == b""  # the server said BYE itself


def test_capability_response_code_in_an_untagged_ok_any_case() -> None:
    pb = Recorder()
    pb.s(b"* OK ready\r\n")
    out = pb.s(b"* OK [capability IMAP4rev1 STARTTLS IDLE] now\r\n")
    assert down(out) == b"* OK [capability IMAP4rev1 IDLE] now\r\n"
    other = b"* OK [ALERT] STARTTLS [CAPABILITY is just text here\r\n"
    assert down(pb.s(other)) == other


def test_unknown_server_lines_are_forwarded() -> None:
    pb = greeted()
    assert down(pb.s(b"garbage line\r\n")) == b"garbage line\r\n"


def test_commands_in_flight_are_abandoned_with_status_none() -> None:
    pb = greeted()
    pb.c(b"a NOOP\r\nb SELECT INBOX\r\n")
    done = pb.session.abandon()
    assert [(n.tag, n.command, n.status) for n in done] == [
        ("a", "NOOP", "none"),
        ("b", "SELECT", "none"),
    ]
    assert pb.session.abandon() == []


def test_full_log_lines_are_stripped_and_truncated() -> None:
    def decider(facts: object, command: str, raw: bytes, complete: bool) -> Verdict:
        return Verdict(log="full", matched=(("audit", "log"),))

    pb = policy_playbook(FakePolicy(decider=decider))
    pb.c(b"a SEARCH ALL\r\n")
    long_line = b"* SEARCH " + b"7" * 600 + b"\r\n"
    pb.s(b"* 2 EXISTS\r\n" + long_line + b"a OK\r\n")
    logged = [n.line for n in pb.of(ResponseLogged)]
    assert logged == ["* 2 EXISTS", long_line.decode()[:512]]
    pb.c(b"b NOOP\r\n")
    pb.s(b"* 3 EXISTS\r\nb OK\r\n")  # logged while a "full" command is in flight only
    assert len(pb.of(ResponseLogged)) == 3
    assert pb.of(CommandDone)[0].log == "full"


def test_no_full_log_without_a_full_command_in_flight() -> None:
    pb = policy_playbook(FakePolicy())
    pb.c(b"a NOOP\r\n")
    pb.s(b"* 2 EXISTS\r\na OK\r\n")
    assert pb.of(ResponseLogged) == []


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        ("ro.archive_1-x", b"ro.archive_1-x"),
        ("rule!", b"rule!"),  # "!" is an ATOM-CHAR (RFC 9051, wire/grammar.ATOM)
        ("no deletes", b"POLICY"),
        ("rule]", b"POLICY"),  # "]" would end the code early
        ("r*", b"POLICY"),
        ("r{1}", b"POLICY"),
        ("Entw\u00fcrfe", b"POLICY"),  # atoms in response codes are ASCII
    ],
)
def test_rule_name_is_the_response_code_only_when_it_is_an_atom(rule: str, code: bytes) -> None:
    pb = policy_playbook(FakePolicy(blocks={"DELETE": (rule, "nope")}))
    assert down(pb.c(b"a DELETE x\r\n")) == b"a NO [" + code + b"] nope\r\n"


def test_outputs_are_fresh_per_call() -> None:
    session = Session(SessionSettings())
    first = session.server_data(b"* OK ready\r\n")
    second = session.client_data(b"a NOOP\r\n")
    assert first is not second
    assert second == Output(to_upstream=[b"a NOOP\r\n"])
    assert up(Output()) == b""


@pytest.mark.parametrize("status", [b"NO", b"BAD"])
def test_capability_code_in_a_tagged_no_is_filtered(status: bytes) -> None:
    pb = greeted()
    pb.c(b"a LOGIN bob pw\r\n")
    out = pb.s(b"a %s [CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE] Try again\r\n" % status)
    assert down(out) == b"a %s [CAPABILITY IMAP4rev1] Try again\r\n" % status


@pytest.mark.parametrize("status", [b"NO", b"BAD", b"BYE"])
def test_capability_code_in_an_untagged_status_is_filtered(status: bytes) -> None:
    pb = greeted()
    out = pb.s(b"* %s [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hmm\r\n" % status)
    assert down(out) == b"* %s [CAPABILITY IMAP4rev1] hmm\r\n" % status


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (b"a NO [TRYCREATE] see [RFC 9051]\r\n", "TRYCREATE"),  # the first bracket
        (b"a NO [\xc4X] odd\r\n", "\ufffdX"),
    ],
)
def test_response_code_is_the_first_bracket_and_never_raises(answer: bytes, code: str) -> None:
    pb = greeted()
    pb.c(b"a NOOP\r\n")
    pb.s(answer)
    assert pb.of(CommandDone)[0].code == code


def test_select_observed_up_to_exactly_the_line_cap() -> None:
    pb = greeted(max_line=64)
    name = b"m" * 47
    pb.c(b"a SELECT {47}\r\n")  # 15 + 47 + 2 = 64 bytes: not over the cap
    pb.s(b"+ \r\n")
    pb.c(name + b"\r\n")
    pb.s(b"a OK\r\n")
    assert pb.session.selected == name.decode()
    pb.c(b"b SELECT {48}\r\n")  # 65 bytes: too big to observe
    pb.s(b"+ \r\n")
    pb.c(b"n" * 48 + b"\r\n")
    pb.s(b"b OK\r\n")
    assert pb.session.selected is None


def test_too_many_bad_lines_notes_and_texts() -> None:
    pb = greeted()
    out = pb.c(b"(x\r\n" * MAX_CONSECUTIVE_BAD)
    assert out.notes[0] == ProtocolIssue("client", "malformed command line", False)
    assert down(out).endswith(
        b"* BAD malformed command line\r\n* BYE Too many invalid commands\r\n"
    )
    assert out.close == "too many invalid commands"


def test_failed_select_note_names_the_mailbox_it_tried() -> None:
    pb = greeted()
    pb.c(b"a SELECT Missing\r\n")
    pb.s(b"a NO [NONEXISTENT] Unknown mailbox\r\n")
    (done,) = pb.of(CommandDone)
    assert (done.mailbox, pb.session.selected) == ("Missing", None)


def test_commands_answered_by_the_proxy_have_no_bytes_out() -> None:
    pb = policy_playbook(FakePolicy(blocks={"DELETE": ("no-delete", "No")}))
    pb.c(b"a DELETE x\r\nb NOOP\r\n")
    (done,) = pb.of(CommandDone)
    assert (done.tag, done.bytes_in, done.bytes_out) == ("a", 12, 0)
    (left,) = pb.session.abandon()
    assert (left.tag, left.bytes_in, left.bytes_out) == ("b", 8, 0)


def test_facts_follow_the_user_and_the_selected_mailbox() -> None:
    policy = FakePolicy()
    pb = policy_playbook(policy)
    pb.c(b"a LOGIN bob pw\r\n")
    pb.s(b"a OK\r\n")
    pb.c(b"b SELECT INBOX\r\n")
    pb.s(b"b OK\r\n")
    pb.c(b"c FETCH 1 FLAGS\r\n")
    ip = ipaddress.ip_address("192.0.2.7")
    assert [d[:2] for d in policy.decisions] == [
        (SessionFacts(ip, "bob", None), "LOGIN"),  # judged by the user it names
        (SessionFacts(ip, "bob", None), "SELECT"),
        (SessionFacts(ip, "bob", "INBOX"), "FETCH"),
    ]


def test_login_and_authenticate_facts_keep_the_selected_mailbox() -> None:
    # Out of order for IMAP (the server refuses them when authenticated), but the verdict is
    # the proxy's: it must see the state the session is in.
    policy = FakePolicy()
    pb = policy_playbook(policy)
    pb.c(b"s SELECT INBOX\r\n")
    pb.s(b"s OK\r\n")
    creds = base64.b64encode(b"\x00carol\x00pw")
    pb.c(b"a AUTHENTICATE PLAIN " + creds + b"\r\n")
    pb.s(b"a NO [AUTHENTICATIONFAILED] no\r\n")
    pb.c(b"b LOGIN dave pw\r\n")
    ip = ipaddress.ip_address("192.0.2.7")
    assert [d[:2] for d in policy.decisions[1:]] == [
        (SessionFacts(ip, "carol", "INBOX"), "AUTHENTICATE"),
        (SessionFacts(ip, "dave", "INBOX"), "LOGIN"),
    ]
