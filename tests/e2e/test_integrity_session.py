"""Issue 8, session-level bugs, against the real Dovecot through the proxy with rules loaded:
what Dovecot did is checked directly (its mailbox list, flags and message counts over a
connection of its own). One write and one byte per write where the split matters.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import trio

from imapproxy.config.loader import ClientTLS, Config, load_config
from imapproxy.demo.dovecot import Dovecot
from imapproxy.session.core import Session
from tests.support.accounts import Account, new_account
from tests.support.rawimap import RawIMAP
from tests.support.tls import PKI, pki_fixture  # noqa: F401 - registers the pki fixture

from .conftest import ProxyFactory, RunningProxy

READ_ONLY_ARCHIVE = Path(__file__).parents[2] / "rules" / "read-only-archive.yaml"
SPLITS = pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "bytewise"])


def _config(tmp_path: Path, rules: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(rules)
    return load_config(path)


async def _ruled(proxy_factory: ProxyFactory, tmp_path: Path, extra: str = "") -> RunningProxy:
    text = f"rules_file: {READ_ONLY_ARCHIVE}\n" if not extra else "rules:\n" + extra
    return await proxy_factory(_config(tmp_path, text))


def _login(c: RawIMAP, a: Account) -> None:
    assert c.command(b"L", b"LOGIN %s %s" % (a.name.encode(), a.password.encode()))[-1].startswith(
        b"L OK"
    )


def _direct(dovecot: Dovecot, a: Account, text: bytes) -> list[bytes]:
    with RawIMAP(dovecot.address) as c:
        _login(c, a)
        return c.command(b"q", text)


def _mailboxes(dovecot: Dovecot, a: Account) -> set[bytes]:
    lines = _direct(dovecot, a, b'LIST "" "*"')[:-1]
    return {line.rstrip(b"\r\n").split(b' "/" ', 1)[1].strip(b'"') for line in lines}


def _archive_intact(dovecot: Dovecot, a: Account, messages: int) -> None:
    status = _direct(dovecot, a, b"STATUS Archive (MESSAGES)")
    assert b"MESSAGES %d)" % messages in status[0]
    flags = _direct(dovecot, a, b"EXAMINE Archive")  # read-only: changes nothing
    assert flags[-1].startswith(b"q OK")
    with RawIMAP(dovecot.address) as c:
        _login(c, a)
        c.command(b"e", b"EXAMINE Archive")
        fetched = c.command(b"f", b"FETCH 1:* FLAGS")
    assert not any(b"\\Deleted" in line for line in fetched)


def _seed_archive(dovecot: Dovecot, a: Account, n: int = 3) -> None:
    for i in range(n):
        dovecot.deliver(a.name, b"Subject: %d\r\n\r\nkeep me\r\n" % i, folder="Archive")


# --- bug 2 ---------------------------------------------------------------------------------
@SPLITS
async def test_failed_append_does_not_run_its_message_as_commands(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, bytewise: bool
) -> None:
    proxy = await _ruled(proxy_factory, tmp_path)
    a = new_account(dovecot)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            _login(c, a)
            c.send(
                b"b APPEND NoSuchBox {21+}\r\nx1 CREATE Injected1\r\n\r\nc NOOP\r\n",
                bytewise=bytewise,
            )
            answers = c.until_tagged(b"c")
            assert answers[0].startswith(b"b NO [TRYCREATE]")
            assert answers[-1].startswith(b"c OK")
            assert not any(r.startswith(b"x1 ") for r in answers)
        assert b"Injected1" not in _mailboxes(dovecot, a)

    await trio.to_thread.run_sync(run)


# --- bug 3 ---------------------------------------------------------------------------------
@SPLITS
async def test_pipelined_login_select_store_expunge_stays_blocked(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, bytewise: bool
) -> None:
    proxy = await _ruled(proxy_factory, tmp_path)
    a = new_account(dovecot)
    _seed_archive(dovecot, a)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            login = b"a LOGIN %s %s\r\n" % (a.name.encode(), a.password.encode())
            c.send(
                login + b"s SELECT Archive\r\nx STORE 1:* +FLAGS (\\Deleted)\r\ny EXPUNGE\r\n",
                bytewise=bytewise,
            )
            answers = c.until_tagged(b"y")
            assert any(r.startswith(b"s OK") for r in answers)
            assert any(r.startswith(b"x NO [archive-read-only]") for r in answers)
            assert answers[-1].startswith(b"y NO [archive-read-only]")
        _archive_intact(dovecot, a, 3)

    await trio.to_thread.run_sync(run)


@SPLITS
async def test_pipelined_login_then_delete_is_judged_as_that_user(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, bytewise: bool
) -> None:
    a = new_account(dovecot)
    when = f"{{user: [{a.name}], command: [DELETE]}}"
    rule = f"  - {{name: no-delete-{a.name}, action: block, when: {when}}}\n"
    proxy = await _ruled(proxy_factory, tmp_path, rule)

    def run() -> None:
        with RawIMAP(dovecot.address) as direct:
            _login(direct, a)
            assert direct.command(b"c", b"CREATE Doomed")[-1].startswith(b"c OK")
        with RawIMAP(proxy.address) as c:
            login = b"a LOGIN %s %s\r\n" % (a.name.encode(), a.password.encode())
            c.send(login + b"b DELETE Doomed\r\n", bytewise=bytewise)
            answers = c.until_tagged(b"b")
            assert answers[-1].startswith(b"b NO [no-delete-")
        assert b"Doomed" in _mailboxes(dovecot, a)

    await trio.to_thread.run_sync(run)


async def test_select_refused_with_bad_keeps_the_archive_protected(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    # Found by the property test: Dovecot answers a line-level syntax error in SELECT with
    # BAD and keeps the old mailbox selected; the session must not think it deselected.
    proxy = await _ruled(proxy_factory, tmp_path)
    a = new_account(dovecot)
    _seed_archive(dovecot, a)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            _login(c, a)
            assert c.command(b"s", b"SELECT Archive")[-1].startswith(b"s OK")
            assert c.command(b"b", b'SELECT "unterminated')[-1].startswith(b"b BAD")
            assert c.command(b"x", b"STORE 1:* +FLAGS (\\Deleted)")[-1].startswith(b"x NO [arch")
            assert c.command(b"y", b"EXPUNGE")[-1].startswith(b"y NO [archive")
        _archive_intact(dovecot, a, 3)

    await trio.to_thread.run_sync(run)


# --- bug 4 ---------------------------------------------------------------------------------
@SPLITS
async def test_duplicate_tag_does_not_lose_the_selection(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, bytewise: bool
) -> None:
    proxy = await _ruled(proxy_factory, tmp_path)
    a = new_account(dovecot)
    _seed_archive(dovecot, a)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            _login(c, a)
            c.send(b"s SELECT Archive\r\ns NOOP\r\n", bytewise=bytewise)
            answers = c.until_tagged(b"s")
            # The read_only rule sends EXAMINE upstream.
            assert answers[-1].startswith(b"s OK [READ-ONLY]")
            # SELECT holds the next command until its answer (bug 3), so this NOOP is no
            # longer a duplicate when it is read; either way the selection is recorded.
            assert c.read_response().startswith(b"s ")
            if not bytewise:  # both in one read: the second "f" is a duplicate in flight
                answers = c.command(b"f", b"FETCH 1:* FLAGS\r\nf NOOP")
                assert answers[-1].startswith(b"f OK")
                assert c.read_response() == b"f BAD Duplicate tag in flight\r\n"
            time.sleep(0.2)  # later, one by one
            assert c.command(b"x", b"STORE 1:* +FLAGS (\\Deleted)")[-1].startswith(b"x NO [archive")
            assert c.command(b"y", b"EXPUNGE")[-1].startswith(b"y NO [archive")
        _archive_intact(dovecot, a, 3)

    await trio.to_thread.run_sync(run)


# --- bug 6 ---------------------------------------------------------------------------------
def _queued(session: Session) -> int:
    """Client bytes a session holds behind a held command (its private queue, read here to
    measure the bound directly)."""
    queue = session.release_queue.behind or ()  # None while nothing waits
    return sum(len(x) if isinstance(x, bytes) else sum(map(len, x[1])) for x in queue)


async def test_flood_behind_a_held_command_is_bounded_by_backpressure(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    rule = (
        "  - {name: no-secret-status, action: block, when: {command: [STATUS], mailbox: Secret}}\n"
    )
    proxy = await _ruled(proxy_factory, tmp_path, rule)
    a = new_account(dovecot)
    dovecot.deliver(a.name, b"Subject: big\r\n\r\n" + b"x" * (48 << 20))
    noops = b"n NOOP\r\n" * 8192  # 64 KiB per write
    cap = 64 << 20

    def flood() -> int:
        with RawIMAP(proxy.address) as c:
            _login(c, a)
            c.command(b"s", b"SELECT INBOX")
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            # A FETCH the client does not read stalls the upstream leg, so the upstream's
            # "+" for the held STATUS never arrives; then the client floods.
            c.send(b"f FETCH 1 BODY[]\r\ng STATUS {5+}\r\nINBOX (MESSAGES)\r\n")
            time.sleep(0.5)
            c.sock.settimeout(1.0)
            sent = 0
            try:
                while sent < cap:
                    sent += c.sock.send(noops)
            except TimeoutError:
                pass
            backlogs = [_queued(d.session) for d in proxy.proxy.sessions.drivers]
            assert max(backlogs) <= 65536 + 70000, backlogs
            return sent

    sent = await trio.to_thread.run_sync(flood)
    assert sent < 24 << 20, f"the proxy kept reading: {sent} bytes accepted"
    # Other sessions are served meanwhile.
    b = new_account(dovecot)

    def other() -> None:
        with RawIMAP(proxy.address, timeout=5) as c:
            _login(c, b)

    await trio.to_thread.run_sync(other)


# --- bug 8 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ruled", [False, True], ids=["pass-through", "rules"])
@pytest.mark.parametrize("writes", [1, 997], ids=["one-write", "997-byte-writes"])
async def test_110kb_uid_search_passes(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, ruled: bool, writes: int
) -> None:
    proxy = await (_ruled(proxy_factory, tmp_path) if ruled else proxy_factory())
    a = new_account(dovecot)
    for i in range(3):
        dovecot.deliver(a.name, b"Subject: %d\r\n\r\nx\r\n" % i)
    # Two UID sets of ~55 KB each: what Dovecot accepts (one argument over 64 KiB is its
    # "Too long argument"); the line is 112 KB.
    first = b",".join(b"%d" % i for i in range(1, 11000))
    second = b"1,2,3," + b",".join(b"%d" % i for i in range(11000, 20600))
    line = b"u UID SEARCH UID " + first + b" UID " + second + b"\r\n"
    assert len(line) > 110_000

    def run() -> list[bytes]:
        with RawIMAP(proxy.address) as c:
            _login(c, a)
            c.command(b"s", b"SELECT INBOX")
            step = len(line) if writes == 1 else writes
            for i in range(0, len(line), step):
                c.sock.sendall(line[i : i + step])
            answers = c.until_tagged(b"u")
            assert c.command(b"n", b"NOOP")[-1].startswith(b"n OK")
            return answers

    answers = await trio.to_thread.run_sync(run)
    assert answers[0] == b"* SEARCH 1 2 3\r\n"
    assert answers[-1].startswith(b"u OK")


async def test_long_line_a_rule_needs_is_refused_and_session_goes_on(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await _ruled(proxy_factory, tmp_path)
    a = new_account(dovecot)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            _login(c, a)
            answer = c.command(b"c", b"CREATE Archive/" + b"x" * 100_000)
            assert answer == [
                b"c BAD [TOOBIG] Command line too long to check against the rules\r\n"
            ]
            assert c.command(b"n", b"NOOP")[-1].startswith(b"n OK")

    await trio.to_thread.run_sync(run)
    assert not any(b.startswith(b"Archive/x") for b in _mailboxes(dovecot, a))


# --- bug 9 ---------------------------------------------------------------------------------
@SPLITS
async def test_block_answer_does_not_overtake_an_earlier_answer(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, bytewise: bool
) -> None:
    proxy = await _ruled(proxy_factory, tmp_path)
    a = new_account(dovecot)
    _seed_archive(dovecot, a)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            _login(c, a)
            c.command(b"s", b"SELECT INBOX")
            c.send(b"f STATUS Archive (MESSAGES)\r\nd DELETE Archive\r\n", bytewise=bytewise)
            answers = c.until_tagged(b"d")
            tagged = [r.split(b" ", 1)[0] for r in answers if not r.startswith(b"*")]
            assert tagged == [b"f", b"d"], answers

    await trio.to_thread.run_sync(run)


async def test_starttls_after_login_is_refused(
    dovecot: Dovecot, proxy_factory: ProxyFactory, pki: PKI
) -> None:
    proxy = await proxy_factory(Config(client_tls=ClientTLS(pki.cert, pki.key)))
    a = new_account(dovecot)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            _login(c, a)
            answer = c.command(b"t", b"STARTTLS")
            assert answer == [b"t BAD STARTTLS is only valid before login\r\n"]
            assert c.command(b"n", b"NOOP")[-1].startswith(b"n OK")

    await trio.to_thread.run_sync(run)
