"""Transcript equivalence: the same raw-byte session sent directly to Dovecot and through the
proxy gives the same server responses (volatile fields masked, see ``rawimap.normalise``).

Each script runs on its own freshly seeded account, one direct and one proxied, so both see
identical mailboxes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
import trio

from imapproxy.demo.dovecot import Dovecot
from tests.support.accounts import Account, new_account
from tests.support.rawimap import RawIMAP, normalise

from .conftest import RunningProxy

Script = Callable[[RawIMAP, Account], list[bytes]]

PLAIN_MSG = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: plain hello\r\n"
    b"Message-ID: <plain@example.org>\r\n\r\nHello Bob,\r\nthis is a plain message.\r\n"
)
EIGHT_BIT_MSG = (
    "From: Jörg <joerg@example.org>\r\nTo: bob@example.org\r\nSubject: Grüße\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\nÄrger über Öl — 8-bit body ✓\r\n"
).encode()


def _attachment_msg(size: int) -> bytes:
    payload = base64.encodebytes(bytes(range(256)) * (size // 256 + 1))[:size].replace(
        b"\n", b"\r\n"
    )
    return (
        b"From: a@example.org\r\nSubject: with attachment\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
        b"Content-Type: text/plain\r\n\r\nsee attachment\r\n--b1\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + payload
        + b"\r\n--b1--\r\n"
    )


def _run(address: tuple[str, int], account: Account, script: Script) -> list[bytes]:
    with RawIMAP(address) as client:
        return [client.greeting, *script(client, account)]


async def compare(
    dovecot: Dovecot, proxy: RunningProxy, script: Script, seed: tuple[bytes, ...] = ()
) -> list[bytes]:
    direct_acct, proxied_acct = new_account(dovecot), new_account(dovecot)
    for message in seed:
        dovecot.deliver(direct_acct.name, message)
        dovecot.deliver(proxied_acct.name, message)
    direct = await trio.to_thread.run_sync(_run, dovecot.address, direct_acct, script)
    proxied = await trio.to_thread.run_sync(_run, proxy.address, proxied_acct, script)
    assert normalise(proxied) == normalise(direct)
    return proxied


def login(c: RawIMAP, a: Account) -> list[bytes]:
    return c.command(b"L1", b"LOGIN " + a.name.encode() + b" " + a.password.encode())


# --- scripts ------------------------------------------------------------------------------


def login_by_literals(c: RawIMAP, a: Account) -> list[bytes]:
    name, pw = a.name.encode(), a.password.encode()
    c.send(b"a1 LOGIN {%d}\r\n" % len(name))
    out = c.until_continuation()
    c.send(name + b" {%d+}\r\n" % len(pw) + pw + b"\r\n")
    return out + c.until_tagged(b"a1") + c.command(b"a2", b"LOGOUT")


def append_both_literal_kinds(c: RawIMAP, a: Account) -> list[bytes]:
    out = login(c, a)
    c.send(b"a2 APPEND INBOX (\\Seen) {%d}\r\n" % len(PLAIN_MSG))
    out += c.until_continuation()
    c.send(PLAIN_MSG + b"\r\n")
    out += c.until_tagged(b"a2")
    c.send(b"a3 APPEND INBOX {%d+}\r\n" % len(EIGHT_BIT_MSG) + EIGHT_BIT_MSG + b"\r\n")
    out += c.until_tagged(b"a3")
    # MULTIAPPEND: two messages, two non-synchronising literals, one command
    c.send(
        b"a4 APPEND INBOX {%d+}\r\n" % len(PLAIN_MSG)
        + PLAIN_MSG
        + b" (\\Flagged) {%d+}\r\n" % len(EIGHT_BIT_MSG)
        + EIGHT_BIT_MSG
        + b"\r\n"
    )
    out += c.until_tagged(b"a4")
    out += c.command(b"a5", b"SELECT INBOX")
    out += c.command(b"a6", b"FETCH 1:* (FLAGS RFC822.SIZE BODY.PEEK[])")
    out += c.command(
        b"a7", b"UID FETCH 1:* (UID BODY.PEEK[]<0.100> BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])"
    )
    out += c.command(b"a8", b"UID STORE 1:2 +FLAGS (\\Answered)")
    out += c.command(b"a9", b"UID SEARCH ANSWERED")
    return out + c.command(b"a10", b"LOGOUT")


def big_message(c: RawIMAP, a: Account) -> list[bytes]:
    body = _attachment_msg(20 * 1024 * 1024)
    out = login(c, a)
    c.send(b"b2 APPEND INBOX {%d}\r\n" % len(body))
    out += c.until_continuation()
    c.send(body + b"\r\n")
    out += c.until_tagged(b"b2")
    out += c.command(b"b3", b"SELECT INBOX")
    fetched = c.command(b"b4", b"FETCH 1 BODY.PEEK[]")
    assert any(
        hashlib.sha256(body).hexdigest()
        == hashlib.sha256(r[r.index(b"}\r\n") + 3 : r.index(b"}\r\n") + 3 + len(body)]).hexdigest()
        for r in fetched
        if b"BODY[]" in r
    )
    return out + fetched + c.command(b"b5", b"FETCH 1 BODY.PEEK[]<1000.100>")


def eight_bit_and_binary(c: RawIMAP, a: Account) -> list[bytes]:
    out = login(c, a)
    out += c.command(b"c2", b"SELECT INBOX")
    out += c.command(b"c3", b"FETCH 1:* (BODY.PEEK[TEXT] BODYSTRUCTURE)")
    out += c.command(b"c4", b"FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")
    raw = b"Subject: bin\r\n\r\nnul\x00byte\r\n"
    c.send(b"c5 APPEND INBOX ~{%d+}\r\n" % len(raw) + raw + b"\r\n")
    out += c.until_tagged(b"c5")
    return out + c.command(b"c6", b'SEARCH CHARSET UTF-8 SUBJECT "Gr"')


def search_with_literal(c: RawIMAP, a: Account) -> list[bytes]:
    out = login(c, a) + c.command(b"d2", b"SELECT INBOX")
    word = "Grüße".encode()
    c.send(b"d3 SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n" % len(word))
    out += c.until_continuation()
    c.send(word + b"\r\n")
    return out + c.until_tagged(b"d3")


def authenticate_plain(c: RawIMAP, a: Account) -> list[bytes]:
    creds = base64.b64encode(b"\x00" + a.name.encode() + b"\x00" + a.password.encode())
    c.send(b"e1 AUTHENTICATE PLAIN\r\n")
    out = c.until_continuation()
    c.send(creds + b"\r\n")
    out += c.until_tagged(b"e1")
    return out + c.command(b"e2", b"NOOP") + c.command(b"e3", b"LOGOUT")


def authenticate_sasl_ir(c: RawIMAP, a: Account) -> list[bytes]:
    creds = base64.b64encode(b"\x00" + a.name.encode() + b"\x00" + a.password.encode())
    out = c.command(b"f1", b"AUTHENTICATE PLAIN " + creds)
    # a cancelled exchange and a wrong password are answered too
    out += c.command(b"f2", b"CAPABILITY")
    return out + c.command(b"f3", b"LOGOUT")


def authenticate_cancelled(c: RawIMAP, a: Account) -> list[bytes]:
    c.send(b"g1 AUTHENTICATE PLAIN\r\n")
    out = c.until_continuation()
    c.send(b"*\r\n")
    out += c.until_tagged(b"g1")
    return out + login(c, a) + c.command(b"g3", b"LOGOUT")


PIPELINE = (
    b"p1 CAPABILITY\r\np2 NOOP\r\np3 SELECT INBOX\r\np4 FETCH 1:* (FLAGS UID)\r\n"
    b'p5 UID FETCH 1:* (BODY.PEEK[HEADER])\r\np6 SEARCH ALL\r\np7 LIST "" "*"\r\n'
    b"p8 STATUS INBOX (MESSAGES UIDNEXT)\r\np9 APPEND INBOX {14+}\r\nSubject: x\r\n\r\n\r\n"
    b"p10 CLOSE\r\n"
)


def _pipelined(bytewise: bool) -> Script:
    def script(c: RawIMAP, a: Account) -> list[bytes]:
        out = login(c, a)
        c.send(PIPELINE, bytewise=bytewise)
        # Dovecot runs non-conflicting pipelined commands in parallel, so their answers may
        # come back in another order on each run: compare the batch as a multiset.
        batch = c.until_tagged(b"p10")
        while sum(r.startswith(b"p") for r in batch) < 10:
            batch += [c.read_response()]
        return out + sorted(batch) + c.command(b"p11", b"LOGOUT")

    return script


def mailbox_names(c: RawIMAP, a: Account) -> list[bytes]:
    out = login(c, a)
    out += c.command(b"m1", b'CREATE "&AMQ-rger"')  # modified UTF-7 for "Ärger"
    out += c.command(b"m2", b'CREATE "Work/Project X"')
    out += c.command(b"m3", b'CREATE "quote\\"d"')
    out += c.command(b"m4", b'LIST "" "*"')
    out += c.command(b"m5", b'STATUS "&AMQ-rger" (MESSAGES)')
    out += c.command(b"m6", b'RENAME "Work/Project X" "Work/Projekt &ANY-"')
    name = b"Literal Box"
    c.send(b"m7 CREATE {%d}\r\n" % len(name))
    out += c.until_continuation()
    c.send(name + b"\r\n")
    out += c.until_tagged(b"m7")
    out += c.command(b"m8", b"ENABLE UTF8=ACCEPT")
    out += c.command(b"m9", b'LSUB "" "*"')
    out += c.command(b"m10", b'LIST "" "*"')
    return out + c.command(b"m11", b'DELETE "&AMQ-rger"')


def id_with_literal_before_login(c: RawIMAP, a: Account) -> list[bytes]:
    c.send(b'i1 ID ("name" {11+}\r\nThunderbird "version" "128")\r\n')
    return c.until_tagged(b"i1") + login(c, a) + c.command(b"i2", b"LOGOUT")


@pytest.mark.parametrize(
    ("script", "seed"),
    [
        (login_by_literals, ()),
        (append_both_literal_kinds, ()),
        (eight_bit_and_binary, (EIGHT_BIT_MSG, _attachment_msg(30_000))),
        (search_with_literal, (EIGHT_BIT_MSG, PLAIN_MSG)),
        (authenticate_plain, ()),
        (authenticate_sasl_ir, ()),
        (authenticate_cancelled, ()),
        (_pipelined(bytewise=False), (PLAIN_MSG, EIGHT_BIT_MSG)),
        (_pipelined(bytewise=True), (PLAIN_MSG, EIGHT_BIT_MSG)),
        (mailbox_names, ()),
        (id_with_literal_before_login, ()),
    ],
    ids=lambda v: (
        getattr(v, "__qualname__", "").replace("_pipelined.<locals>.", "pipelined-")
        if callable(v)
        else f"{len(v)}msgs"
    ),
)
async def test_transcript_equivalence(
    dovecot: Dovecot, proxy: RunningProxy, script: Script, seed: tuple[bytes, ...]
) -> None:
    proxied = await compare(dovecot, proxy, script, seed)
    assert any(r.startswith((b"L1 OK", b"a1 OK", b"e1 OK", b"f1 OK", b"i1 OK")) for r in proxied)


async def test_twenty_megabyte_append_and_fetch(dovecot: Dovecot, proxy: RunningProxy) -> None:
    proxied = await compare(dovecot, proxy, big_message)
    assert any(r.startswith(b"b4 OK") for r in proxied)


async def test_idle_sees_exists_pushed_by_another_connection(
    dovecot: Dovecot, proxy: RunningProxy
) -> None:
    def script_for(address_for_pusher: tuple[str, int]) -> Script:
        def script(c: RawIMAP, a: Account) -> list[bytes]:
            out = login(c, a) + c.command(b"s1", b"SELECT INBOX")
            c.send(b"s2 IDLE\r\n")
            out += c.until_continuation()
            with RawIMAP(address_for_pusher) as pusher:
                login(pusher, a)
                pusher.send(b"x1 APPEND INBOX {%d+}\r\n" % len(PLAIN_MSG) + PLAIN_MSG + b"\r\n")
                pusher.until_tagged(b"x1")
            pushed = c.read_response()
            assert pushed.endswith(b" EXISTS\r\n") or pushed.endswith(b" RECENT\r\n"), pushed
            c.send(b"DONE\r\n")
            rest = c.until_tagged(b"s2")
            return out + [b"(pushed)"] + [r for r in rest if not r.endswith(b" RECENT\r\n")]

        return script

    direct_acct, proxied_acct = new_account(dovecot), new_account(dovecot)
    direct = await trio.to_thread.run_sync(
        _run, dovecot.address, direct_acct, script_for(dovecot.address)
    )
    proxied = await trio.to_thread.run_sync(
        _run, proxy.address, proxied_acct, script_for(dovecot.address)
    )
    assert normalise(proxied) == normalise(direct)
    assert proxied[-1].startswith(b"s2 OK")
