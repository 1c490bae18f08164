"""Session behaviour pinned for mutation testing (issue 8, "Behaviour no test pins").

Each test drives the pure session (``Recorder`` from ``test_session``) and asserts what
reaches each side and what is observed: TLS state, SASL, continuation routing, held
commands, rewriting through a real compiled policy, logging and policy reload.
"""

from __future__ import annotations

import base64
import ipaddress

import pytest

from imapproxy.policy import Policy, SessionFacts
from imapproxy.session.output import (
    CommandBlocked,
    CommandDone,
    LoginDone,
    ResponseLogged,
    RuleHit,
)
from tests.policy.test_engine import compile_rules
from tests.session.test_session import (
    PASSWORD,
    FakePolicy,
    Recorder,
    Verdict,
    assert_no_secret,
    down,
    policy_playbook,
    up,
)

CREDS_MALLORY = base64.b64encode(b"\x00mallory\x00" + PASSWORD)
CREDS_BOB = base64.b64encode(b"\x00bob\x00" + PASSWORD)


def no_mallory(facts: object, command: str, raw: bytes, complete: bool) -> Verdict | None:
    user = facts.user  # type: ignore[attr-defined]
    if command in ("LOGIN", "AUTHENTICATE") and user == "mallory":
        return Verdict(block=("no-mallory", "Go away"), matched=(("no-mallory", "block"),))
    return None


def greeted(**settings: object) -> Recorder:
    pb = Recorder(**settings)
    pb.s(b"* OK ready\r\n")
    pb.down = b""
    return pb


# --- TLS state ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [b"a AUTHENTICATE PLAIN\r\n", b"a AUTHENTICATE PLAIN " + CREDS_BOB + b"\r\n"],
    ids=["continuation", "sasl-ir"],
)
def test_require_tls_refuses_authenticate_before_starttls(command: bytes) -> None:
    pb = greeted(offer_starttls=True, require_tls=True)
    out = pb.c(command + b"b NOOP\r\n")
    assert down(out) == b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
    assert up(out) == b"b NOOP\r\n"
    assert not pb.session.client_paused
    assert [(n.tag, n.command, n.status) for n in pb.of(CommandDone)] == [
        ("a", "AUTHENTICATE", "NO")
    ]
    assert pb.of(LoginDone) == []  # nothing reached the server: no login attempt
    assert_no_secret(pb, PASSWORD, CREDS_BOB)


def test_require_tls_allows_authenticate_once_tls_is_up() -> None:
    pb = greeted(offer_starttls=True, require_tls=True)
    out = pb.c(b"s STARTTLS\r\n")
    assert out.start_client_tls and down(out) == b"s OK Begin TLS negotiation now\r\n"
    pb.session.client_tls_started()
    command = b"a AUTHENTICATE PLAIN " + CREDS_BOB + b"\r\n"
    assert up(pb.c(command)) == command
    pb.s(b"a OK Logged in\r\n")
    assert pb.session.user == "bob"


@pytest.mark.parametrize("rules", [False, True], ids=["pass-through", "confirmed-literals"])
def test_require_tls_discards_a_refused_logins_nonsync_payload(rules: bool) -> None:
    settings: dict[str, object] = {"offer_starttls": True, "require_tls": True}
    if rules:
        settings.update(policy=FakePolicy())
    pb = greeted(**settings)
    data = b"a LOGIN {3+}\r\nbob {%d+}\r\n" % len(PASSWORD) + PASSWORD + b"\r\nc NOOP\r\n"
    for chunk in (data[:10], data[10:25], data[25:]):
        pb.c(chunk)
    assert pb.down == b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
    assert pb.up == b"c NOOP\r\n"  # neither the user nor the password left the proxy
    assert_no_secret(pb, PASSWORD)


def test_require_tls_refused_sync_login_sends_no_continuation() -> None:
    pb = greeted(offer_starttls=True, require_tls=True)
    out = pb.c(b"a LOGIN {3}\r\n")
    assert down(out) == b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
    assert up(pb.c(b"bob NOOP\r\n")) == b"bob NOOP\r\n"  # the next bytes are a command


@pytest.mark.parametrize(
    "settings",
    [
        {"offer_starttls": True, "client_tls_active": True},
        {"offer_starttls": False, "client_tls_active": True},
    ],
)
def test_starttls_when_tls_is_already_active(settings: dict[str, object]) -> None:
    pb = greeted(**settings)
    out = pb.c(b"a STARTTLS\r\nb NOOP\r\n")
    assert down(out) == b"a BAD TLS is already active\r\n"
    assert up(out) == b"b NOOP\r\n" and not out.start_client_tls


def test_starttls_after_the_proxys_own_tls_handshake() -> None:
    pb = greeted(offer_starttls=True)
    assert pb.c(b"a STARTTLS\r\n").start_client_tls
    pb.session.client_tls_started()
    out = pb.c(b"b STARTTLS\r\n")
    assert down(out) == b"b BAD TLS is already active\r\n" and not out.start_client_tls


