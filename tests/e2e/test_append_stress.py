"""Concurrent APPEND stress with rules loaded (issue 8, bug 1): nothing Dovecot stores may
differ from what a client sent.

Many clients at once, each on its own account, through a proxy (child process) with a ``log``
rule and a ``when.mailbox`` block rule (so APPEND's arguments are needed and the command is
held). Each client pipelines random mixes in the same writes: APPENDs with ``{n}`` (wait for
``+``) and ``{n+}`` literals, messages of 200 B to 1.5 MB whose bodies contain lines that look
like IMAP commands, NOOPs, FETCHes of earlier messages (so responses load the client leg while
the proxy releases held literals), and APPENDs to the blocked mailbox (the proxy refuses them
and swallows the payload). Its reader is slow on purpose (small receive buffer, pauses).

Afterwards every file in each account's maildir is compared by sha256 with the messages sent
(Dovecot stores LF line ends: the expected bytes are the sent ones with CRLF -> LF).

``IMAPPROXY_STRESS=N`` multiplies the messages per client for a longer local run.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from imapproxy.demo.dovecot import Dovecot
from tests.support.accounts import Account, new_account
from tests.support.childproxy import ChildProxy

CLIENTS = 20
MESSAGES_PER_CLIENT = 20 * int(os.environ.get("IMAPPROXY_STRESS", "1"))
MIN_SIZE, MAX_SIZE = 200, 1_500_000
MAX_IN_FLIGHT = 6  # tagged commands a client may have outstanding
STALL = 20.0  # seconds without the awaited answer before a client gives up

RULES = """\
  - {name: audit, action: log}
  - name: locked-is-read-only
    action: block
    when: {command: [APPEND], mailbox: "Locked"}
    message: "Locked is read-only"
