"""UTF8=ACCEPT (RFC 6855): once the server answers ``ENABLE UTF8=ACCEPT`` with
``* ENABLED UTF8=ACCEPT``, mailbox names on the wire are UTF-8, and rules judge and rewrite
them so. Dovecot 2.3 does not offer UTF8=ACCEPT: the server side is scripted here."""

from __future__ import annotations

from imapproxy.session.settings import SessionFacts

from .test_integrity import compile_rules
from .test_session import Recorder

REWRITE = "- {name: arch, action: rewrite_mailbox, from: Ärchiv, to: Old/Ärchiv}\n"
# A mailbox whose name really contains "&": in UTF-8 mode "A&Jjo-" is just that name; in
# modified UTF-7 the same bytes spell "A☺" (and the client would write "A&-Jjo-").
BLOCK_AMPERSAND = "- {name: amp, action: block, when: {mailbox: ['A&Jjo-']}}\n"


def _session(rules: str) -> Recorder:
    pb = Recorder(policy=compile_rules(rules))
    pb.s(b"* OK [CAPABILITY IMAP4rev1 ENABLE UTF8=ACCEPT] ready\r\n")
    pb.c(b"l LOGIN bob pw\r\n")
    pb.s(b"l OK logged in\r\n")
    return pb


def _enable(pb: Recorder, answer: bytes = b"* ENABLED UTF8=ACCEPT\r\n") -> None:
    pb.c(b"e ENABLE UTF8=ACCEPT\r\n")
    pb.s(answer + b"e OK enabled\r\n")
    pb.up = pb.down = b""


def test_names_are_modified_utf7_until_the_server_enables_utf8() -> None:
    pb = _session(REWRITE)
    pb.up = b""
    pb.c(b'a SELECT "&AMQ-rchiv"\r\n')
    assert pb.up == b'a SELECT "Old/&AMQ-rchiv"\r\n'
    assert pb.session.utf8 is False


def test_after_enabled_utf8_names_are_mapped_as_utf8_both_ways() -> None:
    pb = _session(REWRITE)
    _enable(pb)
    assert pb.session.utf8 is True
    assert pb.session.facts() == SessionFacts(pb.session.settings.client_ip, "bob", None, True)
    pb.c('a SELECT "Ärchiv"\r\n'.encode())
    assert pb.up == 'a SELECT "Old/Ärchiv"\r\n'.encode()
    pb.s(b"a OK [READ-WRITE] done\r\n")
    pb.down = b""
    pb.c(b'b LIST "" "*"\r\n')
    pb.s('* LIST () "/" "Old/Ärchiv"\r\n* LIST () "/" INBOX\r\nb OK done\r\n'.encode())
    assert pb.down == '* LIST () "/" "Ärchiv"\r\n* LIST () "/" INBOX\r\nb OK done\r\n'.encode()


def test_rules_read_an_ampersand_literally_in_utf8_mode() -> None:
    before = _session(BLOCK_AMPERSAND)
    before.c(b'd DELETE "A&Jjo-"\r\n')  # modified UTF-7: the mailbox "A☺", not ruled
    assert b"d DELETE" in before.up
    after = _session(BLOCK_AMPERSAND)
    _enable(after)
    after.c(b'd DELETE "A&Jjo-"\r\n')  # UTF-8 mode: the mailbox "A&Jjo-" itself
    assert after.up == b""
    assert after.down == b"d NO [amp] Blocked by policy rule amp\r\n"


def test_only_an_enabled_answer_to_enable_switches_to_utf8() -> None:
    pb = _session(REWRITE)
    pb.s(b"* ENABLED UTF8=ACCEPT\r\n")  # unsolicited: RFC 5161 sends it only for ENABLE
    assert pb.session.utf8 is False
    _enable(pb, b"* ENABLED CONDSTORE\r\n")  # the server enabled something else
    assert pb.session.utf8 is False
    _enable(pb, b"* ENABLED CONDSTORE utf8=accept\r\n")  # capability names are case-blind
    assert pb.session.utf8 is True
