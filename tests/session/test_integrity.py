"""Issue 8, session-level integrity with rules in force, on the pure session and the real
policy engine: a refused literal's payload is data, pipelined commands are judged in the
state the server reached, duplicate tags, bounded queues, long lines, answer order and
STARTTLS after login. Each test drives one write and one byte per write where it matters.
"""

from __future__ import annotations

import pytest
import yaml

from imapproxy.config.rulefile import parse_rules
from imapproxy.config.yamlsource import YNode
from imapproxy.policy import Policy, SessionFacts
from imapproxy.session.core import Session, SessionSettings
from imapproxy.session.output import CommandBlocked, CommandDone, LoginDone, Output, RuleHit

from .playbook import (
    Like,
    Paused,
    Playbook,
    PlaybookFactory,
    Resumed,
    client,
    server,
    to_client,
    to_upstream,
)

RULES = """
- name: erin-no-delete
  action: block
  when: {user: [erin], command: [DELETE]}
  message: "no"
- name: archive-read-only
  action: block
  when:
    mailbox: ["Archive", "Archive/*"]
    command: [APPEND, STORE, UID STORE, EXPUNGE, UID EXPUNGE, COPY, MOVE, CREATE, DELETE]
  message: "The Archive folders are read-only"
"""


def compile_rules(text: str = RULES) -> Policy:
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert node is not None
    return Policy.compile(parse_rules(YNode(node, "rules.yaml")))


class Run:
    """A session with the real policy; records what each side received."""

    def __init__(self, rules: str | None = RULES, **settings: object) -> None:
        policy = compile_rules(rules) if rules is not None else None
        self.session = Session(
            SessionSettings(policy=policy, facts=SessionFacts, **settings),  # type: ignore[arg-type]
            clock=lambda: 0.0,
        )
        self.up = b""
        self.down = b""
        self.blocked: list[str] = []
        self.s(b"* OK ready\r\n")
        self.down = b""

    def _record(self, out: Output) -> Output:
        self.up += b"".join(out.to_upstream)
        self.down += b"".join(out.to_client)
        self.blocked += [n.command for n in out.notes if isinstance(n, CommandBlocked)]
        assert out.close is None, out.close
        return out

    def c(self, data: bytes, *, bytewise: bool = False) -> None:
        if bytewise:
            for i in range(len(data)):
                self._record(self.session.client_data(data[i : i + 1]))
        else:
            self._record(self.session.client_data(data))

    def s(self, data: bytes) -> None:
        self._record(self.session.server_data(data))


def ruled(playbook: PlaybookFactory, rules: str = RULES, **settings: object) -> Playbook:
    """A playbook on a session with ``rules``, past the greeting."""
    pb = playbook(policy=compile_rules(rules), facts=SessionFacts, **settings)
    assert pb >> server(b"* OK ready\r\n") << to_client(b"* OK ready\r\n")
    return pb


BYTEWISE = pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "bytewise"])


# --- bug 2: a refused {n+} payload is data, never commands ------------------------------
@BYTEWISE
def test_refused_append_payload_is_dropped_not_run(bytewise: bool) -> None:
    r = Run()
    r.c(b"b APPEND NoSuchBox {21+}\r\nx1 CREATE Injected1\r\n\r\nc NOOP\r\n", bytewise=bytewise)
    assert r.up == b"b APPEND NoSuchBox {21}\r\n"  # confirmed literal: the server decides
    r.s(b"b NO [TRYCREATE] Mailbox doesn't exist: NoSuchBox\r\n")
    assert r.up == b"b APPEND NoSuchBox {21}\r\nc NOOP\r\n"
    assert b"Injected1" not in r.up
    assert r.down == b"b NO [TRYCREATE] Mailbox doesn't exist: NoSuchBox\r\n"


def test_refused_multiappend_drops_every_nonsync_payload_of_the_command() -> None:
    r = Run()
    r.c(b"b APPEND Box {5+}\r\nx DEL {13+}\r\nx2 DELETE A\r\n\r\nc NOOP\r\n")
    r.s(b"b BAD no\r\n")
    assert r.up == b"b APPEND Box {5}\r\nc NOOP\r\n"


def test_refused_append_with_later_sync_literal_ends_there() -> None:
    # The client waits for a "+" for {n} that never comes: its next bytes are a command.
    r = Run()
    r.c(b"b APPEND Box {3+}\r\nabc {4}\r\nc NOOP\r\n")
    r.s(b"b NO [TRYCREATE] no\r\n")
    assert r.up == b"b APPEND Box {3}\r\nc NOOP\r\n"


