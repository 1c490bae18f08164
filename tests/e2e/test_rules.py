"""Rules against the real Dovecot: blocking (with literals), mailbox rewriting checked
directly on the server, the log rule's lines, and reload while a session is open."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio

from imapproxy.config.loader import Config, load_config
from imapproxy.demo.dovecot import Dovecot
from tests.support.accounts import PASSWORD, Account, new_account
from tests.support.rawimap import RawIMAP

from .conftest import ProxyFactory, RunningProxy

BLOCK_AND_REWRITE = """
rules:
  - name: audit
    action: log
  - name: no-delete
    action: block
    when: {command: [DELETE]}
    message: "Deleting folders is disabled by policy"
  - name: no-append-to-locked
    action: block
    when: {command: [APPEND], mailbox: "Locked"}
    message: "Locked is read-only"
  - name: archive-prefix
    action: rewrite_mailbox
    from: "Archive"
    to: "Old/Archive"
  - name: spaced
    action: rewrite_mailbox
    from: "Team Box"
    to: "Shared/Team Box"
"""


def _config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return load_config(path)


@pytest.fixture
async def ruled(proxy_factory: ProxyFactory, tmp_path: Path) -> RunningProxy:
    return await proxy_factory(_config(tmp_path, BLOCK_AND_REWRITE))


def _login(c: RawIMAP, a: Account) -> None:
    assert c.command(b"L", b"LOGIN %s %s" % (a.name.encode(), a.password.encode()))[-1].startswith(
        b"L OK"
    )


def _direct_list(dovecot: Dovecot, a: Account) -> set[bytes]:
    """Mailbox names as Dovecot itself lists them (no proxy involved)."""
    with RawIMAP(dovecot.address) as c:
        _login(c, a)
        lines = c.command(b"l", b'LIST "" "*"')[:-1]
    return {line.rstrip(b"\r\n").split(b' "/" ', 1)[1].strip(b'"') for line in lines}


def _direct_count(dovecot: Dovecot, a: Account, mailbox: bytes) -> int:
    with RawIMAP(dovecot.address) as c:
        _login(c, a)
        status = c.command(b"s", b'STATUS "%s" (MESSAGES)' % mailbox)
    return int(status[0].rsplit(b"MESSAGES ", 1)[1].split(b")")[0])


async def test_block_delete_leaves_mailbox_on_server(dovecot: Dovecot, ruled: RunningProxy) -> None:
    a = new_account(dovecot)

    def run() -> None:
        with RawIMAP(ruled.address) as c:
            _login(c, a)
            assert c.command(b"c1", b"CREATE Projects")[-1].startswith(b"c1 OK")
            answer = c.command(b"d1", b"DELETE Projects")
            assert answer == [b"d1 NO [no-delete] Deleting folders is disabled by policy\r\n"]
            assert c.command(b"n1", b"NOOP")[-1].startswith(b"n1 OK")  # the session goes on
        assert b"Projects" in _direct_list(dovecot, a)

    await trio.to_thread.run_sync(run)


async def test_block_append_with_both_literal_kinds_keeps_stream_in_step(
    dovecot: Dovecot, ruled: RunningProxy
) -> None:
    a = new_account(dovecot)
    message = b"Subject: x\r\n\r\nbody\r\n"

    def run() -> None:
        with RawIMAP(ruled.address) as c:
            _login(c, a)
            assert c.command(b"c1", b"CREATE Locked")[-1].startswith(b"c1 OK")
            # {n}: the proxy answers NO instead of "+"; the client never sends the payload
            c.send(b"a1 APPEND Locked {%d}\r\n" % len(message))
            assert c.read_response() == b"a1 NO [no-append-to-locked] Locked is read-only\r\n"
            assert c.command(b"n1", b"NOOP")[-1].startswith(b"n1 OK")
            # {n+}: the payload is on its way; the proxy reads and drops it, then goes on
            c.send(
                b"a2 APPEND Locked (\\Seen) {%d+}\r\n" % len(message) + message + b"\r\nn2 NOOP\r\n"
            )
            assert c.read_response() == b"a2 NO [no-append-to-locked] Locked is read-only\r\n"
            assert c.until_tagged(b"n2")[-1].startswith(b"n2 OK")
            # MULTIAPPEND with a second, synchronising literal: still in step
            c.send(
                b"a3 APPEND Locked {%d+}\r\n" % len(message) + message + b" {%d}\r\n" % len(message)
            )
            assert c.read_response().startswith(b"a3 NO [no-append-to-locked]")
            assert c.command(b"n3", b"NOOP")[-1].startswith(b"n3 OK")
            # an allowed APPEND works
            c.send(b"a4 APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
            assert c.until_tagged(b"a4")[-1].startswith(b"a4 OK")
        assert _direct_count(dovecot, a, b"Locked") == 0
        assert _direct_count(dovecot, a, b"INBOX") == 1

    await trio.to_thread.run_sync(run)


async def test_rewrite_every_mailbox_command_checked_on_the_server(
    dovecot: Dovecot, ruled: RunningProxy
) -> None:
    a = new_account(dovecot)
    message = b"Subject: r\r\n\r\nrewrite me\r\n"

    def run() -> None:
        with RawIMAP(ruled.address) as c:
            _login(c, a)

            def ok(tag: bytes, text: bytes) -> list[bytes]:
                out = c.command(tag, text)
                assert out[-1].startswith(tag + b" OK"), out
                return out

            ok(b"r1", b"CREATE Archive")
            ok(b"r2", b"CREATE Archive/2024")
            assert {b"Old/Archive", b"Old/Archive/2024"} <= _direct_list(dovecot, a)
            c.send(b"r3 APPEND Archive/2024 {%d+}\r\n" % len(message) + message + b"\r\n")
            assert c.until_tagged(b"r3")[-1].startswith(b"r3 OK")
            assert _direct_count(dovecot, a, b"Old/Archive/2024") == 1
            status = ok(b"r4", b"STATUS Archive/2024 (MESSAGES)")
            assert status[0] == b"* STATUS Archive/2024 (MESSAGES 1)\r\n"
            assert b"[READ-ONLY]" in ok(b"r5", b"EXAMINE Archive/2024")[-1]
            ok(b"r6", b"SELECT Archive/2024")
            ok(b"r7", b"COPY 1 Archive")
            ok(b"r8", b"UID COPY 1 Archive")
            assert _direct_count(dovecot, a, b"Old/Archive") == 2
            ok(b"r9", b"MOVE 1 Archive")
            assert _direct_count(dovecot, a, b"Old/Archive/2024") == 0
            ok(b"r10", b"SELECT Archive")
            ok(b"r11", b"UID MOVE 1:* INBOX")
            assert _direct_count(dovecot, a, b"INBOX") == 3
            ok(b"r12", b"RENAME Archive/2024 Archive/2025")
            assert b"Old/Archive/2025" in _direct_list(dovecot, a)
            ok(b"r13", b"SUBSCRIBE Archive/2025")
            lsub = ok(b"r14", b'LSUB "" "Archive*"')
            assert lsub[0].endswith(b' "/" Archive/2025\r\n'), lsub
            ok(b"r15", b"UNSUBSCRIBE Archive/2025")
            listing = ok(b"r16", b'LIST "" "*"')
            names = {line.rstrip(b"\r\n").rsplit(b" ", 1)[1] for line in listing[:-1]}
            # client names only: the mapped folders never show their upstream names (the
            # upstream's own "Old" parent stays visible, as any other unmapped folder)
            assert {b"INBOX", b"Archive", b"Archive/2025"} <= names, listing
            assert not any(n.startswith(b"Old/") for n in names), listing
            pattern = ok(b"r17", b'LIST "" "Archive/%"')
            assert [line.rsplit(b" ", 1)[1] for line in pattern[:-1]] == [b"Archive/2025\r\n"]
            # a name that needs quoting, and the same name sent as a literal
            ok(b"r18", b'CREATE "Team Box"')
            assert b"Shared/Team Box" in _direct_list(dovecot, a)
            c.send(b"r19 SELECT {8}\r\n")
            assert c.until_continuation()[-1].startswith(b"+")  # the proxy holds it: its own "+"
            c.send(b"Team Box\r\n")
            assert c.until_tagged(b"r19")[-1].startswith(b"r19 OK")
            st = ok(b"r20", b'STATUS "Team Box" (MESSAGES)')
            assert st[0] == b'* STATUS "Team Box" (MESSAGES 0)\r\n'
        assert b"Old/Archive/2025" in _direct_list(dovecot, a)

    await trio.to_thread.run_sync(run)


async def test_log_rule_lines_and_no_password_anywhere(
    dovecot: Dovecot, ruled: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")
    a = new_account(dovecot)
    import base64

    def run() -> None:
        with RawIMAP(ruled.address) as c:
            _login(c, a)
            c.command(b"x1", b"SELECT INBOX")
            c.command(b"x2", b"LOGOUT")
        with RawIMAP(ruled.address) as c:  # the password in a literal, and in SASL data
            c.send(
                b"y1 LOGIN %s {%d+}\r\n%s\r\n" % (a.name.encode(), len(PASSWORD), PASSWORD.encode())
            )
            c.until_tagged(b"y1")
        with RawIMAP(ruled.address) as c:
            creds = base64.b64encode(b"\0" + a.name.encode() + b"\0" + PASSWORD.encode())
            c.send(b"z1 AUTHENTICATE PLAIN\r\n")
            c.until_continuation()
            c.send(creds + b"\r\n")
            c.until_tagged(b"z1")

    await trio.to_thread.run_sync(run)
    with trio.fail_after(5):
        while sum(r.getMessage() == "session_closed" for r in caplog.records) < 3:
            await trio.sleep(0.02)
    commands = [r.imapproxy_fields for r in caplog.records if r.getMessage() == "command"]
    by_tag = {c["tag"]: c for c in commands}
    login = by_tag["L"]
    assert login["command"] == "LOGIN" and login["status"] == "OK" and login["user"] == a.name
    select = by_tag["x1"]
    assert select["mailbox"] == "INBOX" and select["status"] == "OK" and select["user"] == a.name
    assert select["bytes_in"] == len(b"x1 SELECT INBOX\r\n") and select["bytes_out"] > 0
    assert select["duration"] >= 0
    assert by_tag["z1"]["command"] == "AUTHENTICATE" and by_tag["z1"]["user"] == a.name
    everything = (
        "\n".join(
            json.dumps(getattr(r, "imapproxy_fields", {}), default=str) + r.getMessage()
            for r in caplog.records
        )
        + caplog.text
    )
    assert PASSWORD not in everything
    assert (
        base64.b64encode(b"\0" + a.name.encode() + b"\0" + PASSWORD.encode()).decode()
        not in everything
    )


async def test_reload_applies_to_open_session_and_bad_file_keeps_old_rules(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(f'upstream: {{address: "{dovecot.host}:{dovecot.port}"}}\n')
    proxy = await proxy_factory(load_config(path))
    proxy.proxy.reload_config = lambda: load_config(path)  # what SIGHUP calls (cli.reloader)
    a = new_account(dovecot)
    c = await trio.to_thread.run_sync(RawIMAP, proxy.address)
    try:
        await trio.to_thread.run_sync(_login, c, a)
        assert (await trio.to_thread.run_sync(c.command, b"c1", b"CREATE One"))[-1].startswith(
            b"c1 OK"
        )
        path.write_text(path.read_text() + BLOCK_AND_REWRITE)
        assert proxy.proxy.reload()
        # the open session's next command uses the new rules
        answer = await trio.to_thread.run_sync(c.command, b"d1", b"DELETE One")
        assert answer[-1].startswith(b"d1 NO [no-delete]")
        path.write_text(path.read_text().replace("action: block", "action: blok"))
        assert not proxy.proxy.reload()  # rejected: the old rules stay in force
        answer = await trio.to_thread.run_sync(c.command, b"d2", b"DELETE One")
        assert answer[-1].startswith(b"d2 NO [no-delete]")
        path.write_text(f'upstream: {{address: "{dovecot.host}:{dovecot.port}"}}\n')
        assert proxy.proxy.reload()
        answer = await trio.to_thread.run_sync(c.command, b"d3", b"DELETE One")
        assert answer[-1].startswith(b"d3 OK")
    finally:
        c.close()


@pytest.mark.parametrize(
    "line",
    [
        b"n CREATE foo {%d+}\r\n",  # Dovecot reads one argument and skips the rest
        b"n RENAME x y {%d+}\r\n",
        b"n XFOO {%d+}\r\n",  # unknown command
        b"n UID BOGUS {%d+}\r\n",
        b"n NOOP {%d+}\r\n",  # no arguments at all
        b"n SELECT x{%d+}\r\n",  # glued to an atom
        b'n SELECT "ab {%d+}\r\n',  # inside an open quoted string
        b"\x01 {%d+}\r\n",  # not a command line at all
    ],
)
async def test_literal_the_server_would_not_read_cannot_smuggle_a_blocked_command(
    dovecot: Dovecot, ruled: RunningProxy, line: bytes
) -> None:
    """The "payload" of a {n+} that Dovecot does not read as a literal is a command to
    Dovecot: the proxy must see it as one too, and apply the rules to it."""
    a = new_account(dovecot)
    smuggled = b"b DELETE Projects"

    def run() -> None:
        with RawIMAP(ruled.address) as c:
            _login(c, a)
            assert c.command(b"c1", b"CREATE Projects")[-1].startswith(b"c1 OK")
            c.send(line % len(smuggled) + smuggled + b"\r\nz NOOP\r\n")
            c.until_tagged(b"z")
        assert b"Projects" in _direct_list(dovecot, a)

    await trio.to_thread.run_sync(run)
