"""RENAME and DELETE are judged on everything under their names (issue 8, bug 5)."""

from __future__ import annotations

import pytest

from imapproxy.policy import Policy

from .test_engine import blocked_by, compile_rules, decide, facts

READ_ONLY = """
- name: archive-read-only
  action: block
  when:
    mailbox: [Archive, Archive/*]
    command: [RENAME, DELETE, CREATE]
"""
MAPPING = """
- {name: hide-archive-path, action: rewrite_mailbox, from: Archive, to: Old/Archive}
"""
NESTED = """
- name: mail-archive
  action: block
  when: {mailbox: ["Mail/Archive/*", "INBOX/Keep"], command: [RENAME, DELETE]}
"""


def command_of(raw: bytes) -> str:
    return raw.split(b" ")[1].decode().upper()


def verdict_rule(policy: Policy, raw: bytes) -> str | None:
    return blocked_by(decide(policy, raw, command_of(raw)))


@pytest.mark.parametrize(
    "raw",
    [
        b"a RENAME Old Foo\r\n",  # the upstream parent of the mapped Archive
        b"a RENAME Foo Old\r\n",  # ...and renaming something into its place
        b"a DELETE Old\r\n",
        b'a RENAME "Old" Foo\r\n',
        b"a RENAME {3}\r\nOld Foo\r\n",
        b"a RENAME Archive Elsewhere\r\n",  # the protected folder itself
        b"a RENAME Elsewhere Archive/x\r\n",
    ],
)
def test_parent_of_a_mapped_protected_tree_is_blocked_by_the_block_rule(raw: bytes) -> None:
    policy = compile_rules(READ_ONLY + MAPPING)
    assert verdict_rule(policy, raw) == "archive-read-only"


@pytest.mark.parametrize(
    "raw",
    [
        b"a RENAME Old Foo\r\n",
        b"a RENAME Foo Old\r\n",
        b"a DELETE Old\r\n",
        b"a RENAME Archive Elsewhere\r\n",  # a mapped folder would leave its mapping
        b"a RENAME Elsewhere Archive\r\n",  # ...or another folder would become it
        b"a RENAME {7+}\r\nArchive Elsewhere\r\n",
        b'a RENAME "Old/" Foo\r\n',
        b'a DELETE "Old//"\r\n',
    ],
)
def test_renaming_a_mapped_tree_out_of_its_mapping_is_refused(raw: bytes) -> None:
    verdict = decide(compile_rules(MAPPING), raw, command_of(raw))
    assert verdict.block == (
        "hide-archive-path",
        "This would move or remove a mailbox mapped by policy",
    )
    assert verdict.rewritten is None


@pytest.mark.parametrize(
    ("raw", "upstream"),
    [
        (b"a RENAME Archive/2024 Archive/2025\r\n", b"a RENAME Old/Archive/2024 Old/Archive/2025"),
        (b"a RENAME Archive/2024 INBOX/2024\r\n", b"a RENAME Old/Archive/2024 INBOX/2024"),
        (b"a RENAME Drafts Archive/Drafts\r\n", b"a RENAME Drafts Old/Archive/Drafts"),
        (b"a DELETE Archive\r\n", b"a DELETE Old/Archive"),  # consistent on both sides
        (b"a DELETE Archive/2024\r\n", b"a DELETE Old/Archive/2024"),
    ],
)
def test_renames_inside_mappings_stay_allowed(raw: bytes, upstream: bytes) -> None:
    verdict = decide(compile_rules(MAPPING), raw, command_of(raw))
    assert verdict.block is None and verdict.rewritten == upstream + b"\r\n"


