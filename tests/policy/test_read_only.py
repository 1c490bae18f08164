"""The read_only action: SELECT of a matching mailbox goes upstream as EXAMINE."""

from __future__ import annotations

import pytest

from imapproxy.config.yamlsource import ConfigError

from .test_engine import blocked_by, compile_rules, decide, facts

READ_ONLY = """
- name: archive-read-only
  action: read_only
  when: {mailbox: [Archive, Archive/*, INBOX/Frozen]}
"""


@pytest.mark.parametrize(
    ("raw", "upstream"),
    [
        (b"s SELECT Archive\r\n", b"s EXAMINE Archive\r\n"),
        (b"s select Archive/2024\r\n", b"s EXAMINE Archive/2024\r\n"),
        (b's SELECT "Archive"\r\n', b's EXAMINE "Archive"\r\n'),
        (b"s SELECT {7}\r\nArchive\r\n", b"s EXAMINE {7}\r\nArchive\r\n"),
        (b"s SELECT Archive (CONDSTORE)\r\n", b"s EXAMINE Archive (CONDSTORE)\r\n"),
        (b"s SELECT inbox/Frozen\r\n", b"s EXAMINE inbox/Frozen\r\n"),
        (b's SELECT "unterminated\r\n', b's EXAMINE "unterminated\r\n'),  # fail closed
    ],
)
def test_select_of_a_read_only_mailbox_becomes_examine(raw: bytes, upstream: bytes) -> None:
    policy = compile_rules(READ_ONLY)
    assert policy.needs_arguments("SELECT")
    verdict = decide(policy, raw, "SELECT")
    assert verdict.block is None and verdict.rewritten == upstream
    assert verdict.matched == (("archive-read-only", "read_only"),)


@pytest.mark.parametrize(
    ("command", "raw"),
    [
        ("SELECT", b"s SELECT Archives\r\n"),
        ("SELECT", b"s SELECT INBOX\r\n"),
        ("EXAMINE", b"s EXAMINE Archive\r\n"),  # already read-only
        ("STATUS", b"s STATUS Archive (MESSAGES)\r\n"),
        ("STORE", b"s STORE 1 +FLAGS (\\Seen)\r\n"),
    ],
)
def test_other_commands_and_mailboxes_are_untouched(command: str, raw: bytes) -> None:
    policy = compile_rules(READ_ONLY)
    assert decide(policy, raw, command, facts(selected="Archive")).rewritten is None
    assert not policy.needs_arguments("EXAMINE")


def test_read_only_composes_with_rewrites_and_conditions() -> None:
    policy = compile_rules(
        "- {name: ro, action: read_only, when: {mailbox: [Archive*], user: ['guest*']}}\n"
        "- {name: no-select-secret, action: block, when: {command: [SELECT], mailbox: [Secret]}}\n"
        "- {name: m, action: rewrite_mailbox, from: Archive, to: Old/Archive}\n"
    )
    guest = facts(user="guest7")
    verdict = decide(policy, b"s SELECT Archive/x\r\n", "SELECT", guest)
    assert verdict.rewritten == b"s EXAMINE Old/Archive/x\r\n"
    assert verdict.matched == (("m", "rewrite_mailbox"), ("ro", "read_only"))
    owner = decide(policy, b"s SELECT Archive/x\r\n", "SELECT", facts(user="owner"))
    assert owner.rewritten == b"s SELECT Old/Archive/x\r\n"
    assert blocked_by(decide(policy, b"s SELECT Secret\r\n", "SELECT", guest)) == (
        "no-select-secret"
    )
    # a reserved upstream path is still refused, not opened read-only
    assert decide(policy, b"s SELECT Old/Archive\r\n", "SELECT", guest).block is not None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "- {name: r, action: read_only}\n",
            "rules.yaml:1:3: rules[0] (action read_only) needs 'when.mailbox'",
        ),
        (
            "- {name: r, action: read_only, when: {user: [x]}}\n",
            "rules.yaml:1:38: rules[0] (action read_only) needs 'when.mailbox'",
        ),
        (
            "- {name: r, action: read_only, when: {mailbox: [A], command: [SELECT]}}\n",
            "rules.yaml:1:53: 'when.command' is not supported on read_only rules",
        ),
        (
            "- {name: r, action: read_only, when: {mailbox: [A], direction: client}}\n",
            "rules.yaml:1:53: 'when.direction' is not supported on read_only rules",
        ),
        (
            "- {name: r, action: read_only, message: hi, when: {mailbox: [A]}}\n",
            "rules.yaml:1:32: key 'message' is only valid for action 'block'",
        ),
        (
            "- {name: r, action: read_only, when: {mailbox: ['A[']}}\n",
            "rules.yaml:1:49: invalid glob 'A['",
        ),
    ],
)
def test_read_only_rules_are_validated_with_locations(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_rules(text)
    assert str(info.value).startswith(error), str(info.value)
