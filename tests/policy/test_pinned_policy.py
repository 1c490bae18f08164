"""Policy behaviour pinned for mutation testing (issue 8, "Behaviour no test pins").

Rewriting of commands and responses (LIST-EXTENDED, STATUS, patterns, INBOX and delimiter
corners, modified UTF-7, re-encoding) and verdicts (log precedence, logged-and-rewritten
commands, fail-closed parsing, which rule is blamed), each through ``Policy.decide`` /
``rewrite_response`` of rules compiled by the real loader.
"""

from __future__ import annotations

import pytest

from imapproxy.policy import Policy, Rule, Verdict
from imapproxy.policy.mailboxes import (
    MailboxMap,
    canonical_inbox,
    decode_mailbox,
    decode_mutf7,
    encode_mailbox,
    encode_mutf7,
)
from imapproxy.policy.model import When
from tests.policy.test_engine import NOTHING, blocked_by, compile_rules, decide, facts

REWRITE = "- {name: hide, action: rewrite_mailbox, from: Archive, to: Old/Archive}\n"
UNPARSABLE = "Command arguments could not be checked against policy"


def rewritten(policy: Policy, raw: bytes, command: str, **kw: object) -> bytes | None:
    return decide(policy, raw, command, facts(**kw)).rewritten  # type: ignore[arg-type]


# --- LIST commands --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'a LIST "" (Archive Archive/*)\r\n', b'a LIST "" (Old/Archive Old/Archive/*)\r\n'),
        (b'a LIST "" (INBOX Archive)\r\n', b'a LIST "" (INBOX Old/Archive)\r\n'),
        (
            b'a LIST (SUBSCRIBED) "" (Archive/% Sent) RETURN (CHILDREN)\r\n',
            b'a LIST (SUBSCRIBED) "" (Old/Archive/% Sent) RETURN (CHILDREN)\r\n',
        ),
        (b'a LIST "" Archive%\r\n', b'a LIST "" Old/Archive%\r\n'),
        (b'a LIST "" Archive*\r\n', b'a LIST "" Old/Archive*\r\n'),
        (b'a LIST "" "Archive/2024"\r\n', b'a LIST "" "Old/Archive/2024"\r\n'),
        (b"a LSUB Archive/ %\r\n", b"a LSUB Old/Archive/ %\r\n"),  # relative to the reference
        (b'a LIST "" {7}\r\nArchive\r\n', b'a LIST "" {11}\r\nOld/Archive\r\n'),
    ],
)
def test_list_patterns_are_rewritten(raw: bytes, expected: bytes) -> None:
    policy = compile_rules(REWRITE)
    assert policy.needs_arguments("LIST")
    verdict = decide(policy, raw, raw.split()[1].decode().upper())
    assert verdict.rewritten == expected
    assert verdict.matched == (("hide", "rewrite_mailbox"),)


@pytest.mark.parametrize(
    "raw", [b'a LIST "" Arch*\r\n', b'a LIST "" Archives\r\n', b'a LIST "" *\r\n', b"a LIST\r\n"]
)
def test_list_patterns_not_under_a_mapped_name_are_unchanged(raw: bytes) -> None:
    assert decide(compile_rules(REWRITE), raw, "LIST") == NOTHING


def test_list_with_a_list_where_a_pattern_belongs_is_refused() -> None:
    verdict = decide(compile_rules(REWRITE), b'a LIST "" ((Archive))\r\n', "LIST")
    assert verdict.block == ("hide", UNPARSABLE)


