"""Upstream paths never show in status response texts (issue 8, bug 7), and `* STATUS`
counts of a mailbox whose STATUS is blocked never show, whoever asked (LIST-STATUS, NOTIFY)."""

from __future__ import annotations

import pytest

from .test_engine import compile_rules, facts

MAPPING = """
- {name: hide-archive-path, action: rewrite_mailbox, from: Archive, to: Old/Archive}
- {name: team, action: rewrite_mailbox, from: Team, to: Shared/Team}
- {name: deep, action: rewrite_mailbox, from: Deep, to: Old/Archive/Deep}
- {name: intl, action: rewrite_mailbox, from: "Bücher", to: "Alt/Bücher"}
"""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"s NO Mailbox doesn't exist: Old/Archive/nope (0.001 + 0.000 secs)\r\n",
            b"s NO Mailbox doesn't exist: Archive/nope (0.001 + 0.000 secs)\r\n",
        ),
        (
            b"a NO [TRYCREATE] Mailbox doesn't exist: Old/Archive/nope\r\n",
            b"a NO [TRYCREATE] Mailbox doesn't exist: Archive/nope\r\n",
        ),
        (b"a NO No such folder: Old/Archive\r\n", b"a NO No such folder: Archive\r\n"),
        (b'a NO "Old/Archive" and "Shared/Team/x"\r\n', b'a NO "Archive" and "Team/x"\r\n'),
        (b"a NO x: Old/Archive/Deep/y\r\n", b"a NO x: Deep/y\r\n"),  # the longest name wins
        (b"* NO Old/Archive is gone\r\n", b"* NO Archive is gone\r\n"),
        (b"* BYE Old/Archive deleted\r\n", b"* BYE Archive deleted\r\n"),
        (b"a NO Alt/B&APw-cher/x\r\n", b"a NO B&APw-cher/x\r\n"),  # modified UTF-7
        ("a NO Alt/Bücher\r\n".encode(), "a NO Bücher\r\n".encode()),  # UTF-8
    ],
)
def test_upstream_names_in_status_texts_show_client_names(raw: bytes, expected: bytes) -> None:
    assert compile_rules(MAPPING).rewrite_status_text(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"a NO Mailbox doesn't exist: Old/Archive2\r\n",  # another component
        b"a NO Mailbox doesn't exist: Old/Archives/x\r\n",
        b"a NO Mailbox doesn't exist: Foo/Old/Archive\r\n",  # the tail of another path
        b"a NO Mailbox doesn't exist: XOld/Archive\r\n",
        b"a NO Mailbox doesn't exist: Old/Archive.bak\r\n",
        b"a NO Mailbox doesn't exist: Old\r\n",  # the unmapped parent is no secret
        b"a OK Done\r\n",
        b"Old/Archive NO tags are never touched\r\n",
    ],
)
def test_other_names_and_tags_are_left_alone(raw: bytes) -> None:
    assert compile_rules(MAPPING).rewrite_status_text(raw) is None


def test_the_learned_delimiter_bounds_components() -> None:
    policy = compile_rules("- {name: m, action: rewrite_mailbox, from: Archive, to: Old.Archive}\n")
    policy.set_delimiter(b".")
    assert policy.rewrite_status_text(b"a NO x: Old.Archive.y\r\n") == b"a NO x: Archive.y\r\n"
    assert policy.rewrite_status_text(b"a NO x: Old.Archive\r\n") == b"a NO x: Archive\r\n"
    assert policy.rewrite_status_text(b"a NO x: Foo.Old.Archive\r\n") is None


def test_no_mapping_no_text_rewriting() -> None:
    policy = compile_rules("- {name: d, action: block, when: {command: [DELETE]}}\n")
    assert not policy.rewrites_responses()
    assert policy.rewrite_status_text(b"a NO Old/Archive\r\n") is None


STATUS_BLOCK = """
- name: no-secret-counts
  action: block
  when: {command: [STATUS], mailbox: ["Secret", "Secret/*"]}
- name: no-counts-for-interns
  action: block
  when: {command: [STATUS], user: ["intern-*"]}
- {name: m, action: rewrite_mailbox, from: Hidden, to: Secret/Hidden}
"""


def test_status_counts_of_a_blocked_mailbox_are_hidden() -> None:
    policy = compile_rules(STATUS_BLOCK)
    assert policy.rewrites_responses()
    alice = facts(user="alice")
    assert policy.rewrite_response(b"* STATUS Secret (MESSAGES 3)\r\n", alice) == b""
    assert policy.rewrite_response(b'* STATUS "Secret/x" (MESSAGES 3)\r\n', alice) == b""
    assert policy.rewrite_response(b"* STATUS {6}\r\nSecret (MESSAGES 3)\r\n", alice) == b""
    assert policy.rewrite_response(b"* STATUS INBOX (MESSAGES 3)\r\n", alice) is None
    assert policy.rewrite_response(b"* STATUS Secrets (MESSAGES 3)\r\n", alice) is None
    # judged on the client name: the mapped Secret/Hidden shows as Hidden, which may count
    assert policy.rewrite_response(b"* STATUS Secret/Hidden (MESSAGES 1)\r\n", alice) == (
        b"* STATUS Hidden (MESSAGES 1)\r\n"
    )
    # the rules' other conditions apply as for the command
    intern = facts(user="intern-3")
    assert policy.rewrite_response(b"* STATUS INBOX (MESSAGES 3)\r\n", intern) == b""
    # LIST replies themselves stay (LIST is not blocked)
    assert policy.rewrite_response(b'* LIST () "/" Secret\r\n', alice) is None


def test_status_guard_without_rewrite_rules() -> None:
    policy = compile_rules(
        "- {name: s, action: block, when: {command: [STATUS], mailbox: [Secret]}}\n"
    )
    assert policy.rewrites_responses()
    assert policy.rewrite_response(b"* STATUS Secret (UNSEEN 1)\r\n", facts()) == b""
    assert policy.rewrite_response(b"* STATUS Other (UNSEEN 1)\r\n", facts()) is None
    assert policy.rewrite_response(b'* LIST () "/" Secret\r\n', facts()) is None
    assert policy.rewrite_status_text(b"a NO Secret\r\n") is None
