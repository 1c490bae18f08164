"""Plain helpers shared by tests (import them; fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import hashlib
from email.header import Header

__all__ = ["make_message"]

_FILLER = "the quick brown fox jumps over the lazy dog"
_FILLER_8BIT = "Grüße aus Köln, naïve café, smörgåsbord, 日本語"
_LINE_MAX = 76  # body lines stay under RFC 5322's 78-character recommendation


def make_message(
    size: int,
    *,
    subject: str,
    eight_bit: bool = False,
    attachment: bytes | None = None,
) -> bytes:
    """A valid RFC 5322 message of exactly ``size`` bytes when ``size`` allows it.

    CRLF line endings throughout; content is a pure function of the arguments (no
    randomness, no clock). If ``size`` is smaller than the fixed parts (headers, MIME
    structure, the encoded attachment), the smallest possible message is returned.
    ``eight_bit`` gives a UTF-8 text body sent as 8bit; ``attachment`` adds a base64
    application/pdf part.
    """
    seed = hashlib.sha256(
        repr(
            (size, subject, eight_bit, attachment and hashlib.sha256(attachment).digest())
        ).encode()
    ).hexdigest()
    headers = [
        "From: Alice Example <alice@example.org>",
        "To: Bob Example <bob@example.org>",
        f"Subject: {_encode_subject(subject)}",
        "Date: Mon, 01 Jan 2024 12:00:00 +0000",
        f"Message-ID: <{seed[:32]}@imapproxy.test>",
        "MIME-Version: 1.0",
    ]
    charset, cte = ("utf-8", "8bit") if eight_bit else ("us-ascii", "7bit")
    text_headers = [
        f"Content-Type: text/plain; charset={charset}",
        f"Content-Transfer-Encoding: {cte}",
    ]

    if attachment is None:
        head = "\r\n".join(headers + text_headers) + "\r\n\r\n"
        tail = ""
    else:
        boundary = f"=_imapproxy_{seed[:24]}"
        encoded = base64.b64encode(attachment).decode("ascii")
        b64_lines = [encoded[i : i + _LINE_MAX] for i in range(0, len(encoded), _LINE_MAX)]
        head = (
            "\r\n".join([*headers, f'Content-Type: multipart/mixed; boundary="{boundary}"'])
            + "\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n"
            + f"--{boundary}\r\n"
            + "\r\n".join(text_headers)
            + "\r\n\r\n"
        )
        tail = (
            f"\r\n--{boundary}\r\n"
            'Content-Type: application/pdf; name="attachment.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="attachment.pdf"\r\n'
            "\r\n" + "".join(line + "\r\n" for line in b64_lines) + f"--{boundary}--\r\n"
        )
    head_b, tail_b = head.encode(), tail.encode()
    body = _text_body(size - len(head_b) - len(tail_b), eight_bit)
    return head_b + body + tail_b


def _encode_subject(subject: str) -> str:
    if subject.isascii():
        return subject
    return Header(subject, "utf-8").encode()


def _text_body(target: int, eight_bit: bool) -> bytes:
    """Numbered CRLF lines totalling exactly ``target`` bytes (at least 3)."""
    full = [_line(n, eight_bit) for n in range(3)]  # the filler cycles every 3 lines
    lines: list[bytes] = []
    remaining = target
    n = 0
    # An 8-bit body always carries at least one UTF-8 line, whatever the size.
    while remaining >= _LINE_MAX + 2 + 16 or (eight_bit and n == 0):
        n += 1
        line = f"{n:07d}".encode() + full[n % 3]
        lines.append(line)
        remaining -= len(line)
    # The rest (<= ~94 bytes) as one or two lines of ASCII padding.
    n += 1
    if remaining > _LINE_MAX + 2:
        half = remaining // 2
        lines += [_pad(n, half), _pad(n + 1, remaining - half)]
    else:
        lines.append(_pad(n, max(remaining, 3)))
    return b"".join(lines)


def _line(n: int, eight_bit: bool) -> bytes:
    text = _FILLER_8BIT if eight_bit and n == 1 else _FILLER
    return f" {text}\r\n".encode()


def _pad(n: int, width: int) -> bytes:
    """A line of exactly ``width`` bytes including CRLF."""
    text = f"{n:07d} " + "." * _LINE_MAX
    return text[: width - 2].encode() + b"\r\n"