@pytest.mark.parametrize(
    "raw",
    [b"a RENAME Olden Foo\r\n", b"a RENAME Foo Ol\r\n", b"a DELETE old\r\n", b"a DELETE Foo\r\n"],
)
def test_unrelated_names_are_not_trees_of_the_mapping(raw: bytes) -> None:
    policy = compile_rules(READ_ONLY + MAPPING)
    assert decide(policy, raw, command_of(raw)).block is None


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (b"a RENAME Mail Foo\r\n", "mail-archive"),  # Mail/Archive/... would move
        (b"a RENAME Foo Mail\r\n", "mail-archive"),  # ...or be replaced
        (b"a DELETE Mail\r\n", "mail-archive"),
        (b"a RENAME Mail/Archive Foo\r\n", "mail-archive"),  # Mail/Archive/* under it
        (b"a DELETE inbox\r\n", "mail-archive"),  # INBOX/Keep, whatever the case
        (b"a RENAME Inbox/Keep X\r\n", "mail-archive"),
        (b'a RENAME "Mail/" Foo\r\n', "mail-archive"),  # forms a lenient server may accept
        (b'a RENAME "Mail//Archive" Foo\r\n', "mail-archive"),
        (b'a DELETE "Old//"\r\n', None),
        (b"a RENAME Mail/Other Foo\r\n", None),
        (b"a RENAME Mailbox Foo\r\n", None),  # not a parent: "Mailbox/" is no prefix
        (b"a DELETE Mai\r\n", None),
    ],
)
def test_parent_of_a_protected_glob_is_judged_as_its_children(raw: bytes, rule: str) -> None:
    assert verdict_rule(compile_rules(NESTED), raw) == rule


def test_glob_classes_and_wildcards_reach_into_the_tree() -> None:
    policy = compile_rules(
        "- {name: r, action: block, when: {mailbox: ['M[ae]il/?rchive'], command: [RENAME]}}\n"
    )
    assert verdict_rule(policy, b"a RENAME Mail X\r\n") == "r"
    assert verdict_rule(policy, b"a RENAME Meil X\r\n") == "r"
    assert verdict_rule(policy, b"a RENAME Moil X\r\n") is None
    assert verdict_rule(policy, b"a RENAME Mail/Archive/x Y\r\n") is None  # a child of it


def test_the_servers_delimiter_decides_what_is_under_a_name() -> None:
    policy = compile_rules(
        "- {name: r, action: block, when: {mailbox: ['Mail.Archive.*'], command: [DELETE]}}\n"
        "- {name: m, action: rewrite_mailbox, from: Archive, to: Old.Archive}\n"
    )
    assert verdict_rule(policy, b"a DELETE Mail\r\n") is None  # "/" assumed: no children
    policy.set_delimiter(b".")
    assert verdict_rule(policy, b"a DELETE Mail\r\n") == "r"
    assert verdict_rule(policy, b"a DELETE Old\r\n") == "m"
    assert verdict_rule(policy, b"a RENAME Old.X Y\r\n") is None
    policy.set_delimiter(None)  # flat: names have no children
    assert verdict_rule(policy, b"a DELETE Mail\r\n") is None
    assert verdict_rule(policy, b"a DELETE Old\r\n") is None


def test_a_client_parent_of_a_mapped_name_is_refused() -> None:
    policy = compile_rules(
        "- {name: m, action: rewrite_mailbox, from: Mail/Archive, to: Old/Archive}\n"
    )
    # RENAME Mail would leave Mail/Archive behind (it lives elsewhere upstream)
    assert verdict_rule(policy, b"a RENAME Mail X\r\n") == "m"
    assert verdict_rule(policy, b"a RENAME X Mail\r\n") == "m"
    assert verdict_rule(policy, b"a RENAME Old X\r\n") == "m"
    assert verdict_rule(policy, b"a RENAME Mail/Other X\r\n") is None


def test_tree_verdicts_are_memoised_per_tree() -> None:
    policy = compile_rules(NESTED)
    f = facts(user="alice")
    for _ in range(3):
        assert blocked_by(policy.decide(f, "DELETE", b"a DELETE Mail\r\n", True)) == "mail-archive"
        assert policy.decide(f, "DELETE", b"a DELETE Mail/Other\r\n", True).block is None