def test_starttls_and_compress_answers() -> None:
    pb = greeted()
    out = pb.c(b"a STARTTLS\r\nb COMPRESS DEFLATE\r\n")
    assert down(out) == (
        b"a BAD STARTTLS is not available\r\n"
        b"b NO [CANNOT] COMPRESS is not available through this proxy\r\n"
    )
    assert [(n.tag, n.status) for n in pb.of(CommandDone)] == [("a", "BAD"), ("b", "NO")]


def test_tls_active_capabilities_drop_starttls_and_logindisabled() -> None:
    pb = Recorder(offer_starttls=True, require_tls=True, client_tls_active=True)
    out = pb.s(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN] hi\r\n")
    assert down(out) == b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n"
    out = pb.c(b"a LOGIN bob pw\r\n")
    assert up(out) == b"a LOGIN bob pw\r\n"  # TLS is up: require is met


def test_capabilities_change_after_the_client_tls_handshake() -> None:
    pb = Recorder(offer_starttls=True, require_tls=True)
    pb.s(b"* OK ready\r\n")
    pb.c(b"s STARTTLS\r\n")
    pb.session.client_tls_started()
    pb.c(b"a CAPABILITY\r\n")
    out = pb.s(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na OK\r\n")
    assert down(out) == b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na OK\r\n"


# --- SASL ---------------------------------------------------------------------------------------
def test_empty_initial_response_leaves_the_next_line_naming_the_user() -> None:
    # "=" is an empty initial response (RFC 4959): it names nobody, so the next client line
    # is the one that names the user, and it must meet the user rule.
    policy = FakePolicy(decider=no_mallory)
    pb = policy_playbook(policy)
    assert up(pb.c(b"a AUTHENTICATE PLAIN =\r\n")) == b"a AUTHENTICATE PLAIN =\r\n"
    assert down(pb.s(b"+ \r\n")) == b"+ \r\n"
    out = pb.c(CREDS_MALLORY + b"\r\n")
    assert up(out) == b"*\r\n"
    assert down(out) == b"a NO [no-mallory] Go away\r\n"
    assert LoginDone("PLAIN", "blocked", "mallory") in pb.notes
    assert_no_secret(pb, PASSWORD, CREDS_MALLORY)


def test_allowed_authenticate_without_initial_response_under_a_policy() -> None:
    policy = FakePolicy(decider=no_mallory)
    pb = policy_playbook(policy)
    assert up(pb.c(b"a authenticate plain\r\n")) == b"a authenticate plain\r\n"
    assert down(pb.s(b"+ \r\n")) == b"+ \r\n"
    assert up(pb.c(CREDS_BOB + b"\r\n")) == CREDS_BOB + b"\r\n"
    out = pb.s(b"a OK Logged in\r\n")
    assert down(out) == b"a OK Logged in\r\n"
    assert pb.session.user == "bob"
    assert pb.of(LoginDone) == [LoginDone("PLAIN", "ok", "bob")]
    ip = ipaddress.ip_address("192.0.2.7")
    # Judged twice: on the command (nobody named yet), then on the user its data names.
    assert [d[:2] for d in policy.decisions] == [
        (SessionFacts(ip, None, None), "AUTHENTICATE"),
        (SessionFacts(ip, "bob", None), "AUTHENTICATE"),
    ]
    assert up(pb.c(b"b NOOP\r\n")) == b"b NOOP\r\n"
    assert_no_secret(pb, PASSWORD, CREDS_BOB)


def test_only_the_first_sasl_response_is_judged() -> None:
    policy = FakePolicy(decider=no_mallory)
    pb = policy_playbook(policy)
    pb.c(b"a AUTHENTICATE LOGIN\r\n")
    pb.s(b"+ VXNlcm5hbWU6\r\n")
    pb.c(base64.b64encode(b"bob") + b"\r\n")
    pb.s(b"+ UGFzc3dvcmQ6\r\n")
    password_line = base64.b64encode(b"mallory") + b"\r\n"  # a password that looks like a user
    assert up(pb.c(password_line)) == password_line
    pb.s(b"a OK\r\n")
    assert pb.session.user == "bob"
    assert len(policy.decisions) == 2


def test_authenticate_without_a_mechanism() -> None:
    pb = greeted()
    pb.c(b"a AUTHENTICATE\r\n")
    pb.s(b"a BAD Missing mechanism\r\n")
    assert pb.of(LoginDone) == [LoginDone("?", "failed", None)]


def test_blocked_sasl_login_notes() -> None:
    pb = policy_playbook(FakePolicy(decider=no_mallory))
    pb.c(b"a AUTHENTICATE PLAIN\r\n")
    pb.s(b"+ \r\n")
    pb.c(CREDS_MALLORY + b"\r\n")
    done = pb.of(CommandDone)
    assert [(n.tag, n.command, n.status, n.user) for n in done] == [
        ("a", "AUTHENTICATE", "NO", "mallory")
    ]
    assert [n for n in pb.notes if not isinstance(n, CommandDone)] == [
        RuleHit("no-mallory", "block"),
        CommandBlocked("no-mallory", "AUTHENTICATE"),
        LoginDone("PLAIN", "blocked", "mallory"),
    ]
    pb.s(b"a BAD Authentication cancelled\r\n")  # the upstream's answer is swallowed
    assert len(pb.of(CommandDone)) == 1 and pb.down.count(b"a ") == 1


def test_blocked_sasl_ir_login_notes() -> None:
    pb = policy_playbook(FakePolicy(decider=no_mallory))
    pb.c(b"a AUTHENTICATE PLAIN " + CREDS_MALLORY + b"\r\n")
    assert [n for n in pb.notes if not isinstance(n, CommandDone)] == [
        RuleHit("no-mallory", "block"),
        CommandBlocked("no-mallory", "AUTHENTICATE"),
        LoginDone("PLAIN", "blocked", "mallory"),
    ]
    assert pb.up == b""


@pytest.mark.parametrize("held", [False, True], ids=["judged-on-its-line", "held-for-its-literals"])
def test_blocked_login_notes_name_the_user(held: bool) -> None:
    needs = frozenset({"LOGIN"}) if held else frozenset()
    pb = policy_playbook(FakePolicy(decider=no_mallory, needs=needs))
    if held:
        assert down(pb.c(b"a LOGIN {7}\r\n")) == b"+ Ready for literal data\r\n"
        pb.c(b"mallory " + PASSWORD + b"\r\n")
    else:
        pb.c(b"a LOGIN mallory " + PASSWORD + b"\r\n")
    assert pb.down.endswith(b"a NO [no-mallory] Go away\r\n") and pb.up == b""
    assert [n for n in pb.notes if not isinstance(n, CommandDone)] == [
        RuleHit("no-mallory", "block"),
        CommandBlocked("no-mallory", "LOGIN"),
        LoginDone("LOGIN", "blocked", "mallory"),
    ]


def test_blocked_login_answer_and_accounting() -> None:
    pb = policy_playbook(FakePolicy(decider=no_mallory))
    command = b"a LOGIN mallory " + PASSWORD + b"\r\n"
    out = pb.c(command)
    assert down(out) == b"a NO [no-mallory] Go away\r\n" and up(out) == b""
    assert RuleHit("no-mallory", "block") in out.notes
    assert CommandBlocked("no-mallory", "LOGIN") in out.notes
    assert [n.result for n in pb.of(LoginDone)] == ["blocked"]
    (done,) = pb.of(CommandDone)
    assert (done.tag, done.status, done.bytes_in) == ("a", "NO", len(command))
    assert pb.session.user is None
    assert_no_secret(pb, PASSWORD)


# --- continuation routing -----------------------------------------------------------------------
def test_confirmed_literal_then_idle_continuation_reaches_the_client() -> None:
    pb = policy_playbook(FakePolicy())
    assert up(pb.c(b"a APPEND INBOX {3+}\r\nabc\r\n")) == b"a APPEND INBOX {3}\r\n"
    out = pb.s(b"+ OK\r\n")
    assert down(out) == b"" and up(out) == b"abc\r\n"  # the confirmation is the proxy's
    pb.s(b"a OK appended\r\n")
    assert up(pb.c(b"b IDLE\r\n")) == b"b IDLE\r\n"
    assert down(pb.s(b"+ idling\r\n")) == b"+ idling\r\n"
    assert up(pb.c(b"DONE\r\n")) == b"DONE\r\n"
    pb.s(b"b OK\r\n")
    assert up(pb.c(b"c APPEND INBOX {2}\r\n")) == b"c APPEND INBOX {2}\r\n"
    assert down(pb.s(b"+ go\r\n")) == b"+ go\r\n"  # a {n} of the client's own: relayed


def test_second_nonsync_literal_on_a_continuation_line_is_confirmed() -> None:
    pb = policy_playbook(FakePolicy())
    out = pb.c(b"a APPEND INBOX {3+}\r\nabc {4+}\r\ndefg\r\nb NOOP\r\n")
    assert up(out) == b"a APPEND INBOX {3}\r\n"
    assert up(pb.s(b"+ go\r\n")) == b"abc {4}\r\n"
    out = pb.s(b"+ go\r\n")
    assert up(out) == b"defg\r\nb NOOP\r\n" and down(out) == b""
    assert pb.up == b"a APPEND INBOX {3}\r\nabc {4}\r\ndefg\r\nb NOOP\r\n"


def test_nonsync_literals_inside_a_held_command_are_confirmed() -> None:
    pb = policy_playbook(FakePolicy(needs=frozenset({"LOGIN"})))
    out = pb.c(b"a LOGIN {3+}\r\nbob {%d+}\r\n" % len(PASSWORD) + PASSWORD + b"\r\nb NOOP\r\n")
    assert down(out) == b""  # {n+}: the client gets no "+" from the proxy either
    assert up(out) == b"a LOGIN {3}\r\n"
    assert up(pb.s(b"+ \r\n")) == b"bob {%d}\r\n" % len(PASSWORD)
    assert up(pb.s(b"+ \r\n")) == PASSWORD + b"\r\n"
    assert pb.down == b""
    # LOGIN is a state barrier with rules (issue 8): b is read once LOGIN has its answer.
    out = pb.s(b"a OK\r\n")
    assert up(out) == b"b NOOP\r\n" and down(out) == b"a OK\r\n"


@pytest.mark.parametrize(
    ("confirm", "with_policy", "converted"),
    [(None, False, False), (None, True, True), (True, False, True), (False, True, False)],
)
def test_confirmed_literals_setting(
    confirm: bool | None, with_policy: bool, converted: bool
) -> None:
    settings: dict[str, object] = {"confirm_literals": confirm}
    if with_policy:
        settings.update(policy=FakePolicy())
    pb = greeted(**settings)
    out = pb.c(b"a APPEND INBOX {3+}\r\nabc\r\n")
    if converted:
        assert up(out) == b"a APPEND INBOX {3}\r\n"
        assert up(pb.s(b"+ go\r\n")) == b"abc\r\n"
    else:
        assert up(out) == b"a APPEND INBOX {3+}\r\nabc\r\n"
    assert pb.down == b""


# --- held commands ------------------------------------------------------------------------------
def test_several_client_chunks_queued_behind_a_held_command() -> None:
    # DELETE: held, and no state barrier (a SELECT would stop the parser until its answer).
    pb = policy_playbook(FakePolicy(needs=frozenset({"DELETE"})))
    pb.c(b"a DELETE {5}\r\nINBOX\r\n")
    assert pb.up == b"a DELETE {5}\r\n"
    for chunk in (b"b NOOP\r\n", b"c FETCH 1 FLAGS\r\n", b"d NO", b"OP\r\n"):
        assert up(pb.c(chunk)) == b""
    assert pb.session.backlog == len(b"b NOOP\r\nc FETCH 1 FLAGS\r\nd NOOP\r\n")
    out = pb.s(b"+ go\r\n")
    assert up(out) == b"INBOX\r\nb NOOP\r\nc FETCH 1 FLAGS\r\nd NOOP\r\n"
    assert pb.session.backlog == 0


def test_held_command_abort_is_tied_to_its_own_tag() -> None:
    pb = policy_playbook(FakePolicy(needs=frozenset({"SELECT"})))
    pb.c(b"z NOOP\r\na SELECT {5}\r\nINBOX\r\nb NOOP\r\n")
    assert pb.up == b"z NOOP\r\na SELECT {5}\r\n"
    out = pb.s(b"z OK\r\n")  # another command's answer: the held one still dances
    assert up(out) == b"" and down(out) == b"z OK\r\n"
    out = pb.s(b"+ go\r\n")
    assert up(out) == b"INBOX\r\n" and down(out) == b""
    out = pb.s(b"a OK\r\n")  # SELECT is a state barrier: b is read after its answer
    assert up(out) == b"b NOOP\r\n" and down(out) == b"a OK\r\n"
    assert pb.session.selected == "INBOX"


def test_resume_when_more_responses_follow_the_continuation_in_one_read() -> None:
    pb = greeted()
    pb.c(b"a APPEND INBOX {5}\r\n")
    assert up(pb.c(b"hello\r\nb NOOP\r\n")) == b""
    out = pb.s(b"+ go\r\n* 3 EXISTS\r\n* 1 RECENT\r\n")
    assert up(out) == b"hello\r\nb NOOP\r\n"
    assert down(out) == b"+ go\r\n* 3 EXISTS\r\n* 1 RECENT\r\n"


def test_resume_when_a_tagged_answer_is_followed_by_more_in_one_read() -> None:
    pb = greeted()
    pb.c(b"x NOOP\r\na APPEND Nope {5}\r\nb NOOP\r\n")
    out = pb.s(b"x OK\r\na NO [TRYCREATE] no\r\n* 1 EXISTS\r\n")
    assert up(out) == b"b NOOP\r\n"


@pytest.mark.parametrize(("sizes", "held"), [((1024,), True), ((1025,), False)])
def test_held_literal_cap_boundary(sizes: tuple[int, ...], held: bool) -> None:
    policy = FakePolicy(needs=frozenset({"SELECT"}))
    pb = policy_playbook(policy, max_line=1024)
    out = pb.c(b"a SELECT {%d}\r\n" % sizes[0])
    if held:  # up to max_line of payload: the proxy answers "+" and keeps holding
        assert down(out) == b"+ Ready for literal data\r\n" and up(out) == b""
        assert policy.decisions == []
    else:  # past it: decided on what came before, the payload streams
        assert down(out) == b"" and up(out) == b"a SELECT {1025}\r\n"
        assert policy.decisions[-1][3] is False


def test_held_literal_cap_is_summed_over_several_literals() -> None:
    policy = FakePolicy(needs=frozenset({"LOGIN"}))
    pb = policy_playbook(policy, max_line=1024)
    user, password = b"u" * 600, b"p" * 425
    assert down(pb.c(b"a LOGIN {600}\r\n")) == b"+ Ready for literal data\r\n"
    out = pb.c(user + b" {425}\r\n")  # 600 + 425 = 1025 > 1024: released before it
    assert down(out) == b""
    assert policy.decisions[-1][2:] == (b"a LOGIN {600}\r\n" + user + b" {425}\r\n", False)
    assert up(out) == b"a LOGIN {600}\r\n"
    assert up(pb.s(b"+ \r\n")) == user + b" {425}\r\n"
    out = pb.s(b"+ go\r\n")
    assert down(out) == b"+ go\r\n"  # the live literal's "+" is the client's
    assert up(pb.c(password + b"\r\n")) == password + b"\r\n"


@pytest.mark.parametrize(("size", "held"), [(416, True), (417, False)])
def test_held_literals_within_the_cap_stay_held(size: int, held: bool) -> None:
    policy = FakePolicy(needs=frozenset({"LOGIN"}))
    pb = policy_playbook(policy, max_line=1024)
    pb.c(b"a LOGIN {600}\r\n")
    # The held bytes after the first line count (issue 8: a held command stays bounded):
    # 600 of payload + the 8-byte line " {416}\r\n" + 416 is exactly 1024.
    out = pb.c(b"u" * 600 + b" {%d}\r\n" % size)
    if not held:  # one byte past the cap: decided on what came before, released
        assert down(out) == b"" and up(out) == b"a LOGIN {600}\r\n"
        assert policy.decisions[-1][3] is False
        return
    assert down(out) == b"+ Ready for literal data\r\n" and up(out) == b""
    out = pb.c(b"p" * size + b"\r\n")
    assert policy.decisions[-1][3] is True and up(out) == b"a LOGIN {600}\r\n"


@pytest.mark.parametrize("chunk", [1, 9, 1000])
def test_blocked_held_append_with_a_nonsync_literal(chunk: int) -> None:
    policy = FakePolicy(needs=frozenset({"APPEND"}), blocks={"APPEND": ("ro", "Read-only")})
    pb = policy_playbook(policy)
    message = b"x DELETE INBOX\r\n"
    data = b"a APPEND Archive {%d+}\r\n" % len(message) + message + b"\r\nb NOOP\r\n"
    for i in range(0, len(data), chunk):
        pb.c(data[i : i + chunk])
    assert pb.down == b"a NO [ro] Read-only\r\n"
    assert pb.up == b"b NOOP\r\n"
    assert [d[1] for d in policy.decisions] == ["APPEND", "NOOP"]


def test_rewritten_held_command_is_sent_in_segments() -> None:
    def decider(facts: object, command: str, raw: bytes, complete: bool) -> Verdict | None:
        if command == "SELECT":
            return Verdict(rewritten=b"a SELECT {11}\r\nShared/Team\r\n")
        return None

    pb = policy_playbook(FakePolicy(needs=frozenset({"SELECT"}), decider=decider))
    assert down(pb.c(b"a SELECT {4}\r\n")) == b"+ Ready for literal data\r\n"
    out = pb.c(b"Team\r\nb NOOP\r\n")
    assert up(out) == b"a SELECT {11}\r\n"
    assert up(pb.s(b"+ go\r\n")) == b"Shared/Team\r\n"
    assert up(pb.s(b"a OK\r\n")) == b"b NOOP\r\n"  # behind SELECT's state barrier
    assert pb.session.selected == "Team"  # the client's own name


# --- rewriting through a compiled policy --------------------------------------------------------
REWRITE = (
    "- {name: hide-archive, action: rewrite_mailbox, from: Archive, to: Old/Archive}\n"
    "- {name: log-status, action: log, when: {command: [STATUS]}, detail: full}\n"
)


def real_playbook(rules: str, **settings: object) -> Recorder:
    policy = compile_rules(rules)
    pb = Recorder(policy=policy, facts=SessionFacts, **settings)
    pb.s(b"* OK ready\r\n")
    pb.down = b""
    return pb


def test_status_through_a_rewrite_at_session_level() -> None:
    pb = real_playbook(REWRITE)
    out = pb.c(b"a STATUS Archive (MESSAGES)\r\n")
    assert up(out) == b"a STATUS Old/Archive (MESSAGES)\r\n"
    out = pb.s(
        b"* STATUS Old/Archive (MESSAGES 3)\r\n"
        b"* STATUS Old/Archive/2024 (MESSAGES 1)\r\n"
        b"* STATUS {11}\r\nOld/Archive (MESSAGES 4)\r\n"
        b"a OK done\r\n"
    )
    assert down(out) == (
        b"* STATUS Archive (MESSAGES 3)\r\n"
        b"* STATUS Archive/2024 (MESSAGES 1)\r\n"
        b"* STATUS {7}\r\nArchive (MESSAGES 4)\r\n"
        b"a OK done\r\n"
    )
    (done,) = pb.of(CommandDone)
    assert (done.command, done.log) == ("STATUS", "full")
    assert RuleHit("hide-archive", "rewrite_mailbox") in pb.notes
    assert RuleHit("log-status", "log") in pb.notes
    # "detail: full" logs the untagged answers as the client sees them.
    assert [n.line for n in pb.of(ResponseLogged)] == [
        "* STATUS Archive (MESSAGES 3)",
        "* STATUS Archive/2024 (MESSAGES 1)",
    ]


def test_hidden_upstream_name_in_status_is_dropped_at_session_level() -> None:
    pb = real_playbook(REWRITE)
    pb.c(b'a LIST "" *\r\n')
    out = pb.s(b'* LIST () "/" Archive\r\n* LIST () "/" Old/Archive\r\na OK\r\n')
    assert down(out) == b'* LIST () "/" Archive\r\na OK\r\n'


def test_malformed_mailbox_responses_pass_unchanged_with_rewrites() -> None:
    pb = real_playbook(REWRITE)
    pb.c(b'a LIST "" *\r\n')
    data = (
        b'* STATUS\r\n* STATUS (MESSAGES 1)\r\n* LIST ()\r\n* LIST (\r\n* STATUS "open\r\na OK\r\n'
    )
    assert down(pb.s(data)) == data


def test_oversized_held_mailbox_response_passes_through() -> None:
    pb = real_playbook(REWRITE, max_line=1024)
    pb.c(b'a LIST "" *\r\n')
    big = b"x" * 2000
    data = b'* LIST () "/" {2000}\r\n' + big + b"\r\na OK\r\n"
    assert down(pb.s(data)) == data


def test_log_rule_command_detail_logs_no_responses() -> None:
    pb = real_playbook("- {name: audit, action: log}\n")
    pb.c(b"a SELECT INBOX\r\n")
    pb.s(b"* 1 EXISTS\r\na OK\r\n")
    (done,) = pb.of(CommandDone)
    assert done.log == "command"
    assert pb.of(ResponseLogged) == []


# --- policy reload ------------------------------------------------------------------------------
def test_policy_source_is_consulted_for_every_command() -> None:
    current: list[Policy | None] = [compile_rules("- {name: audit, action: log}\n")]
    pb = Recorder(policy_source=lambda: current[0], facts=SessionFacts)
    pb.s(b"* OK ready\r\n")
    assert up(pb.c(b"a DELETE Trash\r\n")) == b"a DELETE Trash\r\n"
    pb.s(b"a OK\r\n")
    current[0] = compile_rules(
        "- {name: no-delete, action: block, when: {command: [DELETE]}, message: Nope}\n"
    )
    out = pb.c(b"b DELETE Trash\r\n")
    assert down(out) == b"b NO [no-delete] Nope\r\n" and up(out) == b""
    current[0] = None  # rules removed: pure pass-through again, {n+} forwarded as sent
    assert up(pb.c(b"c APPEND INBOX {1+}\r\nx\r\n")) == b"c APPEND INBOX {1+}\r\nx\r\n"


def test_policy_source_wins_over_a_static_policy() -> None:
    static = FakePolicy(blocks={"NOOP": ("static", "static")})
    pb = Recorder(policy=static, policy_source=lambda: None, facts=SessionFacts)
    pb.s(b"* OK ready\r\n")
    assert up(pb.c(b"a NOOP\r\n")) == b"a NOOP\r\n"
    assert static.decisions == []


# --- what the client is told about its own protocol errors --------------------------------------
@pytest.mark.parametrize(
    ("data", "answer", "closes"),
    [
        (b"(x\r\n", b"* BAD malformed command line\r\n", False),
        (b"t (x\r\n", b"t BAD malformed command line\r\n", False),
        (b"a UID 1:*\r\n", b"a BAD UID needs a command\r\n", False),
        (b"a NOOP {3}\r\n", b"a BAD literal not allowed here\r\n", False),
        (b"a SELECT x{3}\r\n", b"a BAD literal not allowed here\r\n", False),
    ],
)
def test_protocol_error_texts(data: bytes, answer: bytes, closes: bool) -> None:
    pb = greeted(max_line=1024)
    out = pb.c(data)
    assert down(out) == answer and up(out) == b""
    assert (out.close is not None) is closes
    if not closes:
        assert up(pb.c(b"z NOOP\r\n")) == b"z NOOP\r\n"


def test_over_long_lines_stream_and_with_rules_a_needed_one_is_toobig() -> None:
    line = b"a LOGIN " + b"x" * 1100 + b"\r\n"
    pb = greeted(max_line=1024)  # pure pass-through: streamed in pieces, byte-exact (issue 8)
    out = pb.c(line)
    assert up(out) == line and down(out) == b"" and out.close is None
    pb = policy_playbook(FakePolicy(), max_line=1024)  # LOGIN's user is needed: never held whole
    out = pb.c(line + b"z NOOP\r\n")
    assert down(out) == b"a BAD [TOOBIG] Command line too long to check against the rules\r\n"
    assert up(out) == b"z NOOP\r\n" and out.close is None


def test_client_eof_in_the_middle_of_a_command() -> None:
    pb = greeted()
    pb.c(b"a NOO")
    out = pb.c(b"")
    assert down(out) == b"* BYE connection closed in the middle of a command\r\n"
    assert out.close == "client protocol error: connection closed in the middle of a command"
    assert up(out) == b""


def test_pipelined_after_starttls_text() -> None:
    pb = greeted(offer_starttls=True)
    out = pb.c(b"a STARTTLS\r\nb NOOP\r\n")
    assert down(out) == b"* BYE data pipelined after STARTTLS\r\n"
    assert out.close == "client protocol error: data pipelined after STARTTLS"


def test_upstream_protocol_error_text() -> None:
    pb = greeted()
    out = pb.s(b"* 1 FETCH (BODY[] {99999999999999999999}\r\n")
    assert down(out) == b"* BYE [UNAVAILABLE] Mail server protocol error\r\n"
    assert out.close is not None and out.close.startswith("upstream protocol error: ")


# --- held commands: more corners ----------------------------------------------------------------
def test_held_append_with_the_mailbox_as_a_literal_waits_for_the_message() -> None:
    policy = FakePolicy(needs=frozenset({"APPEND"}))
    pb = policy_playbook(policy)
    # The mailbox comes as a literal: the proxy holds it (its own "+") and decides once the
    # message's announcement shows, on the command up to it.
    assert down(pb.c(b"a APPEND {7}\r\n")) == b"+ Ready for literal data\r\n"
    assert policy.decisions == []
    out = pb.c(b"Archive {5}\r\n")
    assert down(out) == b""
    assert policy.decisions == [
        (policy.decisions[0][0], "APPEND", b"a APPEND {7}\r\nArchive {5}\r\n", False)
    ]
    assert up(out) == b"a APPEND {7}\r\n"
    assert up(pb.s(b"+ \r\n")) == b"Archive {5}\r\n"
    assert down(pb.s(b"+ go\r\n")) == b"+ go\r\n"  # the message's "+" is the client's


def test_held_append_whose_head_does_not_parse_stays_held() -> None:
    policy = FakePolicy(needs=frozenset({"APPEND"}))
    pb = policy_playbook(policy)
    out = pb.c(b"a APPEND (Archive {5}\r\n")
    assert down(out) == b"+ Ready for literal data\r\n" and up(out) == b""
    pb.c(b"hello\r\n")
    assert policy.decisions[-1][2:] == (b"a APPEND (Archive {5}\r\nhello\r\n", True)


@pytest.mark.parametrize("held", [False, True], ids=["forwarded", "held"])
def test_holding_a_command_does_not_change_what_is_observed(held: bool) -> None:
    policy = FakePolicy(needs=frozenset({"DELETE", "SELECT"}) if held else frozenset())
    pb = policy_playbook(policy)
    pb.c(b"a SELECT Work\r\n")
    pb.s(b"a OK\r\n")
    pb.c(b"b DELETE Trash\r\n")
    pb.s(b"b OK\r\n")
    assert [(n.tag, n.command, n.mailbox, n.bytes_in) for n in pb.of(CommandDone)] == [
        ("a", "SELECT", "Work", 15),
        ("b", "DELETE", "Work", 16),  # the selected mailbox, not DELETE's argument
    ]
    assert pb.session.selected == "Work"


def test_held_command_without_literals_queued_behind_a_dance() -> None:
    # DELETE: held, and no state barrier, so b is read (and held) while a's segment waits.
    pb = policy_playbook(FakePolicy(needs=frozenset({"DELETE"})))
    pb.c(b"a DELETE {5}\r\nINBOX\r\nb DELETE Sent\r\nc NOOP\r\n")
    assert pb.up == b"a DELETE {5}\r\n"
    out = pb.s(b"+ go\r\n")
    assert up(out) == b"INBOX\r\nb DELETE Sent\r\nc NOOP\r\n"
    assert up(pb.c(b"d NOOP\r\n")) == b"d NOOP\r\n"  # nothing is left waiting


def test_second_held_command_refused_mid_dance_releases_what_follows() -> None:
    pb = policy_playbook(FakePolicy(needs=frozenset({"DELETE"})))  # held, no state barrier
    pb.c(b"a DELETE {5}\r\nINBOX\r\nb DELETE {4}\r\nSent\r\nc NOOP\r\n")
    assert up(pb.s(b"+ go\r\n")) == b"INBOX\r\nb DELETE {4}\r\n"
    out = pb.s(b"b NO [LIMIT] not now\r\n")  # b's own dance ends: its literal is never sent
    assert up(out) == b"c NOOP\r\n" and down(out) == b"b NO [LIMIT] not now\r\n"
    assert up(pb.c(b"d NOOP\r\n")) == b"d NOOP\r\n"


def test_blocked_sasl_login_leaves_nothing_in_flight() -> None:
    pb = policy_playbook(FakePolicy(decider=no_mallory))
    pb.c(b"a AUTHENTICATE PLAIN\r\n")
    pb.s(b"+ \r\n")
    pb.c(CREDS_MALLORY + b"\r\n")
    pb.s(b"a BAD Authentication cancelled\r\n")
    assert pb.session.abandon() == []


def test_sasl_user_is_judged_with_the_session_facts() -> None:
    policy = FakePolicy(decider=no_mallory)
    pb = policy_playbook(policy)
    pb.c(b"s SELECT INBOX\r\n")
    pb.s(b"s OK\r\n")
    pb.c(b"a AUTHENTICATE PLAIN\r\n")
    pb.s(b"+ \r\n")
    pb.c(CREDS_BOB + b"\r\n")
    ip = ipaddress.ip_address("192.0.2.7")
    assert policy.decisions[-1] == (SessionFacts(ip, "bob", "INBOX"), "AUTHENTICATE", b"", True)


def test_blocked_sasl_login_rule_name_that_is_no_atom() -> None:
    def decider(facts: object, command: str, raw: bytes, complete: bool) -> Verdict | None:
        if command == "AUTHENTICATE" and facts.user == "mallory":  # type: ignore[attr-defined]
            return Verdict(block=("no mallory!", "Go away"), matched=(("no mallory!", "block"),))
        return None

    pb = policy_playbook(FakePolicy(decider=decider))
    pb.c(b"a AUTHENTICATE PLAIN\r\n")
    pb.s(b"+ \r\n")
    assert down(pb.c(CREDS_MALLORY + b"\r\n")) == b"a NO [POLICY] Go away\r\n"


def test_other_answers_do_not_end_the_wait_for_the_sasl_user() -> None:
    # A pipelined command answered while AUTHENTICATE waits for its first response must not
    # make the proxy forget that the next SASL line names the user.
    pb = policy_playbook(FakePolicy(decider=no_mallory))
    pb.c(b"x NOOP\r\na AUTHENTICATE PLAIN\r\n")
    pb.s(b"x OK\r\n+ \r\n")
    out = pb.c(CREDS_MALLORY + b"\r\n")
    assert up(out) == b"*\r\n" and down(out) == b"a NO [no-mallory] Go away\r\n"


def test_eight_bit_mechanism_name_is_forwarded() -> None:
    pb = greeted()
    command = b"a AUTHENTICATE PL\xc4IN\r\n"
    assert up(pb.c(command)) == command
    pb.s(b"a NO [CANNOT] Unsupported mechanism\r\n")
    (login,) = pb.of(LoginDone)
    assert (login.mechanism, login.result) == ("PL\ufffdIN", "failed")


def test_login_observed_when_a_later_literal_holds_parentheses() -> None:
    pb = greeted()
    pb.c(b"a LOGIN {3}\r\n")
    pb.s(b"+ \r\n")
    pb.c(b"bob {4}\r\n")
    pb.s(b"+ \r\n")
    pb.c(b"((pw\r\n")
    pb.s(b"a OK\r\n")
    assert pb.session.user == "bob"


def test_blocked_login_mechanism_and_held_decision_completeness() -> None:
    policy = FakePolicy(needs=frozenset({"LOGIN"}), decider=no_mallory)
    pb = policy_playbook(policy)
    pb.c(b"a LOGIN mallory pw\r\n")
    assert [(n.mechanism, n.result) for n in pb.of(LoginDone)] == [("LOGIN", "blocked")]
    assert policy.decisions[-1][2:] == (b"a LOGIN mallory pw\r\n", True)


def test_unmapped_mailbox_response_with_a_literal_passes_unchanged() -> None:
    pb = real_playbook(REWRITE)
    pb.c(b'a LIST "" *\r\n')
    data = b'* LIST () "/" {5}\r\nINBOX\r\na OK\r\n'
    for i in range(0, len(data), 4):
        pb.s(data[i : i + 4])
    assert pb.down == data


def test_held_mailbox_response_at_exactly_the_cap_is_still_rewritten() -> None:
    pb = real_playbook(REWRITE, max_line=32)
    pb.c(b'a LIST "" *\r\n')
    head = b'* LIST () "/" {11}\r\n'  # 21 bytes + 11 of payload = 32: not over the cap
    out = pb.s(head + b"Old/Archive\r\na OK\r\n")
    assert down(out) == b'* LIST () "/" {7}\r\nArchive\r\na OK\r\n'


def test_rules_removed_while_a_mailbox_response_is_held() -> None:
    current: list[Policy | None] = [compile_rules(REWRITE)]
    pb = Recorder(policy_source=lambda: current[0], facts=SessionFacts)
    pb.s(b"* OK ready\r\n")
    pb.c(b'a LIST "" *\r\n')
    pb.s(b'* LIST () "/" {11}\r\nOld/')
    current[0] = None  # reloaded without rules mid-response: the rest passes as it is
    pb.s(b"Archive\r\na OK\r\n")
    assert pb.down.endswith(b'* LIST () "/" {11}\r\nOld/Archive\r\na OK\r\n')
