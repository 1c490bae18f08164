"""Capability filtering: only the capability words change, every other byte is kept."""

from __future__ import annotations

import pytest

from imapproxy.wire.capabilities import CapabilityFilter, capabilities_in

HIDE = {b"STARTTLS", b"LOGINDISABLED"}


def expected_words(words: list[bytes], hide: set[bytes], add: list[bytes] = ()) -> bytes:
    """What a filtered word list must be: hidden words and COMPRESS=* out, order kept,
    added words appended unless already present."""
    kept = [
        w
        for w in words
        if w.upper() not in {h.upper() for h in hide} and not w.upper().startswith(b"COMPRESS=")
    ]
    kept += [a for a in add if a.upper() not in {w.upper() for w in kept}]
    return b" ".join(kept)


WORDS = [
    b"IMAP4rev1",
    b"STARTTLS",
    b"AUTH=PLAIN",
    b"LOGINDISABLED",
    b"COMPRESS=DEFLATE",
    b"IDLE",
    b"compress=xz",
    b"starttls",
    b"LITERAL+",
    b"ID",
]


def test_untagged_capability_line() -> None:
    line = b"* CAPABILITY " + b" ".join(WORDS) + b"\r\n"
    out = CapabilityFilter(HIDE).untagged(line)
    assert out == b"* CAPABILITY " + expected_words(WORDS, HIDE) + b"\r\n"
    assert b"STARTTLS" not in out.upper() and b"COMPRESS" not in out.upper()


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [
        (b"* OK [CAPABILITY ", b"] Dovecot (Debian) ready.\r\n"),
        (b"* PREAUTH [CAPABILITY ", b"] Logged in as bob\r\n"),
        (b"a1 OK [CAPABILITY ", b"] Logged in\r\n"),
        (b"a1 OK [capability ", b"]\r\n"),
    ],
)
def test_response_code_keeps_every_other_byte(prefix: bytes, suffix: bytes) -> None:
    line = prefix + b" ".join(WORDS) + suffix
    out = CapabilityFilter(HIDE).response_code(line)
    assert out == prefix + expected_words(WORDS, HIDE) + suffix


def test_lines_without_hidden_words_are_byte_identical() -> None:
    filt = CapabilityFilter(HIDE)
    for line in [
        b"* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\n",
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n",
        b"* OK ready\r\n",
        b"a1 OK [READ-WRITE] done\r\n",
        b"* 1 FETCH (BODY[] {5}\r\n",
    ]:
        assert filt.untagged(line) == line
        assert filt.response_code(line) == line


def test_words_are_added_once() -> None:
    filt = CapabilityFilter(HIDE, add=[b"STARTTLS", b"IDLE"])
    words = [b"IMAP4rev1", b"IDLE", b"STARTTLS"]
    line = b"* CAPABILITY " + b" ".join(words) + b"\r\n"
    # Hidden upstream STARTTLS, then the proxy's own STARTTLS added; IDLE not duplicated.
    assert filt.untagged(line) == b"* CAPABILITY IMAP4rev1 IDLE STARTTLS\r\n"


def test_hide_is_case_insensitive() -> None:
    filt = CapabilityFilter({b"starttls"})
    assert filt.untagged(b"* CAPABILITY STARTTLS IMAP4rev1\r\n") == b"* CAPABILITY IMAP4rev1\r\n"


def test_only_the_capability_code_is_touched() -> None:
    # Words outside the [CAPABILITY ...] code (the human-readable text) are kept.
    line = b"* OK [CAPABILITY IMAP4rev1 STARTTLS] try STARTTLS later\r\n"
    assert CapabilityFilter(HIDE).response_code(line) == (
        b"* OK [CAPABILITY IMAP4rev1] try STARTTLS later\r\n"
    )


def test_capabilities_in() -> None:
    assert capabilities_in(b"* CAPABILITY IMAP4rev1 idle\r\n") == [b"IMAP4REV1", b"IDLE"]
    assert capabilities_in(b"a OK [CAPABILITY IMAP4rev1 X] ok\r\n") == [b"IMAP4REV1", b"X"]
    assert capabilities_in(b"* OK hello\r\n") is None