# --- responses -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"* STATUS Old/Archive/2024 (MESSAGES 1)\r\n", b"* STATUS Archive/2024 (MESSAGES 1)\r\n"),
        (b"* status Old/Archive (UNSEEN 0)\r\n", b"* status Archive (UNSEEN 0)\r\n"),
        (b"* MYRIGHTS Old/Archive lr\r\n", b"* MYRIGHTS Archive lr\r\n"),
        (b"* ACL Old/Archive bob lr\r\n", b"* ACL Archive bob lr\r\n"),
        (b"* QUOTAROOT Old/Archive root\r\n", b"* QUOTAROOT Archive root\r\n"),
        (b"* METADATA Old/Archive (/x NIL)\r\n", b"* METADATA Archive (/x NIL)\r\n"),
        (b"* LISTRIGHTS Old/Archive bob l\r\n", b"* LISTRIGHTS Archive bob l\r\n"),
    ],
)
def test_name_first_responses_are_rewritten(raw: bytes, expected: bytes) -> None:
    assert compile_rules(REWRITE).rewrite_response(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"* STATUS\r\n",
        b"* STATUS \r\n",
        b"* STATUS (MESSAGES 1)\r\n",
        b'* STATUS "open\r\n',
        b"* LIST ()\r\n",
        b'* LIST () "/"\r\n',
        b'* LIST () "/" (x)\r\n',
        b"* LIST (\r\n",
        b"* 3 EXISTS\r\n",
        b"a OK Old/Archive\r\n",
        b"* SEARCH 1 2\r\n",
        b"*\r\n",
    ],
)
def test_malformed_or_other_responses_are_left_alone(raw: bytes) -> None:
    assert compile_rules(REWRITE).rewrite_response(raw) is None


def test_responses_are_not_touched_without_rewrite_rules() -> None:
    policy = compile_rules("- {name: l, action: log}\n")
    assert not policy.rewrites_responses()
    assert policy.rewrite_response(b'* LIST () "/" Old/Archive\r\n') is None


# --- INBOX, delimiters ----------------------------------------------------------------------
def test_lowercase_inbox_in_rules() -> None:
    policy = compile_rules(
        "- {name: team, action: rewrite_mailbox, from: inbox/Team, to: Shared/Team}\n"
    )
    for name in (b"INBOX/Team", b"inbox/Team", b"Inbox/Team/x"):
        assert rewritten(policy, b"a SELECT " + name + b"\r\n", "SELECT") is not None
    assert rewritten(policy, b"a SELECT INBOX/Team\r\n", "SELECT") == b"a SELECT Shared/Team\r\n"
    assert rewritten(policy, b"a SELECT INBOX/team\r\n", "SELECT") is None  # only INBOX folds
    assert policy.rewrite_response(b'* LIST () "/" Shared/Team\r\n') == (
        b'* LIST () "/" inbox/Team\r\n'
    )


def test_inbox_case_with_a_dot_delimiter() -> None:
    policy = compile_rules(
        "- {name: team, action: rewrite_mailbox, from: INBOX.Team, to: Shared.Team}\n"
        "- {name: ro, action: block, when: {command: [DELETE], mailbox: [INBOX.Team]}}\n"
    )
    policy.set_delimiter(b".")
    assert policy.delimiter == b"."
    assert rewritten(policy, b"a SELECT inbox.Team\r\n", "SELECT") == b"a SELECT Shared.Team\r\n"
    assert blocked_by(decide(policy, b"a DELETE inbox.Team\r\n", "DELETE")) == "ro"
    assert policy.rewrite_response(b'* LIST () "." Shared.Team.x\r\n') == (
        b'* LIST () "." INBOX.Team.x\r\n'
    )


def test_canonical_inbox_needs_the_delimiter() -> None:
    assert canonical_inbox(b"inbox", b".") == b"INBOX"
    assert canonical_inbox(b"inbox.x", b".") == b"INBOX.x"
    assert canonical_inbox(b"inbox.x", b"/") == b"inbox.x"
    assert canonical_inbox(b"inbox/x", None) == b"inbox/x"  # flat: no children
    assert canonical_inbox(b"inboxes", b"/") == b"inboxes"
    assert decode_mailbox(b"inbox.x", delimiter=b".") == "INBOX.x"


def test_learned_flat_namespace_has_no_children() -> None:
    policy = compile_rules(REWRITE)
    assert policy.rewrite_response(b'* LIST (\\Noselect) NIL ""\r\n') is None
    assert policy.delimiter is None
    assert rewritten(policy, b"a SELECT Archive/x\r\n", "SELECT") is None
    assert rewritten(policy, b"a SELECT Archive\r\n", "SELECT") == b"a SELECT Old/Archive\r\n"


