"""Redaction and transcription without sockets: the pure Session's real parser events, every
split of the bytes, and a tap attached in the middle of a command."""

from __future__ import annotations

import base64
import json

import pytest
import trio

from imapproxy.inspect.registry import software_from_id
from imapproxy.inspect.tail import Reader, TailFilter, cut, encode
from imapproxy.inspect.transcript import Record, Transcriber
from imapproxy.session.core import Session
from imapproxy.session.settings import SessionSettings

GREETING = b"* OK ready\r\n"
SECRET = b"Hunter2-secret"


class Tapped:
    """A pure session with a transcriber on its tap; ``attach_after`` events are skipped
    first (a tail that attaches late)."""

    def __init__(self, attach_after: int = 0) -> None:
        self.session = Session(SessionSettings())
        self.records: list[Record] = []
        self.skip = attach_after
        self.tr = Transcriber()
        self.session.tap = self._tap
        self.session.server_data(GREETING)

    def _tap(self, direction: str, event: object) -> None:
        if self.skip > 0:
            self.skip -= 1
            return
        rec = self.tr.feed(direction, event)
        if rec is not None:
            self.records.append(rec)

    def client(self, data: bytes, *, bytewise: bool = False) -> None:
        for piece in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
            self.session.client_data(piece)

    def server(self, data: bytes) -> None:
        self.session.server_data(data)

    def dump(self) -> bytes:
        return (
            b"".join(encode({"time": 0.0, **r}) for r in self.records)
            + json.dumps([r.get("_data", b"").decode("latin-1") for r in self.records]).encode()
        )


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize(
    ("login", "server_plus"),
    [
        (b"a1 LOGIN alice " + SECRET + b"\r\n", 0),
        (b'a1 LOGIN "alice" "' + SECRET + b'"\r\n', 0),
        (b'a1 LOGIN alice "Hunter2-\\"secret"\r\n', 0),
        (b"a1 LOGIN alice {14}\r\n", 1),
        (b"a1 LOGIN {5}\r\n", 2),
        (b"a1 LOGIN {5+}\r\nalice {14+}\r\n" + SECRET + b"\r\n", 0),
        (b"a1 LOGIN alice " + SECRET + b" extra\r\n", 0),
    ],
)
def test_login_password_never_in_a_record(login: bytes, server_plus: int, bytewise: bool) -> None:
    t = Tapped()
    t.client(login, bytewise=bytewise)
    if server_plus == 1:
        t.server(b"+ OK\r\n")
        t.client(SECRET + b"\r\n", bytewise=bytewise)
    elif server_plus == 2:
        t.server(b"+ OK\r\n")
        t.client(b"alice {14}\r\n", bytewise=bytewise)
        t.server(b"+ OK\r\n")
        t.client(SECRET + b"\r\n", bytewise=bytewise)
    t.server(b"a1 OK Logged in\r\n")
    dump = t.dump()
    assert b"Hunter2" not in dump and b"secret" not in dump
    first = t.records[1]
    assert first["event"] == "command" and first["command"] == "LOGIN"
    assert "alice" in first["line"] or "{5" in first["line"]
    assert t.records[-1]["status"] == "OK" and t.records[-1]["duration"] >= 0


def test_unparsable_login_hides_everything_after_the_name() -> None:
    t = Tapped()
    t.client(b'a1 LOGIN alice "unterminated ' + SECRET + b"\r\n")
    assert SECRET not in t.dump()


