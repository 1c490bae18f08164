"""The seeded mail: the account, the 10 MB message and the small ones (exact sizes, CRLF)."""

from __future__ import annotations

import random

USER = "bench"
PASSWORD = "bench-pass"
BULK_SIZE = 10 * 1024 * 1024
SMALL_BODY_SIZE = 2048
SEARCH_MESSAGES = 200
SEARCH_WORD = "needle"  # in the Subject of every 10th small message


def _crlf(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def big_message(size: int = BULK_SIZE) -> bytes:
    """A MIME message of exactly ``size`` bytes: a base64-looking attachment, CRLF lines."""
    rnd = random.Random(1)
    head = _crlf(
        [
            "From: Bench <bench@example.test>",
            "To: Bench <bench@example.test>",
            "Subject: bulk attachment",
            "Date: Mon, 01 Jan 2024 00:00:00 +0000",
            "Message-ID: <bulk@example.test>",
            "MIME-Version: 1.0",
            "Content-Type: application/octet-stream",
            "Content-Transfer-Encoding: base64",
            "",
        ]
    )
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    line_len = 76
    pool = bytes(rnd.choice(alphabet) for _ in range(64 * 1024))
    out = bytearray(head)
    i = 0
    while len(out) + line_len + 2 <= size:
        start = (i * 131) % (len(pool) - line_len)
        out += pool[start : start + line_len] + b"\r\n"
        i += 1
    pad = size - len(out)
    if pad >= 2:
        out += b"A" * (pad - 2) + b"\r\n"
    elif pad == 1:
        out += b"\n"
    assert len(out) == size, (len(out), size)
    return bytes(out)


def small_message(i: int, size: int | None = None) -> bytes:
    subject = f"message {i}" + (f" {SEARCH_WORD}" if i % 10 == 0 else "")
    head = _crlf(
        [
            f"From: Sender {i} <s{i}@example.test>",
            "To: Bench <bench@example.test>",
            f"Subject: {subject}",
            "Date: Mon, 01 Jan 2024 00:00:00 +0000",
            f"Message-ID: <m{i}@example.test>",
            "",
        ]
    )
    body_line = f"line of message {i} ".ljust(70, ".") + "\r\n"
    target = size if size is not None else 300 + (i * 37) % 500
    body = (body_line * (target // len(body_line) + 1)).encode()
    msg = head + body
    if len(msg) > target:
        msg = msg[: target - 2] + b"\r\n"
    return msg