def test_confirmed_literal_still_flows_on_plus() -> None:
    r = Run()
    r.c(b"b APPEND INBOX {3+}\r\nabc\r\nc NOOP\r\n")
    r.s(b"+ go\r\n")
    assert r.down == b""  # that "+" confirmed the {n+}: not the client's
    assert r.up == b"b APPEND INBOX {3}\r\nabc\r\nc NOOP\r\n"


# --- bug 3: pipelined commands wait for the state-changing command's answer -------------
@BYTEWISE
def test_login_then_delete_in_one_write_is_judged_as_the_user(bytewise: bool) -> None:
    r = Run()
    r.c(b"a LOGIN erin pw\r\nb DELETE Doomed\r\n", bytewise=bytewise)
    assert r.up == b"a LOGIN erin pw\r\n"  # DELETE waits for LOGIN's answer
    assert r.session.client_paused
    r.s(b"a OK Logged in\r\n")
    assert r.up == b"a LOGIN erin pw\r\n"
    assert r.down == b"a OK Logged in\r\nb NO [erin-no-delete] no\r\n"
    assert r.blocked == ["DELETE"]


@BYTEWISE
def test_select_then_store_expunge_in_one_write(bytewise: bool) -> None:
    r = Run()
    r.c(
        b"a LOGIN u p\r\ns SELECT Archive\r\nx STORE 1:* +FLAGS (\\Deleted)\r\ny EXPUNGE\r\n",
        bytewise=bytewise,
    )
    r.s(b"a OK\r\n")
    assert r.up == b"a LOGIN u p\r\ns SELECT Archive\r\n"
    r.s(b"* 3 EXISTS\r\ns OK [READ-WRITE] Select completed\r\n")
    assert r.up == b"a LOGIN u p\r\ns SELECT Archive\r\n"
    assert r.down.endswith(
        b"x NO [archive-read-only] The Archive folders are read-only\r\n"
        b"y NO [archive-read-only] The Archive folders are read-only\r\n"
    )


def test_failed_login_leaves_later_commands_unauthenticated() -> None:
    r = Run()
    r.c(b"a LOGIN erin wrong\r\nb DELETE Doomed\r\n")
    r.s(b"a NO [AUTHENTICATIONFAILED] no\r\n")
    assert r.up == b"a LOGIN erin wrong\r\nb DELETE Doomed\r\n"  # no user: rule not met


def test_close_then_store_is_judged_after_close() -> None:
    r = Run()
    r.c(b"a LOGIN u p\r\n")
    r.s(b"a OK\r\n")
    r.c(b"s SELECT Archive\r\n")
    r.s(b"s OK\r\n")
    r.c(b"c CLOSE\r\nt SELECT INBOX\r\nx STORE 1 +FLAGS (\\Seen)\r\n")
    assert r.up.endswith(b"c CLOSE\r\n")
    r.s(b"c OK\r\n")
    assert r.up.endswith(b"t SELECT INBOX\r\n")
    r.s(b"t OK\r\n")
    assert r.up.endswith(b"x STORE 1 +FLAGS (\\Seen)\r\n")


def test_select_answered_bad_keeps_the_previous_selection() -> None:
    # Dovecot keeps the old mailbox after a line-level syntax error (BAD); NO deselects.
    r = Run()
    r.c(b"a LOGIN u p\r\n")
    r.s(b"a OK\r\n")
    r.c(b"s SELECT Archive\r\n")
    r.s(b"s OK\r\n")
    r.c(b'b SELECT "unterminated\r\n')
    r.s(b"b BAD Missing '\"'\r\n")
    assert r.session.selected == "Archive"
    r.c(b"x EXPUNGE\r\n")
    assert b"EXPUNGE" not in r.up
    r.c(b"c SELECT NoSuch\r\n")
    r.s(b"c NO Mailbox doesn't exist\r\n")
    assert r.session.selected is None


def test_pass_through_keeps_full_pipelining() -> None:
    r = Run(rules=None)
    data = b"a LOGIN erin pw\r\ns SELECT Archive\r\nb DELETE Doomed\r\n"
    r.c(data)
    assert r.up == data and not r.session.client_paused


# --- bug 4: duplicate tags ---------------------------------------------------------------
@BYTEWISE
def test_duplicate_tag_is_refused_and_selection_recorded(bytewise: bool) -> None:
    r = Run()
    r.c(b"a LOGIN u p\r\n")
    r.s(b"a OK\r\n")
    r.c(b"s SELECT Archive\r\ns NOOP\r\n", bytewise=bytewise)
    r.s(b"s OK [READ-WRITE] done\r\n")
    assert r.down.endswith(b"s OK [READ-WRITE] done\r\n")
    assert r.session.selected == "Archive"
    r.c(b"x STORE 1:* +FLAGS (\\Deleted)\r\ny EXPUNGE\r\n")
    assert b"STORE" not in r.up and b"EXPUNGE" not in r.up


