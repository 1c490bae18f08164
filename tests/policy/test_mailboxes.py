"""Modified UTF-7 and the rewrite_mailbox table (pure byte-level mapping)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapproxy.policy.mailboxes import (
    MailboxMap,
    Mapped,
    decode_mailbox,
    decode_mutf7,
    encode_mutf7,
)

# Text without lone surrogates (they have no UTF-16 form, so no mUTF-7 form either).
names = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", b"INBOX"),
        ("Entwürfe", b"Entw&APw-rfe"),
        ("R&D", b"R&-D"),
        ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 5.1.3
        ("📧 mail", b"&2D3c5w- mail"),
        ("", b""),
    ],
)
def test_mutf7_vectors(text: str, wire: bytes) -> None:
    assert encode_mutf7(text) == wire
    assert decode_mutf7(wire) == text


@given(names)
def test_mutf7_round_trip(text: str) -> None:
    wire = encode_mutf7(text)
    assert all(0x20 <= b <= 0x7E for b in wire)
    assert decode_mutf7(wire) == text


@pytest.mark.parametrize(
    "wire", [b"&", b"A&AGE", b"caf\xc3\xa9", b"&!!-", b"&A-", b"a\tb", b"&2D0-"]
)
def test_mutf7_rejects_invalid(wire: bytes) -> None:
    with pytest.raises(ValueError):
        decode_mutf7(wire)


def test_decode_mailbox_for_matching() -> None:
    assert decode_mailbox(b"Entw&APw-rfe") == "Entwürfe"
    assert decode_mailbox("Entwürfe".encode(), utf8=True) == "Entwürfe"
    # Invalid mUTF-7 still yields something globs can match.
    assert decode_mailbox(b"R&D") == "R&D"
    assert decode_mailbox("Entwürfe".encode()) == "Entwürfe"
    # INBOX is case-insensitive, and so is the INBOX component of its children.
    assert decode_mailbox(b"inbox") == "INBOX"
    assert decode_mailbox(b"Inbox/Sent") == "INBOX/Sent"
    assert decode_mailbox(b"Inbox.Sent", delimiter=b".") == "INBOX.Sent"
    assert decode_mailbox(b"inboxes") == "inboxes"


ARCHIVE = MailboxMap([("hide", "Archive", "Old/Archive")])


@pytest.mark.parametrize(
    ("client", "upstream"),
    [
        (b"Archive", b"Old/Archive"),
        (b"Archive/2024", b"Old/Archive/2024"),
        (b"Archive/2024/Q1", b"Old/Archive/2024/Q1"),
    ],
)
def test_prefix_maps_children_both_ways(client: bytes, upstream: bytes) -> None:
    assert ARCHIVE.to_upstream(client, b"/") == Mapped(upstream, "hide", True)
    assert ARCHIVE.to_client(upstream, b"/") == Mapped(client, "hide", True)


@pytest.mark.parametrize("name", [b"Archives", b"Archive.2024", b"archive", b"INBOX", b""])
def test_non_children_are_left_alone(name: bytes) -> None:
    assert ARCHIVE.to_upstream(name, b"/") == Mapped(name, None, True)
    assert ARCHIVE.to_client(name, b"/") == Mapped(name, None, True)


def test_delimiter_decides_what_a_child_is() -> None:
    assert ARCHIVE.to_upstream(b"Archive.2024", b".") == Mapped(b"Old/Archive.2024", "hide", True)
    assert ARCHIVE.to_upstream(b"Archive/2024", b".") == Mapped(b"Archive/2024", None, True)
    # A flat namespace (NIL delimiter): only the exact name maps.
    assert ARCHIVE.to_upstream(b"Archive/2024", None) == Mapped(b"Archive/2024", None, True)
    assert ARCHIVE.to_upstream(b"Archive", None) == Mapped(b"Old/Archive", "hide", True)


def test_upstream_path_is_reserved_and_shadowed_name_hidden() -> None:
    # The client naming the upstream path would reach the mapped folder under a second name.
    assert ARCHIVE.to_upstream(b"Old/Archive/x", b"/") == Mapped(b"Old/Archive/x", "hide", False)
    # The upstream's own "Archive" has no client name: "Archive" means Old/Archive.
    assert ARCHIVE.to_client(b"Archive/x", b"/") == Mapped(b"Archive/x", "hide", False)
    # Their neighbours are ordinary names.
    assert ARCHIVE.to_upstream(b"Old/Archives", b"/").valid
    assert ARCHIVE.to_client(b"Old", b"/") == Mapped(b"Old", None, True)


def test_longest_prefix_wins() -> None:
    table = MailboxMap([("outer", "A", "X"), ("inner", "A/B", "Y")])
    assert table.to_upstream(b"A/B/c", b"/") == Mapped(b"Y/c", "inner", True)
    assert table.to_upstream(b"A/c", b"/") == Mapped(b"X/c", "outer", True)
    assert table.to_client(b"Y/c", b"/") == Mapped(b"A/B/c", "inner", True)
    # X/B would come back as A/B, which means Y: the upstream X/B has no client name.
    assert not table.to_client(b"X/B", b"/").valid


def test_non_ascii_names_in_both_encodings() -> None:
    table = MailboxMap([("drafts", "Entwürfe", "Drafts")])
    assert table.to_upstream(b"Entw&APw-rfe/x", b"/") == Mapped(b"Drafts/x", "drafts", True)
    assert table.to_client(b"Drafts/x", b"/") == Mapped(b"Entw&APw-rfe/x", "drafts", True)
    utf8 = "Entwürfe/x".encode()
    assert table.to_upstream(utf8, b"/", utf8=True) == Mapped(b"Drafts/x", "drafts", True)
    assert table.to_client(b"Drafts/x", b"/", utf8=True) == Mapped(utf8, "drafts", True)


def test_inbox_prefix_is_case_insensitive() -> None:
    table = MailboxMap([("shared", "INBOX/Shared", "Public/Shared")])
    assert table.to_upstream(b"inbox/Shared/x", b"/") == Mapped(b"Public/Shared/x", "shared", True)
    assert table.to_upstream(b"inbox/shared", b"/") == Mapped(b"inbox/shared", None, True)


def test_list_patterns_map_by_prefix() -> None:
    assert ARCHIVE.pattern_to_upstream(b"Archive*", b"/") == (b"Old/Archive*", "hide")
    assert ARCHIVE.pattern_to_upstream(b"Archive/%", b"/") == (b"Old/Archive/%", "hide")
    assert ARCHIVE.pattern_to_upstream(b"Archive", b"/") == (b"Old/Archive", "hide")
    assert ARCHIVE.pattern_to_upstream(b"*", b"/") == (b"*", None)
    assert ARCHIVE.pattern_to_upstream(b"Arch*", b"/") == (b"Arch*", None)
    assert ARCHIVE.pattern_to_upstream(b"Archives*", b"/") == (b"Archives*", None)


segments = st.sampled_from(["Archive", "Old", "Archives", "x", "&", "a b", "ü", "Team"])
mapped_names = st.lists(segments, min_size=1, max_size=4).map("/".join)


@given(st.one_of(mapped_names, names.filter(lambda n: not n.startswith("/"))), st.booleans())
def test_table_round_trip(name: str, utf8: bool) -> None:
    table = MailboxMap([("a", "Archive", "Old/Archive"), ("t", "Team", "Shared/Team")])
    wire = name.encode() if utf8 else encode_mutf7(name)
    up = table.to_upstream(wire, b"/", utf8)
    if up.valid:
        assert table.to_client(up.wire, b"/", utf8) == Mapped(wire, up.rule, True)
    down = table.to_client(wire, b"/", utf8)
    if down.valid:
        assert table.to_upstream(down.wire, b"/", utf8) == Mapped(wire, down.rule, True)