@pytest.mark.parametrize("ir", [True, False])
@pytest.mark.parametrize("mechanism", ["PLAIN", "XOAUTH2", "OAUTHBEARER"])
def test_sasl_data_never_in_a_record(mechanism: str, ir: bool) -> None:
    payload = {
        "PLAIN": b"\0alice\0" + SECRET,
        "XOAUTH2": b"user=alice\x01auth=Bearer " + SECRET + b"\x01\x01",
        "OAUTHBEARER": b"n,a=alice,\x01auth=Bearer " + SECRET + b"\x01\x01",
    }[mechanism]
    blob = base64.b64encode(payload)
    t = Tapped()
    if ir:
        t.client(b"a1 AUTHENTICATE " + mechanism.encode() + b" " + blob + b"\r\n")
        t.server(b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n")
        t.client(b"\r\n")
    else:
        t.client(b"a1 AUTHENTICATE " + mechanism.encode() + b"\r\n")
        t.server(b"+ \r\n")
        t.client(blob + b"\r\n")
    t.server(b"a1 NO failed\r\n")
    dump = t.dump()
    assert blob not in dump and SECRET not in dump and b"eyJzdGF0" not in dump
    phases = {r.get("phase") for r in t.records[1:]}
    assert phases == {"authenticate", None}


def test_a_tap_attached_mid_command_shows_nothing_it_cannot_place() -> None:
    # The tail attaches after the greeting and "a1 LOGIN {5}": the rest is unplaceable.
    t = Tapped(attach_after=2)
    t.client(b"a1 LOGIN {5}\r\n")
    t.server(b"+ OK\r\n")
    t.client(b"alice " + SECRET + b"\r\n")
    t.server(b"a1 OK Logged in\r\n")
    assert SECRET not in t.dump()
    t2 = Tapped(attach_after=2)  # the greeting and the APPEND line
    t2.client(b"a1 APPEND INBOX {14}\r\n")
    t2.server(b"+ OK\r\n")
    t2.client(SECRET + b"\r\n")
    t2.server(b"a1 OK done\r\n")
    literal = next(r for r in t2.records if r["event"] == "literal")
    assert literal["redacted"] and "_data" not in literal


def test_literal_sizes_and_bodies() -> None:
    t = Tapped()
    t.client(b"a1 SELECT INBOX\r\n")
    t.server(b"* 1 EXISTS\r\na1 OK selected\r\n")
    t.client(b"a2 FETCH 1 BODY[]\r\n")
    t.server(b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\na2 OK done\r\n")
    lit = next(r for r in t.records if r["event"] == "literal")
    assert (lit["size"], lit["direction"], lit["command"]) == (10, "server", "FETCH")
    assert "payload" not in (cut(lit, 0) or {})
    assert (cut(lit, 4) or {})["payload"] == "0123"
    assert (cut(lit, None) or {})["payload"] == "0123456789"
    assert cut({**lit, "offset": 8}, 4) is None


def test_idle_phase_and_done() -> None:
    t = Tapped()
    t.client(b"a1 IDLE\r\n")
    t.server(b"+ idling\r\n")
    t.client(b"DONE\r\n")
    t.server(b"a1 OK Idle done\r\n")
    events = [(r["event"], r.get("phase")) for r in t.records[1:]]
    assert events == [
        ("command", "idle"),
        ("continuation", "idle"),
        ("done", "idle"),
        ("response", None),
    ]


def test_software_from_id() -> None:
    assert software_from_id(b'a ID ("name" "Thunderbird" "version" "128.3")\r\n') == (
        "Thunderbird 128.3"
    )
    assert software_from_id(b'a ID ("NAME" "mbsync")\r\n') == "mbsync"
    assert software_from_id(b"a ID NIL\r\n") is None
    assert software_from_id(b'a ID ("name" \r\n') is None


async def test_reader_queue_is_bounded_and_counts_drops() -> None:
    reader = Reader(TailFilter(), 0)
    for i in range(5000):
        reader.offer(1, None, {"time": 0.0, "event": "command", "line": str(i)})
    assert len(reader.queue) == 1000 and reader.dropped == 4000
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    with trio.move_on_after(0.5):  # the writer then waits for more records, for ever
        await reader.write_to(send)
    lines = b"".join(sent).splitlines()
    assert json.loads(lines[-1])["event"] == "dropped" and json.loads(lines[-1])["count"] == 4000
    assert len(lines) == 1001


def test_a_full_queue_still_takes_session_ends_up_to_a_reserve() -> None:
    reader = Reader(TailFilter(), 0)
    for i in range(1000):
        reader.offer(1, None, {"time": 0.0, "event": "command", "line": str(i)})
    reader.offer(1, None, {"time": 0.0, "event": "response", "line": "late"})
    assert reader.dropped == 1
    for i in range(150):  # more sessions end than the reserve holds
        reader.offer(i, None, {"time": 0.0, "event": "close", "reason": "client closed"})
    assert len(reader.queue) == 1100 and reader.dropped == 51
    assert reader.queue[1000]["event"] == "close"


def test_filters() -> None:
    flt = TailFilter.from_json(
        {"user": ["al*"], "command": ["uid fetch"], "client": ["10.0.0.0/8"]}
    )
    reader = Reader(flt, 0)
    import ipaddress

    ip = ipaddress.ip_address("10.1.2.3")
    reader.offer(1, ip, {"event": "command", "user": "alice", "command": "UID FETCH"})
    reader.offer(1, ip, {"event": "command", "user": "bob", "command": "UID FETCH"})
    reader.offer(1, ip, {"event": "command", "user": "alice", "command": "FETCH"})
    reader.offer(1, ipaddress.ip_address("192.0.2.1"), {"event": "command", "user": "alice"})
    assert len(reader.queue) == 1
    with pytest.raises(ValueError):
        TailFilter.from_json({"client": ["not-a-cidr"]})