def test_duplicate_of_a_forwarded_command_gets_bad_in_order(playbook: PlaybookFactory) -> None:
    duplicate = b"f BAD Duplicate tag in flight\r\n"
    assert (
        ruled(playbook)
        >> client(b"f FETCH 1 FLAGS\r\nf NOOP\r\nf APPEND INBOX {3+}\r\nabc\r\ng NOOP\r\n")
        << to_upstream(b"f FETCH 1 FLAGS\r\ng NOOP\r\n")  # the proxy's BADs wait for f
        << Like(CommandDone, tag="f", command="NOOP", status="BAD")
        << Like(CommandDone, tag="f", command="APPEND", status="BAD")
        >> server(b"f OK done\r\n")
        << to_client(b"f OK done\r\n" + duplicate + duplicate)
        << Like(CommandDone, tag="f", command="FETCH", status="OK")
    )


# --- bug 6: bounded queue behind a held command ------------------------------------------
def test_backlog_behind_a_held_command_is_bounded() -> None:
    rules = RULES + "- {name: st, action: block, when: {command: [STATUS], mailbox: Secret}}\n"
    r = Run(rules, max_line=4096)
    r.c(b"g STATUS {5+}\r\nINBOX (MESSAGES)\r\n")
    assert r.up == b"g STATUS {5}\r\n"  # the rest waits for the upstream's "+"
    noops = b"".join(b"n%d NOOP\r\n" % i for i in range(200_000))  # ~2.4 MB
    fed = 0
    while fed < len(noops) and not r.session.client_paused:
        r.c(noops[fed : fed + 65536])  # what the driver reads while not paused
        fed += 65536
    assert r.session.client_paused
    assert fed < 4 * 65536  # the session stopped accepting early
    assert r.session.backlog <= 4096 + 100
    r.s(b"+ go\r\n")  # g's last segment goes: the queue drains, parsing goes on
    assert r.up.startswith(b"g STATUS {5}\r\nINBOX (MESSAGES)\r\nn0 NOOP\r\n")
    assert r.session.backlog <= 4096 + 100


def test_local_answers_behind_a_stalled_command_are_bounded() -> None:
    r = Run(max_line=4096)
    r.c(b"a LOGIN erin pw\r\n")
    r.s(b"a OK\r\n")
    r.down = b""
    r.c(b"f FETCH 1:* BODY[]\r\n")  # the server is busy with this
    deletes = b"".join(b"d%d DELETE X\r\n" % i for i in range(100_000))
    fed = 0
    while fed < len(deletes) and not r.session.client_paused:
        r.c(deletes[fed : fed + 65536])
        fed += 65536
    assert r.session.client_paused and r.session.backlog <= 4096 + 200
    r.s(b"f OK done\r\n")
    assert r.down.startswith(b"f OK done\r\nd0 NO [erin-no-delete]")


# --- bug 8: long lines -------------------------------------------------------------------
@BYTEWISE
def test_long_uid_search_streams_with_rules(bytewise: bool) -> None:
    r = Run(max_line=1024)
    line = b"u UID SEARCH UID " + b",".join(b"%d" % i for i in range(1, 1500)) + b"\r\n"
    r.c(line + b"n NOOP\r\n", bytewise=bytewise)
    assert r.up == line + b"n NOOP\r\n"


@BYTEWISE
def test_long_line_a_rule_needs_is_refused_and_session_goes_on(bytewise: bool) -> None:
    r = Run(max_line=1024)
    line = b"c CREATE " + b"x" * 3000 + b" {4+}\r\nabcd\r\n"
    r.c(line + b"n NOOP\r\n", bytewise=bytewise)
    assert r.up == b"n NOOP\r\n"
    assert r.down.startswith(b"c BAD [TOOBIG]")


def test_long_select_with_rules_is_refused() -> None:
    # The session must see the mailbox SELECT opens to judge later commands.
    r = Run(max_line=1024)
    r.c(b"s SELECT Archive (QRESYNC (1 2 " + b"1," * 1000 + b"2))\r\nn NOOP\r\n")
    assert r.up == b"n NOOP\r\n" and r.down.startswith(b"s BAD [TOOBIG]")


