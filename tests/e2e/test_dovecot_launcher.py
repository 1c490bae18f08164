"""The throwaway Dovecot itself: run-time users, byte-exact seeding, TLS, clean stop."""

from __future__ import annotations

import imaplib
import os
import re
import ssl
import time
from pathlib import Path

import pytest
import trustme

from imapproxy.demo.banner import DEMO_PASSWORD, DEMO_USER, demo_banner, start_demo_upstream
from imapproxy.demo.dovecot import Dovecot, TLSFiles
from tests.conftest import SeedMessage
from tests.support.accounts import Account
from tests.support.messages import make_message

pytestmark = pytest.mark.dovecot


def _fetch_all(conn: imaplib.IMAP4, mailbox: str) -> list[tuple[bytes, bytes]]:
    """(FLAGS item, BODY[] bytes) of every message in ``mailbox``, in sequence order."""
    typ, selected = conn.select(f'"{mailbox}"', readonly=True)
    assert typ == "OK", selected
    count = int(selected[0] or 0)
    if count == 0:
        return []
    typ, fetched = conn.fetch(f"1:{count}", "(FLAGS BODY.PEEK[])")
    assert typ == "OK", fetched
    out: list[tuple[bytes, bytes]] = []
    for item in fetched:
        if isinstance(item, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
            out.append((flags.group(1) if flags else b"", item[1]))
    return out


def test_user_added_at_run_time_can_log_in_and_failures_stay_fast(
    dovecot: Dovecot, imap_user: Account
) -> None:
    with (
        imaplib.IMAP4(*dovecot.address, timeout=10) as conn,
        pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"),
    ):
        conn.login(imap_user.name, "wrong-password")
    # A failed login from 127.0.0.1 must not slow down the next one (auth penalty off).
    started = time.monotonic()
    with imaplib.IMAP4(*dovecot.address, timeout=10) as conn:
        typ, _ = conn.login(imap_user.name, imap_user.password)
        assert typ == "OK"
        assert conn.select("INBOX")[1] == [b"0"]  # every test starts with an empty mailbox
        conn.logout()
    assert time.monotonic() - started < 2.0


def test_delivered_messages_fetch_byte_identical(
    dovecot: Dovecot, imap_user: Account, seed_message: SeedMessage
) -> None:
    plain = seed_message(imap_user, size=2_000, subject="plain")
    utf8 = seed_message(imap_user, size=3_000, subject="Grüße", eight_bit=True, flags="S")
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
    with_attachment = make_message(20_000, subject="report", attachment=pdf)
    dovecot.deliver(imap_user.name, with_attachment, folder="Archive/2024", flags="FS")
    assert len(plain) == 2_000 and len(with_attachment) == 20_000

    with imaplib.IMAP4(*dovecot.address, timeout=10) as conn:
        conn.login(imap_user.name, imap_user.password)
        inbox = _fetch_all(conn, "INBOX")
        assert [body for _, body in inbox] == [plain, utf8]
        assert b"\\Seen" not in inbox[0][0] and b"\\Seen" in inbox[1][0]
        (archived,) = _fetch_all(conn, "Archive/2024")
        assert archived[1] == with_attachment
        assert set(archived[0].split()) >= {b"\\Seen", b"\\Flagged"}
        typ, subscribed = conn.lsub()
        assert typ == "OK" and any(line.endswith(b'"/" Archive/2024') for line in subscribed)
        conn.logout()


def test_require_tls_refuses_plaintext_and_logs_tls(tmp_path: Path, dovecot: Dovecot) -> None:
    # (`dovecot` only for its skip-or-fail when the binary is missing.)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "127.0.0.2")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)

    with Dovecot(
        tmp_path / "dc", {"tlsuser": "pw"}, tls=TLSFiles(cert, key), require_tls=True
    ) as server:
        assert server.tls_address is not None
        with imaplib.IMAP4(*server.address, timeout=10) as conn:
            assert "LOGINDISABLED" in conn.capabilities
            with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
                conn.login("tlsuser", "pw")
        with imaplib.IMAP4(*server.address, timeout=10) as conn:
            conn.starttls(ssl_context=ctx)
            assert conn.login("tlsuser", "pw")[0] == "OK"
            conn.logout()
        with imaplib.IMAP4_SSL(*server.tls_address, ssl_context=ctx, timeout=10) as conn:
            assert conn.login("tlsuser", "pw")[0] == "OK"
            conn.logout()
        logins = [
            line for line in server.log_text().splitlines() if "Login: user=<tlsuser>" in line
        ]
        assert len(logins) == 2 and all(", TLS," in line for line in logins), logins


def _session_members(sid: int) -> list[int]:
    """PIDs in session ``sid``; the master is a session leader, its children stay in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesised command name: state ppid pgrp session ...
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                found.append(int(entry.name))
    return found


def test_stop_leaves_no_process_behind(tmp_path: Path, dovecot: Dovecot) -> None:
    server = Dovecot(tmp_path / "dc", {"alice": "pw"})
    server.start()
    pid = server.pid
    assert pid is not None and len(_session_members(pid)) > 1
    with imaplib.IMAP4(*server.address, timeout=10) as conn:
        conn.login("alice", "pw")  # a live imap child at stop time
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    deadline = time.monotonic() + 5  # children exit on their own once the master is gone
    while _session_members(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _session_members(pid) == []
    assert dovecot.pid is not None  # the session instance is untouched


def test_start_failure_reports_the_log(tmp_path: Path, dovecot: Dovecot) -> None:
    server = Dovecot(tmp_path / "dc", extra_config="no_such_setting = 1")
    with pytest.raises(RuntimeError, match="Unknown setting: no_such_setting"):
        server.start(timeout=5)
    assert server.pid is None


def test_demo_upstream_is_seeded_and_banner_points_at_the_proxy(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    server = start_demo_upstream(tmp_path / "demo")
    try:
        with imaplib.IMAP4(*server.address, timeout=10) as conn:
            conn.login(DEMO_USER, DEMO_PASSWORD)
            inbox = _fetch_all(conn, "INBOX")
            assert len(inbox) >= 4
            bodies = b"\n".join(body for _, body in inbox)
            assert "Grüße".encode() in bodies  # raw 8-bit UTF-8 body
            assert b"Content-Type: application/pdf" in bodies
            assert len(_fetch_all(conn, "Archive")) == 1
            assert len(_fetch_all(conn, "Sent")) == 1
            conn.logout()
    finally:
        server.stop()
    banner = demo_banner(("0.0.0.0", 1143), ("127.0.0.1", 9143), server.address)
    assert "imaplib.IMAP4('127.0.0.1', 1143)" in banner
    assert "curl http://127.0.0.1:9143/metrics" in banner
    assert "port 1143" in banner and "None" in banner  # Thunderbird: no encryption