"""

# Lines a naive proxy might take for commands or responses.
_LOOKALIKES = [
    b"x1 CREATE Injected",
    b"a LOGOUT",
    b"* BYE Server shutting down",
    b"+ go ahead",
    b"b APPEND INBOX {10+}",
    b"c APPEND Injected {5}",
    b"DONE",
    b"d1 UID STORE 1:* +FLAGS (\\Deleted)",
    b"{0}",
    b"",
    "Grüße, naïve café".encode(),
]

_RESPONSE_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")
_EXISTS = re.compile(rb"\* (\d+) EXISTS\r\n\Z")


def make_message(rng: random.Random, ident: str) -> bytes:
    """A message of random size (log-uniform over MIN_SIZE..MAX_SIZE), CRLF only."""
    size = int(MIN_SIZE * (MAX_SIZE / MIN_SIZE) ** rng.random())
    head = (
        f"From: Stress <stress@example.test>\r\nTo: u@example.test\r\n"
        f"Subject: {ident}\r\nMessage-ID: <{ident}@example.test>\r\n\r\n"
    ).encode()
    body = base64.encodebytes(rng.randbytes(size * 3 // 4 + 64)).replace(b"\n", b"\r\n")
    lines = body.split(b"\r\n")
    for _ in range(max(1, len(lines) // 40)):
        lines.insert(rng.randrange(len(lines)), rng.choice(_LOOKALIKES))
    text = head + b"\r\n".join(lines)
    cut = text.rfind(b"\r\n", 0, max(size, len(head) + 2))
    return text[: cut + 2]


@dataclass
class Responses:
    """What a client's reader has seen: tagged answers by tag, `+` continuations, and the
    last `* N EXISTS` (the messages the server's view of INBOX holds)."""

    tagged: dict[bytes, bytes] = field(default_factory=dict)
    continuations: int = 0
    exists: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def note(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait(self, predicate: Callable[[], bool]) -> None:
        with trio.move_on_after(STALL):
            while not predicate():
                await self.changed.wait()
        if not predicate():
            raise Stalled


class Stalled(Exception):
    """No awaited answer for STALL seconds: a desynchronised stream looks like this."""


async def _reader(stream: trio.SocketStream, seen: Responses, rng: random.Random) -> None:
    """Parse responses (literal-aware); slow on purpose so the proxy's client writes block."""
    buf = bytearray()
    need = 0  # literal bytes still to skip
    while True:
        chunk = await stream.receive_some(16384)
        if not chunk:
            return
        buf += chunk
        while True:
            if need:
                take = min(need, len(buf))
                del buf[:take]
                need -= take
                if need:
                    break
                continue
            end = buf.find(b"\n")
            if end < 0:
                break
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            if m := _RESPONSE_LITERAL.search(line):
                need = int(m.group(1))
            if line.startswith(b"+"):
                seen.continuations += 1
            elif m := _EXISTS.match(line):
                seen.exists = int(m.group(1))
            elif not line.startswith(b"*") and b" " in line:
                seen.tagged[line.split(b" ", 1)[0]] = line
            seen.note()
        if rng.random() < 0.2:
            await trio.sleep(0.002)


@dataclass
class ClientResult:
    sent: list[bytes] = field(default_factory=list)  # APPENDed to INBOX, in order
    blocked_ok: int = 0
    fetched: int = 0  # FETCHes sent while APPENDs were in flight
    failures: list[str] = field(default_factory=list)


async def _client(address: tuple[str, int], account: Account, seed: int) -> ClientResult:
    rng = random.Random(seed)
    result = ClientResult()
    sock = trio.socket.socket()
    # Before connect (it sets the window); small, but the kernel doubles it to 128 KiB, above
    # the loopback MSS (64 KiB): a window below one segment stalls TCP on its persist timer.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    await sock.connect(address)
    stream = trio.SocketStream(sock)
    seen = Responses()
    expect: dict[bytes, bytes] = {}  # tag -> expected status word

    try:
        await _converse(stream, account, rng, seen, expect, result)
    except* Stalled:
        outstanding = [t.decode() for t in expect if t not in seen.tagged]
        result.failures.append(f"{account.name}: stalled, no answer to {outstanding}")
    await stream.aclose()

    for tag, status in expect.items():
        answer = seen.tagged.get(tag, b"- none")
        if answer.split(b" ", 2)[1] != status:
            result.failures.append(f"{tag.decode()}: expected {status.decode()}, got {answer!r}")
        elif status == b"NO":
            result.blocked_ok += 1
    return result


async def _converse(
    stream: trio.SocketStream,
    account: Account,
    rng: random.Random,
    seen: Responses,
    expect: dict[bytes, bytes],
    result: ClientResult,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_reader, stream, seen, random.Random(rng.random()))
        await stream.send_all(b"L LOGIN %s %s\r\nS SELECT INBOX\r\n" % (
            account.name.encode(), account.password.encode()))  # fmt: skip
        try:
            await _script(stream, account, rng, seen, expect, result)
        finally:
            nursery.cancel_scope.cancel()


async def _script(
    stream: trio.SocketStream,
    account: Account,
    rng: random.Random,
    seen: Responses,
    expect: dict[bytes, bytes],
    result: ClientResult,
) -> None:
    tags = (b"t%d" % i for i in range(10**6))
    await seen.wait(lambda: b"S" in seen.tagged)
    assert seen.tagged[b"L"].startswith(b"L OK"), seen.tagged[b"L"]

    pending = b""  # bytes of the current write, not sent yet
    fetches: list[bytes] = []
    for n in range(MESSAGES_PER_CLIENT):
        if sum(t not in seen.tagged for t in expect) >= MAX_IN_FLIGHT:
            await stream.send_all(pending)  # what we wait for may be in it
            pending = b""
            await seen.wait(lambda: sum(t not in seen.tagged for t in expect) < MAX_IN_FLIGHT)
        message = make_message(rng, f"{account.name}-m{n}")
        tag = next(tags)
        blocked = rng.random() < 0.1
        if blocked and any(t not in seen.tagged for t in fetches):
            # The proxy's own NO would land inside a FETCH response still streaming (a
            # session bug of its own, see test_proxy_answer_waits_for_the_response_in_flight).
            await stream.send_all(pending)
            pending = b""
            await seen.wait(lambda: all(t in seen.tagged for t in fetches))
        box = b"Locked" if blocked else b"INBOX"
        flags = rng.choice([b"", b"(\\Seen) ", b'"01-Jan-2024 12:00:00 +0000" '])
        expect[tag] = b"NO" if blocked else b"OK"
        if rng.random() < 0.5:  # {n+}: all in this write
            pending += b"%s APPEND %s %s{%d+}\r\n%s\r\n" % (
                tag, box, flags, len(message), message)  # fmt: skip
        else:  # {n}: the line ends this write; the payload starts the next one
            before = seen.continuations
            await stream.send_all(pending + b"%s APPEND %s %s{%d}\r\n" % (
                tag, box, flags, len(message)))  # fmt: skip
            pending = b""
            await seen.wait(lambda b=before, t=tag: seen.continuations > b or t in seen.tagged)
            if tag not in seen.tagged:
                pending = message + b"\r\n"
        if not blocked:
            result.sent.append(message)
        extra = rng.random()
        if extra < 0.3:
            tag = next(tags)
            expect[tag] = b"OK"
            pending += b"%s NOOP\r\n" % tag
        elif extra < 0.5 and seen.exists:
            # Only numbers the server has announced: Dovecot delays the view sync after an
            # APPEND while more commands wait in its input, so a pipelined FETCH of the
            # message just appended may be BAD "Invalid messageset" (seen in CI).
            tag = next(tags)
            expect[tag] = b"OK"
            fetches.append(tag)
            result.fetched += 1
            pending += b"%s FETCH %d BODY.PEEK[]\r\n" % (tag, rng.randint(1, seen.exists))
        if pending and rng.random() < 0.6:  # sometimes several commands per write
            await stream.send_all(pending)
            pending = b""
    if pending:
        await stream.send_all(pending)
    await seen.wait(lambda: all(t in seen.tagged for t in expect))
    await stream.send_all(b"Z LOGOUT\r\n")
    await seen.wait(lambda: b"Z" in seen.tagged)


def _stored(dovecot: Dovecot, account: Account) -> Iterator[Path]:
    root = dovecot.maildir(account.name)
    for sub in ("cur", "new"):
        yield from (root / sub).iterdir()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_concurrent_appends_through_rules_store_every_byte(dovecot: Dovecot) -> None:
    accounts = [new_account(dovecot) for _ in range(CLIENTS)]
    proxy = ChildProxy(dovecot.address, rules=RULES)
    results: dict[str, ClientResult] = {}
    started = time.monotonic()
    try:

        async def one(i: int) -> None:
            results[accounts[i].name] = await _client(proxy.address, accounts[i], 1000 + i)

        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                for i in range(CLIENTS):
                    nursery.start_soon(one, i)
    finally:
        log = proxy.stop()
    elapsed = time.monotonic() - started
    assert "Traceback" not in log, log[-3000:]

    appended = corrupted = missing = 0
    failures: list[str] = []
    for account in accounts:
        result = results[account.name]
        failures += result.failures
        sent = Counter(_digest(m.replace(b"\r\n", b"\n")) for m in result.sent)
        stored = Counter(_digest(p.read_bytes()) for p in _stored(dovecot, account))
        appended += len(result.sent)
        corrupted += sum((stored - sent).values())
        missing += sum((sent - stored).values())
        assert not (dovecot.maildir(account.name) / ".Locked").exists()
    megabytes = sum(len(m) for r in results.values() for m in r.sent) / 1e6
    blocked = sum(r.blocked_ok for r in results.values())
    fetched = sum(r.fetched for r in results.values())
    print(
        f"\nappend stress: {CLIENTS} clients, {appended} messages appended ({megabytes:.1f} MB), "
        f"{corrupted} corrupted, {missing} missing, {blocked} blocked as expected, "
        f"{fetched} fetches, {elapsed:.1f} s"
    )
    assert not failures, failures[:10]
    assert fetched > 0  # the client leg was loaded while literals were released
    assert (corrupted, missing) == (0, 0)


def test_proxy_answer_waits_for_the_response_in_flight(dovecot: Dovecot) -> None:
    """A command the proxy answers itself, sent while a FETCH response streams, must not have
    its answer written into the middle of that response's literal."""
    account = new_account(dovecot)
    body = b"Subject: big\r\n\r\n" + (b"y" * 74 + b"\r\n") * 40000
    dovecot.deliver(account.name, body)
    proxy = ChildProxy(dovecot.address, rules=RULES)
    try:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            login = b"L LOGIN %s %s\r\nS SELECT INBOX\r\n" % (
                account.name.encode(), account.password.encode())  # fmt: skip
            sock.sendall(login)
            data = b""
            while b"S OK" not in data:
                data += sock.recv(65536)
            sock.sendall(b"f FETCH 1 BODY.PEEK[]\r\n")
            data = b""
            while len(data) < 100_000:  # the response is streaming ...
                data += sock.recv(65536)
            sock.sendall(b"b APPEND Locked {5+}\r\nhello\r\n")  # ... answered by the proxy
            while not data.endswith(b"b NO [locked-is-read-only] Locked is read-only\r\n") and (
                b"f OK" not in data or b"b NO" not in data
            ):
                chunk = sock.recv(1 << 20)
                assert chunk
                data += chunk
    finally:
        proxy.stop()
    start = data.index(b"{%d}\r\n" % len(body)) + len(b"{%d}\r\n" % len(body))
    assert data[start : start + len(body)] == body