# --- modified UTF-7 -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("ä", b"&AOQ-"),
        ("&", b"&-"),
        ("a&b", b"a&-b"),
        ("Entwürfe", b"Entw&APw-rfe"),
        ("日本", b"&ZeVnLA-"),
        ("€x", b"&IKw-x"),  # two bytes of UTF-16: a run of 3 base64 chars
        ("\U0001f600", b"&2D3eAA-"),  # a surrogate pair
        ("~\x7f", b"~&AH8-"),
    ],
)
def test_mutf7_round_trip(name: str, wire: bytes) -> None:
    assert encode_mutf7(name) == wire
    assert decode_mutf7(wire) == name
    assert b"=" not in wire


@pytest.mark.parametrize(
    "wire",
    [
        b"&AOQ=-",  # base64 padding is not used in modified UTF-7
        b"&AO/-",  # "/" is written ","
        b"&AOQ",  # unterminated
        b"\x01",
        b"caf\xc3\xa9",
        b"&2D0-",  # a lone surrogate
    ],
)
def test_mutf7_invalid(wire: bytes) -> None:
    with pytest.raises(ValueError):
        decode_mutf7(wire)


def test_ampersand_in_utf8_accept_names_is_plain() -> None:
    assert decode_mailbox(b"&AOQ-", utf8=True) == "&AOQ-"
    assert decode_mailbox(b"&AOQ-", utf8=False) == "ä"
    assert decode_mailbox(b"A&B", utf8=False) == "A&B"  # invalid mUTF-7: taken as is
    assert decode_mailbox("Grüße".encode(), utf8=False) == "Grüße"
    assert encode_mailbox("R&D", True) == b"R&D"
    assert encode_mailbox("R&D", False) == b"R&-D"
    policy = compile_rules("- {name: rd, action: rewrite_mailbox, from: R&D, to: Old/RD}\n")
    assert rewritten(policy, b"a SELECT R&D\r\n", "SELECT", utf8=True) == b"a SELECT Old/RD\r\n"
    assert rewritten(policy, b"a SELECT R&-D\r\n", "SELECT") == b"a SELECT Old/RD\r\n"
    assert rewritten(policy, b"a SELECT R&-D\r\n", "SELECT", utf8=True) is None


# --- re-encoding ----------------------------------------------------------------------------
def rewrite_to(target: str, raw: bytes, *, utf8: bool = False) -> bytes | None:
    policy = Policy.compile([Rule("r", "rewrite_mailbox", from_="Archive", to=target)])
    return decide(policy, raw, raw.split()[1].decode().upper(), facts(utf8=utf8)).rewritten


@pytest.mark.parametrize(
    ("target", "raw", "expected"),
    [
        ("Old Archive", b"a SELECT Archive\r\n", b'a SELECT "Old Archive"\r\n'),
        ('Old "Q"', b"a SELECT Archive\r\n", b'a SELECT "Old \\"Q\\""\r\n'),
        ("Old\\X", b"a SELECT Archive\r\n", b'a SELECT "Old\\\\X"\r\n'),
        ("[Old]", b"a SELECT Archive\r\n", b'a SELECT "[Old]"\r\n'),
        ("Old%", b"a SELECT Archive\r\n", b'a SELECT "Old%"\r\n'),
        ("Old", b'a SELECT "Archive"\r\n', b'a SELECT "Old"\r\n'),
        ("Old", b"a SELECT {7+}\r\nArchive\r\n", b"a SELECT {3+}\r\nOld\r\n"),
        ("Old", b"a SELECT ~{7}\r\nArchive\r\n", b"a SELECT ~{3}\r\nOld\r\n"),
        ("Ä", b"a SELECT Archive\r\n", b"a SELECT &AMQ-\r\n"),
        ("Old%", b'a LIST "" Archive\r\n', b'a LIST "" Old%\r\n'),  # a pattern keeps "%"
        ("Old Archive", b'a LIST "" Archive\r\n', b'a LIST "" "Old Archive"\r\n'),
    ],
)
def test_rewritten_names_are_re_encoded(target: str, raw: bytes, expected: bytes) -> None:
    assert rewrite_to(target, raw) == expected


