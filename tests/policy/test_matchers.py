"""Precompiled conditions: globs, CIDR sets and the per-rule matcher."""

from __future__ import annotations

import ipaddress

import pytest

from imapproxy.policy.matchers import Matcher, NetworkSet, compile_globs, glob_error
from imapproxy.policy.model import Rule, When


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("Archive", None),
        ("Arch[iI]ve*", None),
        ("[!a]*", None),
        ("[]]x", None),
        ("Arch[ive", "unterminated '[' at position 5"),
        ("[!", "unterminated '[' at position 1"),
        ("a\nb", "control characters are not allowed"),
    ],
)
def test_glob_error(pattern: str, reason: str | None) -> None:
    assert glob_error(pattern) == reason


def test_globs_star_crosses_delimiters_and_case_is_configurable() -> None:
    mailbox = compile_globs(["Archive", "Archive/*"], ignore_case=False)
    assert mailbox is not None
    assert mailbox.match("Archive") and mailbox.match("Archive/2024/Q1")
    assert not mailbox.match("Archives") and not mailbox.match("archive")
    user = compile_globs(["*@Example.com"], ignore_case=True)
    assert user is not None
    assert user.match("Alice@EXAMPLE.COM")
    assert not user.match("alice@example.com.evil")
    assert compile_globs([], ignore_case=True) is None


def test_network_set() -> None:
    nets = NetworkSet([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])
    assert ipaddress.ip_address("10.1.2.3") in nets
    assert ipaddress.ip_address("::ffff:10.1.2.3") in nets  # dual-stack listener
    assert ipaddress.ip_address("2001:db8::1") in nets
    assert ipaddress.ip_address("11.0.0.1") not in nets
    assert ipaddress.ip_address("2001:db9::1") not in nets


def test_matcher_ands_conditions() -> None:
    rule = Rule(
        "r",
        "block",
        When(
            user=("bob",),
            mailbox=("Secret*",),
            client=(ipaddress.ip_network("192.0.2.0/24"),),
        ),
    )
    matcher = Matcher.compile(rule)
    inside = ipaddress.ip_address("192.0.2.9")
    assert matcher.matches(inside, "BOB", ["INBOX", "Secret/x"])
    assert not matcher.matches(ipaddress.ip_address("198.51.100.1"), "bob", ["Secret"])
    assert not matcher.matches(inside, "alice", ["Secret"])
    assert not matcher.matches(inside, None, ["Secret"])
    assert not matcher.matches(inside, "bob", ["INBOX"])
    assert not matcher.matches(inside, "bob", [])
    assert Matcher.compile(Rule("any", "log")).matches(inside, None, None)


@pytest.mark.parametrize(
    ("glob", "prefix", "extends"),
    [
        ("Archive/*", "Archive/", True),
        ("Archive/*", "Arch", True),
        ("Archive/*", "Archive/2024/x/", True),  # past the star: anything goes
        ("Archive", "Archive/", False),  # the glob ends before the prefix does
        ("Archive", "Arc", True),
        ("Mail/Archive/*", "Mail/", True),
        ("Mail/Archive/*", "Mailbox/", False),
        ("M?il/x", "Mxil/", True),
        ("M[ae]il/x", "Meil/", True),
        ("M[!ae]il/x", "Mail/", False),
        ("*", "anything/", True),
        ("", "x", False),
    ],
)
def test_glob_prefix(glob: str, prefix: str, extends: bool) -> None:
    from imapproxy.policy.matchers import GlobPrefix

    assert GlobPrefix(glob).extends(prefix) is extends


@pytest.mark.parametrize(
    ("glob", "name", "matches"),
    [
        ("inbox", "INBOX", True),
        ("inbox/Keep", "INBOX/Keep", True),
        ("Inbox/*", "INBOX/x", True),
        ("inbox*", "INBOX", False),  # a pattern on the word, case-sensitive as written
        ("inbox*", "inboxes", True),
        ("inboxes", "INBOXES", False),
    ],
)
def test_inbox_in_mailbox_globs_matches_in_any_case(glob: str, name: str, matches: bool) -> None:
    rule = Rule("r", "block", When(mailbox=(glob,)))
    matcher = Matcher.compile(rule)
    assert matcher.matches(ipaddress.ip_address("127.0.0.1"), None, (name,)) is matches
