"""Demo mode helpers: a throwaway Dovecot with a seeded mailbox, and the how-to banner.

The CLI (``imapproxy demo``) starts the upstream with :func:`start_demo_upstream`, puts the
proxy in front of it and prints :func:`demo_banner`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

from imapproxy.demo.dovecot import Dovecot

__all__ = ["DEMO_PASSWORD", "DEMO_USER", "demo_banner", "demo_messages", "start_demo_upstream"]

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"

_DEMO_FROM = "Ada Example <ada@example.org>"
_DEMO_TO = "Demo User <demo@example.org>"


def start_demo_upstream(workdir: Path) -> Dovecot:
    """Start a local Dovecot holding user demo/demo with a small seeded mailbox.

    All state lives in ``workdir``; re-using a workdir keeps its mail instead of seeding
    twice. The caller owns the returned server and must ``stop()`` it.
    """
    server = Dovecot(Path(workdir), {DEMO_USER: DEMO_PASSWORD})
    server.start()
    try:
        maildir = server.maildir(DEMO_USER)
        if not any(any((maildir / sub).iterdir()) for sub in ("cur", "new")):
            for folder, flags, message in demo_messages():
                server.deliver(DEMO_USER, message, folder=folder, flags=flags)
    except BaseException:
        server.stop()
        raise
    return server


def demo_messages() -> list[tuple[str, str, bytes]]:
    """(folder, Maildir flags, RFC 5322 bytes with CRLF) for the demo mailbox."""
    welcome = _message(
        1,
        "Welcome to the imapproxy demo",
        "Hello!\n\nThis mailbox sits on a throwaway Dovecot behind imapproxy.\n"
        "Every command your client sends passes through the proxy; watch its log\n"
        "and the /metrics page while you click around.\n",
    )
    lunch = _message(2, "Lunch on Thursday?", "Shall we try the new place around the corner?\n")
    minutes = _message(
        3,
        "Minutes of the weekly meeting",
        "".join(f"{n}. Item {n}: discussed, no objections.\n" for n in range(1, 13)),
    )
    utf8 = _message(
        4,
        "Grüße aus Köln — 8-bit UTF-8",
        "Grüße! Ein Text mit Umlauten: äöü ÄÖÜ ß, un peu de français : café, naïve,\n"
        "and a little Japanese: 日本語のテキスト.\n"
        "The body is sent as 8bit UTF-8, not encoded.\n",
    )
    report = _message(
        5,
        "Quarterly report (PDF attached)",
        "Hi,\n\nplease find the report attached.\n",
        attachment=("report.pdf", _tiny_pdf()),
    )
    archived = _message(6, "Old newsletter", "This one was filed away in Archive.\n")
    sent = _message(
        7,
        "Re: Lunch on Thursday?",
        "Thursday works, see you at noon.\n",
        sender=_DEMO_TO,
        recipient=_DEMO_FROM,
    )
    return [
        ("INBOX", "S", welcome),
        ("INBOX", "", lunch),
        ("INBOX", "S", minutes),
        ("INBOX", "", utf8),
        ("INBOX", "F", report),
        ("Archive", "S", archived),
        ("Sent", "S", sent),
    ]


def demo_banner(
    proxy: tuple[str, int], metrics: tuple[str, int] | None, upstream: tuple[str, int]
) -> str:
    """Short instructions for connecting to the running demo."""
    host, port = _connectable(proxy)
    up_host, up_port = upstream
    one_liner = (
        'python3 -c "import imaplib; '
        f"m = imaplib.IMAP4('{host}', {port}); m.login('{DEMO_USER}', '{DEMO_PASSWORD}'); "
        "print(m.list()); print(m.select('INBOX')); "
        "print(m.fetch('1:*', '(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])')); m.logout()\""
    )
    if metrics is None:
        metrics_line = "Metrics:   disabled"
    else:
        m_host, m_port = _connectable(metrics)
        url_host = f"[{m_host}]" if ":" in m_host else m_host
        metrics_line = f"Metrics:   curl http://{url_host}:{m_port}/metrics"
    return "\n".join(
        [
            "imapproxy demo is running.",
            "",
            f"Proxy:     {host}:{port}   user {DEMO_USER}, password {DEMO_PASSWORD}, no encryption",
            f"Upstream:  {up_host}:{up_port}   (local Dovecot started for the demo)",
            metrics_line,
            "",
            "Try it:",
            f"  {one_liner}",
            "",
            "Thunderbird (Account Settings > Add Mail Account > Configure manually):",
            f"  Incoming: IMAP, server {host}, port {port}, connection security None,",
            f"            authentication Normal password, username {DEMO_USER},"
            f" password {DEMO_PASSWORD}",
            "  Outgoing: not needed (the demo has no SMTP server)",
            "",
            "Press Ctrl-C to stop.",
        ]
    )


def _connectable(address: tuple[str, int]) -> tuple[str, int]:
    # A wildcard listen address is not something to tell a user to connect to.
    host, port = address
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def _message(
    n: int,
    subject: str,
    body: str,
    *,
    sender: str = _DEMO_FROM,
    recipient: str = _DEMO_TO,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    msg = EmailMessage(policy=SMTP)  # SMTP policy: CRLF line endings
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2024, 5, 1, 9, 0, tzinfo=UTC) + timedelta(hours=n))
    msg["Message-ID"] = f"<demo-{n}@imapproxy.demo>"
    if body.isascii():
        msg.set_content(body)
    else:
        msg.set_content(body, charset="utf-8", cte="8bit")
    if attachment is not None:
        filename, data = attachment
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=filename)
        msg.set_boundary(f"=_demo_{n}")  # deterministic bytes from run to run
    return msg.as_bytes()


def _tiny_pdf() -> bytes:
    """A small but valid one-page PDF that says hello."""
    stream = b"BT /F1 24 Tf 72 720 Td (imapproxy demo report) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