def test_utf8_names_needing_a_literal_or_quotes() -> None:
    assert rewrite_to("Ä", b"a SELECT Archive\r\n", utf8=True) == 'a SELECT "Ä"\r\n'.encode()
    assert rewrite_to("Old\r\nX", b"a SELECT Archive\r\n", utf8=True) == (
        b"a SELECT {6}\r\nOld\r\nX\r\n"
    )
    assert rewrite_to("Old\x00", b"a SELECT Archive\r\n", utf8=True) == (
        b"a SELECT {4}\r\nOld\x00\r\n"
    )


def test_rewritten_name_round_trips_through_the_map() -> None:
    table = MailboxMap([("r", "Archive", "Old/Archive")])
    up = table.to_upstream(b"Archive/x", b"/")
    assert (up.wire, up.rule, up.valid) == (b"Old/Archive/x", "r", True)
    down = table.to_client(b"Old/Archive/x", b"/")
    assert (down.wire, down.rule, down.valid) == (b"Archive/x", "r", True)
    reserved = table.to_upstream(b"Old/Archive", b"/")
    assert (reserved.rule, reserved.valid) == ("r", False)
    hidden = table.to_client(b"Archive", b"/")
    assert (hidden.rule, hidden.valid) == ("r", False)
    other = table.to_upstream(b"Archives", b"/")
    assert (other.wire, other.rule, other.valid) == (b"Archives", None, True)
    assert table and not MailboxMap([])


# --- verdicts -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rules",
    [
        "- {name: f, action: log, detail: full}\n- {name: c, action: log}\n",
        "- {name: c, action: log}\n- {name: f, action: log, detail: full}\n",
    ],
    ids=["full-first", "command-first"],
)
def test_full_log_detail_wins_in_either_order(rules: str) -> None:
    verdict = decide(compile_rules(rules), b"a NOOP\r\n", "NOOP")
    assert verdict.log == "full"
    assert sorted(verdict.matched) == [("c", "log"), ("f", "log")]


def test_two_command_level_logs_stay_command() -> None:
    rules = "- {name: a, action: log}\n- {name: b, action: log, when: {command: [NOOP]}}\n"
    verdict = decide(compile_rules(rules), b"a NOOP\r\n", "NOOP")
    assert verdict.log == "command"
    assert verdict.matched == (("a", "log"), ("b", "log"))


def test_logged_and_rewritten_command() -> None:
    policy = compile_rules("- {name: audit, action: log, detail: full}\n" + REWRITE)
    verdict = decide(policy, b"a SELECT Archive\r\n", "SELECT")
    assert verdict == Verdict(
        None,
        b"a SELECT Old/Archive\r\n",
        "full",
        (("audit", "log"), ("hide", "rewrite_mailbox")),
    )


def test_blocked_command_is_still_logged_and_not_rewritten() -> None:
    policy = compile_rules(
        "- {name: audit, action: log}\n"
        "- {name: ro, action: block, when: {command: [DELETE], mailbox: [Archive]}}\n" + REWRITE
    )
    verdict = decide(policy, b"a DELETE Archive\r\n", "DELETE")
    assert verdict.block == ("ro", "Blocked by policy rule ro")
    assert verdict.rewritten is None and verdict.log == "command"
    assert verdict.matched == (("audit", "log"), ("ro", "block"))


@pytest.mark.parametrize(
    "raw",
    [
        b"a DELETE\r\n",
        b"a DELETE (Archive)\r\n",
        b'a DELETE "Archive\r\n',
        b"a RENAME Archive\r\n",  # RENAME needs both names
        b"a COPY 1:*\r\n",
    ],
)
def test_unparsable_arguments_under_a_mailbox_block_rule_fail_closed(raw: bytes) -> None:
    policy = compile_rules(
        "- {name: audit, action: log, when: {mailbox: [Archive]}}\n"
        "- {name: other, action: block, when: {user: [nobody]}}\n"
        "- {name: ro, action: block, when: {mailbox: [Archive]}}\n"
        "- {name: ro2, action: block, when: {mailbox: ['*']}}\n"
    )
    command = raw.split()[1].decode()
    verdict = decide(policy, raw, command)
    assert verdict == Verdict(("ro", UNPARSABLE), None, None, (("ro", "block"),))


