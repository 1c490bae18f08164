"""The compiled policy: decide() semantics, rewriting of commands and responses."""

from __future__ import annotations

import ipaddress

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from imapproxy.config.rulefile import parse_rules
from imapproxy.config.yamlsource import YNode
from imapproxy.policy import Policy, Rule, SessionFacts, Verdict
from imapproxy.policy.mailboxes import encode_mutf7
from imapproxy.wire.tokens import TokenKind, parse_command, tokenize


def compile_rules(text: str) -> Policy:
    """Rules from YAML text, through the real loader."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert node is not None
    return Policy.compile(parse_rules(YNode(node, "rules.yaml")))


def facts(
    ip: str = "192.0.2.10",
    user: str | None = None,
    selected: str | None = None,
    utf8: bool = False,
) -> SessionFacts:
    return SessionFacts(ipaddress.ip_address(ip), user, selected, utf8)


def decide(
    policy: Policy, raw: bytes, command: str, f: SessionFacts | None = None, complete: bool = True
) -> Verdict:
    return policy.decide(f or facts(), command, raw, complete)


def blocked_by(verdict: Verdict) -> str | None:
    return verdict.block[0] if verdict.block else None


NOTHING = Verdict(None, None, None, ())


# --- when keys ---------------------------------------------------------------------------


def test_no_rules() -> None:
    assert Policy.EMPTY.rules == ()
    assert not Policy.EMPTY.needs_arguments("SELECT")
    assert not Policy.EMPTY.rewrites_responses()
    assert decide(Policy.EMPTY, b"a DELETE x\r\n", "DELETE") == NOTHING
    assert Policy.EMPTY.rewrite_response(b'* LIST () "/" x\r\n') is None


def test_when_command_including_uid_forms() -> None:
    policy = compile_rules(
        "- {name: uidfetch, action: block, when: {command: [uid fetch]}}\n"
        "- {name: del, action: block, when: {command: [DELETE]}}\n"
    )
    assert blocked_by(decide(policy, b"a UID FETCH 1 FLAGS\r\n", "UID FETCH")) == "uidfetch"
    assert decide(policy, b"a FETCH 1 FLAGS\r\n", "FETCH") == NOTHING
    assert blocked_by(decide(policy, b"a delete x\r\n", "DELETE")) == "del"
    assert decide(policy, b"a XFOO\r\n", "XFOO") == NOTHING  # unknown command


def test_rules_without_command_apply_to_unknown_commands() -> None:
    policy = compile_rules("- {name: all, action: block}\n")
    assert blocked_by(decide(policy, b"a XFOO\r\n", "XFOO")) == "all"


def test_when_user_glob_case_insensitive() -> None:
    policy = compile_rules("- {name: r, action: block, when: {user: ['*@Example.COM', bob]}}\n")
    assert blocked_by(decide(policy, b"a NOOP\r\n", "NOOP", facts(user="alice@example.com")))
    assert blocked_by(decide(policy, b"a NOOP\r\n", "NOOP", facts(user="BOB")))
    assert decide(policy, b"a NOOP\r\n", "NOOP", facts(user="bobby")) == NOTHING
    assert decide(policy, b"a NOOP\r\n", "NOOP", facts(user=None)) == NOTHING


def test_when_client_cidr() -> None:
    policy = compile_rules(
        "- {name: r, action: block, when: {client: [198.51.100.0/24, '2001:db8::/32']}}\n"
    )
    for ip in ("198.51.100.7", "2001:db8::5", "::ffff:198.51.100.7"):
        assert blocked_by(decide(policy, b"a NOOP\r\n", "NOOP", facts(ip=ip))) == "r"
    for ip in ("198.51.101.7", "2001:db9::5", "::1"):
        assert decide(policy, b"a NOOP\r\n", "NOOP", facts(ip=ip)) == NOTHING


def test_when_mailbox_on_arguments() -> None:
    policy = compile_rules(
        "- {name: r, action: block, when: {mailbox: ['Secret', 'Secret/*', 'Entwürfe']}}\n"
    )
    assert policy.needs_arguments("SELECT") and policy.needs_arguments("RENAME")
    assert not policy.needs_arguments("FETCH")  # uses the selected mailbox, no arguments
    for raw, command in [
        (b"a SELECT Secret\r\n", "SELECT"),
        (b'a STATUS "Secret/x" (MESSAGES)\r\n', "STATUS"),
        (b"a RENAME Public Secret\r\n", "RENAME"),  # either RENAME argument
        (b"a RENAME Secret Public\r\n", "RENAME"),
        (b"a COPY 1:* Secret\r\n", "COPY"),
        (b"a UID MOVE 1 {6}\r\nSecret\r\n", "UID MOVE"),
        (b"a APPEND Secret (\\Seen) {10}\r\n", "APPEND"),
        (b"a SELECT Entw&APw-rfe\r\n", "SELECT"),  # decoded from modified UTF-7
        (b"a GETMETADATA (DEPTH 1) Secret /private/comment\r\n", "GETMETADATA"),
    ]:
        complete = command != "APPEND"
        assert blocked_by(decide(policy, raw, command, complete=complete)) == "r", raw
    for raw, command in [
        (b"a SELECT Secrets\r\n", "SELECT"),
        (b"a SELECT secret\r\n", "SELECT"),  # mailbox names are case-sensitive
        (b'a LIST "" Secret\r\n', "LIST"),  # patterns are not mailboxes
        (b'a GETMETADATA "" /shared/comment\r\n', "GETMETADATA"),
    ]:
        assert decide(policy, raw, command) == NOTHING, raw


def test_when_mailbox_on_selected_mailbox() -> None:
    policy = compile_rules("- {name: r, action: block, when: {mailbox: [Secret]}}\n")
    in_secret = facts(selected="Secret")
    assert blocked_by(decide(policy, b"a FETCH 1 BODY[]\r\n", "FETCH", in_secret)) == "r"
    assert blocked_by(decide(policy, b"a UID STORE 1 +FLAGS (x)\r\n", "UID STORE", in_secret))
    assert blocked_by(decide(policy, b"a MOVE 1 INBOX\r\n", "MOVE", in_secret)) == "r"
    # COPY only involves its destination: copying out leaves the source unchanged.
    assert decide(policy, b"a COPY 1 INBOX\r\n", "COPY", in_secret) == NOTHING
    assert decide(policy, b"a UID COPY 1 INBOX\r\n", "UID COPY", in_secret) == NOTHING
    assert decide(policy, b"a NOOP\r\n", "NOOP", in_secret) == NOTHING
    assert decide(policy, b"a FETCH 1 BODY[]\r\n", "FETCH", facts(selected="Other")) == NOTHING
    assert decide(policy, b"a FETCH 1 BODY[]\r\n", "FETCH") == NOTHING


def test_inbox_is_matched_case_insensitively() -> None:
    policy = compile_rules("- {name: r, action: block, when: {mailbox: [INBOX]}}\n")
    assert blocked_by(decide(policy, b"a SELECT inbox\r\n", "SELECT")) == "r"
    assert blocked_by(decide(policy, b"a EXPUNGE\r\n", "EXPUNGE", facts(selected="Inbox")))


def test_selected_in_wire_form_is_decoded() -> None:
    policy = compile_rules("- {name: r, action: block, when: {mailbox: ['Entwürfe']}}\n")
    for selected in ("Entwürfe", "Entw&APw-rfe"):
        verdict = decide(policy, b"a EXPUNGE\r\n", "EXPUNGE", facts(selected=selected))
        assert blocked_by(verdict) == "r"


def test_when_keys_are_anded() -> None:
    policy = compile_rules(
        "- name: r\n  action: block\n"
        "  when: {command: [DELETE], user: [bob], mailbox: ['Team/*'], client: [10.0.0.0/8]}\n"
    )
    ok = facts(ip="10.0.0.1", user="bob")
    assert blocked_by(decide(policy, b"a DELETE Team/x\r\n", "DELETE", ok)) == "r"
    assert decide(policy, b"a DELETE Team/x\r\n", "DELETE", facts(ip="11.0.0.1", user="bob")) == (
        NOTHING
    )
    assert decide(policy, b"a DELETE Team/x\r\n", "DELETE", facts(ip="10.0.0.1")) == NOTHING
    assert decide(policy, b"a DELETE Home/x\r\n", "DELETE", ok) == NOTHING
    assert decide(policy, b"a CREATE Team/x\r\n", "CREATE", ok) == NOTHING


# --- actions -----------------------------------------------------------------------------


def test_first_matching_block_rule_applies() -> None:
    policy = compile_rules(
        "- {name: audit, action: log}\n"
        "- {name: not-me, action: block, when: {user: [alice]}}\n"
        "- {name: first, action: block, when: {command: [DELETE]}, message: No deleting}\n"
        "- {name: second, action: block}\n"
        "- {name: audit-late, action: log, detail: full}\n"
    )
    verdict = decide(policy, b"a DELETE x\r\n", "DELETE", facts(user="bob"))
    assert verdict == Verdict(
        ("first", "No deleting"),
        None,
        "full",
        (("audit", "log"), ("first", "block"), ("audit-late", "log")),
    )
    verdict = decide(policy, b"a NOOP\r\n", "NOOP", facts(user="bob"))
    assert verdict.block == ("second", "Blocked by policy rule second")


def test_all_log_rules_merge_detail() -> None:
    policy = compile_rules(
        "- {name: c, action: log}\n"
        "- {name: s, action: log, when: {command: [FETCH]}}\n"
        "- {name: f, action: log, detail: full, when: {command: [SELECT]}}\n"
    )
    assert decide(policy, b"a NOOP\r\n", "NOOP") == Verdict(None, None, "command", (("c", "log"),))
    assert decide(policy, b"a FETCH 1 FLAGS\r\n", "FETCH") == Verdict(
        None, None, "command", (("c", "log"), ("s", "log"))
    )
    assert decide(policy, b"a SELECT x\r\n", "SELECT") == Verdict(
        None, None, "full", (("c", "log"), ("f", "log"))
    )


LOGIN_RULES = (
    "- {name: deny-test, action: block, when: {command: [LOGIN, AUTHENTICATE], user: ['test*']}}\n"
)


@pytest.mark.parametrize(
    "raw",
    [
        b"a LOGIN test1 pw\r\n",
        b'a LOGIN "test one" "pw"\r\n',
        b"a LOGIN {5}\r\ntest1 {2}\r\npw\r\n",
        b"a LOGIN {5+}\r\nTEST1 {13+}\r\npw-secret-123\r\n",
    ],
)
def test_login_blocked_by_user_in_every_form(raw: bytes) -> None:
    policy = compile_rules(LOGIN_RULES)
    assert policy.needs_arguments("LOGIN")
    verdict = decide(policy, raw, "LOGIN")
    assert verdict.block == ("deny-test", "Blocked by policy rule deny-test")
    assert verdict.matched == (("deny-test", "block"),)


@pytest.mark.parametrize(
    "raw", [b"a LOGIN alice pw\r\n", b'a LOGIN "alice" "test"\r\n', b"a LOGIN {5}\r\nalice x\r\n"]
)
def test_login_allowed_for_other_users(raw: bytes) -> None:
    assert decide(compile_rules(LOGIN_RULES), raw, "LOGIN") == NOTHING


def test_authenticate_uses_the_sasl_user_from_facts() -> None:
    policy = compile_rules(LOGIN_RULES)
    assert not policy.needs_arguments("AUTHENTICATE")
    raw = b"a AUTHENTICATE PLAIN\r\n"
    assert blocked_by(decide(policy, raw, "AUTHENTICATE", facts(user="tester"))) == "deny-test"
    assert decide(policy, b"", "AUTHENTICATE", facts(user="alice")) == NOTHING


def test_login_without_user_rules_needs_no_arguments() -> None:
    policy = compile_rules(
        "- {name: r, action: block, when: {command: [LOGIN], client: [10.0.0.0/8]}}\n"
    )
    assert not policy.needs_arguments("LOGIN")
    first_line = b"a LOGIN {5}\r\n"
    assert blocked_by(decide(policy, first_line, "LOGIN", facts(ip="10.9.9.9"), False)) == "r"


def test_unparsable_arguments_fail_closed_for_block_rules_only() -> None:
    blocking = compile_rules(LOGIN_RULES + "- {name: sec, action: block, when: {mailbox: [S]}}\n")
    message = "Command arguments could not be checked against policy"
    assert decide(blocking, b'a LOGIN "test\r\n', "LOGIN").block == ("deny-test", message)
    assert decide(blocking, b"a SELECT\r\n", "SELECT").block == ("sec", message)
    assert decide(blocking, b"a SELECT (S)\r\n", "SELECT").block == ("sec", message)
    logging = compile_rules("- {name: l, action: log, when: {mailbox: [S]}}\n")
    assert decide(logging, b"a SELECT (S)\r\n", "SELECT") == NOTHING
    # AUTHENTICATE-style calls with no bytes fall back to the user in the facts.
    assert decide(blocking, b"", "LOGIN", facts(user="alice")) == NOTHING


def test_compile_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        Policy.compile([Rule("a", "log"), Rule("a", "block")])


# --- rewriting commands ------------------------------------------------------------------

REWRITE = "- {name: hide, action: rewrite_mailbox, from: Archive, to: Old/Archive}\n"


@pytest.mark.parametrize(
    ("command", "raw", "expected"),
    [
        ("SELECT", b"a SELECT Archive\r\n", b"a SELECT Old/Archive\r\n"),
        ("SELECT", b"a SELECT Archive (CONDSTORE)\r\n", b"a SELECT Old/Archive (CONDSTORE)\r\n"),
        ("EXAMINE", b'a EXAMINE "Archive/2024"\r\n', b'a EXAMINE "Old/Archive/2024"\r\n'),
        ("CREATE", b"a CREATE Archive/2025\r\n", b"a CREATE Old/Archive/2025\r\n"),
        ("DELETE", b"a DELETE Archive/2020\r\n", b"a DELETE Old/Archive/2020\r\n"),
        (
            "RENAME",
            b"a RENAME Archive/a Archive/b\r\n",
            b"a RENAME Old/Archive/a Old/Archive/b\r\n",
        ),
        ("RENAME", b"a RENAME INBOX/x Archive/x\r\n", b"a RENAME INBOX/x Old/Archive/x\r\n"),
        ("SUBSCRIBE", b"a SUBSCRIBE Archive\r\n", b"a SUBSCRIBE Old/Archive\r\n"),
        ("UNSUBSCRIBE", b"a UNSUBSCRIBE Archive\r\n", b"a UNSUBSCRIBE Old/Archive\r\n"),
        (
            "STATUS",
            b"a STATUS Archive (MESSAGES UNSEEN)\r\n",
            b"a STATUS Old/Archive (MESSAGES UNSEEN)\r\n",
        ),
        (
            "APPEND",
            b"a APPEND Archive (\\Seen) {5}\r\nHello\r\n",
            b"a APPEND Old/Archive (\\Seen) {5}\r\nHello\r\n",
        ),
        ("COPY", b"a COPY 1:3 Archive\r\n", b"a COPY 1:3 Old/Archive\r\n"),
        ("MOVE", b"a MOVE 1:3 Archive\r\n", b"a MOVE 1:3 Old/Archive\r\n"),
        ("UID COPY", b"a UID COPY 7 Archive/x\r\n", b"a UID COPY 7 Old/Archive/x\r\n"),
        ("UID MOVE", b"a UID MOVE 7 Archive\r\n", b"a UID MOVE 7 Old/Archive\r\n"),
        ("LIST", b'a LIST "" Archive/%\r\n', b'a LIST "" Old/Archive/%\r\n'),
        ("LIST", b'a LIST "" "Archive*"\r\n', b'a LIST "" "Old/Archive*"\r\n'),
        ("LIST", b"a LIST Archive/ %\r\n", b"a LIST Old/Archive/ %\r\n"),
        (
            "LIST",
            b'a LIST (SUBSCRIBED) "" ("Archive/*" INBOX) RETURN (CHILDREN)\r\n',
            b'a LIST (SUBSCRIBED) "" ("Old/Archive/*" INBOX) RETURN (CHILDREN)\r\n',
        ),
        ("LSUB", b'a LSUB "" Archive*\r\n', b'a LSUB "" Old/Archive*\r\n'),
        ("XLIST", b'a XLIST "" Archive\r\n', b'a XLIST "" Old/Archive\r\n'),
        ("GETQUOTAROOT", b"a GETQUOTAROOT Archive\r\n", b"a GETQUOTAROOT Old/Archive\r\n"),
        ("MYRIGHTS", b"a MYRIGHTS Archive\r\n", b"a MYRIGHTS Old/Archive\r\n"),
        ("GETACL", b"a GETACL Archive\r\n", b"a GETACL Old/Archive\r\n"),
        ("SETACL", b"a SETACL Archive bob lr\r\n", b"a SETACL Old/Archive bob lr\r\n"),
        ("DELETEACL", b"a DELETEACL Archive bob\r\n", b"a DELETEACL Old/Archive bob\r\n"),
        ("LISTRIGHTS", b"a LISTRIGHTS Archive bob\r\n", b"a LISTRIGHTS Old/Archive bob\r\n"),
        (
            "GETMETADATA",
            b"a GETMETADATA (DEPTH 1) Archive /private\r\n",
            b"a GETMETADATA (DEPTH 1) Old/Archive /private\r\n",
        ),
        (
            "SETMETADATA",
            b'a SETMETADATA Archive (/private/comment "x")\r\n',
            b'a SETMETADATA Old/Archive (/private/comment "x")\r\n',
        ),
        ("REPLACE", b"a REPLACE 4 Archive {1+}\r\nx\r\n", b"a REPLACE 4 Old/Archive {1+}\r\nx\r\n"),
    ],
)
def test_rewrite_every_mailbox_command(command: str, raw: bytes, expected: bytes) -> None:
    policy = compile_rules(REWRITE)
    assert policy.needs_arguments(command)
    verdict = decide(policy, raw, command)
    assert verdict == Verdict(None, expected, None, (("hide", "rewrite_mailbox"),))


@pytest.mark.parametrize(
    ("command", "raw"),
    [
        ("SELECT", b"a SELECT Archives\r\n"),
        ("SELECT", b"a SELECT INBOX\r\n"),
        ("LIST", b'a LIST "" *\r\n'),
        ("LIST", b'a LIST "" %\r\n'),
        ("LIST", b'a LIST "" ""\r\n'),
        ("LIST", b"a LIST Other/ Archive\r\n"),  # relative to an unmapped reference
        ("FETCH", b"a FETCH 1 BODY[]\r\n"),
        ("GETMETADATA", b'a GETMETADATA "" /shared/comment\r\n'),
    ],
)
def test_rewrite_leaves_other_names_alone(command: str, raw: bytes) -> None:
    assert decide(compile_rules(REWRITE), raw, command) == NOTHING


def test_rewrite_keeps_quoting_and_literal_forms() -> None:
    policy = compile_rules(
        REWRITE + "- {name: spaced, action: rewrite_mailbox, from: Team, to: 'Shared Team'}\n"
    )
    cases = [
        (b"a SELECT {7}\r\nArchive\r\n", b"a SELECT {11}\r\nOld/Archive\r\n"),
        (b"a SELECT {7+}\r\nArchive\r\n", b"a SELECT {11+}\r\nOld/Archive\r\n"),
        (b'a SELECT "Archive"\r\n', b'a SELECT "Old/Archive"\r\n'),
        (b"a SELECT Team/x\r\n", b'a SELECT "Shared Team/x"\r\n'),  # atom needs quoting now
        (
            b"a RENAME {6+}\r\nTeam/a {9}\r\nArchive/b\r\n",
            b"a RENAME {13+}\r\nShared Team/a {13}\r\nOld/Archive/b\r\n",
        ),
        (b'a SELECT "Archive/\\"q\\""\r\n', b'a SELECT "Old/Archive/\\"q\\""\r\n'),
    ]
    for raw, expected in cases:
        assert decide(policy, raw, parse_name(raw)).rewritten == expected, raw


def parse_name(raw: bytes) -> str:
    return parse_command(raw).name


def test_rewrite_before_a_live_literal_keeps_its_announcement() -> None:
    policy = compile_rules(REWRITE)
    for header in (b"{31000}\r\n", b"{31000+}\r\n", b"~{31000}\r\n"):
        raw = b'a APPEND "Archive/x" (\\Seen) "1-Jan-2024 00:00:00 +0000" ' + header
        verdict = decide(policy, raw, "APPEND", complete=False)
        assert verdict.rewritten == (
            b'a APPEND "Old/Archive/x" (\\Seen) "1-Jan-2024 00:00:00 +0000" ' + header
        )
    # The mailbox itself sent as a small literal before the message literal.
    raw = b"a APPEND {7}\r\nArchive {31000}\r\n"
    assert decide(policy, raw, "APPEND", complete=False).rewritten == (
        b"a APPEND {11}\r\nOld/Archive {31000}\r\n"
    )


def test_upstream_paths_are_reserved() -> None:
    policy = compile_rules(REWRITE)
    for raw, command in [
        (b"a SELECT Old/Archive\r\n", "SELECT"),
        (b"a CREATE Old/Archive/x\r\n", "CREATE"),
        (b"a RENAME Foo Old/Archive\r\n", "RENAME"),
    ]:
        verdict = decide(policy, raw, command)
        assert verdict.block == ("hide", "Mailbox name is reserved by policy")
        assert verdict.rewritten is None
    assert decide(policy, b"a SELECT Old/Archives\r\n", "SELECT") == NOTHING


def test_block_wins_over_rewrite_and_globs_see_client_names() -> None:
    policy = compile_rules(
        REWRITE + "- {name: ro, action: block, when: {command: [DELETE], mailbox: ['Archive*']}}\n"
    )
    verdict = decide(policy, b"a DELETE Archive/2020\r\n", "DELETE")
    assert verdict == Verdict(("ro", "Blocked by policy rule ro"), None, None, (("ro", "block"),))


def test_unparsable_command_with_rewrites_is_refused() -> None:
    policy = compile_rules(REWRITE)
    verdict = decide(policy, b'a SELECT "Archive\r\n', "SELECT")
    assert verdict.block == ("hide", "Command arguments could not be checked against policy")


def test_utf8_sessions_rewrite_utf8_names() -> None:
    policy = compile_rules(
        "- {name: drafts, action: rewrite_mailbox, from: 'Entwürfe', to: Drafts}\n"
    )
    utf8 = facts(utf8=True)
    assert decide(policy, 'a SELECT "Entwürfe/x"\r\n'.encode(), "SELECT", utf8).rewritten == (
        b'a SELECT "Drafts/x"\r\n'
    )
    assert decide(policy, b"a SELECT Entw&APw-rfe\r\n", "SELECT").rewritten == (
        b"a SELECT Drafts\r\n"
    )
    assert policy.rewrite_response(b'* LIST () "/" Drafts\r\n', utf8=True) == (
        '* LIST () "/" "Entwürfe"\r\n'.encode()
    )
    assert policy.rewrite_response(b'* LIST () "/" Drafts\r\n') == (
        b'* LIST () "/" Entw&APw-rfe\r\n'
    )


# --- rewriting responses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'* LIST (\\HasNoChildren) "/" "Old/Archive"\r\n',
            b'* LIST (\\HasNoChildren) "/" "Archive"\r\n',
        ),
        (b'* LIST () "/" Old/Archive/2024\r\n', b'* LIST () "/" Archive/2024\r\n'),
        (b'* LIST () "/" {11}\r\nOld/Archive\r\n', b'* LIST () "/" {7}\r\nArchive\r\n'),
        (
            b'* LIST (\\Subscribed) "/" "Old/Archive" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
            b'* LIST (\\Subscribed) "/" "Archive" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        ),
        (b'* LSUB () "/" Old/Archive\r\n', b'* LSUB () "/" Archive\r\n'),
        (b'* XLIST () "/" Old/Archive\r\n', b'* XLIST () "/" Archive\r\n'),
        (
            b'* STATUS "Old/Archive" (MESSAGES 2 UNSEEN 0)\r\n',
            b'* STATUS "Archive" (MESSAGES 2 UNSEEN 0)\r\n',
        ),
        (
            b"* STATUS {11}\r\nOld/Archive (MESSAGES 2)\r\n",
            b"* STATUS {7}\r\nArchive (MESSAGES 2)\r\n",
        ),
        (b"* MYRIGHTS Old/Archive lrs\r\n", b"* MYRIGHTS Archive lrs\r\n"),
        (b"* ACL Old/Archive bob lr\r\n", b"* ACL Archive bob lr\r\n"),
        (b"* LISTRIGHTS Old/Archive bob l r s\r\n", b"* LISTRIGHTS Archive bob l r s\r\n"),
        (b'* QUOTAROOT Old/Archive ""\r\n', b'* QUOTAROOT Archive ""\r\n'),
        (
            b"* METADATA Old/Archive (/private/x NIL)\r\n",
            b"* METADATA Archive (/private/x NIL)\r\n",
        ),
    ],
)
def test_rewrite_responses(raw: bytes, expected: bytes) -> None:
    policy = compile_rules(REWRITE)
    assert policy.rewrites_responses()
    assert policy.rewrite_response(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b'* LIST () "/" Old\r\n',
        b'* LIST () "/" Old/Archives\r\n',
        b'* LIST () "/" INBOX\r\n',
        b'* LIST (\\Noselect) "/" ""\r\n',
        b"* 3 EXISTS\r\n",
        b"* OK [UIDVALIDITY 1] ok\r\n",
        b'* STATUS "Old/Archive (MESSAGES 2)\r\n',  # malformed: forwarded unchanged
    ],
)
def test_unmapped_responses_are_unchanged(raw: bytes) -> None:
    assert compile_rules(REWRITE).rewrite_response(raw) is None


def test_upstream_names_without_a_client_name_are_hidden() -> None:
    policy = compile_rules(REWRITE)
    assert policy.rewrite_response(b'* LIST () "/" Archive\r\n') == b""
    assert policy.rewrite_response(b'* LSUB () "/" "Archive/2024"\r\n') == b""
    assert policy.rewrite_response(b"* STATUS Archive (MESSAGES 1)\r\n") == b""


def test_delimiter_is_learned_from_list_replies() -> None:
    policy = compile_rules(REWRITE)
    assert policy.delimiter == b"/"  # assumed until the server says otherwise
    assert policy.rewrite_response(b'* LIST (\\Noselect) "." ""\r\n') is None
    assert policy.delimiter == b"."
    assert decide(policy, b"a SELECT Archive.2024\r\n", "SELECT").rewritten == (
        b"a SELECT Old/Archive.2024\r\n"
    )
    assert decide(policy, b"a SELECT Archive/2024\r\n", "SELECT") == NOTHING
    # A reply's own delimiter governs its name.
    assert policy.rewrite_response(b'* LIST () "." Old/Archive.x\r\n') == (
        b'* LIST () "." Archive.x\r\n'
    )
    policy.set_delimiter(None)  # flat namespace: no children
    assert decide(policy, b"a SELECT Archive.2024\r\n", "SELECT") == NOTHING
    rewritten = decide(policy, b"a SELECT Archive\r\n", "SELECT").rewritten
    assert rewritten == b"a SELECT Old/Archive\r\n"


def test_reloaded_policy_keeps_the_learned_delimiter() -> None:
    old, new, fresh = compile_rules(REWRITE), compile_rules(REWRITE), compile_rules(REWRITE)
    old.rewrite_response(b'* LIST (\\Noselect) "." ""\r\n')
    new.carry_over(old)
    assert new.delimiter == b"."
    fresh.carry_over(compile_rules(REWRITE))  # nothing learned: nothing carried
    assert fresh.delimiter == b"/"
    fresh.rewrite_response(b'* LIST (\\Noselect) NIL ""\r\n')
    assert fresh.delimiter is None


def test_first_mapped_list_reply_teaches_the_delimiter() -> None:
    policy = compile_rules("- {name: a, action: rewrite_mailbox, from: Archive, to: Old.Archive}\n")
    assert policy.rewrite_response(b'* LIST () "." Old.Archive.y\r\n') == (
        b'* LIST () "." Archive.y\r\n'
    )
    assert policy.delimiter == b"."


# --- round trip property -----------------------------------------------------------------

ROUND_TRIP_RULES = (
    "- {name: a, action: rewrite_mailbox, from: Archive, to: Old/Archive}\n"
    "- {name: t, action: rewrite_mailbox, from: Team, to: 'Shared \"Team\"'}\n"
    "- {name: d, action: rewrite_mailbox, from: 'Entwürfe', to: Drafts}\n"
)
segment = st.one_of(
    st.sampled_from(
        ["Archive", "Old", "Archives", "Team", 'Shared "Team"', "Drafts", "Entwürfe", "INBOX"]
    ),
    st.sampled_from(["a b", '"', "\\", "&", "ü", "日本", "%", "x]", "{3}", "(", "NIL"]),
    st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=8),
)
mailbox_names = st.lists(segment, min_size=1, max_size=4).map("/".join)


def wire_forms(value: bytes) -> list[bytes]:
    """Every valid way to send ``value`` as an astring."""
    forms = [b"{%d}\r\n%s" % (len(value), value), b"{%d+}\r\n%s" % (len(value), value)]
    if not any(b in value for b in b"\r\n\x00"):
        forms.append(b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
    # "[" is a valid atom char but reads as a section opener to the tokenizer: not as atom.
    if value and all(0x21 <= b <= 0x7E and b not in b'(){%*"\\[' for b in value):
        forms.append(value)
    return forms


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + "/")


def argument(raw: bytes, index: int, pos: int = 0) -> bytes:
    token = tokenize(raw, pos)[index]
    assert token.kind is not TokenKind.LIST
    return token.value


@given(mailbox_names, st.booleans(), st.integers(0, 3))
def test_client_to_upstream_to_client_is_identity(name: str, utf8: bool, form: int) -> None:
    policy = compile_rules(ROUND_TRIP_RULES)
    wire = name.encode() if utf8 else encode_mutf7(name)
    forms = wire_forms(wire)
    raw = b"a SELECT " + forms[form % len(forms)] + b"\r\n"
    verdict = decide(policy, raw, "SELECT", facts(utf8=utf8))
    if verdict.block is not None:
        # Only names that are an upstream path of a mapped folder are refused.
        assert verdict.block[1] == "Mailbox name is reserved by policy"
        assert any(under(name, to) for to in ("Old/Archive", 'Shared "Team"', "Drafts"))
        assert not any(under(name, source) for source in ("Archive", "Team", "Entwürfe"))
        return
    upstream_command = verdict.rewritten or raw
    assert parse_command(upstream_command).name == "SELECT"
    upstream_name = argument(upstream_command, 0, len(b"a SELECT "))
    for reply_form in wire_forms(upstream_name):
        reply = b'* LIST (\\HasNoChildren) "/" ' + reply_form + b"\r\n"
        to_client = policy.rewrite_response(reply, utf8=utf8)
        assert to_client != b"", "a name the client may use must stay visible"
        shown = to_client if to_client is not None else reply
        assert argument(shown, 3, 2) == wire


@given(mailbox_names, st.booleans())
def test_upstream_to_client_to_upstream_is_identity(name: str, utf8: bool) -> None:
    policy = compile_rules(ROUND_TRIP_RULES)
    wire = name.encode() if utf8 else encode_mutf7(name)
    reply = b'* LIST () "/" ' + wire_forms(wire)[0] + b"\r\n"
    to_client = policy.rewrite_response(reply, utf8=utf8)
    if to_client == b"":
        return  # hidden: the client cannot name it
    client_name = argument(to_client or reply, 3, 2)
    raw = b"a SELECT " + wire_forms(client_name)[0] + b"\r\n"
    verdict = decide(policy, raw, "SELECT", facts(utf8=utf8))
    assert verdict.block is None
    assert argument(verdict.rewritten or raw, 0, len(b"a SELECT ")) == wire


def test_memoised_verdicts_follow_the_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    import imapproxy.policy.verdicts as verdicts

    monkeypatch.setattr(verdicts, "CACHE_LIMIT", 2)
    policy = compile_rules(
        "- {name: r, action: block, when: {user: [bob], client: [10.0.0.0/8]}}\n"
        "- {name: l, action: log, when: {mailbox: [S]}}\n"
    )
    for _ in range(3):
        for user, ip, selected, expected in [
            ("bob", "10.0.0.1", None, "r"),
            ("bob", "11.0.0.1", None, None),
            ("alice", "10.0.0.1", None, None),
            ("BOB", "10.0.0.2", "S", "r"),
        ]:
            verdict = decide(policy, b"a EXPUNGE\r\n", "EXPUNGE", facts(ip, user, selected))
            assert blocked_by(verdict) == expected
            assert verdict.log == ("command" if selected else None)
