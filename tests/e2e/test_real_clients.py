"""Real IMAP clients through the proxy: mbsync (isync) and the stdlib's imaplib."""

from __future__ import annotations

import hashlib
import imaplib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from imapproxy.demo.dovecot import Dovecot
from tests.support.accounts import Account, new_account
from tests.support.messages import make_message

from .conftest import RunningProxy

MBSYNC = shutil.which("mbsync")
_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE)


def _seed(dovecot: Dovecot, account: Account) -> None:
    for i in range(5):
        dovecot.deliver(account.name, make_message(2_000 + i * 500, subject=f"plain {i}"))
    dovecot.deliver(account.name, make_message(8_000, subject="Grüße", eight_bit=True))
    dovecot.deliver(
        account.name,
        make_message(4_000, subject="report", attachment=bytes(range(256)) * 2_000),
    )
    dovecot.deliver(account.name, make_message(3_000, subject="archived"), folder="Archive")
    dovecot.deliver(account.name, make_message(3_000, subject="sent"), folder="Sent", flags="S")


def _mbsync(address: tuple[str, int], account: Account, local: Path) -> dict[str, list[str]]:
    """Pull every folder into ``local``; return {folder: sorted content hashes}."""
    (local / "mail").mkdir(parents=True)
    config = local / "mbsyncrc"
    config.write_text(
        f"IMAPAccount acct\nHost {address[0]}\nPort {address[1]}\nUser {account.name}\n"
        f"Pass {account.password}\nSSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount acct\n\n"
        f"MaildirStore local\nPath {local}/mail/\nInbox {local}/mail/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Near\nSync Pull\n"
        "SyncState *\n"
    )
    result = subprocess.run(
        [MBSYNC or "mbsync", "-c", str(config), "-a"], capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    folders: dict[str, list[str]] = {}
    for msg in (local / "mail").rglob("*"):
        if msg.is_file() and msg.parent.name in ("cur", "new"):
            folder = str(msg.parent.parent.relative_to(local / "mail"))
            # mbsync adds its own random X-TUID header to local copies; nothing else may differ
            content = _TUID.sub(b"", msg.read_bytes(), count=1)
            folders.setdefault(folder, []).append(hashlib.sha256(content).hexdigest())
    return {k: sorted(v) for k, v in folders.items()}


@pytest.mark.skipif(MBSYNC is None, reason="mbsync not installed (apt-get install isync)")
async def test_mbsync_through_proxy_is_byte_identical_to_direct(
    dovecot: Dovecot, proxy: RunningProxy, tmp_path: Path
) -> None:
    direct_acct, proxied_acct = new_account(dovecot), new_account(dovecot)
    _seed(dovecot, direct_acct)
    _seed(dovecot, proxied_acct)
    direct = await trio.to_thread.run_sync(_mbsync, dovecot.address, direct_acct, tmp_path / "d")
    proxied = await trio.to_thread.run_sync(_mbsync, proxy.address, proxied_acct, tmp_path / "p")
    assert sorted(direct) == ["Archive", "INBOX", "Sent"]
    assert sum(len(v) for v in direct.values()) == 9
    assert proxied == direct


async def test_imaplib_session_through_proxy(dovecot: Dovecot, proxy: RunningProxy) -> None:
    account = new_account(dovecot)
    body = make_message(50_000, subject="imaplib", attachment=b"\x00\x01" * 10_000)

    def session() -> None:
        with imaplib.IMAP4(*proxy.address) as m:
            assert "STARTTLS" not in m.capabilities  # the proxy does not offer what it can't carry
            assert m.login(account.name, account.password)[0] == "OK"
            assert m.append("INBOX", "(\\Flagged)", None, body)[0] == "OK"
            assert m.create("Projects/2026")[0] == "OK"
            typ, data = m.list()
            assert typ == "OK" and any(b"Projects/2026" in d for d in data if isinstance(d, bytes))
            assert m.select("INBOX") == ("OK", [b"1"])
            typ, data = m.fetch("1", "(FLAGS BODY.PEEK[])")
            assert typ == "OK"
            first = data[0]
            assert isinstance(first, tuple) and first[1] == body and b"\\Flagged" in first[0]
            assert m.uid("SEARCH", None, "FLAGGED")[1][0] == b"1"
            assert m.copy("1", "Projects/2026")[0] == "OK"
            assert m.status("Projects/2026", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 1)")
            assert m.logout()[0] == "BYE"

    await trio.to_thread.run_sync(session)