def test_unparsable_login_blames_the_user_rule() -> None:
    policy = compile_rules(
        "- {name: ro, action: block, when: {mailbox: [Archive]}}\n"
        "- {name: who, action: block, when: {command: [LOGIN], user: [mallory]}}\n"
    )
    verdict = decide(policy, b'a LOGIN "mallory\r\n', "LOGIN")
    assert verdict == Verdict(("who", UNPARSABLE), None, None, (("who", "block"),))
    # A user already known (a second LOGIN after a successful one) is judged instead.
    assert decide(policy, b'a LOGIN "x\r\n', "LOGIN", facts(user="alice")) == NOTHING


def test_reserved_name_blames_the_rule_that_maps_it() -> None:
    policy = compile_rules(
        "- {name: first, action: rewrite_mailbox, from: Team, to: Shared/Team}\n" + REWRITE
    )
    verdict = decide(policy, b"a SELECT Old/Archive\r\n", "SELECT")
    assert verdict.block == ("hide", "Mailbox name is reserved by policy")
    assert verdict.matched == (("hide", "rewrite_mailbox"),)
    # The table as a whole refuses an unreadable command: the first rewrite rule is blamed.
    verdict = decide(policy, b"a SELECT (x)\r\n", "SELECT")
    assert verdict.block == ("first", UNPARSABLE)


def test_first_matching_block_rule_is_blamed_and_later_ones_skipped() -> None:
    rules = [
        Rule("a", "block", When(command=("DELETE",), user=("bob",))),
        Rule("b", "block", When(command=("DELETE",)), message="B says no"),
        Rule("c", "block", When(command=("DELETE",))),
        Rule("d", "log"),
    ]
    policy = Policy.compile(rules)
    verdict = decide(policy, b"x DELETE y\r\n", "DELETE", facts(user="alice"))
    assert verdict.block == ("b", "B says no")
    assert verdict.matched == (("b", "block"), ("d", "log"))
    verdict = decide(policy, b"x DELETE y\r\n", "DELETE", facts(user="bob"))
    assert verdict.block == ("a", "Blocked by policy rule a")


def test_list_with_only_a_reference_still_maps_it() -> None:
    # Malformed (the server answers BAD), but a client-side name never goes up unmapped.
    assert rewritten(compile_rules(REWRITE), b"a LIST Archive\r\n", "LIST") == (
        b"a LIST Old/Archive\r\n"
    )


def test_utf8_list_patterns_are_mapped_in_utf8() -> None:
    policy = compile_rules(
        "- {name: drafts, action: rewrite_mailbox, from: 'Entwürfe', to: Drafts}\n"
    )
    raw = 'a LIST "" "Entwürfe/*"\r\n'.encode()
    assert rewritten(policy, raw, "LIST", utf8=True) == b'a LIST "" "Drafts/*"\r\n'
    assert rewritten(policy, b'a LIST "" Entw&APw-rfe/%\r\n', "LIST") == b'a LIST "" Drafts/%\r\n'


def test_delimiter_is_not_learned_from_unmapped_list_replies() -> None:
    policy = compile_rules(REWRITE)
    assert policy.rewrite_response(b'* LIST () "." INBOX\r\n') is None
    assert policy.delimiter == b"/"  # still the assumption: only "" or mapped names teach it
    assert policy.rewrite_response(b'* LIST () "." Old.Archive\r\n') is None
    assert policy.rewrite_response(b'* LIST () "/" Old/Archive\r\n') == b'* LIST () "/" Archive\r\n'
    assert policy.delimiter == b"/"


def test_tagged_lines_are_never_rewritten() -> None:
    policy = compile_rules(REWRITE)
    assert policy.rewrite_response(b'a LIST () "/" Old/Archive\r\n') is None
    assert policy.rewrite_response(b"a STATUS Old/Archive (MESSAGES 1)\r\n") is None


