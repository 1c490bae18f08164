"""Policy integrity against the real Dovecot (issue 8): RENAME/DELETE of a parent of a
protected or mapped tree (bug 5), upstream paths in error texts (bug 7), `* STATUS` counts
of a mailbox whose STATUS is blocked (LIST-STATUS, NOTIFY) and the read_only action.

Every outcome is checked on Dovecot itself through a direct connection; the attacks are
sent pipelined in one write and one byte per write.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from imapproxy.config.loader import Config, load_config
from imapproxy.demo.dovecot import Dovecot
from tests.support.accounts import Account, new_account
from tests.support.rawimap import RawIMAP

from .conftest import ProxyFactory

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
MESSAGE = b"Subject: kept\r\nFrom: a@example.com\r\n\r\nArchived body\r\n"

EXTRA_RULES = """
- name: hide-archive-path
  action: rewrite_mailbox
  from: "Archive"
  to: "Old/Archive"
- name: keep-mail-keep
  action: block
  when: {command: [RENAME, DELETE], mailbox: ["Mail/Keep", "Mail/Keep/*"]}
  message: "Mail/Keep is protected"
- name: no-secret-counts
  action: block
  when: {command: [STATUS], mailbox: ["Secret"]}
"""


def _config(tmp_path: Path, *examples: str, extra: str = "") -> Config:
    text = "".join((RULES_DIR / name).read_text() + "\n" for name in examples) + extra
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    config = tmp_path / "imapproxy.yaml"
    config.write_text(f"rules_file: {rules}\n")
    return load_config(config)


def _login_line(a: Account) -> bytes:
    return b"L LOGIN %s %s\r\n" % (a.name.encode(), a.password.encode())


def _session(c: RawIMAP, a: Account, script: bytes, last: bytes, *, bytewise: bool) -> bytes:
    """Log in, send ``script`` (one write, or one byte per write), read up to ``last``."""
    c.send(_login_line(a) + script, bytewise=bytewise)
    return b"".join(c.until_tagged(last))


def _answers(transcript: bytes) -> dict[bytes, bytes]:
    """Tagged answers by tag."""
    out = {}
    for line in transcript.split(b"\r\n"):
        tag, _, rest = line.partition(b" ")
        if tag not in (b"*", b"+", b"") and rest[:3] in (b"OK ", b"NO ", b"BAD"):
            out[tag] = rest
    return out


def _direct(dovecot: Dovecot, a: Account, *commands: bytes) -> list[bytes]:
    with RawIMAP(dovecot.address) as c:
        c.send(_login_line(a))
        c.until_tagged(b"L")
        out: list[bytes] = []
        for i, command in enumerate(commands):
            out += c.command(b"d%d" % i, command)
        return out


def _direct_names(dovecot: Dovecot, a: Account) -> set[bytes]:
    lines = _direct(dovecot, a, b'LIST "" "*"')[:-1]
    return {line.rstrip(b"\r\n").split(b' "/" ', 1)[1].strip(b'"') for line in lines}


def _direct_flags(dovecot: Dovecot, a: Account, mailbox: bytes) -> tuple[int, bytes]:
    """(messages, flags of message 1) as Dovecot has them, read without changing them."""
    lines = _direct(dovecot, a, b'EXAMINE "%s"' % mailbox, b"FETCH 1 (FLAGS)")
    exists = next(int(x.split()[1]) for x in lines if x.endswith(b" EXISTS\r\n"))
    flags = next(x for x in lines if b" FETCH " in x)
    return exists, flags


BYTEWISE = pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "bytewise"])


# --- bug 5: RENAME/DELETE of a parent ------------------------------------------------------


@BYTEWISE
async def test_renaming_the_parent_of_a_mapped_read_only_archive_changes_nothing(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, bytewise: bool
) -> None:
    running = await proxy_factory(_config(tmp_path, "read-only-archive.yaml", extra=EXTRA_RULES))
    a = new_account(dovecot)
    dovecot.deliver(a.name, MESSAGE, folder="Old/Archive")
    dovecot.deliver(a.name, MESSAGE, folder="Mail/Keep/x")
    script = (
        b"r1 RENAME Old Foo\r\n"  # the attack of bug 5, step by step
        b"r2 SELECT Foo/Archive\r\n"
        b"r3 STORE 1:* +FLAGS (\\Deleted)\r\n"
        b"r4 EXPUNGE\r\n"
        b"r5 RENAME Foo Old\r\n"
        b"r6 DELETE Old\r\n"
        b'r7 RENAME "Old" "Foo"\r\n'
        b"r8 RENAME {3+}\r\nOld Foo\r\n"
        b"r9 RENAME Archive Elsewhere\r\n"  # the protected folder itself
        b"m1 RENAME Mail Moved\r\n"  # a parent of a protected glob, no mapping
        b"m2 DELETE Mail\r\n"
        b"m3 RENAME mail Moved\r\n"  # another (nonexistent) folder: the server says NO
        b"n NOOP\r\n"
    )

    def run() -> None:
        with RawIMAP(running.address) as c:
            answers = _answers(_session(c, a, script, b"n", bytewise=bytewise))
        read_only = b"NO [archive-read-only] The Archive folders are read-only"
        for tag in (b"r1", b"r5", b"r6", b"r7", b"r8", b"r9"):
            assert answers[tag] == read_only, (tag, answers)
        assert answers[b"r2"].startswith(b"NO ")  # Foo/Archive never came to exist
        assert not answers[b"r3"].startswith(b"OK") and not answers[b"r4"].startswith(b"OK")
        assert answers[b"m1"] == answers[b"m2"] == b"NO [keep-mail-keep] Mail/Keep is protected"
        assert answers[b"m3"].startswith(b"NO [NONEXISTENT]")
        assert answers[b"n"].startswith(b"OK")
        names = _direct_names(dovecot, a)
        assert {b"Old/Archive", b"Mail/Keep/x"} <= names
        assert not any(n.startswith((b"Foo", b"Moved", b"Elsewhere")) for n in names), names
        exists, flags = _direct_flags(dovecot, a, b"Old/Archive")
        assert exists == 1 and b"\\Deleted" not in flags

    await trio.to_thread.run_sync(run)


async def test_a_mapped_tree_never_leaves_its_mapping(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    running = await proxy_factory(_config(tmp_path, "rewrite-shared-prefix.yaml"))
    a = new_account(dovecot)
    dovecot.deliver(a.name, MESSAGE, folder="Old/Archive/2024")
    dovecot.deliver(a.name, MESSAGE, folder="Shared/Team/Plans")
    refused = b"This would move or remove a mailbox mapped by policy"
    script = (
        b"a1 RENAME Old Foo\r\n"
        b"a2 RENAME Shared Foo\r\n"
        b"a3 RENAME Archive Elsewhere\r\n"
        b"a4 RENAME INBOX/x Team\r\n"
        b"a5 DELETE Old\r\n"
        b"ok1 RENAME Archive/2024 Archive/2025\r\n"  # inside the mapping: fine
        b"ok2 RENAME Team/Plans Team/Done\r\n"
    )

    def run() -> None:
        with RawIMAP(running.address) as c:
            answers = _answers(_session(c, a, script, b"ok2", bytewise=False))
        assert answers[b"a1"] == b"NO [hide-archive-path] " + refused
        assert answers[b"a2"] == b"NO [shared-team-folder] " + refused
        assert answers[b"a3"] == b"NO [hide-archive-path] " + refused
        assert answers[b"a4"] == b"NO [shared-team-folder] " + refused
        assert answers[b"a5"] == b"NO [hide-archive-path] " + refused
        assert answers[b"ok1"].startswith(b"OK") and answers[b"ok2"].startswith(b"OK")
        names = _direct_names(dovecot, a)
        assert {b"Old/Archive/2025", b"Shared/Team/Done"} <= names
        assert not any(n.startswith((b"Foo", b"Elsewhere")) for n in names), names

    await trio.to_thread.run_sync(run)


# --- bug 7: upstream names in error texts --------------------------------------------------

_TIMING = re.compile(rb" \(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)")


@BYTEWISE
async def test_error_texts_name_the_client_side_mailbox(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, bytewise: bool
) -> None:
    running = await proxy_factory(_config(tmp_path, "rewrite-shared-prefix.yaml"))
    a = new_account(dovecot)
    script = (
        b"s1 STATUS Archive/nope (MESSAGES)\r\n"
        b"s2 APPEND Archive/nope {3+}\r\nabc\r\n"
        b's3 SELECT "Archive/nope"\r\n'
        b"s4 RENAME {12+}\r\nArchive/nope Archive/x\r\n"
        b"s5 DELETE Team/nope\r\n"
        b"s6 STATUS archive/nope (MESSAGES)\r\n"  # another (unmapped) name
    )
    upstream = {
        b"s1": b"STATUS Old/Archive/nope (MESSAGES)",
        b"s2": b"APPEND Old/Archive/nope {3+}\r\nabc",
        b"s3": b"SELECT Old/Archive/nope",
        b"s4": b"RENAME Old/Archive/nope Old/Archive/x",
        b"s5": b"DELETE Shared/Team/nope",
        b"s6": b"STATUS archive/nope (MESSAGES)",
    }

    def run() -> None:
        with RawIMAP(running.address) as c:
            transcript = _session(c, a, script, b"s6", bytewise=bytewise)
        assert b"Old/" not in transcript and b"Shared/" not in transcript, transcript
        answers = _answers(transcript)
        direct = {
            tag: _direct(dovecot, a, command)[-1].split(b" ", 1)[1].rstrip(b"\r\n")
            for tag, command in upstream.items()
        }
        for tag, text in direct.items():
            expected = text.replace(b"Old/Archive", b"Archive").replace(b"Shared/Team", b"Team")
            assert _TIMING.sub(b"", answers[tag]) == _TIMING.sub(b"", expected), tag
        assert b"Old/Archive/nope" in direct[b"s1"]  # what the proxy hides
        assert answers[b"s1"].startswith(b"NO Mailbox doesn't exist: Archive/nope")
        assert answers[b"s2"].startswith(b"NO [TRYCREATE] Mailbox doesn't exist: Archive/nope")
        assert answers[b"s5"].startswith(b"NO [NONEXISTENT] Mailbox doesn't exist: Team/nope")
        assert answers[b"s6"].startswith(b"NO Mailbox doesn't exist: archive/nope")

    await trio.to_thread.run_sync(run)


# --- LIST-STATUS / NOTIFY ------------------------------------------------------------------


async def test_status_counts_of_a_blocked_mailbox_never_show(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    running = await proxy_factory(_config(tmp_path, extra=EXTRA_RULES))
    a = new_account(dovecot)
    dovecot.deliver(a.name, MESSAGE, folder="Secret")
    dovecot.deliver(a.name, MESSAGE, folder="Secrets")
    script = (
        b'l1 LIST "" "*" RETURN (STATUS (MESSAGES))\r\n'
        b"s1 STATUS Secret (MESSAGES)\r\n"
        b"s2 STATUS Secrets (MESSAGES)\r\n"
        b"n1 NOTIFY SET STATUS (personal (MessageNew))\r\n"
        b"n2 NOOP\r\n"
        b"n3 NOTIFY NONE\r\n"
    )

    def run() -> None:
        direct = b"".join(_direct(dovecot, a, b'LIST "" "*" RETURN (STATUS (MESSAGES))'))
        assert b"* STATUS Secret (MESSAGES 1)" in direct  # Dovecot would tell
        with RawIMAP(running.address) as c:
            transcript = _session(c, a, script, b"n3", bytewise=False)
        lines = transcript.split(b"\r\n")
        assert b'* LIST () "/" Secret' in lines  # the folder is listed, its counts are not
        assert not any(line.startswith(b"* STATUS Secret ") for line in lines), transcript
        assert b"* STATUS Secrets (MESSAGES 1)" in lines
        assert b"* STATUS INBOX (MESSAGES 0)" in lines
        # NOTIFY SET STATUS sends a STATUS for every personal mailbox: Secret's is dropped
        notified = transcript.split(b"n1 OK", 1)[0].split(b"s2 OK", 1)[1]
        assert b"* STATUS INBOX (" in notified and b"* STATUS Secrets (" in notified
        answers = _answers(transcript)
        assert answers[b"s1"] == b"NO [no-secret-counts] Blocked by policy rule no-secret-counts"
        assert answers[b"s2"].startswith(b"OK") and answers[b"n3"].startswith(b"OK")

    await trio.to_thread.run_sync(run)


# --- read_only: SELECT goes upstream as EXAMINE --------------------------------------------


@BYTEWISE
async def test_read_only_archive_is_enforced_by_the_server(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path, bytewise: bool
) -> None:
    frozen = "- {name: frozen, action: read_only, when: {mailbox: [inbox/Frozen]}}\n"
    running = await proxy_factory(_config(tmp_path, "read-only-archive.yaml", extra=frozen))
    a = new_account(dovecot)
    dovecot.deliver(a.name, MESSAGE, folder="Archive")
    dovecot.deliver(a.name, MESSAGE, folder="Archive/2024")
    dovecot.deliver(a.name, MESSAGE, folder="INBOX/Frozen")
    script = (
        b"s SELECT Archive\r\n"
        b"f FETCH 1 BODY[]\r\n"  # would set \Seen on a read-write selection
        b"x STORE 1 +FLAGS (\\Deleted)\r\n"
        b"u UID STORE 1:* +FLAGS.SILENT (\\Deleted \\Seen)\r\n"
        b"e EXPUNGE\r\n"
        b"c CLOSE\r\n"  # would expunge \Deleted messages on a read-write selection
        b"s2 SELECT {12+}\r\nArchive/2024\r\n"
        b"f2 FETCH 1 BODY[TEXT]\r\n"
        b"c2 CLOSE\r\n"
        b'i SELECT "Inbox/Frozen"\r\n'  # INBOX in any case, quoted
        b"f3 FETCH 1:* BODY[]\r\n"
        b"x3 STORE 1 +FLAGS (\\Deleted)\r\n"
        b"c3 CLOSE\r\n"
    )

    def run() -> None:
        with RawIMAP(running.address) as c:
            transcript = _session(c, a, script, b"c3", bytewise=bytewise)
        answers = _answers(transcript)
        for tag in (b"s", b"s2", b"i"):  # a SELECT answer the client can use, truthfully marked
            assert answers[tag].startswith(b"OK [READ-ONLY]"), answers
        assert b"* 1 EXISTS" in transcript and b"* FLAGS (" in transcript
        assert MESSAGE in transcript and b"Archived body" in transcript
        # Refused by the block rule, or (pipelined behind the SELECT, judged before its
        # answer came) refused or ignored by the server: either way nothing changes. (An
        # EXPUNGE that got through is "OK" on a read-only mailbox, expunging nothing.)
        for tag in (b"x", b"u", b"x3"):
            answer = answers[tag]
            assert answer.startswith((b"NO", b"BAD")) or b"read-only" in answer, (tag, answer)
        assert answers[b"c"].startswith(b"OK") and answers[b"c2"].startswith(b"OK")
        for mailbox in (b"Archive", b"Archive/2024", b"INBOX/Frozen"):
            exists, flags = _direct_flags(dovecot, a, mailbox)
            assert exists == 1, mailbox
            assert b"\\Seen" not in flags and b"\\Deleted" not in flags, flags
        # the same SELECT directly opens read-write: the proxy made the difference
        assert b"[READ-WRITE]" in _direct(dovecot, a, b"SELECT Archive")[-1]

    await trio.to_thread.run_sync(run)