# --- bug 9: answer order, STARTTLS after login -------------------------------------------
def test_block_answer_waits_for_earlier_server_answer(playbook: PlaybookFactory) -> None:
    assert (
        ruled(playbook)
        >> client(b"a LOGIN erin pw\r\n")
        << to_upstream(b"a LOGIN erin pw\r\n")
        << Paused()  # the state barrier: nothing is read until LOGIN's answer
        >> server(b"a OK\r\n")
        << to_client(b"a OK\r\n")
        << LoginDone("LOGIN", "ok", "erin")
        << Like(CommandDone, tag="a", user="erin")
        << Resumed()
        >> client(b"f FETCH 1 FLAGS\r\nd DELETE X\r\n")
        << to_upstream(b"f FETCH 1 FLAGS\r\n")
        << RuleHit("erin-no-delete", "block")
        << CommandBlocked("erin-no-delete", "DELETE")
        << Like(CommandDone, tag="d", command="DELETE", status="NO")
        >> server(b"* 1 FETCH (FLAGS ())\r\nf OK done\r\n")
        << to_client(b"* 1 FETCH (FLAGS ())\r\nf OK done\r\nd NO [erin-no-delete] no\r\n")
        << Like(CommandDone, tag="f", status="OK")
    )


def test_malformed_line_bad_waits_for_earlier_answer_without_rules() -> None:
    r = Run(rules=None)
    r.c(b"f NOOP\r\n(bad\r\n")
    assert r.down == b""
    r.s(b"f OK\r\n")
    assert r.down == b"f OK\r\n* BAD malformed command line\r\n"


@pytest.mark.parametrize("rules", [RULES, None], ids=["rules", "pass-through"])
def test_starttls_after_login_is_refused(rules: str | None) -> None:
    r = Run(rules, offer_starttls=True)
    r.c(b"a LOGIN u p\r\n")
    r.s(b"a OK\r\n")
    r.c(b"t STARTTLS\r\nn NOOP\r\n")
    assert r.down.endswith(b"t BAD STARTTLS is only valid before login\r\n")
    assert r.up.endswith(b"n NOOP\r\n")


def test_starttls_pipelined_after_login_waits_and_is_refused() -> None:
    r = Run(rules=None, offer_starttls=True)
    r.c(b"a LOGIN u p\r\nt STARTTLS\r\n")
    assert r.up == b"a LOGIN u p\r\n" and r.down == b""
    r.s(b"a OK\r\n")
    assert r.down == b"a OK\r\nt BAD STARTTLS is only valid before login\r\n"


def test_every_nonsync_literal_of_a_command_is_confirmed_and_later_plus_reaches_client() -> None:
    r = Run()
    r.c(b"a APPEND INBOX {3+}\r\nabc {4+}\r\ndefg\r\ni IDLE\r\n")
    assert r.up == b"a APPEND INBOX {3}\r\n"
    r.s(b"+ go\r\n")
    assert r.up == b"a APPEND INBOX {3}\r\nabc {4}\r\n"
    r.s(b"+ go\r\n")
    assert r.up == b"a APPEND INBOX {3}\r\nabc {4}\r\ndefg\r\ni IDLE\r\n"
    assert r.down == b""  # both "+" confirmed the client's {n+}
    r.s(b"a OK appended\r\n+ idling\r\n")
    assert r.down == b"a OK appended\r\n+ idling\r\n"  # IDLE's "+" is the client's


def test_held_segments_are_dropped_only_on_their_own_tag(playbook: PlaybookFactory) -> None:
    rules = RULES + "- {name: st, action: block, when: {command: [STATUS], mailbox: Secret}}\n"
    assert (
        ruled(playbook, rules)
        >> client(b"f FETCH 1 FLAGS\r\ng STATUS {5+}\r\nINBOX (MESSAGES)\r\nn NOOP\r\n")
        << to_upstream(b"f FETCH 1 FLAGS\r\ng STATUS {5}\r\n")
        >> server(b"f NO no\r\n")  # another command's answer: g's segments still wait for "+"
        << to_client(b"f NO no\r\n")
        << Like(CommandDone, tag="f", status="NO")
        >> server(b"+ go\r\n")  # consumed: the client had no "+" to wait for
        << to_upstream(b"INBOX (MESSAGES)\r\nn NOOP\r\n")
        >> client(b"h STATUS {6+}\r\nSecret (MESSAGES)\r\n")
        << RuleHit("st", "block")
        << CommandBlocked("st", "STATUS")
        << Like(CommandDone, tag="h", status="NO")  # blocked; its answer waits for g's and n's
        >> server(b"g OK\r\nn OK\r\n")
        << to_client(b"g OK\r\nn OK\r\nh NO [st] Blocked by policy rule st\r\n")
        << Like(CommandDone, tag="g", status="OK")
        << Like(CommandDone, tag="n", status="OK")
    )