# --- selected mailbox, LOGIN users, GETMETADATA, patterns (mutation run, second pass) -----------
def test_selected_mailbox_named_like_mutf7_is_decoded_once() -> None:
    policy = compile_rules("- {name: r, action: block, when: {mailbox: ['&AOQ-']}}\n")
    # The wire form "&-AOQ-" is the name "&AOQ-" itself, not "ä".
    assert blocked_by(decide(policy, b"a FETCH 1 FLAGS\r\n", "FETCH", facts(selected="&-AOQ-")))
    other = compile_rules("- {name: r, action: block, when: {mailbox: ['ä']}}\n")
    assert decide(other, b"a FETCH 1 FLAGS\r\n", "FETCH", facts(selected="&-AOQ-")) == NOTHING


def test_utf8_argument_names_are_not_mutf7_decoded() -> None:
    policy = compile_rules("- {name: r, action: block, when: {mailbox: ['&AOQ-']}}\n")
    assert blocked_by(decide(policy, b"a SELECT &AOQ-\r\n", "SELECT", facts(utf8=True))) == "r"
    assert decide(policy, b"a SELECT &AOQ-\r\n", "SELECT") == NOTHING  # that is "ä"


def test_selected_inbox_child_with_the_learned_delimiter() -> None:
    policy = compile_rules("- {name: r, action: block, when: {mailbox: [INBOX.Team]}}\n")
    policy.set_delimiter(b".")
    assert blocked_by(decide(policy, b"a FETCH 1 FLAGS\r\n", "FETCH", facts(selected="inbox.Team")))


WHO = "- {name: who, action: block, when: {command: [LOGIN], user: [mallory]}}\n"


@pytest.mark.parametrize(
    ("raw", "block"),
    [
        (b"a LOGIN mallory (x)\r\n", ("who", "Blocked by policy rule who")),
        (b"a LOGIN mallory\r\n", ("who", "Blocked by policy rule who")),
        (b"a LOGIN (mallory) pw\r\n", ("who", UNPARSABLE)),
        (b"a LOGIN m\xe4llory pw\r\n", None),
    ],
)
def test_login_user_is_the_first_argument(raw: bytes, block: tuple[str, str] | None) -> None:
    assert decide(compile_rules(WHO), raw, "LOGIN").block == block


def test_getmetadata_mailbox_position() -> None:
    policy = compile_rules("- {name: r, action: block, when: {mailbox: [Secret]}}\n")
    assert blocked_by(decide(policy, b"a GETMETADATA Secret /private/x\r\n", "GETMETADATA"))
    verdict = decide(policy, b"a SELECT (x) Secret\r\n", "SELECT")
    assert verdict.block == ("r", UNPARSABLE)  # options come first for GETMETADATA only


def test_client_names_with_list_wildcards_are_quoted_in_responses() -> None:
    # Rules hold no wildcards, but the rest of an upstream name is copied as it is.
    policy = compile_rules(REWRITE)
    assert policy.rewrite_response(b'* LIST () "/" Old/Archive/a%b\r\n') == (
        b'* LIST () "/" "Archive/a%b"\r\n'
    )


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (b"Archive*x*", b"Old/Archive*x*"),
        (b"Archive%x%", b"Old/Archive%x%"),
        (b"Archive%/*", b"Old/Archive%/*"),
    ],
)
def test_pattern_maps_up_to_its_first_wildcard(pattern: bytes, expected: bytes) -> None:
    raw = b'a LIST "" ' + pattern + b"\r\n"
    assert rewritten(compile_rules(REWRITE), raw, "LIST") == b'a LIST "" ' + expected + b"\r\n"


def test_lowercase_inbox_pattern() -> None:
    policy = compile_rules(
        "- {name: team, action: rewrite_mailbox, from: INBOX/Team, to: Shared/Team}\n"
    )
    assert (
        rewritten(policy, b'a LIST "" inbox/Team/*\r\n', "LIST") == b'a LIST "" Shared/Team/*\r\n'
    )


def test_del_is_not_allowed_in_mutf7() -> None:
    with pytest.raises(ValueError):
        decode_mutf7(b"a\x7f")
